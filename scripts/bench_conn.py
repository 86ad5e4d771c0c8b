#!/usr/bin/env python3
"""Benchmark: CPU seconds the proxy process spends per connection, for three ways of running a blocker.

Two kinds of connection, each opened, used once and closed by `--clients` parallel clients (16):
- refused: `CONNECT binance.com:443` (a name on the shipped list), answered 451 by the proxy, closed;
- passed: `CONNECT 127.0.0.1:PORT` to a local TLS server (placed in the home country by the test GeoIP
  database), TLS with SNI www.example.org passed through undecrypted, one GET, the answer read, closed.
The arms (every one with the systemd unit's flags: block_global=false, connection_strategy=lazy,
flow_detail=0, termlog_verbosity=warn; regular mode on loopback):
- plain: `mitmdump -s addons/block.py` with the shipped rules, the test databases, the decision log
  and the status endpoint on (as in production);
- minimal: `mitmdump -s scripts/bench_conn_minimal.py`: refuses listed CONNECT targets, passes the
  rest through; no log, no GeoIP (a yardstick for mitmproxy's own cost);
- runner: `geoblock-gateway` (geoblock/mitm/run.py) with the same options as plain.
The CPU is the proxy process's user + system time (/proc/PID/stat, clock ticks) over a batch of
`--connections` connections, divided by their number; each round measures every arm and kind in turn
(the order rotates between rounds), after a warm-up batch. Every answer is checked (451 for refused,
200 and the server's body for passed), and so are geoblock's decision records (a block for each refused
connection, allows for each passed one); a failure stops the benchmark. The proxies run on the last CPU,
the clients and the server on the others (with 2+ CPUs).

Noise: on a shared virtual machine the figures move from round to round; the medians and the ratios of
one run are what to compare, and the final figures belong to a quiet machine.

    .venv-3.11/bin/python scripts/bench_conn.py [--rounds 3] [--connections 1500] [--clients 16] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import ssl
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import _paths  # noqa: F401 - makes tests/support importable as `support`
from bench_common import REPO, calibrate, source_state

from support.geodb import write_asn_db, write_country_db
from support.proc import BLOCK_PY, Mitmdump, as_runner
from support.servers import KeepAliveServer, make_pki

UNIT_FLAGS = {"block_global": False, "connection_strategy": "lazy", "flow_detail": 0, "termlog_verbosity": "warn"}
MINIMAL = REPO / "scripts" / "bench_conn_minimal.py"
ARMS = ("plain", "minimal", "runner")
KINDS = ("refused", "passed")


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far (all its threads). OSError if it is gone."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _open(port: int, authority: bytes) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(b"CONNECT " + authority + b" HTTP/1.1\r\nHost: " + authority + b"\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    return sock, head


def refused_once(port: int, name: bytes) -> str | None:
    """One refused CONNECT: None when the proxy answered 451, else what went wrong."""
    sock, head = _open(port, name)
    with sock:
        return None if head.startswith(b"HTTP/1.1 451") else f"refused: {head[:80]!r}"


def passed_once(port: int, upstream: int, sni: str, expect: bytes, tls: ssl.SSLContext) -> str | None:
    """One passed-through connection: CONNECT, TLS with `sni`, GET, the whole answer read, closed."""
    sock, head = _open(port, f"127.0.0.1:{upstream}".encode())
    if not head.startswith(b"HTTP/1.1 200"):
        sock.close()
        return f"passed: CONNECT answered {head[:80]!r}"
    with tls.wrap_socket(sock, server_hostname=sni) as conn:
        conn.sendall(f"GET / HTTP/1.1\r\nHost: {sni}\r\n\r\n".encode())
        got = b""
        while len(got) < len(expect):
            chunk = conn.recv(65536)
            if not chunk:
                break
            got += chunk
    return None if got == expect else f"passed: answer {got[:80]!r}"


def batch(count: int, clients: int, once: Callable[[], str | None]) -> tuple[float, list[str]]:
    """`count` calls of `once` spread over `clients` threads: (wall seconds, the problems reported)."""
    left = [count]
    lock = threading.Lock()
    problems: list[str] = []

    def work() -> None:
        while True:
            with lock:
                if left[0] <= 0:
                    return
                left[0] -= 1
            try:
                problem = once()
            except OSError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if problem:
                with lock:
                    problems.append(problem)

    threads = [threading.Thread(target=work) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=1500, help="connections per arm, kind and round")
    ap.add_argument("--warmup", type=int, default=200, help="connections per arm and kind before the rounds")
    ap.add_argument("--clients", type=int, default=16, help="parallel clients")
    ap.add_argument("--arms", default=",".join(ARMS), help="a comma-separated subset of " + ",".join(ARMS))
    ap.add_argument("--blocked", default="binance.com:443", help="a CONNECT target on the shipped list")
    ap.add_argument("--sni", default="www.example.org", help="the TLS server name of passed connections")
    ap.add_argument("--rules", default=str(REPO / "rules"))
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()
    arms = [a for a in args.arms.split(",") if a]
    unknown = set(arms) - set(ARMS)
    if unknown:
        ap.error(f"unknown arm(s): {', '.join(sorted(unknown))}")

    proxy_cpus: set[int] | None = None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= 2 and shutil.which("taskset"):
        proxy_cpus = {cpus[-1]}
        os.sched_setaffinity(0, set(cpus[:-1]))  # clients and the server; the proxies get the last CPU

    tmp = Path(tempfile.mkdtemp(prefix="geoblock-bench-conn-"))
    pki = make_pki(tmp / "pki")
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(pki.cert_pem, pki.key_pem)
    upstream = KeepAliveServer("127.0.0.1", tls=server_tls, body=b"hello from the geoblock benchmark\n",
                               backlog=1024).start_in_thread()
    client_tls = ssl.create_default_context(cafile=str(pki.ca_pem))
    client_tls.check_hostname = False  # the test certificate names 127.0.0.1 and test names, not the SNI
    blocked = args.blocked.encode()
    results: dict = {"python": sys.version.split()[0], "cpus": len(cpus), "clients": args.clients,
                     "connections": args.connections, "rounds": args.rounds, "source": source_state(),
                     "speed_index_ms": [round(calibrate(), 1)], "arms": {}}
    import mitmproxy.version
    results["mitmproxy"] = mitmproxy.version.VERSION

    geoblock = {**UNIT_FLAGS, "geoblock_rules": args.rules,
                "geoblock_country_db": write_country_db(tmp / "GeoLite2-Country.mmdb"),
                "geoblock_asn_db": write_asn_db(tmp / "GeoLite2-ASN.mmdb"),
                "geoblock_metrics": "127.0.0.1:0"}
    procs: dict[str, Mitmdump] = {}
    try:
        for arm in arms:
            if arm == "minimal":
                m = Mitmdump(tmp / arm, {**UNIT_FLAGS, "minimal_list": REPO / "rules" / "lists" / "exchanges.txt"},
                             with_geoblock=False, extra_args=["-s", str(MINIMAL)])
            else:
                m = Mitmdump(tmp / arm, {**geoblock, "geoblock_log": tmp / f"decisions-{arm}.jsonl"},
                             runner=False)
                if arm.startswith("runner"):
                    m.args = as_runner(m.args)
                assert (str(BLOCK_PY) in m.args) == (arm == "plain")
            # the unit's termlog_verbosity=warn, not the tests' info (an option may be given once only):
            # start_quiet checks readiness by connecting, not by the "listening at" line
            i = m.args.index("termlog_verbosity=info")
            del m.args[i - 1:i + 1]
            procs[arm] = m
            start_quiet(m, proxy_cpus)
        runs: dict[str, dict[str, list[float]]] = {a: {k: [] for k in KINDS} for a in arms}
        rates: dict[str, dict[str, list[float]]] = {a: {k: [] for k in KINDS} for a in arms}

        def once_for(arm: str, kind: str) -> Callable[[], str | None]:
            port = procs[arm].port
            if kind == "refused":
                return lambda: refused_once(port, blocked)
            return lambda: passed_once(port, upstream.port, args.sni, upstream.response, client_tls)

        for arm in arms:  # warm-up: caches, the first TLS contexts, lazy imports
            for kind in KINDS:
                _, problems = batch(args.warmup, args.clients, once_for(arm, kind))
                if problems:
                    raise SystemExit(f"{arm} {kind}: {len(problems)} failed, e.g. {problems[0]}")
        for r in range(args.rounds):
            order = arms[r % len(arms):] + arms[:r % len(arms)]
            for arm in order:
                pid = procs[arm].proc.pid  # type: ignore[union-attr]
                for kind in KINDS:
                    before = proc_cpu(pid)
                    wall, problems = batch(args.connections, args.clients, once_for(arm, kind))
                    used = proc_cpu(pid) - before
                    if problems:
                        raise SystemExit(f"{arm} {kind}: {len(problems)} of {args.connections} failed, "
                                         f"e.g. {problems[0]}")
                    runs[arm][kind].append(used / args.connections * 1000)
                    rates[arm][kind].append(args.connections / wall)
            print(f"round {r + 1}: " + "; ".join(
                f"{a} " + ", ".join(f"{k} {runs[a][k][-1]:.2f} ms" for k in KINDS) for a in arms), flush=True)
        results["speed_index_ms"].append(round(calibrate(), 1))
        for arm in arms:
            results["arms"][arm] = {kind: {"cpu_ms_per_conn": runs[arm][kind],
                                           "median_cpu_ms": statistics.median(runs[arm][kind]),
                                           "conn_per_s": rates[arm][kind]} for kind in KINDS}
    finally:
        for m in procs.values():
            m.stop()
        upstream.close()
        made = args.warmup + args.rounds * args.connections  # of each kind, for each arm
        results["decision_log"] = {arm: records_by_action(tmp / f"decisions-{arm}.jsonl")
                                   for arm in procs if arm != "minimal"}
        shutil.rmtree(tmp, ignore_errors=True)
    for arm, seen in results["decision_log"].items():
        # one record per refused CONNECT (block); a passed connection has its CONNECT and its TLS allowed
        if seen.get("block", 0) != made or seen.get("allow", 0) < made:
            raise SystemExit(f"{arm}: decision records {seen}, expected {made} blocks and at least {made} allows")

    print(table(results))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2, default=str))
    return 0


def records_by_action(log: Path) -> dict[str, int]:
    """The number of decision records in `log` for each action ({} when there is no log)."""
    counts: dict[str, int] = {}
    if log.exists():
        for line in log.read_text().splitlines():
            action = json.loads(line)["action"]
            counts[action] = counts.get(action, 0) + 1
    return counts


def start_quiet(m: Mitmdump, cpus: set[int] | None) -> None:
    """Start `m` (on `cpus`, when given) and wait until it accepts connections and geoblock, when loaded,
    has configured (its decision log exists); RuntimeError after 30 s or when it exits."""
    import subprocess

    m.confdir.mkdir(parents=True, exist_ok=True)
    m._log = open(m.log_path, "wb")
    m.proc = subprocess.Popen(m.args, stdout=m._log, stderr=subprocess.STDOUT, cwd=REPO,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if cpus:
        os.sched_setaffinity(m.proc.pid, cpus)
    log = next((a.split("=", 1)[1] for a in m.args if a.startswith("geoblock_log=")), None)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if m.proc.poll() is not None:
            raise RuntimeError(f"{m.args[0]} exited with {m.proc.returncode}:\n{m.output()}")
        if log is None or Path(log).exists():
            try:
                with socket.create_connection(("127.0.0.1", m.port), timeout=2):
                    time.sleep(0.5)  # geoblock: the start-up heap settles after listening
                    return
            except OSError:
                pass
        time.sleep(0.1)
    m.stop()
    raise RuntimeError(f"{m.args[0]} did not listen on {m.port}:\n{m.output()}")


def table(results: dict) -> str:
    arms = results["arms"]
    lines = [f"Python {results['python']}, mitmproxy {results['mitmproxy']}, {results['clients']} clients, "
             f"{results['connections']} connections per arm, kind and round, {results['rounds']} rounds "
             f"(speed index {results['speed_index_ms'][0]} -> {results['speed_index_ms'][-1]} ms)", "",
             "| arm | refused: CPU ms per connection (median) | passed: CPU ms per connection (median) "
             "| refused conn/s | passed conn/s |", "|---|---:|---:|---:|---:|"]
    for arm, r in arms.items():
        lines.append(f"| {arm} | {r['refused']['median_cpu_ms']:.3f} | {r['passed']['median_cpu_ms']:.3f} "
                     f"| {statistics.median(r['refused']['conn_per_s']):.0f} "
                     f"| {statistics.median(r['passed']['conn_per_s']):.0f} |")
    if "runner" in arms:
        for ref in ("plain", "minimal"):
            if ref in arms:
                ratio = {k: arms["runner"][k]["median_cpu_ms"] / arms[ref][k]["median_cpu_ms"] for k in KINDS}
                lines.append(f"\nrunner / {ref}: refused x{ratio['refused']:.2f}, passed x{ratio['passed']:.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
