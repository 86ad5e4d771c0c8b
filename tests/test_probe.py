"""`geoblock probe` end to end: the real CLI in a subprocess against a real geoblock.

- Explicit proxy on loopback (no root): a mitmdump with geoblock (the shipped rules + tests/rules/extra.yaml),
  test servers on 127.0.0.1 (HTTPS with the test PKI, HTTP), a DoH and a DoT resolver on 127.0.0.3; the
  probe tries listed names (binance.com, bücher.example) and allowed ones (allowed.test, www.allowed.test)
  with every technique, and the JSON lines, the exit status and the digest are checked.
- Bad input: a missing list, a bad line in a list, a bad --proxy: exit 2 and one line.
- The transparent gateway in network namespaces (root): the probe runs in the client namespace; a weakened
  gateway (the listed server's address excluded) shows the leak first and exits 1.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from support import netns as ns
from support.netns import (
    GW_IN4,
    GW_IN_IFACE,
    HOME4,
    OFFSHORE4,
    NsDnsStub,
    NsMitmdump,
    NsServer,
    UdpEcho,
    gateway_sh,
    gateway_topology,
    unit_capabilities,
    unit_command,
)
from support.proc import Mitmdump, free_port, with_names
from support.resolvers import DohServer, DotServer
from support.sandbox import seccomp_prefix
from support.servers import TestServer
from support.waiting import wait_for
from test_gateway import _unavailable, write_test_data
from test_gateway import proxy as gateway_proxy

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
GEOBLOCK = str(Path(sys.executable).with_name("geoblock"))
TECHNIQUES = ["dns", "tls-sni", "http-host", "connect-name", "connect-address", "http-blank-line", "http-split",
              "tls-split-records", "sni-case", "sni-trailing-dot", "sni-idna", "h2c-upgrade", "ipv4-embedded",
              "quic", "ech", "esni", "doh", "dot"]
LISTED = ["binance.com", "bücher.example"]
ALLOWED = ["allowed.test", "www.allowed.test"]
FINDINGS = {"enforced", "leak", "inconclusive", "reached", "overblocked", "not-applicable", "failed"}


def probe(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The real `geoblock probe` command in a subprocess."""
    return subprocess.run([GEOBLOCK, "probe", *args], capture_output=True, text=True, timeout=timeout, cwd=REPO)


def read_lines(path: Path) -> tuple[dict, list[dict], dict]:
    """(run line, try lines, end line) of a probe's JSON lines, checked against docs/probe.md's shape."""
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    run, tries, end = lines[0], lines[1:-1], lines[-1]
    assert run["record"] == "run" and end["record"] == "end"
    for key in ("run_id", "probe_version", "started", "via", "proxy", "control", "names_source", "names_total",
                "sample", "seed", "techniques", "options", "observer_hostname", "gateway_status",
                "gateway_status_error"):
        assert key in run, key
    assert run["started"].endswith("Z")
    for t in tries:
        assert t["record"] == "try" and t["run_id"] == run["run_id"]
        assert t["outcome"] in ("blocked", "reached", "failed", "not-applicable"), t
        assert t["finding"] in FINDINGS and t["path"] in ("gateway", "control"), t
        for key in ("ts", "name", "expect", "technique", "how", "rule", "http_status", "tls_alert", "address",
                    "sent_name", "detail", "duration_s", "control"):
            assert key in t, (key, t)
        assert "\n" not in t["detail"]
    assert end["run_id"] == run["run_id"] and end["tries"] == len(tries)
    gateway = [t for t in tries if t["path"] == "gateway"]
    assert end["counts"] == dict(Counter(t["finding"] for t in gateway))
    assert end["leaks"] == sum(t["finding"] == "leak" for t in gateway)
    return run, tries, end


def by_name(tries: list[dict]) -> dict[tuple[str, str], dict]:
    return {(t["name"], t["technique"]): t for t in tries if t["path"] == "gateway"}


def table(tries: list[dict]) -> str:
    """The tries as lines a person reads (for assertion messages)."""
    return "\n".join(f"{t['path']:8} {t['name']:20} {t['technique']:18} {t['outcome']:15} {t['how']:15} "
                     f"{t['finding']:15} {t['detail']}" for t in tries)


def check_digest(path: Path) -> None:
    side = path.with_name(path.name + ".sha256")
    assert side.read_text() == f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.name}\n"
    assert subprocess.run(["sha256sum", "-c", side.name], cwd=path.parent, capture_output=True).returncode == 0


# --------------------------------------------------------------------------------------- explicit proxy

@pytest.fixture(scope="module")
def loopback(tmp_path_factory, rules_dir, geo_dir, pki):
    """The servers, the resolvers and a mitmdump with geoblock that maps the test names to them."""
    d = tmp_path_factory.mktemp("probe-proxy")
    tls, http = TestServer("127.0.0.1", pki), TestServer("127.0.0.1")
    answers = {n: "127.0.0.1" for n in [*LISTED, "xn--bcher-kva.example", *ALLOWED]}
    doh, dot = DohServer("127.0.0.3", 0, pki, answers), DotServer("127.0.0.3", 0, pki, answers)
    names = {}
    for name in [*LISTED, "xn--bcher-kva.example", *ALLOWED]:
        names[f"{name}:{tls.port}"] = ("127.0.0.1", tls.port)
        names[f"{name}:{http.port}"] = ("127.0.0.1", http.port)
    proxy = with_names(d / "conf", names, {
        "geoblock_rules": rules_dir, "geoblock_country_db": geo_dir / "GeoLite2-Country.mmdb",
        "geoblock_asn_db": geo_dir / "GeoLite2-ASN.mmdb", "geoblock_log": d / "decisions.jsonl",
        "geoblock_rdap": False, "ssl_verify_upstream_trusted_ca": pki.ca_pem,
        "geoblock_metrics": f"127.0.0.1:{free_port()}"})
    proxy.start()
    try:
        yield {"tls": tls, "http": http, "doh": doh, "dot": dot, "proxy": proxy, "dir": d, "pki": pki}
    finally:
        proxy.stop()
        for s in (tls, http, doh, dot):
            s.close()


def loopback_args(env: dict, out: Path, *extra: str) -> list[str]:
    lst = env["dir"] / "listed.txt"
    lst.write_text("# test list\n" + "\n".join(LISTED) + "\n", encoding="utf-8")
    resolve = [f"--resolve={n}=127.0.0.1" for n in [*LISTED, *ALLOWED]]
    return [str(lst), *[f"--allowed={n}" for n in ALLOWED], "--proxy", f"127.0.0.1:{env['proxy'].port}",
            *resolve, "--ca", str(env["pki"].ca_pem), "--tls-port", str(env["tls"].port),
            "--http-port", str(env["http"].port), "--doh", f"https://127.0.0.3:{env['doh'].port}/dns-query",
            "--dot", f"127.0.0.3:{env['dot'].port}", "--timeout", "5", "--concurrency", "4", "--rate", "50",
            "-o", str(out), *extra]


# what each technique can say through an explicit proxy: not-applicable where the proxy carries nothing
PROXY_NOT_APPLICABLE = {"dns", "ipv4-embedded", "quic"}


def test_explicit_proxy_listed_enforced_allowed_reached(loopback, tmp_path):
    out = tmp_path / "probe.jsonl"
    metrics = next(a for a in loopback["proxy"].args if a.startswith("geoblock_metrics="))
    status_url = f"http://{metrics.split('=', 1)[1]}/status"
    r = probe(*loopback_args(loopback, out, "--status", status_url))
    run, tries, end = read_lines(out)
    found = by_name(tries)
    msg = f"{r.stderr}\n{table(tries)}\n{loopback['proxy'].output()[-3000:]}"
    assert r.returncode == 0, msg
    assert run["via"] == "proxy" and run["proxy"] == f"127.0.0.1:{loopback['proxy'].port}"
    assert run["techniques"] == TECHNIQUES and run["names_total"] == len(LISTED)
    # the gateway's own account of itself, as its /status said it: the ruleset version and databases
    assert run["gateway_status_error"] is None and run["gateway_status"]["ruleset"]["version"], run
    assert set(run["gateway_status"]["databases"]) == {"country", "asn"}
    assert len(found) == len(TECHNIQUES) * (len(LISTED) + len(ALLOWED)), msg
    for technique in TECHNIQUES:
        for name in LISTED:
            t = found[(name, technique)]
            if technique in PROXY_NOT_APPLICABLE or (technique == "sni-idna" and name.isascii()):
                assert t["finding"] == "not-applicable", msg
            else:
                assert t["finding"] == "enforced", (t, msg)
        for name in ALLOWED:
            t = found[(name, technique)]
            if technique in PROXY_NOT_APPLICABLE or technique == "sni-idna":
                assert t["finding"] == "not-applicable", msg
            else:
                assert t["finding"] == "reached", (t, msg)
    # how: what the proxy said, as a person would check it
    assert found[("binance.com", "connect-name")]["how"] == "connect-451"
    assert found[("binance.com", "connect-name")]["rule"] == "offshore-crypto-exchanges"
    assert found[("binance.com", "http-host")]["how"] == "http-451"
    assert found[("binance.com", "tls-sni")]["how"] == "tls-alert"
    assert found[("binance.com", "tls-sni")]["tls_alert"] == 49  # access_denied
    assert found[("bücher.example", "sni-idna")]["sent_name"] == "XN--bcher-kva.example"
    assert found[("allowed.test", "tls-sni")]["how"] == "handshake"
    assert "binance.com" in loopback["doh"].seen and "binance.com" in loopback["dot"].seen
    assert "0 leaks" in r.stderr and str(out) in r.stderr
    check_digest(out)


def test_control_direct_and_sample(loopback, tmp_path):
    """--control direct adds a control try per gateway try (the servers answer directly); --sample 1."""
    out = tmp_path / "probe.jsonl"
    r = probe(*loopback_args(loopback, out, "--control", "direct", "--sample", "1", "--seed", "7",
                             "--techniques", "tls-sni,http-host"))
    run, tries, end = read_lines(out)
    assert r.returncode == 0, r.stderr + table(tries)
    assert run["control"] == "direct" and run["sample"] == 1 and run["seed"] == 7
    listed = {t["name"] for t in tries if t["expect"] == "blocked"}
    assert len(listed) == 1 and listed <= set(LISTED)
    control = [t for t in tries if t["path"] == "control"]
    gateway = [t for t in tries if t["path"] == "gateway"]
    assert len(control) == len(gateway) == 2 * 3
    assert all(t["outcome"] == "reached" for t in control), table(control)
    for t in gateway:
        assert t["control"]["outcome"] == "reached"
        assert t["finding"] == ("enforced" if t["expect"] == "blocked" else "reached"), table(tries)


def test_control_file_inconclusive(loopback, tmp_path):
    """A control run that could not reach the service: the gateway's block is inconclusive, not enforced."""
    control = tmp_path / "control.jsonl"
    control.write_text(json.dumps({"record": "try", "name": "binance.com", "technique": "tls-sni",
                                   "path": "gateway", "outcome": "blocked", "how": "timeout"}) + "\n")
    out = tmp_path / "probe.jsonl"
    lst = tmp_path / "one.txt"
    lst.write_text("binance.com\n")
    args = loopback_args(loopback, out, "--control", str(control), "--techniques", "tls-sni")
    args[0] = str(lst)
    r = probe(*args)
    run, tries, end = read_lines(out)
    assert r.returncode == 0, r.stderr
    assert run["control"] == f"file:{control}"
    t = by_name(tries)[("binance.com", "tls-sni")]
    assert t["finding"] == "inconclusive" and t["control"] == {"outcome": "blocked", "how": "timeout"}


def test_leak_through_a_proxy_that_does_not_judge(loopback, tmp_path):
    """A bare mitmdump (no geoblock, intercepting TLS with its own CA) as the proxy: every try of a listed
    name is a leak, listed first in the summary, and the exit status is 1."""
    with Mitmdump(tmp_path / "bare", {"ssl_verify_upstream_trusted_ca": loopback["pki"].ca_pem},
                  with_geoblock=False) as bare:
        out = tmp_path / "probe.jsonl"
        lst = tmp_path / "one.txt"
        lst.write_text("binance.com\n")
        args = loopback_args(loopback, out, "--techniques", "tls-sni,http-host")
        args[0] = str(lst)
        args[args.index("--proxy") + 1] = f"127.0.0.1:{bare.port}"
        r = probe(*args)
    run, tries, end = read_lines(out)
    assert r.returncode == 1, r.stderr + table(tries)
    assert end["leaks"] == 2 and end["counts"] == {"leak": 2, "reached": 4}
    summary = [line for line in r.stderr.splitlines() if not line.endswith(": done")]
    assert summary[1].startswith("LEAK binance.com http-host: reached/http-answer"), r.stderr
    # the bare mitmdump intercepts TLS with its own CA: the certificate does not verify, the content came
    assert summary[2].startswith("LEAK binance.com tls-sni: reached/http-answer (TLS handshake: the certificate "
                                 "does not verify for binance.com"), r.stderr
    assert summary[3].startswith("probe: 6 tries in "), r.stderr
    check_digest(out)


def test_a_proxy_that_refuses_for_another_reason_is_no_evidence_of_a_block(loopback, tmp_path):
    """A proxy that wants credentials (407) or cannot reach the service (502) refused no destination: every
    try is "failed", none "enforced" (before, any answer to the CONNECT but 2xx counted as a block)."""
    lst = tmp_path / "one.txt"
    lst.write_text("binance.com\n")
    with Mitmdump(tmp_path / "auth", {"proxyauth": "u:p"}, with_geoblock=False) as auth:
        out = tmp_path / "auth.jsonl"
        args = loopback_args(loopback, out, "--techniques", "tls-sni,http-host,tls-split-records,sni-case")
        args[0], args[args.index("--proxy") + 1] = str(lst), f"127.0.0.1:{auth.port}"
        r = probe(*args)
    run, tries, end = read_lines(out)
    assert r.returncode == 3 and end["counts"] == {"failed": 12}, r.stderr + table(tries)  # 3 names x 4
    assert "geoblock probe: no try was made" in r.stderr
    assert all(t["http_status"] == 407 and "not a refusal" in t["detail"] for t in tries), table(tries)
    with Mitmdump(tmp_path / "bare", {}, with_geoblock=False) as bare:  # nothing listens on the port asked
        out = tmp_path / "down.jsonl"
        args = loopback_args(loopback, out, "--techniques", "tls-sni,http-host", "--tls-port", str(free_port()),
                             "--http-port", str(free_port()))
        args[0], args[args.index("--proxy") + 1] = str(lst), f"127.0.0.1:{bare.port}"
        r = probe(*args)
    run, tries, end = read_lines(out)
    assert end["counts"] == {"failed": 6} and {t["http_status"] for t in tries} == {502}, r.stderr + table(tries)


def test_an_intercepting_gateways_own_handshake_is_not_a_leak(loopback, tmp_path, rules_dir, geo_dir):
    """geoblock_intercept: the gateway completes the TLS handshake itself and answers the 451 page. The
    spelling and split-record techniques complete the handshake and check the certificate, so they see the
    gateway's page (enforced), not a ServerHello they took for the service's (a false leak before)."""
    opts = {"geoblock_rules": rules_dir, "geoblock_country_db": geo_dir / "GeoLite2-Country.mmdb",
            "geoblock_asn_db": geo_dir / "GeoLite2-ASN.mmdb", "geoblock_log": tmp_path / "d.jsonl",
            "geoblock_rdap": False, "geoblock_intercept": True, "ssl_verify_upstream_trusted_ca": loopback["pki"].ca_pem}
    with Mitmdump(tmp_path / "intercepting", opts) as gw:
        out = tmp_path / "probe.jsonl"
        args = loopback_args(loopback, out, "--techniques", "tls-sni,tls-split-records,sni-case,sni-trailing-dot")
        args[args.index("--proxy") + 1] = f"127.0.0.1:{gw.port}"
        r = probe(*args)
    run, tries, end = read_lines(out)
    found = by_name(tries)
    for technique in ("tls-sni", "tls-split-records", "sni-case", "sni-trailing-dot"):
        t = found[("binance.com", technique)]
        assert (t["finding"], t["how"], t["rule"]) == ("enforced", "http-451", "offshore-crypto-exchanges"), table(tries)
    assert end["leaks"] == 0 and r.returncode == 0, r.stderr + table(tries)


def test_killed_probe_keeps_every_line_written(loopback, tmp_path):
    """Each line is flushed as its try finishes: a probe interrupted (Ctrl-C) in the middle of a try that
    hangs (a server that accepts TCP and never answers) leaves the run line and the finished tries, each
    whole JSON, says so in one line and exits 130."""
    port = loopback["tls"].port
    hang = socket.socket()
    hang.bind(("127.0.0.6", port))  # the same port as the TLS server: one --tls-port for both names
    hang.listen(8)
    lst = tmp_path / "two.txt"
    lst.write_text("binance.com\nokx.com\n")
    out = tmp_path / "probe.jsonl"
    cmd = [GEOBLOCK, "probe", str(lst), "--resolve", "binance.com=127.0.0.1", "--resolve", "okx.com=127.0.0.6",
           "--ca", str(loopback["pki"].ca_pem), "--tls-port", str(port), "--techniques", "tls-sni",
           "--concurrency", "1", "--timeout", "60", "-o", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        wait_for(lambda: out.exists() and out.read_text().count("\n") >= 2, timeout=30, what="two lines")
        hang.settimeout(30)
        accepted, _ = hang.accept()  # the second try is under way (and will hang: nothing answers)
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        proc.wait(90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        hang.close()
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [x["record"] for x in lines] == ["run", "try"]
    assert lines[1]["name"] == "binance.com" and lines[1]["finding"] == "leak"  # no gateway on this path
    assert not out.with_name(out.name + ".sha256").exists()  # no digest of an unfinished run
    stderr = proc.stderr.read() if proc.stderr else ""
    assert proc.returncode == 130 and "probe: interrupted" in stderr and "Traceback" not in stderr, stderr


def test_control_through_a_proxy_and_allowed_from_a_file(loopback, tmp_path):
    """--control HOST:PORT makes the control tries through that proxy (here the same geoblock: the control
    path is blocked too, so a block is inconclusive, not evidence); --allowed takes a list file."""
    allowed = tmp_path / "allowed.txt"
    allowed.write_text("allowed.test\n")
    out = tmp_path / "probe.jsonl"
    args = loopback_args(loopback, out, "--control", f"127.0.0.1:{loopback['proxy'].port}", "--techniques",
                         "tls-sni", f"--allowed={allowed}")
    args = [a for a in args if a not in ("--allowed=allowed.test", "--allowed=www.allowed.test")]
    r = probe(*args)
    run, tries, end = read_lines(out)
    assert r.returncode == 0, r.stderr + table(tries)
    assert run["control"] == f"127.0.0.1:{loopback['proxy'].port}"
    found = by_name(tries)
    assert {n for n, _ in found} == {*LISTED, "allowed.test"}
    for name in LISTED:
        assert found[(name, "tls-sni")]["control"] == {"outcome": "blocked", "how": "tls-alert"}
        assert found[(name, "tls-sni")]["finding"] == "inconclusive"
    assert found[("allowed.test", "tls-sni")]["finding"] == "reached"
    assert end["counts"] == {"inconclusive": 2, "reached": 1}


# --------------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("case", ["missing", "bad-line", "bad-proxy", "bad-technique", "bad-resolve", "empty",
                                  "bad-sample", "bad-control"])
def test_bad_input_one_line_exit_2(case, tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("binance.com\n")
    bad = tmp_path / "bad.txt"
    bad.write_text("binance.com\nno spaces allowed here!\n")
    args, expect = {
        "missing": ([str(tmp_path / "nope.txt")], f"{tmp_path / 'nope.txt'}: no such file"),
        "bad-line": ([str(bad)], f"{bad}:2:"),
        "bad-proxy": ([str(good), "--proxy", "localhost"], "bad --proxy 'localhost'"),
        "bad-technique": ([str(good), "--techniques", "tls-sni,teleport"], "unknown technique 'teleport'"),
        "bad-resolve": ([str(good), "--resolve", "binance.com=1.2.3"], "bad --resolve address '1.2.3'"),
        "empty": ([str(tmp_path / "empty.txt")], f"{tmp_path / 'empty.txt'}: no names to try"),
        "bad-sample": ([str(good), "--sample", "0"], "bad --sample 0"),
        "bad-control": ([str(good), "--control", "somewhere"], "bad --control 'somewhere'"),
    }[case]
    (tmp_path / "empty.txt").write_text("# nothing yet\n")
    r = probe(*args, "-o", str(tmp_path / "out.jsonl"))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("geoblock probe: ") and expect in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out.jsonl").exists()


def test_findings():
    """What a gateway try means, given what was expected and the control path's outcome (docs/probe.md)."""
    from geoblock.probe.run import finding, sample_names

    reached, down = {"outcome": "reached", "how": "handshake"}, {"outcome": "blocked", "how": "timeout"}
    assert finding("blocked", "blocked", None) == "enforced"
    assert finding("blocked", "blocked", reached) == "enforced"
    assert finding("blocked", "blocked", down) == "inconclusive"
    assert finding("blocked", "reached", down) == "leak"
    assert finding("reached", "reached", None) == "reached"
    assert finding("reached", "blocked", None) == "overblocked"
    assert finding("blocked", "failed", None) == "failed"
    assert finding("reached", "not-applicable", None) == "not-applicable"
    names = [f"n{i}.test" for i in range(50)]
    assert sample_names(names, 5, 3) == sample_names(names, 5, 3) and len(sample_names(names, 5, 3)) == 5
    assert sample_names(names, 5, 3) == sorted(sample_names(names, 5, 3), key=names.index)  # list order
    assert sample_names(names, None, None) == names == sample_names(names, 500, 1)


def test_rules_directory_as_names(rules_dir, tmp_path):
    """A rules directory's block-rule domains are the names (only counted here: connect-name without
    --proxy is not-applicable, so nothing is sent anywhere)."""
    out = tmp_path / "out.jsonl"
    r = probe(str(rules_dir), "--techniques", "connect-name", "--sample", "3", "--seed", "1", "--rate", "1000",
              "-o", str(out))
    run, tries, end = read_lines(out)
    assert r.returncode == 3 and "no try was made" in r.stderr, r.stderr  # nothing applicable: nothing shown
    assert run["names_total"] > 10 and len(tries) == 3
    assert os.path.basename(run["names_source"]) == rules_dir.name


# --------------------------------------------------------------------------------------- transparent gateway
#
#   cli 192.0.2.2   `ip netns exec <cli> geoblock probe ...` (no proxy: the gateway is on the path)
#    |
#   gw  192.0.2.1   scripts/gateway.sh up (QUIC dropped) + mitmdump --mode transparent (geoblock.service's
#    |              command line) + geoblock's DNS mitmdump on 192.0.2.1:53 (geoblock-dns.service's)
#    +-- home 198.51.100.10   HTTPS :443 and HTTP :80 (the test PKI) for every name; UDP echo :443 (QUIC);
#    |                        HTTPS :443 also on 64:ff9b::c633:640a (NAT64, RFC 6052) and 2002:c633:640a::
#    |                        (6to4, RFC 3056), the IPv6 forms of 198.51.100.10 (the gateway routes both there)
#    +-- off  203.0.113.10    a DoH resolver :443, a DoT resolver :853 (answering 198.51.100.10 for every
#                             name), the stub DNS resolver :53 the DNS mitmdump forwards to

NETNS_LISTED = ["binance.com", "okx.com"]
NETNS_ALLOWED = ["allowed.test", "www.allowed.test"]
# gateway.sh drops UDP/443 for every destination (geoblock cannot judge QUIC): QUIC is blocked for every
# name, an unlisted one included; the probe says so (overblocked), and the test expects it
DROPPED_FOR_ALL = {"quic"}
TRANSPARENT_NOT_APPLICABLE = {"connect-name", "connect-address", "sni-idna"}
NAT64_PREFIX = "64:ff9b::/96"  # the well-known prefix (RFC 6052 section 2.1)
EMBEDDED = ("64:ff9b::c633:640a", "2002:c633:640a::")  # 198.51.100.10 (HOME4) in NAT64 and 6to4 form


@pytest.fixture(scope="module")
def netgw(tmp_path_factory, pki):
    """The topology, servers, resolvers and both mitmdumps (see above); module-scoped: one topology."""
    reason = _unavailable()
    if reason:
        pytest.skip(reason)
    d = tmp_path_factory.mktemp("probe-gateway")
    topo = gateway_topology()
    try:
        with contextlib.ExitStack() as stack:
            answers = {n: HOME4 for n in [*NETNS_LISTED, *NETNS_ALLOWED]}
            topo.addr("home", "eth0", *(f"{a}/128" for a in EMBEDDED))
            for prefix in ("64:ff9b::/96", "2002:c633:640a::/48"):
                ns.sh("ip", "-n", topo.ns("gw"), "-6", "route", "add", prefix, "via", "2001:db8:a::10")
            made = [NsServer(topo.ns("home"), HOME4, 443, pki), NsServer(topo.ns("home"), HOME4, 80),
                    UdpEcho(topo.ns("home"), HOME4, 443),
                    *(NsServer(topo.ns("home"), a, 443, pki) for a in EMBEDDED),
                    DohServer(OFFSHORE4, 443, pki, answers, netns=topo.ns("off")),
                    DotServer(OFFSHORE4, 853, pki, answers, netns=topo.ns("off")),
                    NsDnsStub(topo.ns("off"), OFFSHORE4, answer=HOME4)]
            for server in made:
                stack.callback(server.close)
            state = d / "gateway.state"
            gateway_args = ("up", "--in-iface", GW_IN_IFACE, "--port", "8080")
            gateway_sh(topo, *gateway_args, state=state)
            transparent = gateway_proxy(topo, d / "gw", "geoblock.service", 8080)
            stack.callback(transparent.stop)
            transparent.start()
            dd = d / "dns"
            write_test_data(dd)
            argv = unit_command("geoblock-dns.service", dd, dd / "rules")
            argv[argv.index("--mode") + 1] = f"dns@{GW_IN4}:53"
            dns_proxy = NsMitmdump(topo, "gw", 53, dd, argv, {
                "geoblock_country_db": dd / "GeoLite2-Country.mmdb", "geoblock_asn_db": dd / "GeoLite2-ASN.mmdb",
                "geoblock_rdap": False, "dns_name_servers": OFFSHORE4, "dns_use_hosts_file": False},
                caps=unit_capabilities("geoblock-dns.service"), seccomp=seccomp_prefix("geoblock-dns.service"))
            stack.callback(dns_proxy.stop)
            dns_proxy.start()
            yield {"topo": topo, "dir": d, "pki": pki, "state": state, "gateway_args": gateway_args,
                   "servers": made, "transparent": transparent}
    finally:
        problems = topo.close()
        assert not problems, problems


def netns_probe(env: dict, out: Path, *extra: str,
                listed: list[str] = NETNS_LISTED) -> subprocess.CompletedProcess[str]:
    """The real `geoblock probe` in the client namespace (ip netns exec), listed names from a list file."""
    lst = out.with_suffix(".txt")
    lst.write_text("\n".join(listed) + "\n", encoding="utf-8")
    args = [str(lst), *[f"--allowed={n}" for n in NETNS_ALLOWED],
            *[f"--resolve={n}={HOME4}" for n in [*listed, *NETNS_ALLOWED]], "--resolver", GW_IN4,
            "--ca", str(env["pki"].ca_pem), "--doh", f"https://{OFFSHORE4}/dns-query", "--dot", OFFSHORE4,
            "--nat64-prefix", NAT64_PREFIX, "--timeout", "3", "--rate", "50", "-o", str(out), *extra]
    cmd = env["topo"].exec_args("cli", GEOBLOCK, "probe", *args)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)


def test_transparent_gateway_every_technique(netgw, tmp_path):
    out = tmp_path / "probe.jsonl"
    r = netns_probe(netgw, out)
    run, tries, end = read_lines(out)
    found = by_name(tries)
    msg = f"exit {r.returncode}\n{r.stderr}\n{table(tries)}"
    assert run["via"] == "transparent" and run["proxy"] is None, msg
    for technique in TECHNIQUES:
        for name in NETNS_LISTED:
            t = found[(name, technique)]
            want = "not-applicable" if technique in TRANSPARENT_NOT_APPLICABLE else "enforced"
            assert t["finding"] == want, (t, msg)
        for name in NETNS_ALLOWED:
            t = found[(name, technique)]
            want = ("not-applicable" if technique in TRANSPARENT_NOT_APPLICABLE else
                    "overblocked" if technique in DROPPED_FOR_ALL else "reached")
            assert t["finding"] == want, (t, msg)
    assert found[("binance.com", "dns")]["how"] == "nxdomain"
    assert found[("binance.com", "tls-sni")]["how"] == "tls-alert"
    assert found[("binance.com", "http-host")]["how"] == "http-451"
    assert found[("binance.com", "http-host")]["rule"] == "offshore-crypto-exchanges"
    assert found[("binance.com", "quic")]["how"] == "dropped"
    assert found[("binance.com", "doh")]["how"] == "tls-alert"  # the resolver answered; the TLS was refused
    assert found[("binance.com", "dot")]["how"] == "tls-alert"
    assert found[("allowed.test", "tls-sni")]["how"] == "handshake"
    assert found[("allowed.test", "ipv4-embedded")]["address"] in (f"[{a}]:443" for a in EMBEDDED)
    assert all(f"[{a}]:443" in found[("binance.com", "ipv4-embedded")]["detail"] for a in EMBEDDED)
    assert r.returncode == 0 and end["leaks"] == 0, msg
    check_digest(out)
    print(r.stderr)  # the lead's closing note: the summary of the test topology's probe


def test_weakened_gateway_leak_first_exit_1(netgw, tmp_path):
    """gateway.sh with the listed service's address excluded (its traffic bypasses the proxy): the probe
    reports the leaks first and exits 1. The gateway is set back afterwards."""
    gateway_sh(netgw["topo"], *netgw["gateway_args"], "--exclude", f"{HOME4}/32", state=netgw["state"])
    try:
        out = tmp_path / "probe.jsonl"
        r = netns_probe(netgw, out, "--techniques", "tls-sni,http-host,quic,dns", listed=["binance.com"])
    finally:
        gateway_sh(netgw["topo"], *netgw["gateway_args"], state=netgw["state"])
    run, tries, end = read_lines(out)
    msg = f"exit {r.returncode}\n{r.stderr}\n{table(tries)}"
    assert r.returncode == 1, msg
    assert end["leaks"] == 3, msg
    found = by_name(tries)
    assert found[("binance.com", "tls-sni")]["finding"] == "leak"
    assert found[("binance.com", "http-host")]["finding"] == "leak"
    assert found[("binance.com", "quic")]["finding"] == "leak"  # an excluded destination's UDP/443 passes too
    assert found[("binance.com", "dns")]["finding"] == "enforced"  # DNS still answers NXDOMAIN
    summary = [line for line in r.stderr.splitlines() if not line.endswith(": done")]
    assert summary[1].startswith("LEAK binance.com http-host: reached/http-answer"), msg
    assert summary[2].startswith("LEAK binance.com quic: reached/udp-answer"), msg
    assert summary[3].startswith("LEAK binance.com tls-sni: reached/handshake"), msg
    check_digest(out)


def test_sinkhole_answer_and_unreadable_status(netgw, tmp_path):
    """A resolver that answers a known sinkhole address (--sinkhole; here the stub answers every name with
    198.51.100.10) is a block by DNS (and over-blocking for the unlisted names); a --status URL that does not
    answer is recorded as such in the run line."""
    out = tmp_path / "probe.jsonl"
    r = netns_probe(netgw, out, "--techniques", "dns", "--sinkhole", HOME4, "--status", f"http://{GW_IN4}:9/status")
    run, tries, end = read_lines(out)
    assert run["gateway_status"] is None and f"http://{GW_IN4}:9/status" in run["gateway_status_error"]
    found = by_name(tries)
    assert found[("binance.com", "dns")]["how"] == "nxdomain"  # the gateway's DNS answers first
    # the last --resolver wins: ask the stub itself (the gateway forwards UDP/53)
    r = netns_probe(netgw, out, "--techniques", "dns", "--sinkhole", HOME4, "--resolver", OFFSHORE4)
    run, tries, end = read_lines(out)
    found = by_name(tries)
    msg = f"{r.stderr}\n{table(tries)}"
    assert r.returncode == 0, msg
    assert found[("binance.com", "dns")]["how"] == "sinkhole" and found[("binance.com", "dns")]["finding"] == "enforced"
    assert found[("allowed.test", "dns")]["finding"] == "overblocked", msg
