"""Starting mitmdump with geoblock: it never serves without valid rules, and it says what is missing."""

from __future__ import annotations

import socket
import subprocess

import pytest

from support.proc import BLOCK_PY, free_port, mitmdump_path

pytestmark = pytest.mark.e2e


def run_mitmdump(tmp_path, *sets: str, timeout: float = 8.0):
    port = free_port()
    args = [mitmdump_path(), "-s", str(BLOCK_PY), "--listen-host", "127.0.0.1", "-p", str(port),
            "--set", f"confdir={tmp_path / 'conf'}", "--set", f"geoblock_log={tmp_path / 'd.jsonl'}"]
    for s in sets:
        args += ["--set", s]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, port


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@pytest.mark.parametrize("content, where", [
    ("rules:\n  - id: a\n    action: block\n    countries: [UK]\n", "broken.yaml:4"),
    ("rules:\n  - id: a\n    action: block\n    domains: [x.test\n", "broken.yaml:5"),
    ("rules:\n  - id: a\n    action: block\n    networks: [300.1.2.3/8]\n", "broken.yaml:4"),
])
def test_bad_rules_at_startup_never_serve(tmp_path, content, where):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "policy.yaml").write_text("home_countries: [CN]\n")
    (rules / "broken.yaml").write_text(content)
    proc, port = run_mitmdump(tmp_path, f"geoblock_rules={rules}")
    try:
        out, _ = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert where in out, out
    assert not listening(port)


def test_starts_without_geoip_and_says_what_that_means(tmp_path):
    proc, port = run_mitmdump(tmp_path, f"geoblock_country_db={tmp_path / 'none.mmdb'}",
                              f"geoblock_asn_db={tmp_path / 'none-asn.mmdb'}")
    try:
        for _ in range(100):
            if listening(port):
                break
            assert proc.poll() is None, proc.stdout.read()
            subprocess.run(["sleep", "0.1"])
        assert listening(port)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    assert f"{tmp_path / 'none.mmdb'}: no such file" in out
    assert "without a country database" in out and "unknown_country=log" in out
    assert "domain rules are enforced as usual" in out


@pytest.mark.parametrize("sets, message", [
    (["geoblock_monitor=maybe"], "option geoblock_monitor must be true or false, not 'maybe'"),
    (["geoblock_rule=/etc/rules"], "unknown option 'geoblock_rule'"),
    (["geoblock_log=/tmp/a.jsonl", "geoblock_log=/tmp/b.jsonl"], "option geoblock_log is given more than once"),
    (["geoblock_dns_timeout=soon"], "geoblock_dns_timeout must be a number of seconds"),
])
def test_a_malformed_option_stops_mitmdump_instead_of_dropping_geoblock(tmp_path, sets, message):
    # Left to mitmproxy, the first three would unload geoblock silently and serve unfiltered.
    proc, port = run_mitmdump(tmp_path, *sets)
    try:
        out, _ = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode != 0 and message in out, out
    assert not listening(port)
