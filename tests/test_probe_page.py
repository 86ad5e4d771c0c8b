"""The probe's evidence (geoblock.probe.evidence) and its HTML page (geoblock.probe.page).

The JSON lines are built here to the letter of the probe's schema (docs/probe.md, "The evidence"), with
every finding, a 451 with its rule, a control path, and a hostile name; the CLI `geoblock probe-verify`
runs in a subprocess; the page is checked as text and in a real headless Chromium (tests/support/browser.py,
as tests/test_report.py checks the report's page): the leaks come first and are labelled, the hostile name
is text, the digest shown is the file's SHA-256, nothing is fetched, the screenshot is not blank.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from geoblock.probe import evidence, page
from support import browser

TECHNIQUES = ["dns", "tls-sni", "http-host", "connect-name", "connect-address", "http-blank-line", "http-split",
              "tls-split-records", "sni-case", "sni-trailing-dot", "sni-idna", "h2c-upgrade", "ipv4-embedded",
              "quic", "ech", "esni", "doh", "dot"]
HOSTILE = '<script>alert("x")</script>.example'
STATUS = {"healthy": True, "health": "ok",
          "ruleset": {"version": "rs-5f3a9c", "rules": 12, "by_action": {"block": 10}, "domains": 40, "files": 2,
                      "path": "/etc/geoblock/rules"},
          "databases": {"country": {"edition": "GeoLite2-Country", "build": "2026-11-24", "path": "c.mmdb"},
                        "asn": {"edition": "GeoLite2-ASN", "build": "2026-11-23", "path": "a.mmdb"}}}


def _try(run_id: str, name: str, expect: str, technique: str, outcome: str, how: str, finding: str,
         **extra: Any) -> dict[str, Any]:
    record = {"record": "try", "run_id": run_id, "ts": "2026-11-30T12:00:01.000Z", "name": name, "expect": expect,
              "technique": technique, "path": "gateway", "outcome": outcome, "how": how, "rule": None,
              "http_status": None, "tls_alert": None, "address": "203.0.113.10:443", "sent_name": name,
              "detail": f"{technique} said {how}", "duration_s": 0.012, "finding": finding,
              "control": {"outcome": "reached", "how": "handshake"}}
    record.update(extra)
    return record


def make_run(path: Path, blocked: list[str], allowed: list[str], techniques: list[str] = TECHNIQUES,
             leaks: dict[tuple[str, str], str] | None = None) -> dict[str, Any]:
    """Write a probe run's JSON lines to `path` and its sidecar: every (blocked name, technique) enforced
    (tls-alert, or a 451 with rule "r-gambling" for HTTP techniques) except `leaks` {(name, technique):
    how reached}; allowed names reached, the first allowed name over-blocked on dns, the second blocked
    name inconclusive on quic, the first one failed on doh, ipv4-embedded not-applicable, one control-path
    line. Returns the lines'
    facts: {"run_id", "leaks": [(name, technique)], "tries": gateway-path tries}."""
    leaks = leaks or {}
    run_id = str(uuid.uuid4())
    lines: list[dict[str, Any]] = [{
        "record": "run", "run_id": run_id, "probe_version": "0.16.0", "started": "2026-11-30T12:00:00.000Z",
        "via": "transparent", "proxy": None, "control": "direct", "names_source": "lists/gambling.txt",
        "names_total": len(blocked), "sample": None, "seed": None, "techniques": techniques,
        "options": {"concurrency": 4, "rate": 10.0, "timeout_s": 5.0}, "observer_hostname": "client-ns",
        "gateway_status": STATUS, "gateway_status_error": None}]
    counts: dict[str, int] = {}
    for name in blocked:
        for tech in techniques:
            if (name, tech) in leaks:
                t = _try(run_id, name, "blocked", tech, "reached", leaks[(name, tech)], "leak",
                         detail=f"reached {name} with {tech}: the service's own certificate")
            elif tech == "ipv4-embedded":
                t = _try(run_id, name, "blocked", tech, "not-applicable", "not-applicable", "not-applicable",
                         detail="no NAT64 prefix given", address=None, control=None)
            elif tech == "doh" and name == blocked[0]:
                t = _try(run_id, name, "blocked", tech, "failed", "error", "failed", address=None,
                         detail="no DoH resolver given")
            elif tech == "quic" and len(blocked) > 1 and name == blocked[1]:
                t = _try(run_id, name, "blocked", tech, "blocked", "timeout", "inconclusive",
                         control={"outcome": "blocked", "how": "timeout"})
            elif tech.startswith("http") or tech == "h2c-upgrade":
                t = _try(run_id, name, "blocked", tech, "blocked", "http-451", "enforced", rule="r-gambling",
                         http_status=451, address="203.0.113.10:80")
            else:
                t = _try(run_id, name, "blocked", tech, "blocked", "tls-alert", "enforced", tls_alert=49)
            lines.append(t)
    for i, name in enumerate(allowed):
        for tech in techniques:
            if i == 0 and tech == "dns":
                t = _try(run_id, name, "reached", tech, "blocked", "nxdomain", "overblocked", address=None)
            else:
                t = _try(run_id, name, "reached", tech, "reached", "handshake", "reached")
            lines.append(t)
    if blocked:
        lines.insert(1, {**_try(run_id, blocked[0], "blocked", "tls-sni", "reached", "handshake", "reached"),
                         "path": "control", "control": None})
    for t in lines[1:]:
        if t["path"] == "gateway":
            counts[t["finding"]] = counts.get(t["finding"], 0) + 1
    lines.append({"record": "end", "run_id": run_id, "ended": "2026-11-30T12:03:20.500Z", "duration_s": 200.5,
                  "tries": len(lines) - 1, "counts": counts, "leaks": counts.get("leak", 0)})
    with path.open("w", encoding="utf-8") as f:
        for line in lines:
            f.write(json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n")
    evidence.write_digest(path)
    return {"run_id": run_id, "leaks": sorted(leaks), "tries": sum(counts.values())}


BLOCKED = ["casino.example", HOSTILE, "bet.example"]
ALLOWED = ["news.example", "weather.example"]
LEAKS = {("bet.example", "quic"): "udp-answer", ("casino.example", "ech"): "handshake"}


@pytest.fixture
def run_file(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    path = tmp_path / "probe.jsonl"
    return path, make_run(path, BLOCKED, ALLOWED, leaks=LEAKS)


def geoblock(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "geoblock.tools.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=120)


# --- evidence: reading, digest, verify ---

def test_read_gives_the_run_the_tries_and_the_end(run_file) -> None:
    path, facts = run_file
    ev = evidence.read(path)
    assert ev.run["run_id"] == facts["run_id"] and ev.end is not None and ev.end["leaks"] == 2
    assert len(ev.tries) == facts["tries"] + 1 and len(ev.gateway_tries) == facts["tries"]
    assert [(t["name"], t["technique"]) for t in ev.leaks] == facts["leaks"]
    assert ev.counts() == ev.end["counts"]


def test_the_sidecar_is_sha256sum_format_and_sha256sum_checks_it(run_file) -> None:
    path, _ = run_file
    side = evidence.sidecar(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert side.read_text() == f"{digest}  probe.jsonl\n"
    assert evidence.digest_file(path) == digest and evidence.verify(path)
    done = subprocess.run(["sha256sum", "-c", side.name], cwd=path.parent, capture_output=True, text=True, check=False)
    assert done.returncode == 0 and done.stdout == "probe.jsonl: OK\n"


def test_one_changed_byte_fails_verify(run_file) -> None:
    path, _ = run_file
    data = bytearray(path.read_bytes())
    at = data.index(b'"leak"')
    data[at + 4] = ord("n")  # one byte: a finding "leak" now reads "lean"
    path.write_bytes(bytes(data))
    assert evidence.verify(path) is False


def test_a_missing_sidecar_is_an_evidence_error_naming_it(run_file) -> None:
    path, _ = run_file
    evidence.sidecar(path).unlink()
    with pytest.raises(evidence.EvidenceError, match=r"probe\.jsonl\.sha256: cannot read the digest"):
        evidence.verify(path)


@pytest.mark.parametrize(("change", "message"), [
    (lambda t: t.pop("finding"), r"field 'finding' missing"),
    (lambda t: t.update(outcome="maybe"), r"field 'outcome' is 'maybe', not one of blocked, reached"),
    (lambda t: t.update(how="handshake"), r"field 'how' is 'handshake', not one of tls-alert"),
    (lambda t: t.update(duration_s="fast"), r"field 'duration_s' has the wrong type \(str"),
    (lambda t: t.update(run_id="another-run"), r"field 'run_id' is 'another-run'"),
])
def test_a_bad_try_line_names_file_line_and_field(run_file, change, message) -> None:
    path, _ = run_file
    lines = path.read_text().splitlines()
    bad = json.loads(lines[4])
    change(bad)
    lines[4] = json.dumps(bad)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(evidence.EvidenceError, match=rf"^{re.escape(str(path))}:5: {message}"):
        evidence.read(path)


def test_lines_that_are_not_json_or_out_of_place_name_their_line(tmp_path) -> None:
    path = tmp_path / "p.jsonl"
    make_run(path, ["a.example"], [], techniques=["dns"])
    lines = path.read_text().splitlines()
    cases = {
        "not JSON": (lines[:2] + ["{not json"] + lines[2:], ":3: not a JSON line"),
        "try first": (lines[1:], ":1: field 'record' is 'try'; the first line must be 'run'"),
        "after end": (lines + [lines[1]], f":{len(lines) + 1}: a line after the 'end' line"),
        "no via": ([lines[0].replace('"via":"transparent"', '"via":"carrier pigeon"')] + lines[1:],
                   ":1: field 'via' is 'carrier pigeon', not one of transparent, proxy"),
    }
    for what, (content, message) in cases.items():
        path.write_text("\n".join(content) + "\n")
        with pytest.raises(evidence.EvidenceError) as caught:
            evidence.read(path)
        assert str(caught.value) == f"{path}{message}", what
    path.write_text("")
    with pytest.raises(evidence.EvidenceError, match="empty: no 'run' line"):
        evidence.read(path)


def test_an_end_line_whose_totals_disagree_with_the_lines_names_it(tmp_path) -> None:
    path = tmp_path / "p.jsonl"
    make_run(path, ["a.example", "b.example"], [], techniques=["dns", "tls-sni"], leaks={("b.example", "dns"): "dns-answer"})
    lines = path.read_text().splitlines()
    end = len(lines)
    cases = {  # a try line removed; a leak line turned into an enforced one
        "tries": (lines[:3] + lines[4:], f":{end - 1}: field 'tries' is 5, but the file has 4"),
        "counts": ([line.replace('"outcome":"reached","how":"dns-answer"', '"outcome":"blocked","how":"nxdomain"')
                    .replace('"finding":"leak"', '"finding":"enforced"') for line in lines],
                   f":{end}: field 'leaks' is 1, but the file has 0"),
    }
    for what, (content, message) in cases.items():
        path.write_text("\n".join(content) + "\n")
        with pytest.raises(evidence.EvidenceError) as caught:
            evidence.read(path)
        assert str(caught.value) == f"{path}{message}", what


def test_a_run_stopped_early_has_no_end_and_reads(tmp_path) -> None:
    path = tmp_path / "p.jsonl"
    make_run(path, ["a.example"], [], techniques=["dns", "tls-sni"])
    path.write_text("\n".join(path.read_text().splitlines()[:-1]) + "\n")
    ev = evidence.read(path)
    assert ev.end is None and len(ev.tries) == 3
    assert "no end line: the run was stopped" in page.render(ev, "0" * 64)


# --- the CLI: geoblock probe-verify ---

def test_probe_verify_says_ok_with_the_run_and_its_leaks(run_file) -> None:
    path, facts = run_file
    done = geoblock("probe-verify", path)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert f"run {facts['run_id']} (probe 0.16.0, via transparent, control direct)" in out
    assert "started 2026-11-30T12:00:00.000Z, ended 2026-11-30T12:03:20.500Z (200.5 s)" in out
    assert "2 leak(s)" in out
    assert "LEAK bet.example quic: udp-answer at 203.0.113.10:443" in out
    assert "LEAK casino.example ech: handshake" in out
    assert out.rstrip().endswith(f"{path}: sha256 {hashlib.sha256(path.read_bytes()).hexdigest()}: OK")


def test_probe_verify_exit_1_on_a_changed_file_2_when_unreadable(run_file, tmp_path) -> None:
    path, _ = run_file
    path.write_bytes(path.read_bytes().replace(b'"finding":"leak"', b'"finding":"enforced"', 1))
    done = geoblock("probe-verify", path)
    assert done.returncode == 1 and "DIGEST MISMATCH" in done.stderr and "Traceback" not in done.stderr
    # digest rewritten over a malformed line: the structure check fails, naming file:line
    path.write_text(path.read_text().replace('"outcome":"blocked"', '"outcome":"maybe"', 1))
    evidence.write_digest(path)
    done = geoblock("probe-verify", path)
    assert done.returncode == 1 and f"{path}:" in done.stderr and "field 'outcome' is 'maybe'" in done.stderr
    done = geoblock("probe-verify", tmp_path / "nothing.jsonl")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "nothing.jsonl.sha256: cannot read" in done.stderr


# --- the page ---

@pytest.fixture
def page_file(run_file, tmp_path) -> tuple[Path, Path, dict[str, Any]]:
    path, facts = run_file
    out = page.write(path, tmp_path / "probe.html")
    return path, out, facts


def test_the_page_holds_the_header_and_is_self_contained(page_file) -> None:
    path, out, facts = page_file
    text = out.read_text()
    assert hashlib.sha256(path.read_bytes()).hexdigest() in text
    assert "sha256sum -c probe.jsonl.sha256" in text and "geoblock probe-verify probe.jsonl" in text
    for fact in (facts["run_id"], "geoblock 0.16.0", "2026-11-30T12:00:00.000Z", "2026-11-30T12:03:20.500Z",
                 "200.5 s", "through a transparent gateway", "rs-5f3a9c", "GeoLite2-Country built 2026-11-24",
                 "GeoLite2-ASN built 2026-11-23", "client-ns"):
        assert fact in text, fact
    assert "Content-Security-Policy" in text and "<script" not in text and "<link" not in text
    assert "src=" not in text and "href=" not in text.replace('xlink:href="#', "")


def test_the_hostile_name_is_escaped_text(page_file) -> None:
    _, out, _ = page_file
    text = out.read_text()
    assert "<script" not in text
    assert html.escape(HOSTILE) in text


def test_every_finding_has_a_text_label_not_colour_alone(page_file) -> None:
    _, out, _ = page_file
    text = out.read_text()
    for finding, (_, _, label) in page.STYLE.items():
        assert f'<span class="label">{label}</span>' in text, finding
        assert page.MEANING[finding] in text
    assert 'class="f-leak"' in text and 'class="f-inconclusive"' in text and 'class="f-overblocked"' in text
    assert "rule r-gambling" in text  # a 451's rule id in its cell


def test_the_leak_table_comes_before_the_grid_and_leaky_names_lead_the_grid(page_file) -> None:
    _, out, _ = page_file
    text = out.read_text()
    assert text.index('id="leaks"') < text.index('id="overblocked"') < text.index('id="grid"')
    leaks = text[text.index('id="leaks"'):text.index('id="overblocked"')]
    assert leaks.count('<span class="label">LEAK</span>') == 2
    assert leaks.index("bet.example") < leaks.index("casino.example")  # sorted by name
    grid = text[text.index('id="grid"'):]
    rows = re.findall(r'<tr><td class="name">([^<]*)</td>', grid)
    assert set(rows[:2]) == {"bet.example", "casino.example"}  # the names with a leak first
    assert rows[-2:] == ["news.example", "weather.example"]  # expected reached last


def test_a_thousand_names_by_eighteen_techniques_render(tmp_path) -> None:
    path = tmp_path / "big.jsonl"
    names = [f"name{i:04}.example" for i in range(1000)]
    make_run(path, names, [], leaks={(names[500], "quic"): "udp-answer"})
    out = page.write(path, tmp_path / "big.html")  # about a second on the reference machine
    text = out.read_text()
    assert text.count("<td class=\"f-") == 18 * 1000 + 1  # every try's cell, and the leak table's
    assert re.search(r'<tr><td class="name">([^<]*)</td>', text[text.index('id="grid"'):]).group(1) == names[500]


@pytest.mark.browser
def test_the_page_in_chromium_shows_leaks_first_and_fetches_nothing(page_file, tmp_path) -> None:
    if browser.CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run does it as root)")
    path, out, facts = page_file
    listener = browser.Listener()
    console = ["--enable-logging=stderr", "--v=0", "--window-size=1200,3000"]
    try:
        shown = browser.visit(out.as_uri(), f"http://127.0.0.1:{listener.port}", tmp_path / "chromium", extra=console)
    finally:
        listener.close()
    assert shown.returncode == 0, shown.problems
    assert [line for line in shown.log.splitlines() if "CONSOLE" in line] == []
    assert browser.page_requests(listener.requests) == []
    assert shown.title.startswith(f"geoblock probe {facts['run_id']}: 2 leak(s)")
    dom = shown.dom
    # the DOM Chromium built: the hostile name is a text node (escaped again on serialisation), no script element
    assert "<script" not in dom and "&lt;script&gt;alert(\"x\")&lt;/script&gt;.example" in dom
    digest = re.search(r'<code class="digest" id="digest">([0-9a-f]{64})</code>', dom)
    assert digest is not None and digest.group(1) == hashlib.sha256(path.read_bytes()).hexdigest()
    first_table = dom[dom.index('id="leaks"'):]
    first_row = re.search(r"<tbody>\s*<tr>(.*?)</tr>", first_table, re.S)
    assert first_row is not None and '<span class="label">LEAK</span>' in first_row.group(1)
    assert dom.index("Leaks: 2") < dom.index("Every try: names x techniques")
    shot = tmp_path / "probe.png"  # kept under the test's tmp dir (CI keeps it as an artifact)
    shot.write_bytes(shown.png)
    width, height, _ = browser.png_pixels(shown.png)
    assert (width, height) == (1200, 3000)
    assert browser.dark_pixels(shown.png) > 5000  # text drawn, not a blank page


# --- the real probe's lines: `geoblock probe --html` with no gateway on the path (every try a leak) ---

def test_the_real_probe_writes_evidence_that_reads_verifies_and_renders(pki, tmp_path) -> None:
    """The engine's own JSON lines (a direct path to a loopback HTTPS and HTTP server, nothing judging:
    the listed name is reached, a leak, exit 1) read with evidence.read, pass probe-verify, and the page
    it writes with --html shows the leaks first with the file's digest."""
    from support.servers import TestServer

    tls, http = TestServer("127.0.0.1", pki), TestServer("127.0.0.1")
    listed = tmp_path / "listed.txt"
    listed.write_text("binance.com\n")
    out, html_out = tmp_path / "real.jsonl", tmp_path / "real.html"
    try:
        done = subprocess.run(
            [str(Path(sys.executable).with_name("geoblock")), "probe", str(listed), "--resolve",
             "binance.com=127.0.0.1", "--ca", str(pki.ca_pem), "--tls-port", str(tls.port), "--http-port",
             str(http.port), "--techniques", "tls-sni,http-host", "--concurrency", "1", "--timeout", "10",
             "-o", str(out), "--html", str(html_out)], capture_output=True, text=True, timeout=120)
    finally:
        tls.close()
        http.close()
    assert done.returncode == 1, done.stderr
    ev = evidence.read(out)
    assert ev.end is not None and ev.end["leaks"] == 2
    assert [(t["name"], t["technique"], t["finding"]) for t in ev.leaks] == [
        ("binance.com", "http-host", "leak"), ("binance.com", "tls-sni", "leak")]
    assert evidence.verify(out)
    verified = geoblock("probe-verify", out)
    assert verified.returncode == 0 and "2 leak(s)" in verified.stdout, verified.stderr
    text = html_out.read_text()
    assert hashlib.sha256(out.read_bytes()).hexdigest() in text
    leaks = text[text.index('id="leaks"'):text.index('id="overblocked"')]
    assert leaks.count('<span class="label">LEAK</span>') == 2 and "binance.com" in leaks


@pytest.mark.browser
def test_a_thousand_names_page_loads_in_chromium(tmp_path) -> None:
    """1,000 names x 18 techniques: Chromium loads the whole grid (every cell in its DOM) and draws it."""
    if browser.CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run does it as root)")
    path = tmp_path / "big.jsonl"
    names = [f"name{i:04}.example" for i in range(1000)]
    make_run(path, names, [], leaks={(names[999], "dot"): "handshake"})
    out = page.write(path, tmp_path / "big.html")
    listener = browser.Listener()
    try:
        shown = browser.visit(out.as_uri(), f"http://127.0.0.1:{listener.port}", tmp_path / "chromium",
                              extra=["--window-size=1200,3000"])
    finally:
        listener.close()
    assert shown.returncode == 0, shown.problems
    assert browser.page_requests(listener.requests) == []
    assert shown.dom.count('<td class="f-') == 18 * 1000 + 1
    assert shown.dom.rstrip().endswith("</html>")
    grid = shown.dom[shown.dom.index('id="grid"'):]
    assert re.search(r'<tr><td class="name">([^<]*)</td>', grid).group(1) == names[999]
    assert browser.dark_pixels(shown.png) > 5000
