"""What if: `geoblock-replay` re-judges a real proxy's decision log under another ruleset.

A real mitmdump with geoblock (support.proc.with_names: names reach loopback test servers placed by the
test GeoIP databases: 127.0.0.1 = CN home, 127.0.0.2 = SG offshore) is driven by curl under OLD rules:
`exchanges` blocks binance.com and okx.com, `review` logs offshore servers whose names hold "coin". Its
decision log is then replayed by the `geoblock-replay` command line under NEW rules (okx.com removed,
listed-later.test added). The expected changes are written here by hand, from the traffic sent.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from geoblock.core.ruleset import Ruleset
from geoblock.engine import Engine
from geoblock.tools import whatif
from support.decisions import read, records
from support.geodb import PLACES, write_country_db
from support.proc import curl, geoblock_options, with_names
from support.servers import TestServer

pytestmark = pytest.mark.e2e

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


def write_rules(directory: Path, listed: list[str], extra: str = "") -> Path:
    """A rules directory: the shipped policy, a block rule `exchanges` taking its names from the list file
    lists/exchanges.txt (`listed`: "name Platform" lines), a log rule `review` for offshore servers whose
    names hold "coin", and `extra` (more YAML rules, indented as list items)."""
    (directory / "lists").mkdir(parents=True)
    shutil.copy(REPO / "rules" / "policy.yaml", directory / "policy.yaml")
    (directory / "lists" / "exchanges.txt").write_text("# format: plain\n" + "".join(f"{line}\n" for line in listed),
                                                     encoding="utf-8")
    (directory / "rules.yaml").write_text(
        "rules:\n"
        "  - id: exchanges\n    action: block\n    domains_from: [lists/exchanges.txt]\n"
        "  - id: review\n    action: log\n    offshore: true\n    patterns: ['*coin*']\n" + extra,
        encoding="utf-8")
    return directory


OLD_LIST = ["binance.com  Binance", "okx.com  OKX"]
NEW_LIST = ["binance.com  Binance", "listed-later.test  Later Exchange"]  # okx.com removed, one name added


@dataclass
class Recorded:
    log: Path
    old: Path
    new: Path
    directory: Path


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, geo_dir, pki) -> Recorded:
    """The decision log of a real proxy run under OLD rules, and the OLD and NEW rules directories."""
    d = tmp_path_factory.mktemp("whatif")
    old = write_rules(d / "old", OLD_LIST)
    new = write_rules(d / "new", NEW_LIST)
    log = d / "decisions.jsonl"
    home, offshore, home_tls = TestServer("127.0.0.1"), TestServer("127.0.0.2"), TestServer("127.0.0.1", pki)
    names = {
        "binance.com:443": (home_tls.host, home_tls.port),
        "www.okx.com:80": (home.host, home.port),
        "listed-later.test:80": (home.host, home.port),
        "listed-later.test:443": (home_tls.host, home_tls.port),
        "other.test:80": (home.host, home.port),
        "coin-offshore.test:80": (offshore.host, offshore.port),
    }
    try:
        with with_names(d / "conf", names, geoblock_options(old, geo_dir, log)) as proxy:
            assert "CONNECT tunnel failed, response 451" in curl(proxy, "https://binance.com/").stderr
            assert " 451 " in curl(proxy, "http://www.okx.com/").stdout.splitlines()[0]
            for url in ("http://listed-later.test/", "https://listed-later.test/", "http://other.test/",
                        "http://coin-offshore.test/"):
                done = curl(proxy, url, "-k")
                assert done.returncode == 0 and done.stdout.splitlines()[0].split()[1] == "200", (url, done)
            seen = {(r["stage"], r["name"], r["action"], r["rule"], r["platform"]) for r in records(log)}
    finally:
        for server in (home, offshore, home_tls):
            server.close()
    # What the proxy decided, as this test means it: the replay below starts from exactly this log.
    assert seen == {
        ("connect", "binance.com", "block", "exchanges", "Binance"),
        ("http", "www.okx.com", "block", "exchanges", "OKX"),
        ("http", "listed-later.test", "allow", None, None),
        ("connect", "listed-later.test", "allow", None, None),
        ("tls", "listed-later.test", "allow", None, None),
        ("http", "other.test", "allow", None, None),
        ("http", "coin-offshore.test", "log", "review", None),
    }
    return Recorded(log, old, new, d)


def replay(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m geoblock.tools.replay ARGS` (what `geoblock-replay` runs), `stdin` fed to it."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "addons"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "geoblock.tools.replay", *args], input=stdin, capture_output=True,
                          env=env, cwd=REPO, timeout=60, check=False, text=stdin is None)


def json_lines(done: subprocess.CompletedProcess) -> tuple[list[dict], dict]:
    out = done.stdout if isinstance(done.stdout, str) else done.stdout.decode()
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines and lines[-1].get("summary") is True, out
    return lines[:-1], lines[-1]


def changed(changes: list[dict]) -> set[tuple[str, str, str, str | None, str | None]]:
    """(kind, name, stage, rule before, rule after) of each changed record."""
    return {(c["kind"], c["name"], c["stage"], c["before"]["rule"], c["after"]["rule"]) for c in changes}


EXPECTED_CHANGES = {
    ("newly-blocked", "listed-later.test", "http", None, "exchanges"),
    ("newly-blocked", "listed-later.test", "connect", None, "exchanges"),
    ("newly-blocked", "listed-later.test", "tls", None, "exchanges"),
    ("newly-allowed", "www.okx.com", "http", "exchanges", None),
}


# --------------------------------------------------------------------------------------------
# A list change against the recorded traffic


def test_a_list_change_reports_exactly_the_newly_blocked_and_allowed_names(recorded):
    done = replay(str(recorded.log), "--rules", str(recorded.new), "--json")
    assert done.returncode == 3, done.stderr  # changes: a CI job gating the list change fails here
    changes, summary = json_lines(done)
    assert changed(changes) == EXPECTED_CHANGES
    assert all(c["after"]["action"] == "block" for c in changes if c["kind"] == "newly-blocked")
    assert all(c["after"]["action"] == "allow" and c["file"] == str(recorded.log) for c in changes
               if c["kind"] == "newly-allowed")
    lines = recorded.log.read_text(encoding="utf-8").splitlines()
    for c in changes:  # each change names its record by file and line
        assert json.loads(lines[c["line"] - 1])["name"] == c["name"]
    assert summary["records"] == 7 and summary["unchanged"] == 3 and summary["not_rebuilt"] == []
    assert summary["changes"] == {"newly_blocked": 3, "newly_allowed": 1, "now_logged": 0, "no_longer_logged": 0,
                                  "rule_changed": 0}
    assert [(g["kind"], g["rule"], g["platform"], g["records"], g["names"], g["clients"], g["examples"])
            for g in summary["groups"]] == [
        ("newly-blocked", "exchanges", "Later Exchange", 3, 1, 1, ["listed-later.test"]),
        ("newly-allowed", "exchanges", "OKX", 1, 1, 1, ["www.okx.com"]),
    ]
    new_list = recorded.new / "lists" / "exchanges.txt"
    assert {(c["after"]["platform"], c["after"]["entry"]) for c in changes if c["kind"] == "newly-blocked"} == {
        ("Later Exchange", f"{new_list}:3")}  # the list file's line that now blocks it
    assert {(c["before"]["platform"], c["before"]["entry"]) for c in changes if c["kind"] == "newly-allowed"} == {
        ("OKX", "exchanges.txt")}  # the recorded list
    assert summary["groups"][0]["before"] == {"allow (no rule)": 3}
    assert summary["groups"][1]["now"] == {"allow (no rule)": 1}
    assert summary["rules"] == Ruleset.load(str(recorded.new)).version and summary["exit"] == 3


def test_the_text_report_groups_the_changes_by_rule_and_platform(recorded):
    done = replay(str(recorded.log), "--rules", str(recorded.new))
    assert done.returncode == 3, done.stderr
    out = done.stdout.splitlines()
    assert out[0].startswith(f"what if: ruleset {Ruleset.load(str(recorded.new)).version} ({recorded.new}) "
                             "against the recorded verdicts")
    assert out[1] == ("7 records re-judged: 3 unchanged, 3 newly blocked, 1 newly allowed, 0 now logged, "
                      "0 no longer logged, 0 rule changed")
    assert out[2] == "newly blocked: 3 records, 1 name, 1 client"
    assert out[3] == ("  rule exchanges, platform Later Exchange: 3 records, 1 name, 1 client; before: allow (no rule) "
                      "3; e.g. listed-later.test")
    assert out[4] == "newly allowed (block before, the flow would pass): 1 record, 1 name, 1 client"
    assert out[5] == ("  rule exchanges, platform OKX: 1 record, 1 name, 1 client; now: allow (no rule) 1; "
                      "e.g. www.okx.com")
    assert len(out) == 6


def test_a_baseline_compares_two_rulesets_on_the_same_facts(recorded):
    done = replay(str(recorded.log), "--rules", str(recorded.new), "--baseline", str(recorded.old), "--json")
    assert done.returncode == 3, done.stderr
    changes, summary = json_lines(done)
    assert changed(changes) == EXPECTED_CHANGES
    assert summary["baseline"] == Ruleset.load(str(recorded.old)).version
    # the other way round: the same records, the kinds swapped
    done = replay(str(recorded.log), "--rules", str(recorded.old), "--baseline", str(recorded.new), "--json")
    swapped = {("newly-allowed" if k == "newly-blocked" else "newly-blocked", n, s, after, before)
               for k, n, s, before, after in EXPECTED_CHANGES}
    assert done.returncode == 3 and changed(json_lines(done)[0]) == swapped
    done = replay(str(recorded.log), "--rules", str(recorded.new), "--baseline", str(recorded.new))
    assert done.returncode == 0 and "0 newly blocked, 0 newly allowed" in done.stdout


# --------------------------------------------------------------------------------------------
# The same rules: nothing changes, and the proxy, the replay and explain agree


def test_the_same_rules_change_nothing(recorded, geo_dir):
    done = replay(str(recorded.log), "--rules", str(recorded.old))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[1] == ("7 records re-judged: 7 unchanged, 0 newly blocked, 0 newly allowed, "
                                           "0 now logged, 0 no longer logged, 0 rule changed")
    # placed again in the same databases, the servers are where they were
    done = replay(str(recorded.log), "--rules", str(recorded.old), "--relocate",
                  "--country-db", str(geo_dir / "GeoLite2-Country.mmdb"), "--asn-db", str(geo_dir / "GeoLite2-ASN.mmdb"))
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_proxy_the_replay_and_explain_agree_on_every_record(recorded, geo_dir, capsys):
    """Each record of the proxy's log, rebuilt and judged again under the rules it was judged with: the
    same action, rule and reason; and `geoblock explain` on the record's names, server and client says
    the same."""
    from geoblock.tools import cli as geoblock_cli

    engine = Engine(Ruleset.load(str(recorded.old)), None)
    proxy = read(recorded.log)
    assert len(proxy) == 7
    for number, record in enumerate(proxy, 1):
        item = whatif.rebuild(f"{recorded.log}:{number}", record)
        facts, verdict = whatif.rejudge(item, engine)
        assert (verdict.action, verdict.rule, verdict.reason, verdict.name, verdict.platform, verdict.list) == (
            record["action"], record["rule"], record["reason"], record["name"], record["platform"],
            record.get("list")), record
        assert engine.record_of(facts, verdict, True)["server_ip"] == record["server_ip"]
        argv = ["explain", *(facts.names or [record["server_ip"]]), "--stage", record["stage"],
                "--rules", str(recorded.old), "--country-db", str(geo_dir / "GeoLite2-Country.mmdb"),
                "--asn-db", str(geo_dir / "GeoLite2-ASN.mmdb"), "--client", record["client"], "--json"]
        if record["server_ip"]:
            argv += ["--server", record["server_ip"]]
        assert geoblock_cli.main(argv) == 0
        explained = json.loads(capsys.readouterr().out)
        for key in ("action", "rule", "reason", "country", "asn"):
            assert explained[key] == record[key], (key, explained, record)
    engine.close()


# --------------------------------------------------------------------------------------------
# Where the server is: as recorded, or placed again


def test_relocate_places_the_servers_again(recorded, tmp_path):
    """A database in which 127.0.0.2 has moved home (CN): coin-offshore.test is no longer offshore, so the
    review rule no longer logs it; without --relocate the recorded place (SG) is judged."""
    moved = write_country_db(tmp_path / "moved.mmdb", {**PLACES, "127.0.0.2/32": ("CN", 64501)})
    done = replay(str(recorded.log), "--rules", str(recorded.old), "--relocate", "--country-db", str(moved),
                  "--asn-db", "", "--json")
    assert done.returncode == 3, done.stderr
    changes, _ = json_lines(done)
    assert changed(changes) == {("no-longer-logged", "coin-offshore.test", "http", "review", None)}
    assert changes[0]["country"] == "CN"
    assert replay(str(recorded.log), "--rules", str(recorded.old), "--country-db", str(moved)).returncode == 0
    done = replay(str(recorded.log), "--rules", str(recorded.old), "--relocate", "--country-db", "", "--asn-db", "")
    assert done.returncode == 2 and "--relocate needs a GeoIP database" in done.stderr


def test_a_rule_on_a_location_the_record_does_not_hold_is_said(recorded, tmp_path):
    """other.test was allowed by no rule, so nothing resolved it: the record has no server address. A new
    rule that blocks it when offshore needs the address: judged by unknown_country (log), and said."""
    rules = write_rules(tmp_path / "rules", OLD_LIST,
                        "  - id: offshore-other\n    action: block\n    offshore: true\n    domains: [other.test]\n")
    done = replay(str(recorded.log), "--rules", str(rules), "--json")
    assert done.returncode == 3, done.stderr
    changes, summary = json_lines(done)
    assert changed(changes) == {("now-logged", "other.test", "http", None, "offshore-other")}
    assert summary["without_address"] == 1
    text = replay(str(recorded.log), "--rules", str(rules)).stdout
    assert "note: 1 record met a rule that needs the server's location, which the record does not hold" in text


# --------------------------------------------------------------------------------------------
# Input: detection, gzip, standard input, bad lines


def test_gzip_and_standard_input_and_detection_by_content(recorded, tmp_path):
    expected = replay(str(recorded.log), "--rules", str(recorded.new), "--json")
    changes, _ = json_lines(expected)
    packed = tmp_path / "decisions.jsonl.1.gz"
    packed.write_bytes(gzip.compress(recorded.log.read_bytes()))
    disguised = tmp_path / "capture.mitm"  # named like a flow file, holding a decision log
    shutil.copy(recorded.log, disguised)
    for args, stdin in (([str(packed)], None), ([str(disguised)], None), (["-"], recorded.log.read_bytes()),
                        (["-"], packed.read_bytes())):
        done = replay(*args, "--rules", str(recorded.new), "--json", stdin=stdin)
        assert done.returncode == 3, (args, done.stderr)
        assert changed(json_lines(done)[0]) == changed(changes), args
    # and a flow file named like a log is still replayed as flows
    flows = tmp_path / "flows.jsonl"
    shutil.copy(TESTS / "flows" / "http.mitm", flows)
    done = replay(str(flows), "--rules", str(recorded.old))
    assert done.returncode == 0 and done.stdout.startswith("#0 "), done.stdout + done.stderr
    done = replay(str(flows), str(recorded.log), "--rules", str(recorded.old))
    assert done.returncode == 2 and "cannot be mixed" in done.stderr and str(flows) in done.stderr


def test_lines_that_cannot_be_rebuilt_are_named_by_file_and_line(recorded, tmp_path):
    good = recorded.log.read_text(encoding="utf-8").splitlines()
    record = json.loads(good[0])
    bad = tmp_path / "decisions.jsonl"
    bad.write_text("\n".join([
        good[0],
        '{"stage": "tls", "action": "allow"',  # 2: cut short
        "[1, 2]",  # 3: JSON, not a record
        json.dumps({**record, "server_port": 70000}),  # 4
        json.dumps({**record, "stage": "smtp"}),  # 5
        json.dumps({**record, "client": "10.0.0.999"}),  # 6
        "",  # 7
        json.dumps({**record, "country": "XX"}),  # 8
        *good[1:],
    ]) + "\n", encoding="utf-8")
    done = replay(str(bad), "--rules", str(recorded.old))
    assert done.returncode == 2, done.stdout + done.stderr
    out = done.stdout
    assert "7 records re-judged: 7 unchanged" in out and "7 lines not rebuilt" in out
    for where, why in ((2, "not JSON"), (3, "not a JSON object but list"), (4, "field 'server_port': 70000"),
                       (5, "field 'stage': 'smtp', expected one of"), (6, "field 'client'"), (7, "empty line"),
                       (8, "field 'country': 'XX'")):
        assert f"  {bad}:{where}: {why}" in out, (where, out)
    assert "Traceback" not in done.stderr
    done = replay(str(bad), "--rules", str(recorded.old), "--max-bad", "7", "--json")
    assert done.returncode == 0, done.stderr  # tolerated, and still every one named
    _, summary = json_lines(done)
    assert [b["where"] for b in summary["not_rebuilt"]] == [f"{bad}:{n}" for n in range(2, 9)]
    assert replay(str(bad), "--rules", str(recorded.old), "--max-bad", "6").returncode == 2


def test_unusable_input_exits_2(recorded, tmp_path):
    missing = tmp_path / "nope.jsonl"
    done = replay(str(missing), "--rules", str(recorded.new))
    assert done.returncode == 2 and str(missing) in done.stderr and "Traceback" not in done.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("rules: [\n")
    done = replay(str(recorded.log), "--rules", str(broken))
    assert done.returncode == 2 and str(broken) in done.stderr
    done = replay(str(recorded.log), "--rules", str(recorded.new), "--baseline", str(broken))
    assert done.returncode == 2 and str(broken) in done.stderr
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(gzip.compress(recorded.log.read_bytes())[:-12])
    done = replay(str(cut), "--rules", str(recorded.new))
    assert done.returncode == 2 and str(cut) in done.stderr and "Traceback" not in done.stderr


# --------------------------------------------------------------------------------------------
# Rebuilding facts the proxy judged (records made by hand: fields the test traffic above does not show)


def test_rebuild_reads_the_request_target_from_a_mismatch_and_the_ipv6_form():
    item = whatif.rebuild("log:1", {
        "stage": "http", "action": "log", "rule": "policy:name-mismatch", "reason": "r", "client": "::ffff:10.0.0.7",
        "host": "Allowed.Test:8080", "sni": None, "name": "allowed.test",
        "mismatch": "request target binance.com ≠ Host allowed.test",
        "server_ip": "127.0.0.5", "server_ipv6": "64:ff9b::7f00:5", "server_ipv6_form": "nat64",
    })
    assert item.facts.names == ("binance.com", "allowed.test")  # the request target first, as the proxy orders
    assert str(item.facts.server_ip) == "127.0.0.5" and str(item.facts.server_ip.ipv6) == "64:ff9b::7f00:5"
    with pytest.raises(whatif.RecordError, match="'server_ipv6': '64:ff9b::7f00:6' does not carry server_ip"):
        whatif.rebuild("log:2", {"stage": "tls", "action": "allow", "reason": "r", "server_ip": "127.0.0.5",
                                 "server_ipv6": "64:ff9b::7f00:6"})


def test_records_judged_without_rules_follow_the_new_policy(rs):
    engine = Engine(rs, None)
    invalid = whatif.rebuild("log:1", {"stage": "tls", "action": "block", "rule": None, "sni": "bad..name",
                                       "reason": "SNI invalid host 'bad..name': empty label; on_error is block",
                                       "error": "invalid-input"})
    _, verdict = whatif.rejudge(invalid, engine)
    assert (verdict.action, verdict.rule) == (rs.policy.on_error, None)
    canary = whatif.rebuild("log:2", {"stage": "dns", "action": "allow", "rule": None, "reason": "r",
                                      "host": "use-application-dns.net", "name": "use-application-dns.net"})
    assert whatif.rejudge(canary, engine)[1].rule == ("policy:doh-canary" if rs.policy.doh_canary == "nxdomain"
                                                      else None)
    from geoblock.mitm import dnsanswers

    assert whatif.DOH_CANARY == dnsanswers.DOH_CANARY


def test_the_same_action_by_another_rule_is_reported_but_exits_0(recorded, tmp_path):
    renamed = tmp_path / "renamed"
    write_rules(renamed, OLD_LIST)
    text = (renamed / "rules.yaml").read_text(encoding="utf-8").replace("id: exchanges", "id: exchanges-2026")
    (renamed / "rules.yaml").write_text(text, encoding="utf-8")
    done = replay(str(recorded.log), "--rules", str(renamed), "--json")
    assert done.returncode == 0, done.stderr  # what happens to every flow is the same
    changes, summary = json_lines(done)
    assert changed(changes) == {("rule-changed", "binance.com", "connect", "exchanges", "exchanges-2026"),
                                ("rule-changed", "www.okx.com", "http", "exchanges", "exchanges-2026")}
    assert summary["changes"]["rule_changed"] == 2 and summary["exit"] == 0
    # an entry that moves to another platform: counted per platform, the same block
    moved = write_rules(tmp_path / "moved", ["binance.com  Binance", "okx.com  OKX Global"])
    done = replay(str(recorded.log), "--rules", str(moved), "--json")
    assert done.returncode == 0, done.stderr
    changes, summary = json_lines(done)
    assert [(c["kind"], c["name"], c["before"]["platform"], c["after"]["platform"]) for c in changes] == [
        ("rule-changed", "www.okx.com", "OKX", "OKX Global")]


def test_kinds_of_change():
    def o(action: str, rule: str | None = None, platform: str | None = None) -> whatif.Outcome:
        return whatif.Outcome(action, rule, platform, "r")  # type: ignore[arg-type]

    assert whatif.kind_of(o("allow"), o("block", "x")) == "newly-blocked"
    assert whatif.kind_of(o("log", "r"), o("block", "x")) == "newly-blocked"
    assert whatif.kind_of(o("block", "x"), o("allow")) == "newly-allowed"
    assert whatif.kind_of(o("block", "x"), o("log", "r")) == "newly-allowed"  # a logged flow passes
    assert whatif.kind_of(o("allow"), o("log", "r")) == "now-logged"
    assert whatif.kind_of(o("log", "r"), o("allow")) == "no-longer-logged"
    assert whatif.kind_of(o("block", "x", "Binance"), o("block", "x", "Binance")) is None
    assert whatif.kind_of(o("block", "x", "Binance"), o("block", "x", "OKX")) == "rule-changed"
    # a record written before records named platforms: no platform to compare with
    assert whatif.kind_of(o("block", "x"), o("block", "x", "OKX"), platforms=False) is None


def test_records_of_several_rule_versions_are_said(recorded, tmp_path):
    lines = recorded.log.read_text(encoding="utf-8").splitlines()
    older = [json.dumps({**json.loads(line), "ruleset": "0123456789ab"}) for line in lines[:2]]
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("\n".join(older + lines[2:]) + "\n", encoding="utf-8")
    done = replay(str(mixed), "--rules", str(recorded.old))
    assert done.returncode == 0, done.stderr
    assert "the records were judged under 2 ruleset versions" in done.stderr and "0123456789ab (2)" in done.stderr
    assert "--baseline" in done.stderr
    done = replay(str(mixed), "--rules", str(recorded.old), "--baseline", str(recorded.old))
    assert done.returncode == 0 and "ruleset versions" not in done.stderr


ROUND_TRIP = [  # facts as the proxy's hooks build them (stage, names, host, sni, server, client, mismatch, extra)
    ("tls", ("binance.com",), None, "binance.com", "127.0.0.2", "127.0.0.1", None, {}),
    ("tls", ("allowed.test", "binance.com"), "binance.com", "allowed.test", None, "127.0.0.1",
     "SNI allowed.test ≠ CONNECT target binance.com", {}),
    ("http", ("a.wild.test", "allowed.test"), "allowed.test", None, "127.0.0.3", "127.0.0.1",
     "request target a.wild.test ≠ Host allowed.test", {}),
    ("http", ("allowed.test", "pay.binance.com"), "allowed.test", "pay.binance.com", "127.0.0.2", "127.0.0.1",
     "Host allowed.test ≠ SNI pay.binance.com", {}),
    ("stream", ("binance.com",), "binance.com", None, "127.0.0.2", "127.0.0.1", None, {}),
    ("dns", ("alias.test", "www.binance.com"), "alias.test", None, None, "127.0.0.1", None,
     {"chain": ["alias.test", "www.binance.com"]}),
    ("dns", ("offshore-only.test",), "offshore-only.test", None, None, "127.0.0.1", None, {}),
    ("ip", (), None, None, "127.0.0.5", "127.0.0.1", None, {}),
    ("ip", (), None, None, "127.0.0.2", "127.0.0.1", None, {}),
    ("connect", ("offshore-only.test",), "offshore-only.test", None, "64:ff9b::7f00:5", "127.0.0.1", None, {}),
    ("http", ("offshore-only.test",), "offshore-only.test", None, "127.0.0.21", "2001:db8::7", None, {}),
    ("tls", ("allowed.test",), None, "allowed.test", "127.0.0.3", "127.0.0.9", None, {}),
    ("http", ("coinswap.example",), "coinswap.example", None, "127.0.0.2", "127.0.0.1", None, {}),
]


@pytest.mark.parametrize("case", ROUND_TRIP, ids=lambda c: f"{c[0]}-{'+'.join(c[1]) or c[4]}")
def test_a_record_rebuilds_the_facts_the_proxy_judged(case, rs, geo):
    """Facts of every stage judged by the engine with the test databases, written as the record the proxy
    writes, then rebuilt and judged again: the same names, addresses and place, the same verdict for the
    same reason; with the recorded place, and placed again (--relocate)."""
    from geoblock.core.model import Facts
    from geoblock.core.names import as_written, normalize_ip

    stage, names, host, sni, server, client, mismatch, extra = case
    proxy = Engine(rs, geo)
    facts = Facts(stage, names=names, host=host, sni=sni, mismatch=mismatch, client_port=50000, server_port=443,
                  server_ip=normalize_ip(server) if server else None, client_ip=as_written(normalize_ip(client)))
    verdict = proxy.judge(facts)
    record = json.loads(json.dumps(proxy.record_of(facts, verdict, True, extra=extra or None)))
    item = whatif.rebuild("log:1", record)
    assert (item.facts.names, item.facts.server_ip, item.facts.client_ip, item.facts.country, item.facts.asn) == (
        facts.names, facts.server_ip, facts.client_ip, facts.country, facts.asn)
    for engine, relocate in ((Engine(rs, None), False), (proxy, True)):
        again, replayed = whatif.rejudge(item, engine, relocate)
        assert replayed == verdict, (relocate, replayed, verdict)
        builds = {"ts": record["ts"], "geoip_build": record["geoip_build"], "asn_build": record["asn_build"]}
        assert engine.record_of(again, replayed, True, extra=extra or None) | builds == record
