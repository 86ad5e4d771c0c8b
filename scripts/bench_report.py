#!/usr/bin/env python3
"""Benchmark: `geoblock report` over large decision logs (a benchmark, not a test: figures, no verdict).

For each size (default 1,000,000 and 10,000,000 records) it writes a decision log of that many records
(tests/support/report_log.py: connections, rules, offshore servers, unknown_country and on_error verdicts,
lost records, two ruleset versions; about 450 bytes a record) as logrotate leaves it, one file per million
records (`decisions.jsonl.N`, ..., `decisions.jsonl`), then times the installed `geoblock report` command
on it, as an operator runs it: the HTML page (`--format html`) and the JSON tables (`--format json`), each
`--rounds` times (a fresh process each, the files in the page cache after the first). With `--gzip` it
also times the first size with its files compressed (`.gz`, as logrotate's `compress` leaves them).

    .venv-3.11/bin/python scripts/bench_report.py [--sizes 1000000 10000000] [--rounds 3] [--gzip]
        [--out bench-results/report.json] [--dir DIR (kept; default: a temporary directory, removed)]

Prints a markdown table (median and best wall time of each case, the report's own reading time, the
peak memory of the report process) and writes JSON. The target (issue 13): under 10 s for 1M records on
the 2-core reference machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import _paths  # noqa: F401 - makes tests/support importable as `support`
from bench_common import calibrate, source_state
from support.report_log import START, generate, write_jsonl

GEOBLOCK = Path(sys.executable).with_name("geoblock")
CHUNK = 1_000_000  # records per file (and per generate() call: bounded memory)


def write_log(directory: Path, n: int, gz: bool = False) -> list[Path]:
    """`n` records in files of CHUNK records, oldest first as logrotate numbers them; 10 days per file."""
    directory.mkdir(parents=True, exist_ok=True)
    parts = (n + CHUNK - 1) // CHUNK
    files = []
    for i in range(parts):
        count = min(CHUNK, n - i * CHUNK)
        records, _ = generate(count, seed=1000 + i, days=10, start=START + timedelta(days=10 * i))
        suffix = f".{parts - 1 - i}" if i < parts - 1 else ""
        path = directory / f"decisions.jsonl{suffix}{'.gz' if gz else ''}"
        write_jsonl(path, records, gzip_it=gz)
        files.append(path)
        print(f"bench: wrote {path.name} ({count:,} records, {path.stat().st_size / 1e6:,.0f} MB)",
              file=sys.stderr, flush=True)
    return files


def generate_elsewhere(directory: Path, n: int, gz: bool) -> list[Path]:
    """write_log in a child process, so this one stays small: on Linux a child's peak RSS (ru_maxrss, as
    wait4 reports it) starts from its parent's size at the fork, and the generator holds a million records."""
    cmd = [sys.executable, __file__, "--generate", str(directory), str(n)] + (["--gzip"] if gz else [])
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
    return [Path(line) for line in done.stdout.splitlines()]


def time_report(files: list[Path], fmt: str, out: Path) -> dict:
    """One `geoblock report` run: wall seconds, the report's own seconds, peak RSS (MB) of the process."""
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen([str(GEOBLOCK), "report", *map(str, files), "--format", fmt, "-o", str(out)],
                                stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)  # this process's own resource use (ru_maxrss: KiB)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    if proc.returncode != 0:
        raise SystemExit(f"bench: geoblock report failed ({proc.returncode}):\n{stderr}")
    summary = json.loads(out.read_text())["summary"] if fmt == "json" else {}
    return {"wall_s": wall, "report_s": summary.get("seconds"), "read_s": summary.get("read_seconds"),
            "records": summary.get("records"), "peak_rss_mb": usage.ru_maxrss / 1024,
            "cpu_s": usage.ru_utime + usage.ru_stime, "stderr_tail": stderr.strip().splitlines()[-1]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--gzip", action="store_true", help="also time the first size with .gz files")
    ap.add_argument("--out", type=Path, default=Path("bench-results/report.json"))
    ap.add_argument("--dir", type=Path, help="where to write the logs (kept); default: a temporary directory")
    ap.add_argument("--generate", nargs=2, metavar=("DIR", "N"), help=argparse.SUPPRESS)  # generate_elsewhere
    args = ap.parse_args()
    if args.generate:
        for path in write_log(Path(args.generate[0]), int(args.generate[1]), args.gzip):
            print(path)
        return 0
    work = args.dir or Path(tempfile.mkdtemp(prefix="geoblock-bench-report-"))
    calib0 = calibrate()
    cases = [(n, False) for n in args.sizes] + ([(args.sizes[0], True)] if args.gzip else [])
    results = []
    try:
        for n, gz in cases:
            directory = work / f"{n}{'-gz' if gz else ''}"
            t0 = time.perf_counter()
            files = generate_elsewhere(directory, n, gz)
            made = time.perf_counter() - t0
            size = sum(f.stat().st_size for f in files)
            for fmt in ("html", "json"):
                runs = [time_report(files, fmt, work / f"report-{n}.{fmt}") for _ in range(args.rounds)]
                walls = [r["wall_s"] for r in runs]
                row = {"records": n, "gzip": gz, "files": len(files), "bytes": size, "format": fmt,
                       "wall_median_s": statistics.median(walls), "wall_best_s": min(walls), "runs": runs,
                       "generate_s": made}
                results.append(row)
                print(f"bench: {n:,} records{' (.gz)' if gz else ''}, {fmt}: median {row['wall_median_s']:.2f} s "
                      f"({', '.join(f'{w:.2f}' for w in walls)})", file=sys.stderr, flush=True)
            if args.dir is None:
                shutil.rmtree(directory)
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    calib1 = calibrate()
    print("| records | files | size | format | median | best | report's own (json) | read | CPU | peak RSS |")
    print("|---:|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for row in results:
        own = [r["report_s"] for r in row["runs"] if r["report_s"] is not None]
        read = [r["read_s"] for r in row["runs"] if r["read_s"] is not None]
        peak = max(r["peak_rss_mb"] for r in row["runs"])
        cpu = statistics.median(r["cpu_s"] for r in row["runs"])
        print(f"| {row['records']:,} | {row['files']}{' .gz' if row['gzip'] else ''} | {row['bytes'] / 1e6:,.1f} MB "
              f"| {row['format']} | {row['wall_median_s']:.2f} s | {row['wall_best_s']:.2f} s "
              f"| {f'{statistics.median(own):.2f} s' if own else '-'} "
              f"| {f'{statistics.median(read):.2f} s' if read else '-'} | {cpu:.2f} s | {peak:,.0f} MB |")
    print(f"\nspeed index {calib0:.1f} / {calib1:.1f} ms (before / after; lower = faster), {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"results": results, "calibration_ms": [calib0, calib1], "cpus": os.cpu_count(),
                                    "python": platform.python_version(), "source": source_state()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
