"""`geoblock report` over a decision log of known content, run as an operator runs it (the installed
`geoblock` command, in a subprocess), and its HTML page rendered by a real headless Chromium.

The log (tests/support/report_log.py): 4,000 records over five days, in three files as logrotate leaves
them (`decisions.jsonl.2.gz`, `decisions.jsonl.1`, `decisions.jsonl`), with malformed lines among them and
one record whose name is HTML and mathtext. Every number the report gives is checked against counts made
in plain Python over the same records.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from support import browser
from support.report_log import BLOCK_RULE, VERSIONS, Expected, generate, write_jsonl

GEOBLOCK = Path(sys.executable).with_name("geoblock")
EVIL = "<script>alert(1)</script>$x^2$.example"  # a name a client chose: text on the page, not markup or maths


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(GEOBLOCK), "report", *map(str, args)], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def logs(tmp_path_factory) -> tuple[Path, Expected, int]:
    """(directory holding the three log files, what the report must say, malformed lines written)."""
    directory = tmp_path_factory.mktemp("report-logs")
    records, expected = generate(4000, seed=13, days=5)
    evil = {**records[-1], "ts": records[-1]["ts"][:-4] + "999Z", "name": EVIL, "host": EVIL, "action": "block",
            "rule": BLOCK_RULE, "reason": f"{EVIL} is listed", "connection_id": "c-evil"}
    evil.pop("error", None)
    evil.pop("lost_before", None)
    records.append(evil)
    expected.add(evil)
    bad = write_jsonl(directory / "decisions.jsonl.2.gz", records[:1500], gzip_it=True, bad_lines=[3, 700, 1499])
    bad += write_jsonl(directory / "decisions.jsonl.1", records[1500:2800], bad_lines=[10])
    bad += write_jsonl(directory / "decisions.jsonl", records[2800:], bad_lines=[5])
    return directory, expected, bad


@pytest.fixture(scope="module")
def as_json(logs, tmp_path_factory) -> tuple[dict, str]:
    directory, _, _ = logs
    out = tmp_path_factory.mktemp("report-json") / "report.json"
    done = run(directory / "decisions.jsonl.2.gz", directory / "decisions.jsonl.1", directory / "decisions.jsonl",
               "--format", "json", "-o", out)
    assert done.returncode == 0, done.stderr
    return json.loads(out.read_text()), done.stderr


def test_the_json_report_gives_the_numbers_of_the_log(logs, as_json) -> None:
    _, exp, bad = logs
    report, stderr = as_json
    s, t = report["summary"], report["tables"]
    assert bad == 5
    assert (s["records"], s["malformed_lines"], s["lines"]) == (exp.records, 5, exp.records + 5)
    assert "5 malformed line(s) skipped" in stderr and f"{exp.records:,} records from 3 file(s)" in stderr
    assert s["by_action"] == {a: exp.by_action[a] for a in ("block", "log", "allow")}
    assert (s["first"], s["last"]) == (exp.first_ts, exp.last_ts)
    assert s["clients"] == len(exp.clients)
    # over time: hourly buckets over five days; summed per day they are the day's decisions by action
    assert s["bucket"] == "1 hour"
    per_day: Counter[tuple[str, str]] = Counter()
    for row in t["over_time"]:
        per_day[(row["bucket"][:10], row["action"])] += row["records"]
    assert per_day == exp.by_day_action
    assert {r["rule"]: r["records"] for r in t["top_rules"]} == dict(exp.by_rule)
    assert {r["name"]: r["records"] for r in t["top_blocked_names"]} == dict(exp.blocked_names)
    assert t["top_blocked_names"][0]["records"] == max(exp.blocked_names.values())
    # platforms, as a regulator counts: blocked attempts (connections) per platform
    assert {r["platform"]: r["attempts"] for r in t["top_blocked_platforms"]} == {
        p: len(conns) for p, conns in exp.platform_connections.items()} and len(exp.platform_connections) == 5
    # clients: blocked attempts are connections, not records (an intercepted tunnel gives several records)
    clients = {r["client"]: (r["attempts"], r["records"]) for r in t["top_clients"]}
    want = {c: (len(conns), exp.client_blocked_records[c]) for c, conns in exp.client_blocked_connections.items()}
    top = sorted(want.items(), key=lambda kv: (-kv[1][0], kv[0]))[:20]
    assert clients == dict(top)
    assert any(a < n for a, n in clients.values()), "the log should have clients with several records per attempt"
    assert {r["country"]: r["records"] for r in t["offshore_countries"]} == dict(exp.offshore_countries)
    assert {r["asn"]: r["records"] for r in t["offshore_asns"]} == dict(exp.offshore_asns)
    causes = {r["cause"]: (r["records"], r["share"]) for r in t["verdict_causes"]}
    assert causes == {"unknown_country": (exp.unknown_country, pytest.approx(exp.unknown_country / exp.records)),
                      "on_error": (exp.on_error, pytest.approx(exp.on_error / exp.records))}
    assert exp.unknown_country > 0 and exp.on_error > 0
    assert {r["error"]: r["records"] for r in t["on_error_causes"]} == dict(exp.on_error_causes)
    assert (s["lost_records"], s["lost_gaps"]) == (exp.lost, exp.lost_gaps) and exp.lost > 0
    assert sum(r["lost_before"] for r in t["lost_records"]) == exp.lost
    assert {r["file"].rsplit("/", 1)[-1] for r in t["lost_records"]} <= {"decisions.jsonl.2.gz", "decisions.jsonl.1",
                                                                        "decisions.jsonl"}
    versions = {(r["ruleset"], r["geoip_build"], r["asn_build"]): r["records"] for r in t["versions"]}
    assert versions == dict(exp.versions)
    assert [r["ruleset"] for r in t["versions"]] == [v[0] for v in VERSIONS]  # in the order they came into force
    assert t["versions"][0]["last"] < t["versions"][1]["first"]


def test_csv_gives_the_same_tables(logs, as_json, tmp_path) -> None:
    directory, exp, _ = logs
    done = run(directory, "--format", "csv", "-o", tmp_path / "csv")  # a directory: every *.jsonl* file in it
    assert done.returncode == 0, done.stderr
    report, _ = as_json
    for name, rows in report["tables"].items():
        with (tmp_path / "csv" / f"{name}.csv").open(newline="") as f:
            got = list(csv.DictReader(f))
        assert len(got) == len(rows), name
        for have, want in zip(got, rows, strict=True):
            assert have == {k: "" if v is None else str(v) for k, v in want.items()}, name
    with (tmp_path / "csv" / "summary.csv").open(newline="") as f:
        summary = {row["key"]: row["value"] for row in csv.DictReader(f)}
    assert summary["records"] == str(exp.records) and summary["malformed_lines"] == "5"


FORGED = {  # column of the CSV -> a value a forged log gives it, which a spreadsheet would run as a formula
    "name": '=HYPERLINK("http://evil.example/","open")', "rule": "@SUM(1+1)", "client": "+1+cmd|' /C calc'!A0",
    "ruleset": "-2+3", "geoip_build": "\t=1+1"}


def test_csv_cells_a_spreadsheet_would_run_as_formulas_start_with_a_quote(tmp_path) -> None:
    """OWASP's CSV injection: a text cell starting with =, +, -, @, a tab or a carriage return gets a `'`
    before it; numbers (negative ones too) and ordinary text are written as they are."""
    records = [{"ts": f"2026-11-20T08:0{i}:00.000Z", "stage": "tls", "action": "block", "reason": "forged",
                "connection_id": f"c-{i}", "country": "KY", "asn": 64500, "offshore": True, "enforced": True,
                "server_ip": "203.0.113.1", **values}
               for i, values in enumerate([FORGED, {"name": "ok.example", "rule": "plain", "client": "10.0.0.2",
                                                    "ruleset": "0123456789ab", "geoip_build": "2026-11-17"}])]
    log = tmp_path / "decisions.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    done = run(log, "--format", "csv", "-o", tmp_path / "csv")
    assert done.returncode == 0, done.stderr

    def column(table: str, name: str) -> list[str]:
        with (tmp_path / "csv" / f"{table}.csv").open(newline="", encoding="utf-8") as f:
            return [row[name] for row in csv.DictReader(f)]

    assert sorted(column("top_blocked_names", "name")) == ["'" + FORGED["name"], "ok.example"]
    assert sorted(column("top_rules", "rule")) == ["'" + FORGED["rule"], "plain"]
    assert sorted(column("top_clients", "client")) == ["'" + FORGED["client"], "10.0.0.2"]
    assert sorted(column("versions", "ruleset")) == ["'" + FORGED["ruleset"], "0123456789ab"]
    assert sorted(column("versions", "geoip_build")) == ["'" + FORGED["geoip_build"], "2026-11-17"]
    assert column("top_rules", "records") == ["1", "1"]  # numbers untouched
    # no cell of any file starts a formula
    for path in (tmp_path / "csv").glob("*.csv"):
        with path.open(newline="", encoding="utf-8") as f:
            cells = [cell for row in csv.reader(f) for cell in row]
        assert not [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r")], path


def test_since_and_until_keep_the_period(logs, tmp_path) -> None:
    directory, exp, _ = logs
    out = tmp_path / "day.json"
    done = run(directory, "--since", "2026-11-22", "--until", "2026-11-23T00:00:00Z", "--format", "json", "-o", out)
    assert done.returncode == 0, done.stderr
    s = json.loads(out.read_text())["summary"]
    assert s["by_action"] == {a: exp.by_day_action[("2026-11-22", a)] for a in ("block", "log", "allow")}
    assert s["first"].startswith("2026-11-22") and s["last"].startswith("2026-11-22")
    empty = run(directory, "--since", "2030-01-01", "-o", tmp_path / "none.html")
    assert empty.returncode == 2 and "no decision record between" in empty.stderr
    assert not (tmp_path / "none.html").exists()
    missing = run(tmp_path / "nothing.jsonl", "-o", tmp_path / "x.html")
    assert missing.returncode == 2 and "nothing.jsonl: no such log file" in missing.stderr


def test_a_log_without_connection_ids_counts_records_and_says_so(tmp_path) -> None:
    records, exp = generate(600, seed=5, days=1, connection_ids=False)
    write_jsonl(tmp_path / "old.jsonl", records)
    done = run(tmp_path / "old.jsonl", "--format", "json", "-o", tmp_path / "r.json")
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert "no connection ids" in done.stderr and any("no connection ids" in n for n in report["notes"])
    assert all(r["attempts"] == r["records"] == exp.client_blocked_records[r["client"]]
               for r in report["tables"]["top_clients"])


def test_forged_times_and_counts_are_malformed_not_a_crash(tmp_path) -> None:
    """Found by a review: a record dated 9999-12-31 or 0001-01-01 stopped the HTML page (the charts' date
    axis cannot draw those years), and a negative lost_before was reported as lost records."""
    records, _ = generate(200, seed=7, days=1)
    forged = [{**records[0], "ts": "9999-12-31T23:59:59.999Z"}, {**records[1], "ts": "0001-01-01T00:00:00.000Z"},
              {**records[2], "lost_before": -5}]
    write_jsonl(tmp_path / "forged.jsonl", records[3:] + forged)
    page = run(tmp_path / "forged.jsonl", "-o", tmp_path / "r.html")
    assert page.returncode == 0, page.stderr
    assert "<svg" in (tmp_path / "r.html").read_text()
    done = run(tmp_path / "forged.jsonl", "--format", "json", "-o", tmp_path / "r.json")
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["summary"]["malformed_lines"] == 2 and report["summary"]["records"] == 198
    assert all(row["lost_before"] > 0 for row in report["tables"]["lost_records"]) and report["summary"]["lost_records"] >= 0


@pytest.fixture(scope="module")
def page(logs, tmp_path_factory) -> Path:
    directory, _, _ = logs
    out = tmp_path_factory.mktemp("report-html") / "report.html"
    done = run(directory, "-o", out)
    assert done.returncode == 0, done.stderr
    return out


def test_the_html_page_holds_the_numbers_and_nothing_from_outside(logs, as_json, page) -> None:
    _, exp, _ = logs
    text = page.read_text()
    report, _ = as_json
    assert f"{exp.records:,} (" in text and "5 malformed line(s) skipped" in text
    name, count = exp.blocked_names.most_common(1)[0]
    assert f'<td>{name}</td><td class="n">{count:,}</td>' in text
    for client in report["tables"]["top_clients"][:5]:
        assert f'<td>{client["client"]}</td><td class="n">{client["attempts"]:,}</td>' in text
    for ruleset, geoip, asn in exp.versions:
        assert f"<td>{ruleset}</td><td>{geoip}</td><td>{asn}</td>" in text
    assert f"{exp.lost:,} record(s) lost in {exp.lost_gaps:,} gap(s)" in text
    assert f"{exp.on_error:,} ({exp.on_error / exp.records * 100:.2f} %) its <code>on_error</code>" in text
    assert text.count("<svg") == 6  # over time, rules, platforms, names, clients, countries
    # a client's name is text: escaped in tables and charts, never markup, never mathtext
    assert "<script" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;$x^2$.example" in text
    assert "Content-Security-Policy" in text and "<link" not in text and "src=" not in text
    assert "href=" not in text.replace('xlink:href="#', "")  # only the SVG's own glyph references


@pytest.mark.browser
def test_the_page_renders_in_chromium_offline(page, tmp_path) -> None:
    if browser.CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run does it as root)")
    listener = browser.Listener()
    console = ["--enable-logging=stderr", "--v=0", "--window-size=1000,5000"]
    try:
        # the check sees console errors: a page that has some shows them in the log
        control = tmp_path / "control.html"
        control.write_text('<!DOCTYPE html><p>x</p><img src="http://fetch.test/x.png">'
                           "<script>undefinedFunction()</script>")
        seen = browser.visit(control.as_uri(), f"http://127.0.0.1:{listener.port}", tmp_path / "control", extra=console)
        assert "INFO:CONSOLE" in seen.log and "undefinedFunction" in seen.log
        # ... and a page that fetches something shows at the listener
        assert browser.page_requests(listener.requests) == [b"GET http://fetch.test/x.png HTTP/1.1"]
        seen_requests = len(listener.requests)
        shown = browser.visit(page.as_uri(), f"http://127.0.0.1:{listener.port}", tmp_path / "chromium", extra=console)
    finally:
        listener.close()
    assert shown.returncode == 0, shown.problems
    assert [line for line in shown.log.splitlines() if "CONSOLE" in line] == []
    assert browser.page_requests(listener.requests[seen_requests:]) == []
    assert shown.title.startswith("geoblock report")
    assert shown.dom.count("<svg") == 6 and shown.dom.count("<path") > 300  # the charts drawn: bars, ticks, axes
    assert "Clients with the most blocked attempts" in shown.dom
    shot = tmp_path / "report.png"  # kept under the test's tmp dir (CI keeps it as an artifact)
    shot.write_bytes(shown.png)
    width, height, _ = browser.png_pixels(shown.png)
    assert (width, height) == (1000, 5000)
    assert browser.dark_pixels(shown.png) > 5000  # text and charts drawn, not a blank page


def test_a_rotated_part_cut_short_is_read_as_far_as_it_goes(logs, tmp_path) -> None:
    """A .gz cut short (a copy taken while logrotate compressed it) is read up to the cut and said so; a
    file that is no gzip at all is left out and said so; the other files are reported as usual."""
    directory, exp, _ = logs
    whole = (directory / "decisions.jsonl.2.gz").read_bytes()
    (tmp_path / "decisions.jsonl.2.gz").write_bytes(whole[:len(whole) // 2])
    (tmp_path / "decisions.jsonl.3.gz").write_bytes(b"not gzip\n")
    out = tmp_path / "r.json"
    done = run(tmp_path / "decisions.jsonl.3.gz", tmp_path / "decisions.jsonl.2.gz", directory / "decisions.jsonl.1",
               directory / "decisions.jsonl", "--format", "json", "-o", out)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    s = report["summary"]
    assert "decisions.jsonl.2.gz ends early" in done.stderr and "decisions.jsonl.3.gz could not be read" in done.stderr
    # the progress lines name each damaged file with what is wrong with it, never bare
    lines = done.stderr.splitlines()
    assert f"geoblock report: {tmp_path / 'decisions.jsonl.2.gz'}" not in lines
    assert f"geoblock report: {tmp_path / 'decisions.jsonl.3.gz'}: cannot be read, left out (see the note below)" in lines
    assert any(line.startswith(f"geoblock report: {tmp_path / 'decisions.jsonl.2.gz'}: compressed data cut short or "
                               "damaged: reading the ") and line.endswith(" of text before the damage") for line in lines)
    assert any("ends early" in n for n in report["notes"]) and any("left out" in n for n in report["notes"])
    # the plain parts whole (records 1500 on, 2 malformed lines), and a part of the cut one's 1500 records
    assert exp.records - 1500 < s["records"] < exp.records
    assert s["last"] == exp.last_ts and s["first"] == exp.first_ts
