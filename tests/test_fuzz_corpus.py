"""The fuzzers' regression tests: every seed and every saved finding (tests/fuzz/seeds/, tests/fuzz/corpus/)
replayed through the same oracles as scripts/fuzz.py (tests/support/fuzz_targets.py; no atheris needed),
what the inputs the fuzzers found show a user, and a short bounded run of each fuzz target so the
harness itself is exercised."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from support import fuzz_targets as ft
from support.tls_bytes import client_hello, client_hello_body, handshake_message, handshake_records, sni_ext

REPO = Path(__file__).resolve().parents[1]

INPUTS = sorted(
    (target, path)
    for target in ft.TARGETS
    for d in (ft.SEEDS_DIR / target, ft.CORPUS_DIR / target)
    if d.is_dir()
    for path in d.iterdir()
    if path.is_file()
)


@pytest.fixture(scope="module")
def targets():
    return {name: ft.make_target(name) for name in ft.TARGETS}


@pytest.mark.parametrize(("target", "path"), INPUTS, ids=[f"{t}/{p.parent.parent.name}/{p.name}" for t, p in INPUTS])
def test_input_gives_no_crash_and_no_fail_open(targets, target, path):
    assert targets[target].one(path.read_bytes()) == []


def test_the_corpus_is_there_and_small():
    for target in ft.TARGETS:
        assert len(list((ft.SEEDS_DIR / target).iterdir())) >= 20, target
    files = [p for p in ft.FUZZ_DIR.rglob("*") if p.is_file()]
    assert len(files) < 200
    assert sum(p.stat().st_size for p in files) < 400_000


# ----------------------------------------------------------------------------------------------
# The oracles can fail: they see a fail-open when one is put in front of them.


def test_the_clienthello_oracle_sees_a_blocked_name_let_through(targets):
    hello = client_hello("API.Binance.COM")
    [finding] = [f for f in targets["clienthello"].judge(ft.SERVERS[1], hello, "allow") if "SNI" in f.detail]
    assert finding.kind == "fail-open" and "binance.com" in finding.detail
    assert targets["clienthello"].judge(ft.SERVERS[1], client_hello("example.org"), "allow") == []


def test_the_clienthello_oracle_sees_an_unreadable_server_name_let_through(targets):
    data = handshake_records(handshake_message(client_hello_body([sni_ext([b"xn--a.binance.com"])])))
    kinds = {f.kind for f in targets["clienthello"].judge(ft.SERVERS[1], data, "allow")}
    assert kinds == {"fail-open"}


@pytest.mark.parametrize(("text", "address"), [
    ("0x7f000005:80", "127.0.0.5"), ("2130706437", "127.0.0.5"), ("0177.0.0.05", "127.0.0.5"),
    ("[::ffff:203.0.113.9]:443", "203.0.113.9"), ("203.28935", "203.0.113.7"),
])
def test_the_host_reference_reads_legacy_and_mapped_addresses(text, address):
    _, addrs = ft.reference_host(text)
    assert address in {str(a.ipv4_mapped or a) if a.version == 6 else str(a) for a in addrs}
    assert any(ft.blocked_address(a) for a in addrs)


@pytest.mark.parametrize("text", ["BINANCE.com.", "api.binance.com", "ｂｉｎａｎｃｅ.com", "binance。com", "okx.com..",
                                  " binance.com\t"])
def test_the_host_reference_sees_spellings_of_a_blocked_name(text):
    assert ft.reference_blocked_name(text)


@pytest.mark.parametrize("text", ["notbinance.com", "binance.com.example.org", "example.org", "binance"])
def test_the_host_reference_does_not_see_lookalikes(text):
    assert ft.reference_blocked_name(text) is None


def test_the_rules_oracle_sees_a_listed_domain_that_is_not_blocked(targets, tmp_path):
    from geoblock.core.ruleset import Ruleset

    (tmp_path / "r.yaml").write_text("rules:\n  - id: a\n    action: log\n    domains: [binance.com]\n")
    text = b"rules:\n  - id: a\n    action: block\n    domains: [binance.com]\n"
    findings = targets["rules"].judge_loaded(Ruleset.load(str(tmp_path / "r.yaml")), text, False)
    assert {f.kind for f in findings} == {"fail-open"} and "binance.com" in findings[0].detail


def test_the_lists_oracle_sees_a_listed_name_that_is_not_blocked(targets, tmp_path):
    from geoblock.core.ruleset import Ruleset

    (tmp_path / "r.yaml").write_text("rules:\n  - id: a\n    action: log\n    domains: [binance.com]\n")
    findings = targets["lists"].judge_loaded(Ruleset.load(str(tmp_path / "r.yaml")), b"0.0.0.0 binance.com\n")
    assert [f.kind for f in findings] == ["fail-open", "fail-open"] and "binance.com" in findings[0].detail
    assert ft.reference_list_names("||okx.com^\nbybit.com  Bybit # c\n0.0.0.0 localhost kucoin.com\n") == [
        "okx.com", "bybit.com", "kucoin.com"]


# ----------------------------------------------------------------------------------------------
# What the inputs the fuzzers found show a user


def test_a_rule_file_with_a_control_character_is_refused_with_its_line(tmp_path):
    """Found by the rules fuzzer: the error named the file and a character offset, but no line."""
    from geoblock.core.rules import RuleError
    from geoblock.core.ruleset import Ruleset

    path = tmp_path / "list.yaml"
    path.write_bytes("# Börsen\nrules:\n  - id: a\n    action: blo\x15ck\n".encode())
    with pytest.raises(RuleError) as info:
        Ruleset.load(str(path))
    assert str(info.value) == f"{path}:4: bad YAML: unacceptable character #x0015: control characters are not allowed"


@pytest.mark.parametrize("exts", [
    [sni_ext([b"binance.com", b"ok.test"])],  # two names in one extension
    [sni_ext([b"ok.test"]), sni_ext([b"binance.com"])],  # two server_name extensions
    [sni_ext([b"xn--a.binance.com"])],  # not valid punycode: OpenSSL servers still read it
    [sni_ext([b"a" * 64 + b".binance.com"])],  # a 64-character label: the same
    [sni_ext([b"binance.com\x00"])],
    [sni_ext([])],
], ids=["two-names", "two-extensions", "bad-punycode", "long-label", "nul", "empty-list"])
def test_a_server_name_geoblock_cannot_judge_gets_a_tls_alert(targets, exts):
    """A ClientHello whose server_name mitmproxy does not read as one valid name is refused (on_error),
    not judged as a ClientHello without SNI (the server is offshore and no rule covers it by address)."""
    data = handshake_records(handshake_message(client_hello_body(exts)))
    outcome, layer, _ = targets["clienthello"].run_hook(ft.SERVERS[1], data)
    assert outcome == "block"
    from mitmproxy.proxy import events

    sent = list(layer.handle_event(events.Start()))
    assert sent[0].data == bytes.fromhex("15030300020231")  # TLS fatal alert access_denied


def test_a_malformed_client_hello_mitmproxy_misreads_gets_a_tls_alert(targets):
    """Found by the clienthello fuzzer: with an odd cipher-suite length (3 bytes), mitmproxy's lenient
    parser reads the server_name extension as another one and sees no SNI, while the declared lengths
    put binance.com there. Such a ClientHello was judged as one without SNI, and allowed."""
    from mitmproxy.proxy.layers.tls import parse_client_hello

    data = handshake_records(handshake_message(client_hello_body([sni_ext([b"binance.com"])], ciphers=b"\x13\x01\x00")))
    assert parse_client_hello(data).sni is None  # what mitmproxy reads
    assert ft.reference_hello(data).names == ((0, b"binance.com"),)  # what the lengths say
    outcome, layer, errors = targets["clienthello"].run_hook(ft.SERVERS[1], data)
    assert outcome == "block" and all(cause.startswith("MalformedClientHello ") for cause in errors)
    well_formed = handshake_records(handshake_message(client_hello_body([sni_ext([b"example.org"])])))
    assert targets["clienthello"].run_hook(ft.SERVERS[1], well_formed)[0] == "allow"


# ----------------------------------------------------------------------------------------------
# The harness: a short bounded run of each target


def test_a_bounded_fuzz_run_of_each_target_reports_its_cases_and_no_findings(tmp_path):
    importlib.import_module("atheris")  # in the test extras: missing, this test errors (no skip)

    runs = 3000
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "fuzz.py"), "all", "--runs", str(runs), "--seed", "1",
         "--corpus-dir", str(tmp_path / "findings"), "--json", str(out)],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    results = {r["target"]: r for r in json.loads(out.read_text())}
    assert sorted(results) == sorted(ft.TARGETS)
    for name, r in results.items():
        assert (r["cases"], r["crashes"], r["fail_opens"]) == (runs, 0, 0), name
        assert r["exec_per_s"] > 0 and r["cov"] >= r["cov_inited"] > 0, name
        assert f"{name:<12} {runs:>8}" in proc.stdout
    assert "no crashes, no fail-opens" in proc.stdout
    assert not (tmp_path / "findings").exists() or not any((tmp_path / "findings").rglob("*-*"))
