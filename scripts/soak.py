#!/usr/bin/env python3
"""Soak: geoblock in a real mitmdump under hundreds of concurrent client connections for minutes.

Local only. The script starts:
- upstream servers (asyncio, HTTP/1.1 keep-alive, plain and TLS) on loopback addresses that a test GeoIP
  database places in different countries: 127.0.0.1 (CN, home) and 127.0.0.3 (US) serve allowed names;
  127.0.0.2 (SG) is where blocked names (binance.com, okx.com, bitfinex.com) resolve; 127.0.0.5 is
  blocked by a network rule. Every server counts the TCP connections it accepts: the blocked ones must
  see none;
- a real `mitmdump -s addons/block.py` with the shipped rules plus one soak rule (a network block, which
  also makes geoblock resolve every name it sees), the test GeoIP databases and the decision log on (a
  temporary file), and tests/support/soak_probe.py beside it: the probe stands in for DNS (names resolve
  to the local servers through geoblock's own resolver and cache) and writes geoblock's status, cache
  sizes and counters to a file every second;
- a load generator: `--connections` slots each hold a client connection open at all times (plain HTTP
  keep-alive with allowed and blocked Host names, or CONNECT + TLS passed through to the local TLS server
  with keep-alive requests inside), each connection living 10-30 s before it is replaced by a new one,
  plus `--churn` short connections per second (CONNECT to blocked names, CONNECT to an IP with a blocked
  SNI, CONNECT to a blocked network, one-shot TLS and blocked HTTP). Names are drawn from a few popular
  ones and from fresh subdomains (a new name each time), so geoblock's caches would grow without bound if
  they were unbounded.

The servers, the load and the soak's names and rules are in tests/support/soak.py (tests/test_soak.py
uses them too). Every answer is checked: an allowed request gets 200 from the right upstream (TLS: the upstream's own
certificate, verified against the test CA), a blocked HTTP request or CONNECT gets 451, a blocked SNI a
TLS access_denied alert. Anything else is an error, counted by kind.

Pass criteria (the exit status is 1 when one fails):
- no errors (client side, geoblock's error counter, "Addon error" or tracebacks in mitmdump's output);
- mitmdump's RSS grows by at most 10 % from the end of the warm-up to the end of the load;
- every geoblock cache is within its bound; per-connection states drain to 0 once clients disconnect;
- the decision log holds exactly the records of the decisions made, by stage and action (1 per HTTP
  request, 1 per CONNECT, 1 more per TLS handshake judged), none lost;
- the blocked servers accepted 0 connections; the allowed upstreams served every allowed request;
- the slots held at least `--connections` open connections (median of the samples after the warm-up).

    .venv-3.11/bin/python scripts/soak.py [--duration 300] [--connections 500] [--churn 20] [--out soak.json]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import platform
import resource
import shutil
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _paths  # makes tests/support importable as `support`
from bench_common import source_state
from support.geodb import write_asn_db, write_country_db
from support.proc import Mitmdump
from support.servers import make_pki
from support.shipped import copy_shipped_rules
from support.servers import KeepAliveServer
from support.soak import BLOCKED_AT, CERT_NAMES, DNS, HOME, NETBLOCKED, PROBE, SOAK_RULES, US, Load, upstream

REPO = _paths.REPO

RSS_GROWTH_LIMIT = 10.0  # percent, end of warm-up to end of load


# ---------------------------------------------------------------------------------------------------
# Measuring


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def nofile_limit(pid: int) -> int | None:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    return None


def read_probe(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


async def wait_probe(path: Path, after: float, timeout: float, until: Any = None) -> dict[str, Any] | None:
    """The first snapshot taken after `after` (wall clock) for which `until(snapshot)` holds."""
    deadline = time.monotonic() + timeout
    snap = None
    while time.monotonic() < deadline:
        snap = read_probe(path)
        if snap is not None and snap["time"] > after and (until is None or until(snap)):
            return snap
        await asyncio.sleep(0.25)
    return snap


def raise_nofile(need: int) -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


# ---------------------------------------------------------------------------------------------------


async def soak(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    loop_errors: collections.Counter[str] = collections.Counter()

    def on_loop_error(_: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        loop_errors[str(context.get("message"))[:100]] += 1

    loop.set_exception_handler(on_loop_error)

    pki = make_pki(tmp / "pki", CERT_NAMES)
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(pki.cert_pem, pki.key_pem)
    client_tls = ssl.create_default_context(cafile=str(pki.ca_pem))
    servers: dict[tuple[str, str], KeepAliveServer] = {}
    for addr in (HOME, US, BLOCKED_AT, NETBLOCKED):
        for tls in (None, server_tls):
            s = await upstream(addr, tls).start()
            servers[(addr, s.kind)] = s

    rules = copy_shipped_rules(tmp / "rules")
    (rules / "zz-soak.yaml").write_text(SOAK_RULES)
    (tmp / "dns.json").write_text(json.dumps(DNS))
    probe_file = tmp / "probe.json"
    decision_log = tmp / "decisions.jsonl"
    proxy = Mitmdump(tmp / "conf", options={
        "geoblock_rules": str(rules),
        "geoblock_country_db": str(write_country_db(tmp / "GeoLite2-Country.mmdb")),
        "geoblock_asn_db": str(write_asn_db(tmp / "GeoLite2-ASN.mmdb")),
        "geoblock_log": str(decision_log),
        "flow_detail": 0,
        "soak_probe": str(probe_file),
        "soak_dns": str(tmp / "dns.json"),
    }, extra_args=["-s", str(PROBE)])

    result: dict[str, Any] = {"mitmdump_args": proxy.args}
    await asyncio.to_thread(proxy.start)
    try:
        assert proxy.proc is not None
        pid = proxy.proc.pid
        result["mitmdump_nofile_limit"] = nofile_limit(pid)
        need = 2 * args.connections + 4 * max(50, int(args.churn * 5)) + 200
        if (result["mitmdump_nofile_limit"] or 0) < need:
            raise RuntimeError(f"mitmdump may open {need} files, its limit is {result['mitmdump_nofile_limit']}")
        first = await wait_probe(probe_file, 0, 20)
        if first is None:
            raise RuntimeError(f"the soak probe wrote nothing:\n{proxy.output()[-3000:]}")

        load = Load(args, proxy.port, servers, client_tls)
        ramp = min(10.0, args.duration / 6)
        warmup = max(15.0, ramp + 10, args.duration * 0.1) if args.warmup is None else args.warmup
        samples: list[dict[str, Any]] = []
        t0 = time.monotonic()
        tasks = [asyncio.create_task(load.slot(ramp)) for _ in range(args.connections)]
        tasks.append(asyncio.create_task(load.churn()))
        print(f"soak: {args.connections} held connections (ramp {ramp:.0f} s), {args.churn:g} new short connections/s, "
              f"{args.duration:g} s; warm-up {warmup:g} s; mitmdump pid {pid}", flush=True)
        next_print = t0
        while (now := time.monotonic()) - t0 < args.duration:
            snap = read_probe(probe_file)
            sample = {
                "t": round(now - t0, 1),
                "rss_kib": rss_kib(pid),
                "mitmdump_fds": open_fds(pid),
                "client_open": load.open,
                "conn_states": snap["caches"]["connection states"]["entries"] if snap else None,
                "requests": load.requests,
                "handshakes": load.handshakes,
                "errors": sum(load.errors.values()),
            }
            samples.append(sample)
            if now >= next_print:
                next_print += args.print_every
                print(f"  t={sample['t']:5.0f}s rss={sample['rss_kib'] / 1024:6.1f} MiB fds={sample['mitmdump_fds']:5d} "
                      f"open={sample['client_open']:4d} states={sample['conn_states']} req={load.requests} "
                      f"tls={load.handshakes} alerts={load.alerts} errors={sample['errors']}", flush=True)
            if proxy.proc.poll() is not None:
                raise RuntimeError(f"mitmdump exited with {proxy.proc.returncode}:\n{proxy.output()[-3000:]}")
            await asyncio.sleep(min(args.sample, max(0.0, args.duration - (time.monotonic() - t0))))
        load_seconds = time.monotonic() - t0
        rss_end = rss_kib(pid)
        load.stop.set()
        stopped_at = time.time()
        done, pending = await asyncio.wait(tasks, timeout=args.op_timeout + 15)
        for task in pending:
            task.cancel()
        wind_down = time.monotonic() - t0 - load_seconds
        # Per-connection state must drain once every client has gone.
        drained = await wait_probe(probe_file, stopped_at, 30,
                                   lambda s: s["caches"]["connection states"]["entries"] == 0)
        drain_seconds = round(time.time() - stopped_at, 1)
        await asyncio.sleep(1.5)
        final = await wait_probe(probe_file, time.time(), 10)
        rss_after = rss_kib(pid)
    finally:
        await asyncio.to_thread(proxy.stop)
        for s in servers.values():
            s.close()
    output = proxy.output()

    # -- decision log ------------------------------------------------------------------------------
    logged: collections.Counter[str] = collections.Counter()
    unparsable = lost_before = 0
    with open(decision_log, "rb") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                unparsable += 1
                continue
            logged[f"{rec.get('stage')} {rec.get('action')}"] += 1
            lost_before += int(rec.get("lost_before", 0) or 0)
    log_lines = sum(logged.values()) + unparsable

    # -- figures -----------------------------------------------------------------------------------
    steady = [s for s in samples if warmup <= s["t"]]
    base = next((s for s in samples if s["t"] >= warmup), samples[-1])
    rss_base = base["rss_kib"]
    growth = (rss_end - rss_base) * 100.0 / rss_base
    held = [s["client_open"] for s in steady] or [0]
    fds = [s["mitmdump_fds"] for s in steady] or [0]
    caches = (final or drained or {}).get("caches", {})
    over = {k: v for k, v in caches.items() if v["bound"] is not None and v["entries"] > v["bound"]}
    states_left = (drained or {}).get("caches", {}).get("connection states", {}).get("entries")
    counts = (final or {}).get("counts", {})
    log_info = (final or {}).get("log") or {}
    addon_errors = [ln for ln in output.splitlines()
                    if "Addon error" in ln or "Traceback" in ln or "geoblock: error" in ln][:10]
    blocked_servers = {f"{a} {k}": s.accepted for (a, k), s in servers.items() if a in (BLOCKED_AT, NETBLOCKED)}
    allowed_servers = {f"{a} {k}": {"connections": s.accepted, "requests": s.requests}
                       for (a, k), s in servers.items() if a in (HOME, US)}
    upstream_http = sum(s.requests for (a, k), s in servers.items() if a in (HOME, US) and k == "http")
    upstream_tls = sum(s.requests for (a, k), s in servers.items() if a in (HOME, US) and k == "tls")
    expected = dict(sorted(load.records.items()))
    decisions = sum(counts.get(a, 0) for a in ("allow", "log", "block", "error"))
    errors_total = sum(load.errors.values())

    criteria = {
        "no client errors": {"ok": errors_total == 0, "value": errors_total},
        "no geoblock errors": {"ok": counts.get("error", 0) == 0 and not addon_errors and final is not None,
                               "value": {"decisions with error": counts.get("error"), "log lines": addon_errors}},
        "RSS growth <= 10 %": {"ok": growth <= RSS_GROWTH_LIMIT, "value": round(growth, 2), "limit": RSS_GROWTH_LIMIT},
        "caches within bounds": {"ok": bool(caches) and not over, "value": over or "all"},
        "connection states drained": {"ok": states_left == 0, "value": states_left},
        "decision log = decisions made": {
            "ok": dict(logged) == expected and unparsable == 0 and lost_before == 0 and log_info.get("lost") == 0
            and log_info.get("written") == log_lines and decisions == log_lines,
            "value": {"log lines": log_lines, "expected": sum(expected.values()), "written": log_info.get("written"),
                      "lost": log_info.get("lost"), "geoblock decisions": decisions},
        },
        "blocked servers saw 0 connections": {"ok": not any(blocked_servers.values()), "value": blocked_servers},
        "upstreams served every allowed request": {
            "ok": upstream_http == load.ops["http allowed 200"] and upstream_tls == load.ops["https allowed 200"],
            "value": {"http": [upstream_http, load.ops["http allowed 200"]],
                      "https": [upstream_tls, load.ops["https allowed 200"]]},
        },
        "connections held": {"ok": statistics.median(held) >= args.connections,
                             "value": statistics.median(held), "limit": args.connections},
        "every kind of flow exercised": {
            "ok": all(load.ops[k] > 0 for k in OP_KINDS), "value": {k: load.ops[k] for k in OP_KINDS}},
    }
    result.update({
        "seconds": round(load_seconds, 1),
        "wind_down_seconds": round(wind_down, 1),
        "drain_seconds": drain_seconds,
        "warmup_seconds": warmup,
        "connections": {
            "held_slots": args.connections,
            "client_open": {"min": min(held), "median": statistics.median(held), "max": max(held)},
            "mitmdump_fds": {"min": min(fds), "median": statistics.median(fds), "max": max(fds)},
            "opened": load.connections,
            "per_s": round(load.connections / load_seconds, 1),
        },
        "operations": dict(sorted(load.ops.items())),
        "requests": load.requests,
        "requests_per_s": round(load.requests / load_seconds, 1),
        "tls_handshakes": load.handshakes,
        "tls_handshakes_per_s": round(load.handshakes / load_seconds, 1),
        "tls_alerts": load.alerts,
        "decisions_per_s": round(log_lines / load_seconds, 1),
        "distinct_names": len(load.names),
        "churn_skipped": load.churn_skipped,
        "errors": dict(load.errors),
        "error_examples": load.error_examples,
        "client_loop_errors": dict(loop_errors),
        "rss_mib": {
            "start": round(samples[0]["rss_kib"] / 1024, 1),
            "after_warmup": round(rss_base / 1024, 1),
            "end": round(rss_end / 1024, 1),
            "peak": round(max(s["rss_kib"] for s in samples) / 1024, 1),
            "after_drain": round(rss_after / 1024, 1),
            "growth_pct": round(growth, 2),
        },
        "caches": caches,
        "geoblock_counts": counts,
        "geoblock_status": (final or {}).get("status"),
        "resolver": (final or {}).get("resolver"),
        "decision_log": {"by_stage_action": dict(sorted(logged.items())), "expected": expected,
                         "unparsable": unparsable, "lost_before": lost_before, **log_info},
        "blocked_servers_connections": blocked_servers,
        "allowed_servers": allowed_servers,
        "criteria": criteria,
        "passed": all(c["ok"] for c in criteria.values()),
        "samples": samples,
    })
    return result


OP_KINDS = ("http allowed 200", "http blocked 451", "https allowed 200", "tls passed through",
            "connect blocked 451", "connect blocked network 451", "sni blocked alert")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=300.0, help="seconds of load (default 300)")
    ap.add_argument("--connections", type=int, default=500, help="client connections held open at all times")
    ap.add_argument("--churn", type=float, default=20.0, help="short connections started per second")
    ap.add_argument("--think", type=float, default=3.0, help="mean seconds between requests on a held connection")
    ap.add_argument("--fresh", type=float, default=1.0,
                    help="scale of the share of fresh names (0: only a few popular names, so caches stay small)")
    ap.add_argument("--blocked-share", type=float, default=0.2, help="share of blocked requests on held HTTP connections")
    ap.add_argument("--lifetime-min", type=float, default=10.0, help="seconds a held connection lives, at least")
    ap.add_argument("--lifetime-max", type=float, default=30.0, help="seconds a held connection lives, at most")
    ap.add_argument("--warmup", type=float, default=None,
                    help="seconds before the RSS baseline (default: 10 %% of the duration, at least 15 s and "
                         "10 s after the ramp-up)")
    ap.add_argument("--op-timeout", type=float, default=60.0, help="seconds an exchange may take before it is an error")
    ap.add_argument("--sample", type=float, default=2.0, help="seconds between RSS samples")
    ap.add_argument("--print-every", type=float, default=10.0, help="seconds between progress lines")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--out", default=None, help="write the figures and criteria as JSON here")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, decision log)")
    args = ap.parse_args()

    need = 4 * args.connections + 1000
    soft, hard = raise_nofile(need)
    if soft < need:
        print(f"soak: open files limit {soft} (hard {hard}) is below the {need} needed", file=sys.stderr)
        return 2
    import mitmproxy.version as mv

    tmp = Path(tempfile.mkdtemp(prefix="geoblock-soak-"))
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    try:
        result = asyncio.run(soak(args, tmp))
    except BaseException:
        print(f"soak: failed; files kept in {tmp}", file=sys.stderr)
        raise
    result = {
        "soak": "geoblock in mitmdump: held and churning client connections, allowed and blocked",
        "python": platform.python_version(),
        "mitmproxy": mv.VERSION,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg": os.getloadavg()},
        "date": started,
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "keep")},
        "open_files_limit": soft,
        "source": source_state(),
        **result,
    }
    r = result
    print()
    print(f"### Soak: {r['settings']['duration']:g} s, mitmproxy {r['mitmproxy']}, Python {r['python']}")
    c = r["connections"]
    print(f"- connections held open by clients (after warm-up): median {c['client_open']['median']}, "
          f"min {c['client_open']['min']}, max {c['client_open']['max']}; mitmdump's open files median "
          f"{c['mitmdump_fds']['median']}, max {c['mitmdump_fds']['max']}; {c['opened']} connections opened "
          f"({c['per_s']}/s)")
    print(f"- requests answered: {r['requests']} ({r['requests_per_s']}/s); TLS handshakes passed through: "
          f"{r['tls_handshakes']} ({r['tls_handshakes_per_s']}/s); TLS alerts: {r['tls_alerts']}; "
          f"decisions logged: {r['decision_log'].get('written')} ({r['decisions_per_s']}/s); "
          f"distinct names: {r['distinct_names']}")
    print("- outcomes: " + ", ".join(f"{k} {v}" for k, v in r["operations"].items()))
    print(f"- errors: {sum(r['errors'].values())}" + (f" {r['errors']}" if r["errors"] else ""))
    m = r["rss_mib"]
    print(f"- mitmdump RSS MiB: start {m['start']}, after warm-up ({r['warmup_seconds']:g} s) {m['after_warmup']}, "
          f"end {m['end']}, peak {m['peak']}, after the clients left {m['after_drain']}; growth {m['growth_pct']} %")
    print("- caches (entries/bound): " + ", ".join(
        f"{k} {v['entries']}/{v['bound'] if v['bound'] is not None else '-'}" for k, v in r["caches"].items()))
    print(f"- per-connection states drained in {r['drain_seconds']} s after the load stopped")
    print()
    for name, crit in r["criteria"].items():
        print(f"  [{'PASS' if crit['ok'] else 'FAIL'}] {name}: {crit['value']}")
    print(f"\nsoak: {'PASSED' if r['passed'] else 'FAILED'}")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"JSON: {out}")
    if args.keep:
        print(f"files: {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if r["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
