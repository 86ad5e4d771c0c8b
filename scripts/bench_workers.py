#!/usr/bin/env python3
"""Benchmark: throughput through the transparent gateway with N = 1, 2, ... mitmdump workers (root only).

Everything runs in network namespaces made for the run (tests/support/netns.py: client, gateway, one
home server), on documentation addresses, and is removed at the end, also on failure. The gateway is set
up by scripts/gateway.sh --workers N; the workers are the systemd template's own command line
(deploy/systemd/geoblock@.service, paths mapped to a temporary directory), with the shipped rules, a
test GeoIP database and the decision log ON (one file per worker, as in production).

wrk runs in the client namespace against `allowed.test` (an /etc/netns/<client>/hosts entry for the run
points it at the home server, so SNI and Host are the name), through the redirect, in interleaved rounds
(N=1, N=2, N=2, N=1, ...). Workloads:

- `http`: plain HTTP keep-alive: mitmproxy parses every request, geoblock decides on each Host;
- `tls-new`: HTTPS with `Connection: close`: every request is a new TCP + TLS connection, judged at
  connect (stage ip) and on the ClientHello (stage tls), then passed through undecrypted: the gateway's
  characteristic load;
- `tls-keepalive`: HTTPS keep-alive, passed through: the relay's byte throughput once a connection is
  judged.

The upstream is a small asyncio HTTP(S) server in the home namespace (its own process), measured alone
first. Per round: requests/s, errors, the CPU each worker used, how the decisions spread over the
workers, how busy the machine was, and the CPU that processes outside the run used meanwhile (a figure
taken while others used more than 0.10 CPU is flagged: on a shared machine, rerun it when quiet). On a 2-core machine wrk, the server and the workers share the same two cores: expect little
gain from N=2 here; the table says how much.

`--list-size N` adds the national-scale case: one more block rule whose names come from a list file of N
random domains (scripts/bench_biglist.write_rules; 1000000 for issue 15's figures). The list is compiled
once before the workers start, by `geoblock lists compile` into a cache of the run (as a build step
would), and every worker maps that one artifact (GEOBLOCK_CACHE_DIR). After the rounds, each worker's
memory: VmRSS (/proc/PID/status) and, better where workers share pages, Pss (proportional set size,
/proc/PID/smaps_rollup: a page shared by k processes counts 1/k in each), with the Rss and Pss of the
artifact's own mappings (/proc/PID/smaps). A mapped page counts in a worker's Rss only once that worker
has touched it (a lookup walking the trie): the list's Rss grows with the variety of names decided, up to
the artifact's size, and its Pss stays that divided among the workers.

    sudo .venv-3.11/bin/python scripts/bench_workers.py [--workers 1,2] [--rounds 3] [--duration 8]
                                                         [--connections 16] [--workloads http,tls-new]
                                                         [--list-size 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _paths  # makes tests/support importable as `support`

REPO = _paths.REPO

DISTURBED = 0.10  # CPU (in CPUs) used by processes outside the run above which a figure is flagged

WORKLOADS = {
    "http": ("http://allowed.test/", []),
    "tls-new": ("https://allowed.test/", ["-H", "Connection: close"]),
    "tls-keepalive": ("https://allowed.test/", []),
}


# --- the upstream server (runs as its own process inside the home namespace: --serve) -------------

async def _serve(host: str, cert: str, key: str) -> None:
    body = b"ok\n"

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        with contextlib.suppress(OSError):
            sock.setsockopt(6, 1, 1)  # TCP_NODELAY
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                close = b"connection: close" in head.lower()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n"
                             + (b"Connection: close\r\n" if close else b"") + b"\r\n" + body)
                await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    servers = [await asyncio.start_server(handle, host, 80, backlog=1024),
               await asyncio.start_server(handle, host, 443, ssl=tls, backlog=1024)]
    print("serving", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


# --- measuring --------------------------------------------------------------------------------------

def wrk(topo, url: str, extra: list[str], duration: float, connections: int) -> dict:
    from support.netns import sh
    cmd = topo.exec_args("cli", "wrk", "-t2", f"-c{connections}", f"-d{duration:g}s", "--latency", *extra, url)
    out = sh(*cmd, timeout=duration + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = sum(int(x) for x in m.groups()) if m else 0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    latency_ms = None
    if p50:
        latency_ms = float(p50.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[p50.group(2)]
    return {"rps": rps, "errors": errors, "non2xx": int(non2xx.group(1)) if non2xx else 0, "p50_ms": latency_ms}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def system_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    values = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values) - idle, sum(values)


def children_cpu() -> float:
    """CPU seconds of finished child processes (wrk, the helpers), user + system."""
    import resource
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def memory(pid: int, artifacts: list[str]) -> dict[str, int]:
    """Memory of process `pid` in kB: `rss` (VmRSS), `pss`, `pss_file` (Pss of file-backed pages),
    `private` (Private_Clean + Private_Dirty), from /proc/PID/status and /proc/PID/smaps_rollup; and
    `list_rss`, `list_pss`: of the mappings of files under the directories `artifacts` (/proc/PID/smaps).
    A field the kernel does not give is left out."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            out["rss"] = int(line.split()[1])
    rollup = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, rest = line.partition(":")
        if rest.strip().endswith("kB"):
            rollup[key] = int(rest.split()[0])
    for key, name in (("Pss", "pss"), ("Pss_File", "pss_file")):
        if key in rollup:
            out[name] = rollup[key]
    out["private"] = rollup.get("Private_Clean", 0) + rollup.get("Private_Dirty", 0)
    if artifacts:
        out["list_rss"] = out["list_pss"] = 0
        inside = False
        for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
            head = line.split()
            if head and "-" in head[0] and ":" not in head[0]:  # a mapping's first line: range perms ... path
                inside = len(head) >= 6 and any(head[5].startswith(a + "/") for a in artifacts)
            elif inside and head[0] == "Rss:":
                out["list_rss"] += int(head[1])
            elif inside and head[0] == "Pss:":
                out["list_pss"] += int(head[1])
    return out


def add_big_list(rules: Path, work: Path, size: int) -> tuple[Path, list[str], float]:
    """Add to `rules` a block rule over a list file of `size` random domains, and compile it with
    `geoblock lists compile` into the cache work/cache. Returns (cache, artifact directories, seconds)."""
    import bench_biglist
    big = work / "big"
    bench_biglist.write_rules(big, size, seed=15)
    (rules / "lists").mkdir(exist_ok=True)
    shutil.move(str(big / "lists" / "big.txt"), rules / "lists" / "big.txt")
    (rules / "zz-big.yaml").write_text("rules:\n  - {id: national-list, action: block, "
                                       "domains_from: [lists/big.txt]}\n")
    cache = work / "cache"
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "geoblock.tools.cli", "lists", "compile", str(rules), "--cache",
                           str(cache), "--json"], capture_output=True, text=True, cwd=REPO / "addons", timeout=1800)
    seconds = time.monotonic() - t0
    if done.returncode != 0:
        raise RuntimeError(f"geoblock lists compile failed: {done.stdout}{done.stderr}")
    return cache, [d["artifact"] for d in json.loads(done.stdout)["lists"]], seconds


def line_count(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", default="1,2", help="worker counts to compare (default 1,2)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per wrk run")
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--workloads", default="http,tls-new,tls-keepalive")
    ap.add_argument("--list-size", type=int, default=0, metavar="N",
                    help="add a block rule over a list of N random domains (e.g. 1000000), compiled once")
    ap.add_argument("--out", type=Path, help="also write the results as JSON here")
    ap.add_argument("--serve", nargs=3, metavar=("HOST", "CERT", "KEY"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        asyncio.run(_serve(*args.serve))
        return 0

    from support import netns as ns
    from support.geodb import write_asn_db, write_country_db
    from support.shipped import copy_shipped_rules
    from support.servers import make_pki

    reason = ns.unavailable()
    if reason:
        print(f"bench_workers: {reason}", file=sys.stderr)
        return 2
    if shutil.which("wrk") is None:
        print("bench_workers: wrk is needed (apt-get install -y wrk)", file=sys.stderr)
        return 2
    counts = [int(x) for x in args.workers.split(",")]
    workloads = [w for w in args.workloads.split(",") if w]
    for w in workloads:
        if w not in WORKLOADS:
            ap.error(f"unknown workload {w}; choose from {', '.join(WORKLOADS)}")
    most = max(counts)

    work = Path(tempfile.mkdtemp(prefix="gb-bench-workers-"))
    topo = ns.gateway_topology(("home",))
    hosts_dir = Path("/etc/netns") / topo.ns("cli")
    procs: list[subprocess.Popen] = []
    results: list[dict] = []
    try:
        # name -> address for wrk in the client namespace (ip netns exec bind-mounts this over /etc/hosts)
        hosts_dir.mkdir(parents=True)
        (hosts_dir / "hosts").write_text(f"127.0.0.1 localhost\n{ns.HOME4} allowed.test\n")

        pki = make_pki(work / "pki")
        rules = copy_shipped_rules(work / "rules")
        artifacts: list[str] = []
        if args.list_size:
            cache, artifacts, compile_s = add_big_list(rules, work, args.list_size)
            os.environ["GEOBLOCK_CACHE_DIR"] = str(cache)  # the workers map what the build step compiled
            print(f"list of {args.list_size} names compiled in {compile_s:.1f} s (geoblock lists compile, "
                  f"including its start)", flush=True)
        write_country_db(work / "GeoLite2-Country.mmdb", ns.GEO_PLACES)
        write_asn_db(work / "GeoLite2-ASN.mmdb", ns.GEO_PLACES)

        server_log = open(work / "server.log", "wb")
        server = subprocess.Popen(topo.exec_args("home", sys.executable, str(Path(__file__).resolve()), "--serve",
                                                 ns.HOME4, str(pki.cert_pem), str(pki.key_pem)),
                                  stdout=server_log, stderr=subprocess.STDOUT)
        procs.append(server)
        deadline = time.monotonic() + 15
        while b"serving" not in (work / "server.log").read_bytes():
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("upstream server did not start: " + (work / "server.log").read_text())
            time.sleep(0.05)

        # the upstream alone (wrk from the gateway namespace straight at it, no redirect there)
        alone = {}
        for w in workloads:
            url, extra = WORKLOADS[w]
            url = url.replace("allowed.test", ns.HOME4)
            cmd = topo.exec_args("gw", "wrk", "-t2", f"-c{args.connections}", f"-d{min(args.duration, 5):g}s", *extra, url)
            out = ns.sh(*cmd, timeout=60).stdout
            alone[w] = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

        workers = []
        for n in range(most):
            port = 8080 + n
            ns.sh(*ns.unit_command("geoblock@.service", work, rules, str(port), key="ExecStartPre"))
            argv = ns.unit_command("geoblock@.service", work, rules, str(port))
            decisions = work / "log" / f"decisions-{port}.jsonl"
            m = ns.NsMitmdump(topo, "gw", port, work, argv, {
                "geoblock_country_db": work / "GeoLite2-Country.mmdb",
                "geoblock_asn_db": work / "GeoLite2-ASN.mmdb", "geoblock_rdap": False},
                quiet_until=decisions)  # the unit's termlog_verbosity=warn, as in production
            m.start()
            procs.append(m.proc)  # type: ignore[arg-type]
            m.decisions = decisions
            workers.append(m)
        time.sleep(1)  # mitmproxy 12 may listen a moment before its scripts are configured
        started_memory = [memory(m.pid, artifacts) for m in workers]

        order = []
        for r in range(args.rounds):
            order += counts if r % 2 == 0 else list(reversed(counts))
        for i, n in enumerate(order):
            ns.gateway_sh(topo, "up", "--in-iface", ns.GW_IN_IFACE, "--port", "8080", "--workers", str(n),
                          state=work / "gateway.state")
            for w in workloads:
                url, extra = WORKLOADS[w]
                before_cpu = [cpu_seconds(m.pid) for m in workers]
                before_lines = [line_count(m.decisions) for m in workers]
                t0 = time.monotonic()
                busy0, total0 = system_cpu()
                server0, children0 = cpu_seconds(server.pid), children_cpu()
                res = wrk(topo, url, extra, args.duration, args.connections)
                elapsed = time.monotonic() - t0
                busy1, total1 = system_cpu()
                ours = (sum(cpu_seconds(m.pid) for m in workers) - sum(before_cpu)
                        + cpu_seconds(server.pid) - server0 + children_cpu() - children0)
                busy_seconds = (busy1 - busy0) / os.sysconf("SC_CLK_TCK")
                res.update(workers=n, workload=w, round=i,
                           machine_busy=round((busy1 - busy0) / max(1, total1 - total0), 2),
                           others_cpu=round(max(0.0, busy_seconds - ours) / elapsed, 2),
                           cpu=[round((cpu_seconds(m.pid) - c) / elapsed, 2) for m, c in zip(workers, before_cpu, strict=False)],
                           decisions=[line_count(m.decisions) - c for m, c in zip(workers, before_lines, strict=False)])
                results.append(res)
                print(f"  N={n} {w:14s} {res['rps']:8.0f} req/s  errors {res['errors']:4d}  "
                      f"machine busy {res['machine_busy']:.0%} (others {res['others_cpu']:.2f} CPU)  worker CPU {res['cpu']}  "
                      f"decisions per worker {res['decisions']}", flush=True)
        ended_memory = [memory(m.pid, artifacts) for m in workers]
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(10)
            if p.poll() is None:
                p.kill()
                p.wait()
        problems = topo.close()
        shutil.rmtree(hosts_dir, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
        if problems:
            print(f"bench_workers: cleanup problems: {problems}", file=sys.stderr)

    import mitmproxy.version
    print(f"\nPython {sys.version.split()[0]}, mitmproxy {mitmproxy.version.VERSION}, {os.cpu_count()} CPUs, "
          f"{args.connections} connections, {args.duration:g} s x {args.rounds} rounds per cell (median)")
    print("upstream alone: " + ", ".join(f"{w} {alone[w]:.0f} req/s" for w in workloads))
    print()
    head = "| workers | " + " | ".join(f"{w} req/s" for w in workloads) + " |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    base = {}
    for n in counts:
        cells = []
        for w in workloads:
            runs = [r for r in results if r["workers"] == n and r["workload"] == w]
            rps = statistics.median(r["rps"] for r in runs)
            base.setdefault(w, rps)
            cpu = " + ".join(f"{statistics.median(r['cpu'][k] for r in runs):.2f}" for k in range(n))
            busy = statistics.median(r["machine_busy"] for r in runs)
            others = max(r["others_cpu"] for r in runs)
            cells.append(f"{rps:.0f} ({rps / base[w]:.2f}x; workers {cpu} CPU, machine {busy:.0%} busy"
                         + (f", others up to {others:.2f} CPU" if others > DISTURBED else "") + ")")
        print(f"| {n} | " + " | ".join(cells) + " |")
    print()
    print("memory per worker (MB; all workers run through every round; Pss: shared pages divided among "
          "the processes that map them)")
    print("| worker | when | VmRSS | Pss | Pss of files | private |"
          + (" list Rss | list Pss |" if artifacts else ""))
    print("|---|---|---:|---:|---:|---:|" + ("---:|---:|" if artifacts else ""))
    for k in range(most):
        for when, mem in (("started", started_memory[k]), ("after the rounds", ended_memory[k])):
            cells = [mem.get(f) for f in ("rss", "pss", "pss_file", "private")
                     + (("list_rss", "list_pss") if artifacts else ())]
            print(f"| {k + 1} | {when} | " + " | ".join("-" if c is None else f"{c / 1024:.1f}" for c in cells) + " |")
    if args.list_size:
        print(f"\n(one block rule over a list of {args.list_size} names, compiled once and mapped by every worker)")
    if args.out:
        args.out.write_text(json.dumps({"alone": alone, "results": results, "list_size": args.list_size,
                                        "memory": {"started": started_memory, "after": ended_memory}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
