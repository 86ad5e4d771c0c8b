"""Starting mitmdump with geoblock: it never serves without valid rules, and it says what is missing."""

from __future__ import annotations

import re
import socket
import subprocess

import pytest

from support.proc import BLOCK_PY, free_port, mitmdump_path
from support.waiting import wait_for

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
    # found in review: mitmproxy reads an empty value and `toggle` as true here, so an unset variable in
    # `--set geoblock_monitor=$X` turned enforcement off without a word
    (["geoblock_monitor="], "option geoblock_monitor must be true or false, not ''"),
    (["geoblock_monitor=toggle"], "option geoblock_monitor must be true or false, not 'toggle'"),
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


# ---------------------------------------------------------------- what a refused start looks like

STAMP = re.compile(r"^\[\d\d:\d\d:\d\d\.\d{3}\] ", re.M)
EXITING = "Error logged during startup, exiting...\n"  # mitmproxy's start-up check, 11.0.2 and 12.x alike


def refused_start(tmp_path, *sets: str, log: bool = True) -> tuple[list[str], str, int, int]:
    """Start a real mitmdump with geoblock and `sets`, expecting it to exit by itself. Returns stdout's
    lines without their [hh:mm:ss.mmm] stamps, stderr as it is, the exit status and the port."""
    port = free_port()
    args = [mitmdump_path(), "-s", str(BLOCK_PY), "--listen-host", "127.0.0.1", "-p", str(port),
            "--set", f"confdir={tmp_path / 'conf'}", "--set", "geoblock_country_db=", "--set", "geoblock_asn_db="]
    if log:
        args += ["--set", f"geoblock_log={tmp_path / 'd.jsonl'}"]
    for s in sets:
        args += ["--set", s]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    return STAMP.sub("", out).splitlines(), err, proc.returncode, port


def rules_dir(tmp_path, files: dict[str, str]):
    rules = tmp_path / "rules"
    rules.mkdir()
    for name, text in {"policy.yaml": "home_countries: [CN]\n", **files}.items():
        (rules / name).write_text(text)
    return rules


def bad_rule_file(tmp_path):
    rules = rules_dir(tmp_path, {"broken.yaml": "rules:\n  - id: a\n    action: block\n    countries: [UK]\n"})
    return [f"geoblock_rules={rules}"], (f"geoblock: rules refused: {rules}/broken.yaml:4: rule 'a': countries: "
                                        f"'UK' is not an ISO 3166 alpha-2 country code (did you mean GB?)")


def missing_rules(tmp_path):
    return ([f"geoblock_rules={tmp_path / 'nowhere'}"],
            f"geoblock: rules refused: {tmp_path / 'nowhere'}: no such rules file or directory")


def bad_on_error(tmp_path):
    rules = rules_dir(tmp_path, {"policy.yaml": "home_countries: [CN]\non_error: maybe\n"})
    return ([f"geoblock_rules={rules}"],
            f"geoblock: rules refused: {rules}/policy.yaml:2: on_error must be one of block, allow, not 'maybe'")


def bad_metrics(tmp_path):
    return (["geoblock_metrics=bogus"],
            "geoblock: geoblock_metrics must be host:port (e.g. 127.0.0.1:9464) or empty, not 'bogus'")


def bad_seconds(tmp_path):
    return (["geoblock_dns_timeout=soon"],
            "geoblock: geoblock_dns_timeout must be a number of seconds from 0.01 to 30, not 'soon'")


def bad_bool(tmp_path):
    return ["geoblock_monitor=maybe"], "geoblock: option geoblock_monitor must be true or false, not 'maybe'"


@pytest.mark.parametrize("case", [bad_rule_file, missing_rules, bad_on_error, bad_metrics, bad_seconds, bad_bool])
def test_a_refused_start_says_why_in_one_line_without_a_traceback(tmp_path, case):
    # Before: mitmproxy printed "error in script", a Python traceback of two chained exceptions, then
    # the proxy's listening line and "exiting".
    sets, message = case(tmp_path)
    lines, err, status, port = refused_start(tmp_path, *sets)
    assert lines == [f"Loading script {BLOCK_PY}", message,
                     f"HTTP(S) proxy listening at 127.0.0.1:{port}."], lines
    assert err == EXITING and status == 1
    assert not listening(port)


def unreadable_page(tmp_path):
    page = tmp_path / "page.html"
    page.write_text("<p>\n$unknown</p>")
    return [f"geoblock_block_page={page}"], (
        f"geoblock: block page template {page}:2: unknown placeholder $unknown; the placeholders are $contact, "
        "$host, $lang, $notice, $operator, $platform, $reason, $rule, $ts")


def unwritable_log(tmp_path):
    where = tmp_path / "logs"  # a directory, not a file
    where.mkdir()
    return [f"geoblock_log={where}"], f"geoblock: cannot open the decision log {where}: Is a directory"


@pytest.mark.parametrize("case", [unreadable_page, unwritable_log])
def test_a_refusal_after_the_rules_loaded_ends_the_start_the_same_way(tmp_path, case):
    sets, message = case(tmp_path)
    lines, err, status, port = refused_start(tmp_path, *sets, log=case is not unwritable_log)
    assert lines[0] == f"Loading script {BLOCK_PY}" and lines[1].startswith("geoblock: ruleset ")
    assert lines[-2:] == [message, f"HTTP(S) proxy listening at 127.0.0.1:{port}."], lines
    assert not any("Traceback" in line or "error in script" in line for line in lines)
    assert err == EXITING and status == 1


@pytest.mark.parametrize("config, message", [
    ("geoblock_monitor: maybe\n",
     "geoblock: option geoblock_monitor in mitmproxy's config file must be true or false, not 'maybe'"),
    ("geoblock_rules: [a, b]\n",
     "geoblock: option geoblock_rules in mitmproxy's config file must be text (quote it in YAML), not ['a', 'b']"),
])
def test_a_mistyped_value_in_mitmproxys_config_file_is_refused_in_one_line(tmp_path, config, message):
    # Before: mitmproxy's TypeError traceback from the script loader, and geoblock dropped.
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "config.yaml").write_text(config)
    lines, err, status, port = refused_start(tmp_path)
    assert lines == [f"Loading script {BLOCK_PY}", message, f"HTTP(S) proxy listening at 127.0.0.1:{port}."], lines
    assert err == EXITING and status == 1


def test_a_number_in_mitmproxys_config_file_is_read_as_the_text_option_it_sets(tmp_path):
    # YAML reads `geoblock_dns_timeout: 1.5` as a number; geoblock's option is text (mitmproxy refused it).
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "config.yaml").write_text("geoblock_dns_timeout: 1.5\ngeoblock_reload_interval: 0\n")
    proc, port = run_mitmdump(tmp_path, "geoblock_country_db=", "geoblock_asn_db=", "geoblock_metrics=")
    try:
        wait_for(lambda: listening(port) or proc.poll() is not None, timeout=30, what="mitmdump listening or gone")
        assert proc.poll() is None and listening(port)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
    assert "Traceback" not in out and "must be" not in out and "geoblock: ruleset " in out, out
