#!/usr/bin/env python3
"""Benchmark: geoblock beside Squid, the peer an operator would otherwise pick, doing the same job with the
same list of N domains (default 1,000,000): look at the TLS SNI of each CONNECT tunnel, pass allowed names
through untouched, refuse listed ones (issue 15, item 1).

- Squid: Debian's `squid-openssl` (installed here with apt-get when missing and run as root; never as the
  system service: apt is kept from starting it and a running systemd unit is stopped and masked). It runs
  as its own instance (`squid -N -f CONF`) on loopback with its own configuration, pid file and log in a
  temporary directory: `ssl_bump peek` at step 1, then `terminate` when the SNI is on the list (`acl listed
  ssl::server_name "LIST"`, each name with a leading dot, which covers the name and its subdomains as a
  geoblock list entry does), else `splice`.
- geoblock: a real mitmdump (`-s addons/block.py`) with the production unit's flags (connection_strategy
  lazy, flow_detail 0, termlog_verbosity warn) on a rules directory holding one block rule over the same
  names in a list file (scripts/bench_biglist.py's writer).

Both proxies run pinned to one CPU (the last one; with any process they start, such as a compiler of
lists), the clients and the local TLS server on the others (`--no-pin`: all anywhere).
A client: CONNECT 127.0.0.1:PORT (the local TLS server), then a TLS handshake with SNI = the name, then
close. A listed name must be refused by both (the proxy answers the CONNECT, then refuses the handshake)
and an allowed one must complete it; the run stops with an error when either is not so.

Figures (each proxy, from one run):
  ready_s          from the proxy's start until its first successful CONNECT + TLS handshake to an allowed
                   name, seconds;
  rss_ready_mib    resident memory (VmRSS) of the proxy process once ready, MiB;
  conn_per_s       new TLS connections per second to an allowed name through it (`--clients` parallel
                   clients for `--duration` s), with cpu_ms_per_conn, the proxy's own CPU time per
                   connection (ms);
  reload_s         from the reload's start (Squid: `squid -k reconfigure`, which parses the whole
                   configuration before it signals the running Squid; geoblock: the list file replaced,
                   which it watches every geoblock_reload_interval seconds, 2 by default) until a name
                   added to the list is refused; reload_command_s: how long the command itself took;
  reload_*         during the reload (its start until it is in force, plus `--after` s), what a client
                   looping CONNECT + TLS to an allowed name saw: attempts, failed (refused or broken),
                   longest_s (the longest attempt), failing_s (first to last failed attempt);
  rss_reload_mib   VmRSS after that reload, MiB.
The ratios compare geoblock with Squid (geoblock / Squid). Noisy on a shared machine: run it on a quiet
one.

    .venv-3.11/bin/python scripts/bench_squid.py [--domains 1000000] [--clients 16] [--duration 10]
        [--only squid|geoblock] [--out F.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import multiprocessing.connection
import os
import platform
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import _paths  # makes tests/support importable as `support`
from bench_biglist import write_rules
from bench_common import calibrate, source_state

from support.proc import BLOCK_PY, free_port, mitmdump_path
from support.servers import make_pki

REPO = _paths.REPO
ALLOWED = "allowed.example"  # the list's names all end in other TLDs (bench_biglist.TLDS)
ADDED = "added.reload.example"  # the name each reload adds to the list
SQUID = "/usr/sbin/squid"
PACE_S = 0.02  # the reload's looping client starts an attempt at most every 20 ms


# ---------------------------------------------------------------------------------------------------
# the machine and its processes


def machine() -> dict:
    """nproc, CPU model and RAM of this machine, and the Python it runs."""
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kib = int(next(ln.split()[1] for ln in Path("/proc/meminfo").read_text().splitlines()
                       if ln.startswith("MemTotal:")))
    return {"nproc": os.cpu_count(), "cpu_model": model, "ram_gib": round(mem_kib / 2**20, 1),
            "platform": platform.platform(), "python": sys.version.split()[0]}


def rss_mib(pid: int) -> float:
    """VmRSS of process `pid`, MiB (0.0 when it has none or is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` (all its threads), seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------------------------------
# Squid: installed, never as a service


def ensure_squid() -> str | None:
    """Squid's path once `squid-openssl` is installed; None (with the reason on stderr) when it is missing
    and this is not root. As root it installs the package with apt-get, keeping apt from starting the
    service (a policy-rc.d that refuses, unless one is already there), and stops and masks squid.service
    where systemd runs. RuntimeError when apt-get fails or the Squid installed lacks ssl_bump."""
    if not Path(SQUID).is_file():
        if os.geteuid() != 0:
            print("bench_squid: Squid is not installed and this is not root, so the Squid side is not run "
                  "(sudo apt-get install -y squid-openssl, then stop and mask squid.service)", file=sys.stderr)
            return None
        print("bench_squid: installing squid-openssl (apt-get; the system service is kept stopped)",
              file=sys.stderr, flush=True)
        policy = Path("/usr/sbin/policy-rc.d")
        ours = not policy.exists()
        if ours:
            policy.write_text("#!/bin/sh\n# bench_squid.py: no service starts while it installs squid\nexit 101\n")
            policy.chmod(0o755)
        try:
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "squid-openssl"]
            if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:
                subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
                done = subprocess.run(cmd, env=env, capture_output=True, text=True)
                if done.returncode != 0:
                    raise RuntimeError(f"apt-get install squid-openssl failed:\n{done.stderr}")
        finally:
            if ours:
                policy.unlink()
    if os.geteuid() == 0 and Path("/run/systemd/system").is_dir():
        subprocess.run(["systemctl", "stop", "squid.service"], capture_output=True)
        subprocess.run(["systemctl", "mask", "squid.service"], capture_output=True)
    version = subprocess.run([SQUID, "-v"], capture_output=True, text=True).stdout
    if "--with-openssl" not in version:
        raise RuntimeError(f"{SQUID} has no ssl_bump (not built --with-openssl): install squid-openssl")
    return SQUID


def squid_version() -> str:
    out = subprocess.run([SQUID, "-v"], capture_output=True, text=True).stdout.splitlines()
    return out[0].strip() if out else ""


def squid_conf(directory: Path, port: int, cert: Path, key: Path, names_file: Path) -> Path:
    """A Squid configuration for the job, all of its files in `directory`: forward proxy on 127.0.0.1:port,
    peek at the SNI, terminate listed names (`names_file`: one `.name` a line), splice the rest."""
    conf = directory / "squid.conf"
    conf.write_text(f"""\
# bench_squid.py: geoblock's job for Squid. Own instance, loopback only, no cache.
http_port 127.0.0.1:{port} ssl-bump tls-cert={cert} tls-key={key} generate-host-certificates=off
pid_filename {directory}/squid.pid
cache_log {directory}/cache.log
access_log none
cache deny all
cache_mem 8 MB
coredump_dir {directory}
shutdown_lifetime 0 seconds
pinger_enable off
acl step1 at_step SslBump1
acl listed ssl::server_name "{names_file}"
http_access allow localhost
http_access deny all
ssl_bump peek step1
ssl_bump terminate listed
ssl_bump splice all
""")
    return conf


def squid_names(names: list[str]) -> list[str]:
    """`names` for a Squid `ssl::server_name` file: each as `.name` (the name and its subdomains), without
    those under another name of the list, which Squid 5 refuses to load ("is a subdomain of") and which
    add nothing: the parent's entry covers them, in geoblock as in Squid."""
    listed = set(names)
    out = []
    for name in names:
        labels = name.split(".")
        if not any(".".join(labels[i:]) in listed for i in range(1, len(labels))):
            out.append(f".{name}")
    return out


# ---------------------------------------------------------------------------------------------------
# the clients


def attempt(proxy_port: int, target_port: int, name: str, ctx: ssl.SSLContext, timeout: float = 30.0) -> str:
    """One client: CONNECT 127.0.0.1:target_port through the proxy on 127.0.0.1:proxy_port, then a TLS
    handshake with SNI `name` (the local server's certificate verified for it), then close. Returns "ok"
    (handshake done), "refused" (the proxy answered the CONNECT, then refused: a status other than 200, or
    the handshake broken), "wrong certificate" (a handshake with some other certificate) or "failed" (no
    answer to the CONNECT: TCP refused or reset, or `timeout` seconds passed)."""
    answered = False
    sock = None
    try:
        sock = socket.create_connection(("127.0.0.1", proxy_port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        target = f"127.0.0.1:{target_port}"
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                return "failed"
            head += chunk
        answered = True
        if not head.startswith(b"HTTP/1.1 200"):
            return "refused"
        tls = ctx.wrap_socket(sock, server_hostname=name)
        sock = tls
        return "ok"
    except ssl.SSLCertVerificationError:
        return "wrong certificate"  # a server answered, not the local one: neither passed nor refused
    except (OSError, ssl.SSLError):
        return "refused" if answered else "failed"
    finally:
        if sock is not None:
            sock.close()


def client_context(ca: Path) -> ssl.SSLContext:
    """The clients' TLS context: verifies the local server's certificate against the test CA `ca`."""
    return ssl.create_default_context(cafile=str(ca))


def until_ok(proxy_port: int, target_port: int, ctx: ssl.SSLContext, proc: subprocess.Popen, limit: float,
             started: float) -> float:
    """Seconds from `started` (perf_counter) until a CONNECT + TLS to the allowed name succeeds.
    RuntimeError when `proc` exits first or `limit` seconds pass."""
    while time.perf_counter() - started < limit:
        if proc.poll() is not None:
            raise RuntimeError(f"the proxy exited with {proc.returncode} before serving")
        if attempt(proxy_port, target_port, ALLOWED, ctx, timeout=10) == "ok":
            return time.perf_counter() - started
        time.sleep(0.05)
    raise RuntimeError(f"the proxy did not serve within {limit:g} s")


def _client_process(proxy_port: int | None, target_port: int, ctx: ssl.SSLContext, threads: int, duration: float,
                    out: multiprocessing.connection.Connection) -> None:
    """In a forked process: `threads` threads looping CONNECT + TLS to the allowed name (straight to the
    server when `proxy_port` is None) for `duration` s; sends (ok, other) on `out`."""
    counts = [0, 0]
    lock = threading.Lock()
    end = time.perf_counter() + duration

    def direct() -> str:
        try:
            with socket.create_connection(("127.0.0.1", target_port), timeout=10) as sock:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                ctx.wrap_socket(sock, server_hostname=ALLOWED).close()
            return "ok"
        except OSError:
            return "failed"

    def loop() -> None:
        while time.perf_counter() < end:
            ok = (direct() if proxy_port is None else attempt(proxy_port, target_port, ALLOWED, ctx, 10)) == "ok"
            with lock:
                counts[0 if ok else 1] += 1

    workers = [threading.Thread(target=loop) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    out.send(tuple(counts))


def throughput(proxy_port: int | None, target_port: int, ctx: ssl.SSLContext, clients: int,
               duration: float) -> dict:
    """`clients` parallel clients (blocking sockets: threads in as many forked processes as this process
    may use CPUs, the proxy's excluded when pinned), each looping CONNECT + TLS to the allowed name for
    `duration` seconds; straight to the server when `proxy_port` is None (the clients' own ceiling).
    Returns ok, other (attempts that did not succeed) and seconds."""
    procs = max(1, min(clients, len(os.sched_getaffinity(0))))
    fork = multiprocessing.get_context("fork")
    running = []
    t0 = time.perf_counter()
    for i in range(procs):
        threads = clients // procs + (i < clients % procs)
        recv, send = fork.Pipe(duplex=False)
        proc = fork.Process(target=_client_process, args=(proxy_port, target_port, ctx, threads, duration, send))
        proc.start()
        running.append((proc, recv))
    ok = other = 0
    for proc, recv in running:
        a, b = recv.recv()
        proc.join()
        ok, other = ok + a, other + b
    return {"ok": ok, "other": other, "seconds": time.perf_counter() - t0}


def reload_window(proxy_port: int, target_port: int, ctx: ssl.SSLContext, added: str,
                  start_reload: Callable[[], None], limit: float, after: float) -> dict:
    """Start a reload (`start_reload()`, called at t = 0) and time it: from t = 0, a client in a thread
    looping CONNECT + TLS to the allowed name (an attempt at most every PACE_S) until `after` seconds past
    in force; once `start_reload()` returns, a probe every 50 ms for `added` (in force when it is
    refused). RuntimeError when not in force
    within `limit` seconds."""
    attempts: list[tuple[float, float, str]] = []  # start, duration, outcome
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            s = time.perf_counter()
            outcome = attempt(proxy_port, target_port, ALLOWED, ctx, timeout=limit)
            d = time.perf_counter() - s
            attempts.append((s - t0, d, outcome))
            time.sleep(max(0.0, PACE_S - d))

    t0 = time.perf_counter()
    looping = threading.Thread(target=loop)
    looping.start()
    in_force = None
    try:
        start_reload()  # may take a while (`squid -k reconfigure` parses the configuration before it signals)
        command_s = time.perf_counter() - t0
        while time.perf_counter() - t0 < limit:
            if attempt(proxy_port, target_port, added, ctx, timeout=limit) == "refused":
                in_force = time.perf_counter() - t0
                break
            time.sleep(0.05)
        if in_force is not None:
            time.sleep(after)
    finally:
        stop.set()
        looping.join()
    if in_force is None:
        raise RuntimeError(f"the name added to the list was not refused within {limit:g} s")
    failed = [(s, d) for s, d, o in attempts if o != "ok"]
    return {"reload_s": in_force, "reload_command_s": command_s,
            "reload_attempts": len(attempts), "reload_failed": len(failed),
            "reload_longest_s": max((d for _, d, _ in attempts), default=0.0),
            "reload_failing_s": (failed[-1][0] + failed[-1][1] - failed[0][0]) if failed else 0.0}


# ---------------------------------------------------------------------------------------------------
# one side


@dataclass
class Side:
    """A proxy under test: how to start it, how to reload it with `added` on its list."""
    label: str
    cmd: list[str]
    port: int
    log: Path
    reload: Callable[[], None]  # called at the reload's start
    env: dict = field(default_factory=dict)


def pin_proxy_cpu() -> int | None:
    """Keep this process (and so the clients and the server it starts) off the last CPU, and return that
    CPU for the proxies; None (nothing changed) with fewer than two CPUs or without taskset."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2 or not shutil.which("taskset"):
        return None
    os.sched_setaffinity(0, set(cpus[:-1]))
    return cpus[-1]


def pinned(cmd: list[str], cpu: int | None) -> list[str]:
    """`cmd` run on CPU `cpu` (every thread and child process it starts), or as it is when `cpu` is None."""
    return cmd if cpu is None else ["taskset", "-c", str(cpu), *cmd]


def measure(side: Side, target_port: int, ctx: ssl.SSLContext, listed_checks: list[str], added: str,
            args: argparse.Namespace) -> dict:
    """Start `side`, take its figures (module docstring), stop it. RuntimeError when a listed name passes,
    the allowed name does not, or it does not serve."""
    print(f"{side.label}: starting ...", file=sys.stderr, flush=True)
    with open(side.log, "ab") as log:
        started = time.perf_counter()
        proc = subprocess.Popen(side.cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                env={**os.environ, **side.env}, start_new_session=True)
    try:
        try:
            ready = until_ok(side.port, target_port, ctx, proc, args.start_limit, started)
        except RuntimeError as exc:
            raise RuntimeError(f"{side.label}: {exc}\n{side.log.read_text(errors='replace')[-3000:]}") from None
        pid = proc.pid
        res: dict = {"ready_s": ready, "rss_ready_mib": rss_mib(pid)}
        print(f"{side.label}: serving after {ready:.1f} s, {res['rss_ready_mib']:.0f} MiB", file=sys.stderr, flush=True)
        checks = {name: attempt(side.port, target_port, name, ctx) for name in [ALLOWED, *listed_checks, added]}
        res["checks"] = checks
        if checks[ALLOWED] != "ok" or checks[added] != "ok" or any(checks[n] != "refused" for n in listed_checks):
            raise RuntimeError(f"{side.label}: wrong verdicts {checks} (the allowed name and the name the reload "
                               "will add must pass, listed ones be refused)")
        cpu0 = cpu_seconds(pid)
        tp = throughput(side.port, target_port, ctx, args.clients, args.duration)
        cpu = cpu_seconds(pid) - cpu0
        res.update(conn_per_s=tp["ok"] / tp["seconds"], conn_ok=tp["ok"], conn_other=tp["other"],
                   cpu_ms_per_conn=cpu * 1000 / max(tp["ok"], 1))
        print(f"{side.label}: {res['conn_per_s']:.0f} new TLS connections/s, {res['cpu_ms_per_conn']:.2f} ms CPU "
              f"each ({tp['other']} not ok); reloading ...", file=sys.stderr, flush=True)
        res.update(reload_window(side.port, target_port, ctx, added, side.reload, args.reload_limit, args.after))
        res["rss_reload_mib"] = rss_mib(pid)
        res["added_refused"] = attempt(side.port, target_port, added, ctx) == "refused"
        print(f"{side.label}: reload in force after {res['reload_s']:.1f} s, {res['reload_failed']} of "
              f"{res['reload_attempts']} connections failed, longest {res['reload_longest_s']:.2f} s; "
              f"{res['rss_reload_mib']:.0f} MiB", file=sys.stderr, flush=True)
        return res
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_server":
        return serve(Path(sys.argv[2]))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--domains", type=int, default=1_000_000, help="names on the list (default 1,000,000)")
    p.add_argument("--clients", type=int, default=16, help="parallel clients for connections per second")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of connections per second")
    p.add_argument("--after", type=float, default=2.0, help="seconds the reload's client goes on once in force")
    p.add_argument("--start-limit", type=float, default=300.0, help="seconds a proxy may take to serve")
    p.add_argument("--reload-limit", type=float, default=300.0, help="seconds a reload may take")
    p.add_argument("--only", choices=("squid", "geoblock", "runner"), default=None,
                   help="one side only (geoblock: mitmdump -s addons/block.py; runner: geoblock-gateway)")
    p.add_argument("--seed", type=int, default=15)
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    p.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True,
                   help="the proxy on the last CPU, clients and server on the others (default: on)")
    args = p.parse_args()
    proxy_cpu = pin_proxy_cpu() if args.pin else None
    squid = None if args.only in ("geoblock", "runner") else ensure_squid()
    results: dict = {"machine": machine(), "source": source_state(), "speed_index_ms": calibrate(),
                     "domains": args.domains, "clients": args.clients, "duration_s": args.duration,
                     "proxy_cpu": proxy_cpu, "sides": {}}
    import mitmproxy.version

    results["mitmproxy"] = mitmproxy.version.VERSION
    with tempfile.TemporaryDirectory(prefix="geoblock-squid-") as tmp_name:
        tmp = Path(tmp_name)
        tmp.chmod(0o755)  # Squid started as root reads its list as the user proxy
        print(f"writing {args.domains:,} domains ...", file=sys.stderr, flush=True)
        rules = tmp / "rules"
        listed = write_rules(rules, args.domains, args.seed)
        listed_checks = [listed[len(listed) // 2], "www." + listed[len(listed) // 3]]
        pki = make_pki(tmp / "pki", [ALLOWED, *listed_checks, ADDED])  # so none fails for its certificate
        server = subprocess.Popen([sys.executable, __file__, "_server", str(pki.cert_pem.parent)],
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None
            target_port = int(server.stdout.readline())
            ctx = client_context(pki.ca_pem)
            direct = throughput(None, target_port, ctx, args.clients, args.duration)
            results["direct_conn_per_s"] = direct["ok"] / direct["seconds"]
            print(f"clients straight to the server (their ceiling): {results['direct_conn_per_s']:.0f} new TLS "
                  "connections/s", file=sys.stderr, flush=True)
            sides = []
            if squid is not None:
                results["squid_version"] = squid_version()
                sq = tmp / "squid"
                sq.mkdir()
                names_file = sq / "listed.txt"
                entries = squid_names(listed)
                results["squid_entries"] = len(entries)  # the names under another listed name left out
                names_file.write_text("".join(f"{n}\n" for n in entries))
                port = free_port()
                conf = squid_conf(sq, port, pki.cert_pem, pki.key_pem, names_file)
                if os.geteuid() == 0:  # Squid drops to the user proxy: its directory must be that user's
                    user = pwd.getpwnam("proxy")
                    for path in (sq, *sq.iterdir()):
                        os.chown(path, user.pw_uid, user.pw_gid)

                def squid_reload(names_file: Path = names_file, conf: Path = conf) -> None:
                    with names_file.open("a") as f:
                        f.write(f".{ADDED}\n")
                    subprocess.run([SQUID, "-f", str(conf), "-k", "reconfigure"], check=True, capture_output=True)

                squid_cmd = pinned([squid, "-N", "-f", str(conf)], proxy_cpu)
                sides.append(Side("Squid", squid_cmd, port, sq / "stdout.log", squid_reload))
            # geoblock two ways: mitmdump with the addon script (what `make run` starts), and the production
            # runner geoblock-gateway (what the systemd units start), with the same flags and rules
            runner = str(Path(mitmdump_path()).with_name("geoblock-gateway"))
            for label, front in (("geoblock", [mitmdump_path()]), ("geoblock-gateway", [runner])):
                if args.only not in (None, "runner" if label == "geoblock-gateway" else "geoblock"):
                    continue
                gb = tmp / label
                gb.mkdir()
                side_rules = gb / "rules"  # its own copy: the reload edits the list
                shutil.copytree(rules, side_rules)
                port = free_port()
                cmd = [*front, "--listen-host", "127.0.0.1", "-p", str(port),
                       "--set", f"confdir={gb / 'confdir'}", "--set", "connection_strategy=lazy",
                       "--set", "flow_detail=0", "--set", "termlog_verbosity=warn",
                       *(["-s", str(BLOCK_PY)] if label == "geoblock" else []),
                       "--set", f"geoblock_rules={side_rules}", "--set", f"geoblock_log={gb / 'decisions.jsonl'}",
                       "--set", "geoblock_metrics="]
                big = side_rules / "lists" / "big.txt"

                def geoblock_reload(big: Path = big) -> None:
                    new = big.with_name("big.txt.new")
                    shutil.copyfile(big, new)
                    with new.open("a") as f:
                        f.write(f"{ADDED}  Added\n")
                    os.replace(new, big)

                # an empty artifact cache: the list compiles at start (the cold figure), as on a first start
                sides.append(Side(label, pinned(cmd, proxy_cpu), port, gb / "mitmdump.log", geoblock_reload,
                                  env={"GEOBLOCK_CACHE_DIR": str(gb / "cache")}))
            for side in sides:
                results["sides"][side.label] = measure(side, target_port, ctx, listed_checks, ADDED, args)
        finally:
            server.terminate()
            server.wait()
    report(results)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


def serve(pki_dir: Path, acceptors: int = 32) -> int:
    """The local TLS server (its own process): prints its port, then completes a TLS handshake with each
    connection and closes it (`acceptors` threads, blocking sockets), until terminated."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pki_dir / "server.pem", pki_dir / "server-key.pem")
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # before the threads: sigwait takes it
    listener = socket.create_server(("127.0.0.1", 0), backlog=4096)

    def accept() -> None:
        while True:
            conn, _ = listener.accept()
            try:
                conn.settimeout(10)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                ctx.wrap_socket(conn, server_side=True).close()
            except OSError:
                conn.close()

    for _ in range(acceptors):
        threading.Thread(target=accept, daemon=True).start()
    print(listener.getsockname()[1], flush=True)
    signal.sigwait({signal.SIGTERM})
    return 0


def report(results: dict) -> None:
    """The markdown table on stdout."""
    m = results["machine"]
    sides = results["sides"]
    print(f"{results['domains']:,} listed names; {m['nproc']} CPUs ({m['cpu_model']}), {m['ram_gib']} GiB RAM; "
          f"Python {m['python']}, mitmproxy {results['mitmproxy']}"
          + (f"; {results['squid_version']}" if "squid_version" in results else "")
          + f"; {results['clients']} clients, whose own ceiling (straight to the server, no proxy) is "
          f"{results['direct_conn_per_s']:.0f} connections/s; speed index {results['speed_index_ms']:.0f} ms\n")
    labels = list(sides)
    ours = [label for label in labels if label != "Squid"] if "Squid" in sides else []
    print("| figure | " + " | ".join(labels) + " |" + "".join(f" {label} / Squid |" for label in ours))
    print("|---|" + "---:|" * (len(labels) + len(ours)))
    # (title, key, format, whether a ratio means something)
    rows = [("ready to serve", "ready_s", "{:.1f} s", True),
            ("memory when ready (VmRSS)", "rss_ready_mib", "{:.0f} MiB", True),
            ("memory after one reload", "rss_reload_mib", "{:.0f} MiB", True),
            ("reload: new list in force after", "reload_s", "{:.1f} s", True),
            ("reload: of which the reload command itself", "reload_command_s", "{:.1f} s", False),
            ("during the reload: connections refused or failed", "reload_failed", "{}", False),
            ("during the reload: connections tried", "reload_attempts", "{}", False),
            ("during the reload: failing for (first to last failure)", "reload_failing_s", "{:.1f} s", False),
            ("during the reload: longest connection", "reload_longest_s", "{:.2f} s", True),
            ("new TLS connections per second, allowed name", "conn_per_s", "{:.0f}", True),
            ("proxy CPU per connection", "cpu_ms_per_conn", "{:.2f} ms", True)]
    for title, key, fmt, ratio_means in rows:
        cells = [fmt.format(sides[label][key]) for label in labels]
        ratio = ""
        for label in ours:
            a, b = sides[label][key], sides["Squid"][key]
            ratio += f" {a / b:.2f} |" if b and ratio_means else " - |"
        print(f"| {title} | " + " | ".join(cells) + " |" + ratio)
    if "squid_entries" in results:
        left = results["domains"] - results["squid_entries"]
        print(f"\nSquid's list: {results['squid_entries']:,} entries (the {left:,} "
              "names under another listed name left out: Squid refuses them, the parent covers them).")
    print("\nChecked on each: the allowed name and the name the reload adds pass, listed names (one exact, one a "
          "subdomain) are refused: "
          + "; ".join(f"{label} {sides[label]['checks']}" for label in labels))


if __name__ == "__main__":
    raise SystemExit(main())
