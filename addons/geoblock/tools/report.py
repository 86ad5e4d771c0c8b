"""`geoblock report`: what the decision logs say happened, as one HTML page with charts, or as CSV/JSON.

    geoblock report LOG... [--since ISO] [--until ISO] [-o OUT] [--format html|csv|json]

LOG: decision log files, plain (`decisions.jsonl`) or rotated and compressed (`decisions.jsonl.2.gz`),
directories (every `*.jsonl*` file in them) or glob patterns. DuckDB reads them (in process, in
parallel, gzip included) with an explicit column for every field the report uses, so an odd record
(an `asn` that is text) gets a null there instead of changing a column's type, and a malformed line
(not JSON, cut short, no time or action) is counted, reported and left out, never fatal.

The tables (`build` returns them; docs/report.md says what each means): decisions over time by action,
top rules, top blocked names, clients with the most blocked attempts (counted per connection: distinct
`connection_id`, a record without one counting alone), where offshore servers are (country, ASN), the
share of `unknown_country` and `on_error` verdicts (and on_error's causes), lost records (`lost_before`),
and the ruleset and database versions in force over the period.

`--format html` (default) writes one self-contained page: inline SVG charts drawn by matplotlib, inline
CSS, no script, nothing fetched (its Content-Security-Policy forbids it), printable. `csv` writes a
directory with one file per table (a text cell a spreadsheet would run as a formula gets a leading `'`:
csv_cell); `json` one object with every table. Progress and the time taken go
to stderr. Exit codes: 0 written, 2 usage or input error (no such file, no record in the period).
"""

from __future__ import annotations

import argparse
import csv
import glob
import html
import io
import json
import os
import re
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO, TypeVar

import duckdb

from geoblock.errors import GeoblockError

TOP = 20  # rows of each "top" table
LOST_ROWS = 100  # rows of the lost-records table (the totals count them all)
ACTIONS = ("block", "log", "allow")
COLOURS = {"block": "#c0392b", "log": "#e6a23c", "allow": "#7fa87f"}

CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # shown as U+FFFD on a page (also discover's and the probe's)
EARLIEST, LATEST = "1970-01-01", "2200-01-01"  # the times a decision record may carry (UTC)

# Every field the report reads, with the type it is read as (read_json's `columns`): a value of another
# type becomes null in that column only. Fields missing from a record are null.
COLUMNS = {
    "ts": "VARCHAR", "stage": "VARCHAR", "client": "VARCHAR", "name": "VARCHAR", "server_ip": "VARCHAR",
    "country": "VARCHAR", "asn": "BIGINT", "offshore": "BOOLEAN", "action": "VARCHAR", "enforced": "BOOLEAN",
    "rule": "VARCHAR", "reason": "VARCHAR", "ruleset": "VARCHAR", "geoip_build": "VARCHAR",
    "asn_build": "VARCHAR", "error": "VARCHAR", "lost_before": "BIGINT", "connection_id": "VARCHAR",
    "platform": "VARCHAR",
}

# Time buckets for "decisions over time": the smallest giving at most MAX_BUCKETS bars.
BUCKETS = [("1 minute", 60), ("10 minutes", 600), ("1 hour", 3600), ("6 hours", 21600), ("1 day", 86400),
           ("7 days", 604800), ("30 days", 2592000)]
MAX_BUCKETS = 200


class ReportError(GeoblockError):
    """The report cannot be made: no such log file, no record in the period, an output that cannot be
    written. The message says which."""


@dataclass
class Table:
    """One table of the report: `columns` (names, snake_case) and `rows` (tuples of JSON values)."""

    name: str
    title: str
    columns: list[str]
    rows: list[tuple[Any, ...]]

    def dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


@dataclass
class Report:
    """What `build` found. `summary`: totals and the period (JSON values; times as ISO 8601 UTC text);
    `tables`: by name, in page order; `notes`: sentences a reader must know (bad lines skipped, clients
    counted per record because the log has no connection ids, ...)."""

    summary: dict[str, Any]
    tables: dict[str, Table]
    notes: list[str] = field(default_factory=list)


def log_files(args: Sequence[str]) -> list[str]:
    """The files named by `args`: files as given, every `*.jsonl*` file of a directory, glob matches.
    Raises ReportError for an argument that names nothing."""
    files: list[str] = []
    for arg in args:
        if os.path.isdir(arg):
            found = sorted(glob.glob(os.path.join(arg, "*.jsonl*")))
        elif os.path.isfile(arg):
            found = [arg]
        else:
            found = sorted(p for p in glob.glob(arg) if os.path.isfile(p))
        if not found:
            raise ReportError(f"{arg}: no such log file")
        files.extend(f for f in found if f not in files)
    return files


def parse_time(text: str) -> datetime:
    """An ISO 8601 date or date and time ("2026-11-24", "2026-11-24T14:00", "...Z", "...+05:00") as a
    naive UTC datetime (a time without an offset is taken as UTC). Raises ValueError."""
    value = datetime.fromisoformat(text)
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value


def _sql_list(items: Sequence[str]) -> str:
    return "[" + ", ".join("'" + item.replace("'", "''") + "'" for item in items) + "]"


def _columns_sql(columns: dict[str, str]) -> str:
    return "{" + ", ".join(f"'{name}': '{kind}'" for name, kind in columns.items()) + "}"


class _Progress:
    """Prints DuckDB's progress on the running query to `out` every second, once it has run a second."""

    def __init__(self, con: duckdb.DuckDBPyConnection, label: str, out: TextIO | None, prog: str) -> None:
        self.con, self.label, self.out, self.prog = con, label, out, prog
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _Progress:
        if self.out is not None:
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        if self.thread.is_alive():
            self.thread.join()

    def _run(self) -> None:
        assert self.out is not None
        start = time.monotonic()
        while not self.done.wait(1.0):
            try:
                share = self.con.query_progress()
            except duckdb.Error:
                return
            if share >= 0:
                print(f"{self.prog}: {self.label}: {share:.0f}% ({time.monotonic() - start:.0f} s)",
                      file=self.out, flush=True)


def _select(files: Sequence[str], columns: dict[str, str], shown_as: str | None = None) -> str:
    """The query reading `files` into `columns` (`t`: the time, null when `ts` is not one;
    `unknown_country`: the reason says that verdict applied; `file`: the file read, or `shown_as`)."""
    file = f" REPLACE ('{shown_as.replace(chr(39), chr(39) * 2)}' AS file)" if shown_as is not None else ""
    return f"""
        SELECT try_strptime(ts, '%Y-%m-%dT%H:%M:%S.%gZ') AS t, * EXCLUDE (reason){file},
               coalesce(reason LIKE '%unknown_country%', false) AS unknown_country
        FROM read_json({_sql_list(list(files))}, columns = {_columns_sql(columns)}, format = 'newline_delimited',
                       ignore_errors = true, maximum_object_size = 16777216, filename = 'file')"""


def _salvage_gzip(path: str, into: str) -> int:
    """Decompress the readable part of the gzip file `path` (one cut short, or damaged further on) into
    the file `into`; returns the bytes recovered. The last line, likely cut, is then a malformed line."""
    recovered = 0
    with open(path, "rb") as src, open(into, "wb") as dst:
        inflater = zlib.decompressobj(wbits=31)
        try:
            while chunk := src.read(1 << 20):
                while chunk:
                    out = inflater.decompress(chunk)
                    dst.write(out)
                    recovered += len(out)
                    if not inflater.eof:
                        break
                    chunk = inflater.unused_data  # a file of several gzip members (cat a.gz b.gz)
                    inflater = zlib.decompressobj(wbits=31)
        except zlib.error:
            pass
    return recovered


def _amount(size: int) -> str:
    """A size in bytes as a reader takes it in: `850 bytes`, `12.3 kB`, `4.5 MB`."""
    if size < 1000:
        return f"{size:,} bytes"
    return f"{size / 1e3:,.1f} kB" if size < 1_000_000 else f"{size / 1e6:,.1f} MB"


def _read_one_by_one(con: duckdb.DuckDBPyConnection, files: Sequence[str], notes: list[str],
                     progress: TextIO | None, columns: dict[str, str], prog: str) -> None:
    """Read `files` one at a time into the table `raw`: a file DuckDB cannot read (a .gz cut short) is
    read as far as it decompresses; one that cannot be read at all is left out. Both are noted."""
    created = False
    with tempfile.TemporaryDirectory(prefix="geoblock-report-") as tmp:
        for i, path in enumerate(files):
            query = _select([path], columns)
            try:
                con.execute(f"SELECT count(*) FROM ({query})")
            except duckdb.Error as exc:
                plain = os.path.join(tmp, f"{i}.jsonl")
                recovered = _salvage_gzip(path, plain) if path.endswith(".gz") else 0
                if not recovered:
                    notes.append(f"{path} could not be read and was left out ({str(exc).splitlines()[0]}).")
                    if progress is not None:
                        print(f"{prog}: {path}: cannot be read, left out (see the note below)", file=progress,
                              flush=True)
                    continue
                notes.append(f"{path} ends early (compressed data cut short or damaged): the first "
                             f"{_amount(recovered)} of its text were read.")
                query = _select([plain], columns, shown_as=path)
                if progress is not None:
                    print(f"{prog}: {path}: compressed data cut short or damaged: reading the "
                          f"{_amount(recovered)} of text before the damage", file=progress, flush=True)
            else:
                if progress is not None:
                    print(f"{prog}: reading {path}", file=progress, flush=True)
            con.execute(("INSERT INTO raw BY NAME " if created else "CREATE TABLE raw AS ") + query)
            created = True
    if not created:
        raise ReportError(f"none of the {len(files)} file(s) could be read")


@dataclass
class Logs:
    """Decision logs read by `read_logs`: `con` holds the view `d` (the records in the period, one row
    each, in the columns asked for plus `t`, `unknown_country` and `file`); `lines` read, `bad` of them
    malformed; `size` the files' bytes; `notes` on files read in part or left out."""

    con: duckdb.DuckDBPyConnection
    lines: int
    bad: int
    size: int
    notes: list[str]


def read_logs(files: Sequence[str], since: datetime | None = None, until: datetime | None = None,
              progress: TextIO | None = None, columns: dict[str, str] = COLUMNS,
              prog: str = "geoblock report") -> Logs:
    """Read the decision logs `files` (plain or .gz) into a new in-memory DuckDB connection: the view `d`
    holds the well-formed records with `since <= ts < until` (naive UTC datetimes; None: unbounded), with
    the fields `columns` (name: DuckDB type; COLUMNS, the report's, by default). `progress`: where to say
    how reading goes, each line starting with `prog` (None: silent). A file DuckDB cannot read whole is
    salvaged or left out, and noted. Raises ReportError when no file can be read, duckdb.Error."""
    size = sum(os.path.getsize(f) for f in files)
    con = duckdb.connect()
    threads = os.cpu_count() or 1
    con.execute(f"SET threads = {threads}")
    con.execute("SET preserve_insertion_order = false")
    if progress is not None:  # query_progress() is -1 without it; DuckDB's own bar stays off (ours: _Progress)
        con.execute("SET enable_progress_bar = true")
        con.execute("SET enable_progress_bar_print = false")
    label = f"reading {len(files)} file(s), {size / 1e6:,.1f} MB"
    if progress is not None:
        print(f"{prog}: {label}", file=progress, flush=True)
    notes: list[str] = []
    with _Progress(con, label, progress, prog):
        try:
            con.execute(f"CREATE TABLE raw AS {_select(files, columns)}")
        except duckdb.Error:  # a file that cannot be read whole (a .gz cut short): file by file, salvaging
            _read_one_by_one(con, files, notes, progress, columns, prog)
    # A time outside 1970-2199 is no decision's (a forged or corrupt line): counted as malformed, so that
    # the charts' date axis never meets a year it cannot draw.
    sane = f"t >= TIMESTAMP '{EARLIEST}' AND t < TIMESTAMP '{LATEST}'"
    row = con.execute(f"""SELECT count(*) FILTER (WHERE t IS NULL OR NOT ({sane}) OR action IS NULL
                                  OR action NOT IN ('allow', 'log', 'block')),
                                count(*) FROM raw""").fetchone()
    assert row is not None
    bad, lines = int(row[0]), int(row[1])
    where = ["t IS NOT NULL", sane, "action IN ('allow', 'log', 'block')"]
    if since is not None:  # a view takes no parameters: the literal of a datetime formatted here
        where.append(f"t >= TIMESTAMP '{since.isoformat(sep=' ')}'")
    if until is not None:
        where.append(f"t < TIMESTAMP '{until.isoformat(sep=' ')}'")
    # the records the report counts: a view (every query filters `raw` again, in memory) rather than a copy
    # lost_before counts records lost: a negative one (forged) is no count at all
    lost = "CASE WHEN lost_before > 0 THEN lost_before END AS lost_before"
    con.execute(f"CREATE VIEW d AS SELECT * {f'REPLACE ({lost}) ' if 'lost_before' in columns else ''}"
                f"FROM raw WHERE {' AND '.join(where)}")
    return Logs(con, lines, bad, size, notes)


def build(files: Sequence[str], since: datetime | None = None, until: datetime | None = None,
          progress: TextIO | None = None) -> Report:
    """Read the decision logs `files` (plain or .gz) and count what the report shows, for records with
    `since <= ts < until` (naive UTC datetimes; None: unbounded). `progress`: where to say how reading
    goes (None: silent). Raises ReportError when no record is left."""
    started = time.monotonic()
    logs = read_logs(files, since, until, progress)
    con = logs.con
    read_s = time.monotonic() - started
    report = _tables(con, files, logs.size, logs.lines, logs.bad, since, until)
    report.notes[:0] = logs.notes
    con.close()
    report.summary["read_seconds"] = round(read_s, 3)
    report.summary["seconds"] = round(time.monotonic() - started, 3)
    return report


def _one(con: duckdb.DuckDBPyConnection, sql: str) -> tuple[Any, ...]:
    row = con.execute(sql).fetchone()
    assert row is not None
    return tuple(row)


def _rows(con: duckdb.DuckDBPyConnection, sql: str) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in con.execute(sql).fetchall()]


def _tables(con: duckdb.DuckDBPyConnection, files: Sequence[str], size: int, lines: int, bad: int,
            since: datetime | None, until: datetime | None) -> Report:
    records, first, last, clients, with_id, unenforced = _one(con, """
        SELECT count(*), strftime(min(t), '%Y-%m-%dT%H:%M:%S.%gZ'), strftime(max(t), '%Y-%m-%dT%H:%M:%S.%gZ'),
               count(DISTINCT client), count(connection_id), count(*) FILTER (WHERE NOT enforced) FROM d""")
    if not records:
        period = f" between {since or 'the start'} and {until or 'the end'}" if since or until else ""
        raise ReportError(f"no decision record{period} in {len(files)} file(s) ({lines} line(s), {bad} malformed)")
    by_action = dict.fromkeys(ACTIONS, 0) | dict(_rows(con, "SELECT action, count(*) FROM d GROUP BY action"))
    span = (datetime.fromisoformat(last) - datetime.fromisoformat(first)).total_seconds()
    bucket, bucket_s = next(((b, s) for b, s in BUCKETS if span / s < MAX_BUCKETS), BUCKETS[-1])
    notes: list[str] = []
    if bad:
        notes.append(f"{bad:,} malformed line(s) skipped (not JSON, cut short, or without a time or an action).")
    # blocked attempts per connection: every distinct connection id once, a record without one alone
    attempts = "count(DISTINCT connection_id) + count(*) FILTER (WHERE connection_id IS NULL)"
    if with_id == 0:
        notes.append("The log has no connection ids (connection_id): clients' blocked attempts are counted "
                     "per record, so one visit can count 2-4 times.")
    elif with_id < records:
        notes.append(f"{records - with_id:,} record(s) have no connection id: each counts as one attempt.")
    if unenforced:
        notes.append(f"{unenforced:,} record(s) were not enforced (monitor mode): their blocks were only recorded.")
    lost, gaps = _one(con, "SELECT coalesce(sum(lost_before), 0), count(lost_before) FROM d")
    on_error, unknown = _one(con, "SELECT count(error), count(*) FILTER (WHERE unknown_country) FROM d")
    summary: dict[str, Any] = {
        "files": list(files), "bytes": size, "lines": lines, "malformed_lines": bad, "records": records,
        "first": first, "last": last,
        "since": since.isoformat() + "Z" if since else None, "until": until.isoformat() + "Z" if until else None,
        "by_action": by_action, "clients": clients, "records_with_connection_id": with_id,
        "unenforced": unenforced, "lost_records": int(lost), "lost_gaps": gaps,
        "unknown_country": unknown, "on_error": on_error, "bucket": bucket, "bucket_seconds": bucket_s,
    }
    tables = [
        Table("over_time", f"Decisions over time, by action (per {bucket})", ["bucket", "action", "records"],
              _rows(con, f"""SELECT strftime(time_bucket(INTERVAL '{bucket}', t, TIMESTAMP '2000-01-03'),
                                              '%Y-%m-%dT%H:%M:%SZ') AS b, action, count(*)
                              FROM d GROUP BY b, action ORDER BY b, action""")),
        Table("top_rules", "Top rules", ["rule", "records", "block", "log", "allow"],
              _rows(con, f"""SELECT rule, count(*) AS n, count(*) FILTER (WHERE action = 'block'),
                                   count(*) FILTER (WHERE action = 'log'), count(*) FILTER (WHERE action = 'allow')
                            FROM d WHERE rule IS NOT NULL GROUP BY rule ORDER BY n DESC, rule LIMIT {TOP}""")),
        Table("top_blocked_platforms", "Blocked attempts by platform",
              ["platform", "attempts", "records", "clients", "names"],
              _rows(con, f"""SELECT platform, {attempts} AS a, count(*), count(DISTINCT client), count(DISTINCT name)
                            FROM d WHERE action = 'block' AND platform IS NOT NULL
                            GROUP BY platform ORDER BY a DESC, platform LIMIT {TOP}""")),
        Table("top_blocked_names", "Top blocked names", ["name", "records", "attempts", "clients"],
              _rows(con, f"""SELECT name, count(*) AS n, {attempts}, count(DISTINCT client)
                            FROM d WHERE action = 'block' AND name IS NOT NULL
                            GROUP BY name ORDER BY n DESC, name LIMIT {TOP}""")),
        Table("top_clients", "Clients with the most blocked attempts", ["client", "attempts", "records", "names"],
              _rows(con, f"""SELECT client, {attempts} AS a, count(*), count(DISTINCT name)
                            FROM d WHERE action = 'block' AND client IS NOT NULL
                            GROUP BY client ORDER BY a DESC, client LIMIT {TOP}""")),
        Table("offshore_countries", "Offshore servers by country", ["country", "records", "blocked", "servers"],
              _rows(con, f"""SELECT country, count(*) AS n, count(*) FILTER (WHERE action = 'block'),
                                   count(DISTINCT server_ip)
                            FROM d WHERE offshore AND country IS NOT NULL
                            GROUP BY country ORDER BY n DESC, country LIMIT {TOP}""")),
        Table("offshore_asns", "Offshore servers by ASN", ["asn", "country", "records", "blocked", "servers"],
              _rows(con, f"""SELECT asn, mode(country), count(*) AS n, count(*) FILTER (WHERE action = 'block'),
                                   count(DISTINCT server_ip)
                            FROM d WHERE offshore AND asn IS NOT NULL
                            GROUP BY asn ORDER BY n DESC, asn LIMIT {TOP}""")),
        Table("verdict_causes", "Verdicts from unknown_country and on_error", ["cause", "records", "share"],
              [("unknown_country", unknown, unknown / records), ("on_error", on_error, on_error / records)]),
        Table("on_error_causes", "on_error verdicts by cause", ["error", "records"],
              _rows(con, f"""SELECT error, count(*) AS n FROM d WHERE error IS NOT NULL
                            GROUP BY error ORDER BY n DESC, error LIMIT {TOP}""")),
        Table("lost_records", "Lost records (lost_before: records lost just before this one)",
              ["ts", "file", "lost_before"],
              _rows(con, f"""SELECT strftime(t, '%Y-%m-%dT%H:%M:%S.%gZ') AS ts, file, lost_before
                            FROM d WHERE lost_before IS NOT NULL ORDER BY t LIMIT {LOST_ROWS}""")),
        Table("versions", "Ruleset and database versions in force",
              ["ruleset", "geoip_build", "asn_build", "first", "last", "records"],
              _rows(con, """SELECT ruleset, geoip_build, asn_build, strftime(min(t), '%Y-%m-%dT%H:%M:%S.%gZ') AS f,
                                  strftime(max(t), '%Y-%m-%dT%H:%M:%S.%gZ'), count(*)
                           FROM d GROUP BY ruleset, geoip_build, asn_build ORDER BY f""")),
    ]
    if gaps > LOST_ROWS:
        notes.append(f"Lost records: the table shows the first {LOST_ROWS} of {gaps:,} gaps; the totals count all.")
    return Report(summary, {t.name: t for t in tables}, notes)


# ---------------------------------------------------------------------------------------------- output

def to_json(report: Report) -> dict[str, Any]:
    """The report as one JSON object: {"summary": {...}, "notes": [...], "tables": {name: [row objects]}}."""
    return {"summary": report.summary, "notes": report.notes,
            "tables": {name: table.dicts() for name, table in report.tables.items()}}


def write_json(report: Report, out: Path) -> list[Path]:
    out.write_text(json.dumps(to_json(report), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return [out]


# What a spreadsheet reads as a formula (or a formula's start) at the head of a cell: OWASP's "CSV
# injection" list. A text cell starting so gets a `'` before it (shown as text by spreadsheets).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """`value` as written to a CSV cell: a text starting with one of FORMULA_STARTS (a name, rule or client
    taken from a log anyone may have forged: `=HYPERLINK(...)`) gets a `'` before it; numbers and other
    text are left as they are."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def write_csv(report: Report, out: Path) -> list[Path]:
    """One CSV file per table (header row first) in the directory `out` (created), and summary.csv
    (key, value; lists and objects as JSON). Text cells that a spreadsheet would run as a formula start
    with `'` (csv_cell)."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    path = out / "summary.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["key", "value"])
        for key, value in report.summary.items():
            w.writerow([key, csv_cell(json.dumps(value) if isinstance(value, list | dict) else value)])
        for note in report.notes:
            w.writerow(["note", csv_cell(note)])
    written.append(path)
    for table in report.tables.values():
        path = out / f"{table.name}.csv"
        with path.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(table.columns)
            w.writerows([csv_cell(v) for v in row] for row in table.rows)
        written.append(path)
    return written


def write_html(report: Report, out: Path) -> list[Path]:
    out.write_text(render_html(report), encoding="utf-8")
    return [out]


WRITERS: dict[str, Callable[[Report, Path], list[Path]]] = {"html": write_html, "csv": write_csv, "json": write_json}
DEFAULT_OUT = {"html": "report.html", "csv": "report-csv", "json": "report.json"}

# the pages' style: this report's, geoblock discover's and the probe's (probe/page.py)
CSS = """
body { font: 15px/1.45 "DejaVu Sans", Helvetica, Arial, sans-serif; color: #222; max-width: 60em; margin: 1.5em auto;
       padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: .2em; } h2 { font-size: 1.2em; margin-top: 1.8em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: .6em 0; font-size: .92em; }
th, td { border: 1px solid #ccc; padding: .2em .6em; text-align: left; vertical-align: top; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f2f2f2; } .note { background: #fff6e0; border-left: 4px solid #e6a23c; padding: .3em .8em; }
figure { margin: .6em 0; } figure svg { max-width: 100%; height: auto; }
.muted { color: #666; } dl { display: grid; grid-template-columns: max-content auto; gap: .1em 1em; }
dt { font-weight: bold; } dd { margin: 0; }
@media print { body { max-width: none; margin: 0; font-size: 11pt; } section { break-inside: avoid; }
               h2 { break-after: avoid; } }
"""


def svg_chart(draw: Callable[[Any], None], height: float) -> str:
    """A matplotlib figure drawn by `draw(axes)`, as inline SVG text (text kept as text, no ids that
    change from run to run)."""
    from matplotlib import rc_context
    from matplotlib.figure import Figure

    with rc_context({
        "svg.fonttype": "none",  # text as <text>: searchable, small, printable
        "svg.hashsalt": "geoblock",  # ids that do not change between runs
        "text.parse_math": False,  # a name with "$" in it is text, not mathematics
        "font.family": "DejaVu Sans",
    }):
        fig = Figure(figsize=(9, height), layout="constrained")
        draw(fig.add_subplot())
        buf = io.StringIO()
        fig.savefig(buf, format="svg")
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _bars(labels: list[str], values: list[int], colour: str, xlabel: str) -> Callable[[Any], None]:
    def draw(ax: Any) -> None:
        ys = list(range(len(labels)))[::-1]
        ax.barh(ys, values, color=colour)
        ax.set_yticks(ys, [label if len(label) <= 48 else label[:47] + "…" for label in labels])
        ax.set_xlabel(xlabel)
        for y, v in zip(ys, values, strict=True):
            ax.annotate(f"{v:,}", (v, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
        ax.spines[["top", "right"]].set_visible(False)
    return draw


def _bar_chart(table: Table, label: str, value: str, colour: str, xlabel: str) -> str:
    rows = table.dicts()
    if not rows:
        return ""
    # a label is text a client may have chosen: control characters (no glyph in any font) shown as U+FFFD
    labels = [CONTROL_CHARS.sub("\ufffd", str(r[label])) if r[label] is not None else "(none)" for r in rows]
    return svg_chart(_bars(labels, [int(r[value]) for r in rows], colour, xlabel), 0.6 + 0.28 * len(rows))


def _time_chart(report: Report) -> str:
    rows = report.tables["over_time"].rows
    buckets = sorted({r[0] for r in rows})
    counts = {(r[0], r[1]): r[2] for r in rows}
    width = report.summary["bucket_seconds"] / 86400 * 0.9

    def draw(ax: Any) -> None:
        import matplotlib.dates as mdates

        xs = [datetime.fromisoformat(b.replace("Z", "")) + timedelta(seconds=report.summary["bucket_seconds"] / 2)
              for b in buckets]
        bottom = [0] * len(buckets)
        for action in ACTIONS:
            ys = [counts.get((b, action), 0) for b in buckets]
            ax.bar(xs, ys, width=width, bottom=bottom, color=COLOURS[action], label=action)
            bottom = [a + b for a, b in zip(bottom, ys, strict=True)]
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(ax.xaxis.get_major_locator()))
        ax.set_ylabel(f"decisions per {report.summary['bucket']}")
        ax.legend(loc="upper left", frameon=False, ncols=3)
        ax.spines[["top", "right"]].set_visible(False)
    return svg_chart(draw, 3.4)


def _cell(value: Any, column: str) -> str:
    if value is None:
        return '<td class="muted">null</td>'
    if column == "share":
        return f'<td class="n">{value * 100:.2f} %</td>'
    if isinstance(value, int) and not isinstance(value, bool) and column not in ("asn",):
        return f'<td class="n">{value:,}</td>'
    return f"<td>{html.escape(str(value))}</td>"


def _table_html(table: Table, empty: str = "none in the period") -> str:
    if not table.rows:
        return f'<p class="muted">{html.escape(empty)}</p>'
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    body = "".join("<tr>" + "".join(_cell(v, c) for v, c in zip(row, table.columns, strict=True)) + "</tr>\n"
                   for row in table.rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>\n{body}</tbody></table>"


def render_html(report: Report) -> str:
    """The report as one self-contained HTML page (no script, nothing fetched)."""
    s, t = report.summary, report.tables
    e = html.escape
    by = ", ".join(f"{s['by_action'][a]:,} {a}" for a in ACTIONS)
    period = f"{s['first']} – {s['last']}"
    if s["since"] or s["until"]:
        period += f" (asked: {s['since'] or 'start'} – {s['until'] or 'end'})"
    files = "".join(f"<li><code>{e(f)}</code></li>" for f in s["files"])
    notes = "".join(f'<p class="note">{e(n)}</p>' for n in report.notes)
    v = t["verdict_causes"].dicts()
    sections = [
        ("Decisions over time", _time_chart(report), ""),
        ("Top rules", _bar_chart(t["top_rules"], "rule", "records", "#4a6fa5", "records"),
         _table_html(t["top_rules"])),
        ("Blocked attempts by platform",
         _bar_chart(t["top_blocked_platforms"], "platform", "attempts", COLOURS["block"],
                    "blocked attempts (connections)"), _table_html(t["top_blocked_platforms"])),
        ("Top blocked names", _bar_chart(t["top_blocked_names"], "name", "records", COLOURS["block"],
                                         "blocked records"), _table_html(t["top_blocked_names"])),
        ("Clients with the most blocked attempts",
         _bar_chart(t["top_clients"], "client", "attempts", "#8e44ad", "blocked attempts (connections)"),
         _table_html(t["top_clients"])),
        ("Where offshore servers are: countries",
         _bar_chart(t["offshore_countries"], "country", "records", "#16a085", "records"),
         _table_html(t["offshore_countries"])),
        ("Where offshore servers are: ASNs", "", _table_html(t["offshore_asns"])),
        ("unknown_country and on_error verdicts", "",
         f"<p>{v[0]['records']:,} record(s) ({v[0]['share'] * 100:.2f} %) got the policy's "
         f"<code>unknown_country</code> verdict; {v[1]['records']:,} ({v[1]['share'] * 100:.2f} %) its "
         "<code>on_error</code> verdict.</p>"
         + _table_html(t["verdict_causes"]) + "<h3>on_error causes</h3>" + _table_html(t["on_error_causes"])),
        ("Lost records", "",
         f"<p>{s['lost_records']:,} record(s) lost in {s['lost_gaps']:,} gap(s) (failed writes, a full disk): "
         "each row is the record written just after a gap.</p>" + _table_html(t["lost_records"], "no record lost")),
        ("Ruleset and database versions in force", "",
         "<p>Each row: a ruleset version (a hash of the rule files) and the GeoIP country and ASN database "
         "builds that decisions were made with, and when.</p>" + _table_html(t["versions"])),
    ]
    body = "".join(f'<section><h2>{e(title)}</h2>{f"<figure>{chart}</figure>" if chart else ""}{table}</section>\n'
                   for title, chart, table in sections)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>geoblock report {e(period)}</title><style>{CSS}</style></head>
<body><h1>geoblock report</h1>
<dl><dt>period</dt><dd>{e(period)}</dd>
<dt>decisions</dt><dd>{s['records']:,} ({e(by)})</dd>
<dt>clients</dt><dd>{s['clients']:,}</dd>
<dt>lost records</dt><dd>{s['lost_records']:,}</dd>
<dt>malformed lines</dt><dd>{s['malformed_lines']:,}</dd>
<dt>made</dt><dd>{datetime.now(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')} in {s['seconds']:.2f} s from
{len(s['files'])} file(s), {s['bytes'] / 1e6:,.1f} MB</dd></dl>
<ul class="muted">{files}</ul>
{notes}
{body}</body></html>
"""


_T = TypeVar("_T")


def reading_logs(prog: str, work: Callable[[], _T]) -> _T | None:
    """`work()` (read decision logs and write what they say), or None after telling stderr, as `prog`,
    why it failed: a ReportError (no such file, no record in the period), an OSError (writing), or a
    duckdb.Error (logs DuckDB cannot read). The commands over decision logs exit 2 on None."""
    try:
        return work()
    except (ReportError, OSError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
    except duckdb.Error as exc:
        print(f"{prog}: the logs could not be read: {exc}", file=sys.stderr)
    return None


def main(args: argparse.Namespace) -> int:
    """`geoblock report`: build the report of `args.logs` and write it (see the module's docstring)."""
    started = time.monotonic()
    try:
        since = parse_time(args.since) if args.since else None
        until = parse_time(args.until) if args.until else None
    except ValueError as exc:
        print(f"geoblock report: --since/--until: {exc}", file=sys.stderr)
        return 2
    out = Path(args.output or DEFAULT_OUT[args.format])

    def work() -> tuple[list[str], Report, list[Path]]:
        files = log_files(args.logs)
        report = build(files, since, until, progress=None if args.quiet else sys.stderr)
        return files, report, WRITERS[args.format](report, out)

    done = reading_logs("geoblock report", work)
    if done is None:
        return 2
    files, report, written = done
    s = report.summary
    for note in report.notes:
        print(f"geoblock report: note: {note}", file=sys.stderr)
    print(f"geoblock report: {s['records']:,} records from {len(files)} file(s) ({s['malformed_lines']:,} malformed "
          f"line(s) skipped) in {time.monotonic() - started:.2f} s -> {', '.join(map(str, written[:1]))}"
          f"{' (+' + str(len(written) - 1) + ' files)' if len(written) > 1 else ''}", file=sys.stderr)
    return 0


def add_parser(sub: Any) -> None:
    """The `report` subcommand on the `geoblock` parser's subparsers `sub`."""
    p = sub.add_parser("report", help="a report (HTML with charts, CSV or JSON) of decision logs",
                       description="What the decision logs say happened: one self-contained HTML page with "
                                   "charts, or the same tables as CSV or JSON.")
    p.add_argument("logs", nargs="+", metavar="LOG",
                   help="decision log files (.jsonl, rotated .gz), directories or glob patterns")
    p.add_argument("--since", help="only records at or after this time (ISO 8601; UTC unless an offset is given)")
    p.add_argument("--until", help="only records before this time (ISO 8601)")
    p.add_argument("-o", "--output", help="where to write (default: report.html, report.json, or the "
                                          "directory report-csv/ for csv)")
    p.add_argument("--format", choices=sorted(WRITERS), default="html")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr (the final line stays)")
    p.set_defaults(func=main)
