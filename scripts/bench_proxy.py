#!/usr/bin/env python3
"""Benchmark: keep-alive HTTP throughput through mitmdump WITH geoblock vs the same mitmdump WITHOUT it.

Both mitmdump processes run side by side for the whole run (same version, same options, same
`connection_strategy=lazy`; the geoblock one adds `-s addons/block.py` with the shipped rules, test GeoIP
databases and the decision log ON, written to a temporary file). wrk drives them with N keep-alive
connections, through the proxy (absolute-form request `http://127.0.0.1:PORT/` plus a Host header naming an
allowed host), to a small asyncio keep-alive HTTP server on 127.0.0.1 (KeepAliveServer of
tests/support/servers.py; placed in the home country by the test database, so every request is allowed
and forwarded upstream).

Two kinds of round, both interleaved (`--mode both`, the default, runs the alternating rounds and then the
concurrent ones):
- alternate: one proxy at a time, A B, B A, ... (each configuration goes first equally often);
- concurrent: every proxy driven at once by its own wrk, all pinned to one CPU, so the scheduler
  interleaves them a few milliseconds at a time and each gets an equal share of that CPU. Whatever the
  host does to the CPU's speed (this is a shared virtual machine) then reaches every arm alike, and the
  ratio of their request rates is the ratio of their costs per request.
With `--pin` (the default with 2+ CPUs) every mitmdump runs on the last CPU and wrk and the upstream on
the others, in both modes.

Before the rounds, the upstream server is measured alone (wrk straight at it) to show it is not the
bottleneck; so is tests/support/servers.py's ThreadingHTTPServer, for comparison.

After each round the decision-log lines written during it are counted and checked (one record per
request: stage "http", action "allow", the Host name).

Noise: on a shared 2-core virtual machine, alternating rounds move by 10-30 % from one to the next. Each
round records the CPU other processes used while it ran (and is flagged "disturbed" above 5 % of a CPU),
and a speed index (a fixed pure-Python loop timed before and after) that shows the host's own load. The
summary gives the ratio of the medians and the median of the per-round ratios. Reference arms, each one
more mitmdump without geoblock:
- `--noop-baseline`: a do-nothing script addon, to separate what any `-s` script costs from geoblock's work;
- `--frozen-baseline`: a script that only freezes the start-up heap as geoblock does (geoblock_gc_freeze),
  so "with geoblock / frozen bare" is what geoblock costs apart from the collector's savings it brings.

    .venv-3.11/bin/python scripts/bench_proxy.py [--mode both] [--rounds 12] [--duration 10] [--noop-baseline]
        [--frozen-baseline]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _paths  # makes tests/support importable as `support`
from bench_common import calibrate, source_state
from support.geodb import write_asn_db, write_country_db
from support.proc import Mitmdump
from support.servers import KeepAliveServer

REPO = _paths.REPO

TARGET_RATIO = 0.95
NOOP = "no-op script addon"
FROZEN = "frozen bare"
# Reference arms: label -> (script addon, what its column and summary line say). The scripts import geoblock
# as installed in the environment mitmdump runs from (scripts/bootstrap.sh installs it).
REFERENCES = {
    NOOP: ("class NoOp:\n    name = 'benchnoop'\n\n    def requestheaders(self, flow):\n        pass\n\n\n"
           "addons = [NoOp()]\n", "no-op script", "what any `-s` script costs"),
    FROZEN: ("from geoblock.mitm import heap\n\n\n"
             "class Freeze:\n    name = 'benchfreeze'\n\n    def running(self):\n        heap.settle()\n\n\n"
             "addons = [Freeze()]\n",
             "frozen bare", "mitmdump alone with its start-up heap frozen as geoblock_gc_freeze does"),
}
DISTURBED = 0.05  # a round is "disturbed" when other processes used > 5 % of one CPU during it


# ---------------------------------------------------------------------------------------------------
# wrk


def wrk_script(directory: Path, upstream_port: int, host_header: str | None) -> Path:
    """Lua for wrk: absolute-form target (proxy request) and a Host header."""
    lines = ['wrk.method = "GET"', f'wrk.path = "http://127.0.0.1:{upstream_port}/"']
    if host_header:
        lines.append(f'wrk.headers["Host"] = "{host_header}"')
    path = directory / f"proxy-{upstream_port}.lua"
    path.write_text("\n".join(lines) + "\n")
    return path


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def start_wrk(url: str, duration: float, connections: int, threads: int,
              script: Path | None) -> "tuple[subprocess.Popen[str], list[str]]":
    seconds = max(1, math.ceil(duration))  # wrk takes whole seconds
    cmd = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "--timeout", "10s", "--latency"]
    if script is not None:
        cmd += ["-s", str(script)]
    cmd.append(url)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), cmd


def run_wrk(url: str, duration: float, connections: int, threads: int, script: Path | None) -> dict:
    return finish_wrk(*start_wrk(url, duration, connections, threads, script), timeout=duration + 60)


def finish_wrk(wrk: "subprocess.Popen[str]", cmd: list[str], timeout: float) -> dict:
    try:
        out, err = wrk.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        wrk.kill()
        wrk.communicate()
        raise RuntimeError(f"wrk did not finish in {timeout:g} s: {' '.join(cmd)}") from None
    proc = subprocess.CompletedProcess(cmd, wrk.returncode, out, err)
    out = proc.stdout
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr}\n{out}")
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not (m and rps):
        raise RuntimeError(f"cannot read wrk output:\n{out}")
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    lat = {}
    for pct in ("50", "99"):
        lm = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if lm:
            lat[f"p{pct}_ms"] = float(lm.group(1)) * _UNITS[lm.group(2)]
    return {
        "requests": int(m.group(1)),
        "seconds": float(m.group(2)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[m.group(3)],
        "req_per_s": float(rps.group(1)),
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": sum(map(int, errors.groups())) if errors else 0,
        "latency": lat,
        "command": " ".join(cmd),
    }


# ---------------------------------------------------------------------------------------------------
# helpers


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def system_busy_seconds() -> float:
    """CPU time all processes used, from /proc/stat (all CPUs together)."""
    parts = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in parts[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_seconds() -> float:
    """CPU time of this process (upstream server, driver) and of its waited-for children (wrk)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def wait_quiet(procs: list[Mitmdump], max_wait: float, limit: float = 0.1) -> tuple[float, float]:
    """Wait (up to max_wait s) for a 1-s window in which other processes used < `limit` CPU-s.

    Other sessions' test runs on a shared 2-core machine distort throughput badly; this only reduces the
    chance, and every round still records the CPU other processes used while it ran.
    Returns (seconds waited, other CPU-s in the last window).
    """
    def ours() -> float:
        return own_seconds() + sum(cpu_seconds(x.proc.pid) for x in procs)  # type: ignore[union-attr]

    start = time.monotonic()
    while True:
        ours0, busy0 = ours(), system_busy_seconds()
        time.sleep(1.0)
        other = (system_busy_seconds() - busy0) - (ours() - ours0)
        waited = time.monotonic() - start
        if other < limit or waited >= max_wait:
            return waited, max(0.0, other)


def read_new_lines(path: Path, offset: int) -> tuple[list[bytes], int]:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1  # only complete lines
    return data[:end].splitlines(), offset + end


def check_records(lines: list[bytes], host_name: str) -> dict:
    stages: dict[str, int] = {}
    actions: dict[str, int] = {}
    names: dict[str, int] = {}
    bad = 0
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            bad += 1
            continue
        stages[rec.get("stage")] = stages.get(rec.get("stage"), 0) + 1
        actions[rec.get("action")] = actions.get(rec.get("action"), 0) + 1
        names[rec.get("name")] = names.get(rec.get("name"), 0) + 1
    ok = bad == 0 and set(stages) <= {"http"} and set(actions) <= {"allow"} and set(names) <= {host_name}
    return {"records": len(lines), "unparsable": bad, "stages": stages, "actions": actions,
            "names": names, "as_expected": ok}


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


# ---------------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=12, help="rounds per configuration (interleaved)")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per round")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds of warm-up per proxy before the rounds")
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1, help="wrk threads")
    ap.add_argument("--host", default="www.example.org", help="Host header: a name the shipped rules allow")
    ap.add_argument("--rules", default=str(REPO / "rules"))
    ap.add_argument("--server-check", type=float, default=5.0, help="seconds of wrk straight at each server")
    ap.add_argument("--quiet-wait", type=float, default=30.0,
                    help="before each round, wait up to this many seconds for other processes to be idle")
    ap.add_argument("--noop-baseline", action="store_true",
                    help="also run a third mitmdump with a do-nothing script addon (the cost of any -s script)")
    ap.add_argument("--frozen-baseline", action="store_true",
                    help="also run a mitmdump without geoblock whose start-up heap is frozen (gc.freeze) as "
                         "geoblock_gc_freeze does: geoblock's cost apart from the collector's savings")
    ap.add_argument("--quiet-flows", action="store_true",
                    help="run both mitmdumps with flow_detail=0 (default: mitmdump's default flow output)")
    ap.add_argument("--mode", choices=("alternate", "concurrent", "both"), default="both",
                    help="alternate: one proxy at a time (A B, B A, ...); concurrent: every proxy driven at once, "
                         "pinned to one CPU; both (default): the alternating rounds, then the concurrent ones")
    ap.add_argument("--pin", action=argparse.BooleanOptionalAction, default=(os.cpu_count() or 1) >= 2,
                    help="run the mitmdumps on the last CPU and wrk and the upstream on the others, so the two "
                         "arms never compete with the load generator for a CPU (default: on with 2+ CPUs)")
    ap.add_argument("--out", default=str(REPO / "bench-results" / "proxy.json"))
    args = ap.parse_args()

    if shutil.which("wrk") is None:
        print("bench_proxy: wrk is not installed (apt-get install -y wrk)", file=sys.stderr)
        return 2
    import mitmproxy.version as mv

    results: dict = {
        "benchmark": "keep-alive HTTP through mitmdump, with vs without geoblock",
        "python": platform.python_version(),
        "mitmproxy": mv.VERSION,
        "wrk": (subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.strip().split("\n") or [""])[0],
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "target_ratio": TARGET_RATIO,
        "source": source_state(),
    }

    proxy_cpu: int | None = None
    if args.pin and shutil.which("taskset") is not None:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) >= 2:
            # The driver thread (and so the upstream thread and wrk, which inherit it) on the other CPUs.
            proxy_cpu = cpus[-1]
            os.sched_setaffinity(0, set(cpus[:-1]))
    results["proxy_cpu"] = proxy_cpu

    tmp = Path(tempfile.mkdtemp(prefix="geoblock-bench-proxy-"))
    upstream = KeepAliveServer("127.0.0.1", body=b"hello from the geoblock benchmark upstream\n",
                               backlog=512).start_in_thread()
    procs: list[Mitmdump] = []
    try:
        country = write_country_db(tmp / "GeoLite2-Country.mmdb")
        asn = write_asn_db(tmp / "GeoLite2-ASN.mmdb")
        decision_log = tmp / "decisions.jsonl"
        host_header = f"{args.host}:{upstream.port}"
        script = wrk_script(tmp, upstream.port, host_header)

        # 1. The upstream alone must be far faster than mitmdump.
        print(f"upstream: asyncio keep-alive server on 127.0.0.1:{upstream.port}", flush=True)
        alone = run_wrk(f"http://127.0.0.1:{upstream.port}/", args.server_check, args.connections, args.threads, None)
        print(f"  alone: {alone['req_per_s']:,.0f} req/s", flush=True)
        results["upstream_alone"] = alone
        try:
            from support.servers import TestServer
            ts = TestServer("127.0.0.1")
            try:
                threaded = run_wrk(f"http://127.0.0.1:{ts.port}/", args.server_check, args.connections,
                                   args.threads, None)
            finally:
                ts.close()
            print(f"  (for comparison, tests/support TestServer, a ThreadingHTTPServer: "
                  f"{threaded['req_per_s']:,.0f} req/s)",
                  flush=True)
            results["threading_server_alone"] = threaded
        except Exception as exc:  # noqa: BLE001 - informative only
            print(f"  (TestServer check skipped: {exc})", flush=True)

        # 2. The two proxies.
        common = {"connection_strategy": "lazy"}
        if args.quiet_flows:
            common["flow_detail"] = 0
        with_gb = Mitmdump(tmp / "conf-geoblock", options={
            **common,
            "geoblock_rules": args.rules,
            "geoblock_country_db": str(country),
            "geoblock_asn_db": str(asn),
            "geoblock_log": str(decision_log),
            # the status and metrics endpoint on, as in production (tests run it off), on a free port
            "geoblock_metrics": "127.0.0.1:0",
        }, with_geoblock=True)
        without = Mitmdump(tmp / "conf-bare", options=common, with_geoblock=False)
        configs = {"with geoblock": with_gb, "without geoblock": without}
        for label, wanted in ((NOOP, args.noop_baseline), (FROZEN, args.frozen_baseline)):
            if wanted:  # one more mitmdump without geoblock, running a reference script
                addon = tmp / f"reference_{len(configs)}.py"
                addon.write_text(REFERENCES[label][0])
                configs[label] = Mitmdump(tmp / f"conf-{len(configs)}", options=common, with_geoblock=False,
                                          extra_args=["-s", str(addon)])
        for m in configs.values():
            if proxy_cpu is not None:
                m.args = ["taskset", "-c", str(proxy_cpu), *m.args]  # every thread of it, from exec on
            m.start()
            procs.append(m)
        results["mitmdump_args"] = {k: m.args for k, m in configs.items()}
        time.sleep(0.5)
        out = with_gb.output()
        if "geoblock: ruleset" not in out:
            raise RuntimeError(f"geoblock did not load its rules:\n{out}")

        for label, m in configs.items():
            w = run_wrk(m.url + "/", args.warmup, args.connections, args.threads, script)
            print(f"warm-up {label}: {w['req_per_s']:,.0f} req/s", flush=True)
        time.sleep(0.5)  # let in-flight requests finish
        log_offset = decision_log.stat().st_size if decision_log.exists() else 0

        # 3. The rounds: alternating (one proxy at a time: A B, B A, ...), then concurrent (all at once).
        rounds: list[dict] = []
        modes = ["alternate", "concurrent"] if args.mode == "both" else [args.mode]
        for mode in modes:
            for r in range(1, args.rounds + 1):
                if mode == "alternate":
                    # Each configuration goes first equally often (drift and the first run after an idle
                    # second then favour neither).
                    order = list(configs.items()) if r % 2 else list(reversed(configs.items()))
                    groups = [[item] for item in order]
                else:
                    groups = [list(configs.items())]
                for group in groups:
                    waited, _ = wait_quiet(procs, args.quiet_wait) if args.quiet_wait > 0 else (0.0, 0.0)
                    calib0 = calibrate()
                    served0 = upstream.requests
                    ours0 = own_seconds() + sum(cpu_seconds(x.proc.pid) for x in procs)  # type: ignore[union-attr]
                    busy0 = system_busy_seconds()
                    cpu0 = {label: cpu_seconds(m.proc.pid) for label, m in group}  # type: ignore[union-attr]
                    started = [(label, m, start_wrk(m.url + "/", args.duration, args.connections, args.threads,
                                                    script)) for label, m in group]
                    results_now = [(label, m, finish_wrk(*w, timeout=args.duration + 60)) for label, m, w in started]
                    cpu1 = {label: cpu_seconds(m.proc.pid) for label, m in group}  # type: ignore[union-attr]
                    busy1 = system_busy_seconds()
                    ours1 = own_seconds() + sum(cpu_seconds(x.proc.pid) for x in procs)  # type: ignore[union-attr]
                    # CPU used by anything else on the machine during the round (noise): should be ~0.
                    other = round(max(0.0, (busy1 - busy0) - (ours1 - ours0)), 2)
                    time.sleep(0.3)  # let in-flight requests finish
                    calib1 = calibrate()
                    lines, log_offset = read_new_lines(decision_log, log_offset)
                    for label, m, res in results_now:
                        res.update(mode=mode, round=r, config=label, other_cpu_s=other,
                                   calibration_ms=[round(calib0, 1), round(calib1, 1)],
                                   waited_for_quiet_s=round(waited, 1),
                                   disturbed=other > DISTURBED * args.duration,
                                   mitmdump_cpu_s=round(cpu1[label] - cpu0[label], 2),
                                   mitmdump_cpu_ms_per_request=(cpu1[label] - cpu0[label]) * 1000 / max(res["requests"], 1))
                        if m is with_gb:
                            res["decision_log"] = check_records(lines, args.host)
                        if len(group) == 1:
                            res["upstream_requests"] = upstream.requests - served0
                        rounds.append(res)
                        if m is not with_gb and len(group) == 1:
                            res["decision_log_lines_during_bare_round"] = len(lines)
                        extra = ""
                        if "decision_log" in res:
                            d = res["decision_log"]
                            extra = f", {d['records']} log records ({'ok' if d['as_expected'] else 'UNEXPECTED'})"
                        print(f"{mode} round {r} {label}: {res['req_per_s']:,.0f} req/s, {res['requests']} requests, "
                              f"non-2xx {res['non_2xx']}, socket errors {res['socket_errors']}, mitmdump CPU "
                              f"{res['mitmdump_cpu_s']:.1f} s, {res['mitmdump_cpu_ms_per_request']:.3f} ms/req, "
                              f"other processes' CPU {other:.1f} s, speed index {calib0:.0f}/{calib1:.0f} ms "
                              f"before/after{extra}", flush=True)
        results["rounds"] = rounds
        for m in configs.values():
            m.stop()
        results["mitmdump_errors"] = {
            label: [ln for ln in m.output().splitlines() if "Addon error" in ln or "geoblock: error" in ln][:5]
            for label, m in configs.items()
        }
    finally:
        for m in procs:
            m.stop()
        upstream.close()

    # 4. Summary, per mode.
    results["summary"] = {}
    for mode in modes:
        results["summary"][mode] = summarize([x for x in rounds if x["mode"] == mode], list(configs), args)
    print()
    print(f"## Proxy throughput: keep-alive HTTP via mitmdump {results['mitmproxy']} (Python {results['python']}, "
          f"{results['machine']['cpus']} CPUs), wrk -t{args.threads} -c{args.connections}, "
          f"{args.rounds} × {args.duration:g} s rounds per mode")
    print()
    print(f"Upstream alone: {alone['req_per_s']:,.0f} req/s"
          + (f" (ThreadingHTTPServer: {results['threading_server_alone']['req_per_s']:,.0f} req/s)"
             if "threading_server_alone" in results else ""))
    if proxy_cpu is not None:
        print(f"\nPinned: every mitmdump on CPU {proxy_cpu}; wrk and the upstream on the other CPU(s).")
    for mode in modes:
        report(mode, [x for x in rounds if x["mode"] == mode], results["summary"][mode], args)

    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nJSON: {out_path}")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


MODE_TITLES = {
    "alternate": "Alternating rounds: one proxy at a time, A B, B A, ...",
    "concurrent": "Concurrent rounds: all proxies driven at once, sharing one CPU (the host's speed changes "
                  "then reach every arm alike)",
}


def summarize(rounds: list[dict], labels: list[str], args: argparse.Namespace) -> dict:
    summary: dict = {}
    for label in labels:
        rs = [x for x in rounds if x["config"] == label]
        summary[label] = {
            "req_per_s": [x["req_per_s"] for x in rs],
            "median_req_per_s": median([x["req_per_s"] for x in rs]),
            "median_cpu_ms_per_request": median([x["mitmdump_cpu_ms_per_request"] for x in rs]),
            "median_cpu_share": median([x["mitmdump_cpu_s"] / x["seconds"] for x in rs]),
            "median_p50_latency_ms": median([x["latency"].get("p50_ms", float("nan")) for x in rs]),
            "median_p99_latency_ms": median([x["latency"].get("p99_ms", float("nan")) for x in rs]),
            "non_2xx": sum(x["non_2xx"] for x in rs),
            "socket_errors": sum(x["socket_errors"] for x in rs),
            "requests": sum(x["requests"] for x in rs),
        }
    a, b = summary["with geoblock"], summary["without geoblock"]
    gb_rounds = [x for x in rounds if x["config"] == "with geoblock"]
    pairs = []
    for r in range(1, args.rounds + 1):
        ga = next(x for x in rounds if x["round"] == r and x["config"] == "with geoblock")
        gb = next(x for x in rounds if x["round"] == r and x["config"] == "without geoblock")
        pairs.append({"round": r, "ratio": ga["req_per_s"] / gb["req_per_s"],
                      "quiet": not (ga["disturbed"] or gb["disturbed"])})
    quiet = [p for p in pairs if p["quiet"]]
    ratio = a["median_req_per_s"] / b["median_req_per_s"]
    summary["pairs"] = pairs
    summary["median_pair_ratio"] = median([p["ratio"] for p in pairs])
    summary["quiet_pairs"] = len(quiet)
    summary["median_quiet_pair_ratio"] = median([p["ratio"] for p in quiet]) if quiet else None
    summary["ratio_with_over_without"] = ratio
    summary["cpu_per_request_ratio"] = a["median_cpu_ms_per_request"] / b["median_cpu_ms_per_request"]
    summary["reference_pairs"] = {}

    def rate(r: int, config: str) -> float:
        return next(x["req_per_s"] for x in rounds if x["round"] == r and x["config"] == config)

    rs = range(1, args.rounds + 1)
    for label in REFERENCES:
        if label not in labels:
            continue
        summary["reference_pairs"][label] = {
            "over_without": median([rate(r, label) / rate(r, "without geoblock") for r in rs]),
            "geoblock_over": median([rate(r, "with geoblock") / rate(r, label) for r in rs]),
        }
    summary["target_met"] = ratio >= TARGET_RATIO  # ratio of the medians
    summary["target_met_paired"] = summary["median_pair_ratio"] >= TARGET_RATIO  # median of the per-round ratios
    summary["decision_log"] = {
        "records_in_geoblock_rounds": sum(x["decision_log"]["records"] for x in gb_rounds),
        "wrk_completed_requests": a["requests"],
        "upstream_requests": sum(x.get("upstream_requests", 0) for x in gb_rounds),
        "records_all_as_expected": all(x["decision_log"]["as_expected"] for x in gb_rounds),
    }
    return summary


def report(mode: str, rounds: list[dict], summary: dict, args: argparse.Namespace) -> None:
    a, b = summary["with geoblock"], summary["without geoblock"]
    ratio = summary["ratio_with_over_without"]
    refs = [label for label in REFERENCES if label in summary]
    print()
    print(f"### {MODE_TITLES[mode]}")
    print()
    print("| round | with geoblock req/s | without geoblock req/s | ratio | "
          + "".join(f"{REFERENCES[label][1]} req/s | " for label in refs)
          + "decision-log records / wrk requests | other processes' CPU s | speed index ms |")
    print("|---:|---:|---:|---:|" + "---:|" * len(refs) + "---|---|---|")
    for r in range(1, args.rounds + 1):
        ga = next(x for x in rounds if x["round"] == r and x["config"] == "with geoblock")
        gb = next(x for x in rounds if x["round"] == r and x["config"] == "without geoblock")
        extra = [next(x for x in rounds if x["round"] == r and x["config"] == label) for label in refs]
        flag = "" if summary["pairs"][r - 1]["quiet"] else " (disturbed)"
        other = (f"{ga['other_cpu_s']:.1f}" if mode == "concurrent"
                 else f"{ga['other_cpu_s']:.1f} / {gb['other_cpu_s']:.1f}")
        speed = (f"{statistics.fmean(ga['calibration_ms']):.0f}" if mode == "concurrent"
                 else f"{statistics.fmean(ga['calibration_ms']):.0f} / {statistics.fmean(gb['calibration_ms']):.0f}")
        print(f"| {r} | {ga['req_per_s']:,.0f} | {gb['req_per_s']:,.0f} | {summary['pairs'][r - 1]['ratio']:.3f} | "
              + "".join(f"{x['req_per_s']:,.0f} | " for x in extra)
              + f"{ga['decision_log']['records']} / {ga['requests']} | {other}{flag} | {speed} |")
    print(f"| **median** | **{a['median_req_per_s']:,.0f}** | **{b['median_req_per_s']:,.0f}** | "
          f"**{ratio:.3f}** | " + "".join(f"**{summary[label]['median_req_per_s']:,.0f}** | " for label in refs)
          + "| | |")
    print()
    verdict = "met" if ratio >= TARGET_RATIO else f"MISSED by {(TARGET_RATIO - ratio) * 100:.1f} points"
    print(f"- ratio with/without (medians): **{ratio:.3f}** (target ≥ {TARGET_RATIO}: {verdict})")
    qp = summary["median_quiet_pair_ratio"]
    paired = summary["median_pair_ratio"]
    verdict = "met" if paired >= TARGET_RATIO else f"MISSED by {(TARGET_RATIO - paired) * 100:.1f} points"
    print(f"- paired (each round's with/without, the arms measured in the same round): median **{paired:.3f}** "
          f"(target ≥ {TARGET_RATIO}: {verdict})")
    print(f"- per-round ratios: median {summary['median_pair_ratio']:.3f}, range "
          f"{min(p['ratio'] for p in summary['pairs']):.3f}-{max(p['ratio'] for p in summary['pairs']):.3f}; "
          f"over the {summary['quiet_pairs']} undisturbed round(s): "
          + (f"{qp:.3f}" if qp is not None else "none") + " (a round is disturbed when other processes used more than "
          f"{DISTURBED * 100:.0f} % of a CPU during it)")
    for label in refs:
        n = summary[label]
        print(f"- {REFERENCES[label][1]} / without: {n['median_req_per_s'] / b['median_req_per_s']:.3f} (medians), "
              f"{summary['reference_pairs'][label]['over_without']:.3f} (paired); with geoblock / {REFERENCES[label][1]}: "
              f"{a['median_req_per_s'] / n['median_req_per_s']:.3f} (medians), "
              f"{summary['reference_pairs'][label]['geoblock_over']:.3f} (paired); CPU per request "
              f"{n['median_cpu_ms_per_request']:.3f} ms: {REFERENCES[label][2]}")
    print(f"- mitmdump CPU per request (median): {a['median_cpu_ms_per_request']:.3f} ms with, "
          f"{b['median_cpu_ms_per_request']:.3f} ms without (×{summary['cpu_per_request_ratio']:.3f})")
    if mode == "concurrent":
        print(f"- share of a CPU each mitmdump got (median): {a['median_cpu_share']:.2f} with, "
              f"{b['median_cpu_share']:.2f} without"
              + "".join(f", {summary[label]['median_cpu_share']:.2f} {REFERENCES[label][1]}" for label in refs))
    print(f"- latency p50/p99 (median of rounds): "
          f"{a['median_p50_latency_ms']:.1f}/{a['median_p99_latency_ms']:.1f} ms with, "
          f"{b['median_p50_latency_ms']:.1f}/{b['median_p99_latency_ms']:.1f} ms without")
    print(f"- non-2xx: {a['non_2xx']} with, {b['non_2xx']} without; socket errors: {a['socket_errors']} with, "
          f"{b['socket_errors']} without")
    d = summary["decision_log"]
    print(f"- decision log: {d['records_in_geoblock_rounds']} records in the geoblock rounds for "
          f"{d['wrk_completed_requests']} requests completed by wrk; every record stage=http, action=allow, "
          f"name={args.host}: {'yes' if d['records_all_as_expected'] else 'NO'}")


if __name__ == "__main__":
    sys.exit(main())
