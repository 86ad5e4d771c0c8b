"""The production runner `geoblock-gateway` (geoblock/mitm/run.py), started for real: it serves, refuses a
listed name, passes an allowed one through undecrypted, records both and shows them on /status; it refuses
what it does not carry with one line; hook errors and -s scripts behave as in mitmdump.

The rest of the suite runs against the runner too with GEOBLOCK_RUNNER=1 (tests/support/proc.py)."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request
from pathlib import Path

import pytest

from support.decisions import records
from support.proc import Mitmdump, connect, curl, free_port, gateway_path, geoblock_options
from support.waiting import wait_for

pytestmark = pytest.mark.e2e

DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def runner(d: Path, rules_dir: Path, geo_dir: Path, **extra: object) -> Mitmdump:
    m = Mitmdump(d / "conf", geoblock_options(rules_dir, geo_dir, d / "decisions.jsonl", **extra), runner=True)
    m.decisions = d / "decisions.jsonl"  # type: ignore[attr-defined]
    assert m.args[0] == gateway_path() and not any(a.endswith("block.py") for a in m.args)
    return m


def test_the_runner_refuses_a_listed_name_passes_an_allowed_one_records_both_and_shows_status(
        tmp_path, rules_dir, geo_dir, servers, pki):
    s = servers["https1"]  # 127.0.0.1: the home country
    with runner(tmp_path, rules_dir, geo_dir, geoblock_metrics="127.0.0.1:0") as m:
        refused = curl(m, "https://binance.com/")
        assert refused.returncode == 56 and "CONNECT tunnel failed, response 451" in refused.stderr
        passed = curl(m, f"https://allowed.test:{s.port}/", "--connect-to", f"allowed.test:{s.port}:127.0.0.1:{s.port}",
                      "--cacert", str(pki.ca_pem))  # the server's own certificate: not decrypted
        assert passed.returncode == 0 and passed.stdout.startswith("HTTP/1.1 200"), passed.stderr
        assert passed.stdout.endswith("hello from 127.0.0.1\n")
        assert s.requests == [(f"allowed.test:{s.port}", "/")]

        block = records(m.decisions, stage="connect", host="binance.com")[-1]
        assert block["action"] == "block" and block["enforced"] is True
        allow = records(m.decisions, stage="tls", sni="allowed.test")[-1]
        assert allow["action"] == "allow" and allow["server_ip"] == "127.0.0.1"

        endpoint = wait_for(lambda: re.search(r"geoblock: metrics at (http://\S+)/metrics", m.output()), 15,
                            "the status endpoint's address in the log").group(1)
        with DIRECT.open(endpoint + "/status", timeout=10) as answer:
            status = json.loads(answer.read())
        assert status["healthy"] is True
        assert status["decisions"]["block"] >= 1 and status["decisions"]["allow"] >= 2  # CONNECT and TLS
        assert status["decision_log"]["written"] == len(records(m.decisions))


def test_the_runner_writes_no_line_per_flow_unless_flow_detail_asks(tmp_path, rules_dir, geo_dir):
    for detail, shown in ((None, False), (1, True)):
        extra = {} if detail is None else {"flow_detail": detail}
        with runner(tmp_path / str(detail), rules_dir, geo_dir, **extra) as m:
            assert curl(m, "http://binance.com/").stdout.startswith("HTTP/1.1 451")
            wait_for(lambda: records(m.decisions, host="binance.com"), 10, "the decision record")
            m.stop()  # every line written
            flow_line = re.search(r"GET http://binance\.com/\s.*451", m.output(), re.S)
            assert bool(flow_line) is shown, m.output()


def run_gateway(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [gateway_path(), "--listen-host", "127.0.0.1", "-p", str(free_port()),
           "--set", f"confdir={tmp_path / 'conf'}", "--set", "geoblock_metrics=", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("args, message", [
    (["--set", "anticache=true"], "geoblock-gateway: option anticache belongs to mitmproxy's AntiCache addon, "
     "which the gateway runner does not carry; run `mitmdump -s addons/block.py` for it"),
    (["-w", "flows.out"], "geoblock-gateway: option save_stream_file belongs to mitmproxy's Save addon, "
     "which the gateway runner does not carry; run `mitmdump -s addons/block.py` for it"),
    (["~d binance.com"], "geoblock-gateway: a flow filter (~d binance.com) is for mitmdump's flow output and "
     "saved flows; run `mitmdump -s addons/block.py` for it"),
])
def test_a_feature_the_runner_does_not_carry_is_refused_in_one_line(tmp_path, args, message):
    r = run_gateway(tmp_path, *args)
    assert r.returncode == 1
    assert r.stderr.strip() == message
    assert "Traceback" not in r.stdout + r.stderr and "listening" not in r.stdout


def test_a_malformed_geoblock_option_stops_the_runner_in_one_line(tmp_path):
    r = run_gateway(tmp_path, "--set", "geoblock_monitor=toggle")
    assert r.returncode == 1
    assert r.stderr.strip() == "geoblock: option geoblock_monitor must be true or false, not 'toggle'"
    assert "Traceback" not in r.stdout + r.stderr and "listening" not in r.stdout


def test_rules_that_do_not_load_stop_the_runner(tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "rules.yaml").write_text("rules:\n  - {id: x, action: explode, domains: [a.test]}\n")
    r = run_gateway(tmp_path, "--set", f"geoblock_rules={rules}")
    out = r.stdout + r.stderr
    assert r.returncode == 1 and "geoblock: rules refused:" in out and "rules.yaml" in out
    assert "Traceback" not in out and "listening" not in out


FAILING_SCRIPT = """

class Fails:
    name = "fails"

    def http_connect(self, flow):
        raise RuntimeError("this script fails")

addons = [Fails()]
"""


def test_a_failing_script_hook_is_logged_and_geoblock_still_refuses(tmp_path, rules_dir, geo_dir):
    """-s scripts run before geoblock (as they do given before addons/block.py), and an error in one
    is an "Addon error" line, as in mitmdump: the other addons' hooks still run."""
    script = tmp_path / "fails.py"
    script.write_text(FAILING_SCRIPT)
    m = Mitmdump(tmp_path / "conf", geoblock_options(rules_dir, geo_dir, tmp_path / "decisions.jsonl"),
                 extra_args=["-s", str(script)], runner=True)
    with m:
        sock, head = connect(m, "binance.com:443")
        sock.close()
        assert head.startswith(b"HTTP/1.1 451")
        wait_for(lambda: "Addon error: this script fails" in m.output(), 10, "the addon error line")
    assert records(tmp_path / "decisions.jsonl", stage="connect", host="binance.com")[-1]["action"] == "block"


HELLO_SCRIPT = """
import logging

class Hellos:
    name = "hellos"

    def tls_clienthello(self, data):
        logging.getLogger("hellos").warning(f"script saw the ClientHello of {data.client_hello.sni}")

addons = [Hellos()]
"""


@pytest.mark.parametrize("with_script", [False, True])
def test_an_allowed_handshake_passes_through_and_a_script_still_sees_client_hellos(
        tmp_path, rules_dir, geo_dir, servers, pki, with_script):
    """The runner relays an allowed ClientHello straight to a raw relay only while no other addon reads
    ClientHellos: a -s script with a tls_clienthello hook still gets every one."""
    s = servers["https1"]
    script = tmp_path / "hellos.py"
    script.write_text(HELLO_SCRIPT)
    extra = ["-s", str(script)] if with_script else []
    m = Mitmdump(tmp_path / "conf", geoblock_options(rules_dir, geo_dir, tmp_path / "decisions.jsonl"),
                 extra_args=extra, runner=True)
    with m:
        for _ in range(2):
            r = curl(m, f"https://allowed.test:{s.port}/", "--connect-to", f"allowed.test:{s.port}:127.0.0.1:{s.port}",
                     "--cacert", str(pki.ca_pem))
            assert r.returncode == 0 and r.stdout.endswith("hello from 127.0.0.1\n"), r.stderr
    assert m.output().count("script saw the ClientHello of allowed.test") == (2 if with_script else 0)


def test_the_runners_options_read_as_mitmproxys_do():
    """GatewayOptions skips mitmproxy's deep copy for immutable values only: every read gives what
    mitmproxy's Options give, a list read is still a copy its reader may change, unknown names raise."""
    from mitmproxy import options

    from geoblock.mitm.run import GatewayOptions

    ours, theirs = GatewayOptions(), options.Options()
    for name in ("listen_port", "listen_host", "mode", "ignore_hosts", "allow_hosts", "ssl_insecure", "confdir"):
        assert getattr(ours, name) == getattr(theirs, name), name
    ours.mode.append("transparent")  # a reader changing its copy changes nothing
    assert ours.mode == ["regular"]
    ours.update(ignore_hosts=["a.test"], listen_port=8081, listen_host="127.0.0.1", ssl_insecure=True)
    assert (ours.ignore_hosts, ours.listen_port, ours.listen_host, ours.ssl_insecure) == (
        ["a.test"], 8081, "127.0.0.1", True)
    assert ours.ignore_hosts is not ours.ignore_hosts
    ours.update(listen_port=None)
    assert ours.listen_port is None
    with pytest.raises(AttributeError, match="No such option: geoblock_nothing"):
        _ = ours.geoblock_nothing
