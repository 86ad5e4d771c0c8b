#!/usr/bin/env python3
"""Benchmark: the cost of geoblock's HTTP request hook (`requestheaders`) inside mitmproxy's own test
context, for an allowed keep-alive request (the throughput benchmark's request: absolute-form target
127.0.0.1:8000, Host www.example.org), shipped rules, decision log ON. Prints the best of 5 batches, for
two cases: the same request again on one connection (the connection's last judgement is reused), and a
request whose Host differs from the one before it on the connection (judged anew, as every request was
before that memo).

    .venv-3.11/bin/python scripts/bench_hook.py [--batch 20000] [--repo PATH]

`--repo` measures another checkout (e.g. a `git worktree` of an older commit) with this venv.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time

import _paths

ap = argparse.ArgumentParser()
ap.add_argument("--batch", type=int, default=20000)
ap.add_argument("--repo", default=str(_paths.REPO))
args = ap.parse_args()
if os.path.realpath(args.repo) != str(_paths.REPO):
    _paths.use_checkout(args.repo)  # that checkout's geoblock instead of the installed one

from mitmproxy.addons import proxyserver  # noqa: E402
from mitmproxy.test import taddons, tflow, tutils  # noqa: E402

from geoblock.mitm.addon import GeoBlock  # noqa: E402


def main() -> None:
    gb = GeoBlock()
    with tempfile.TemporaryDirectory() as d, taddons.context(proxyserver.Proxyserver(), gb) as tctx:
        tctx.configure(gb, geoblock_rules=os.path.join(args.repo, "rules"), geoblock_country_db="",
                       geoblock_asn_db="", geoblock_log=os.path.join(d, "decisions.jsonl"), geoblock_rdap=False)
        flow = tflow.tflow(req=tutils.treq(host="127.0.0.1", port=8000, headers=[(b"host", b"www.example.org")]))
        flow.request.authority = "127.0.0.1:8000"
        flow.client_conn.sni = None  # plain HTTP, as in the throughput benchmark (mitmproxy's test flow has one)

        other = tflow.tflow(req=tutils.treq(host="127.0.0.1", port=8000, headers=[(b"host", b"www.example.com")]))
        other.request.authority = "127.0.0.1:8000"
        other.client_conn = flow.client_conn  # the same connection: each request's Host differs from the last

        async def batch(flows: list, n: int) -> None:
            for i in range(n):
                f = flows[i % len(flows)]
                f.response = None
                judging = gb.requestheaders(f)  # None when the connection's last judgement covers the request
                if judging is not None:
                    await judging

        loop = asyncio.new_event_loop()
        for label, flows in (("the same request again", [flow]), ("a new Host each request", [flow, other])):
            loop.run_until_complete(batch(flows, 2000))  # warm the caches
            written = gb.judging.log.written  # type: ignore[union-attr]
            best = float("inf")
            for _ in range(5):
                started = time.perf_counter()
                loop.run_until_complete(batch(flows, args.batch))
                best = min(best, (time.perf_counter() - started) / args.batch)
            assert all(f.response is None for f in flows) and gb.judging.counts["log"] == 0  # every one allowed
            assert gb.judging.log is not None and gb.judging.log.written == written + 5 * args.batch
            print(f"requestheaders, allowed request, decision log on, {label}: {best * 1e6:.1f} µs per request "
                  f"(best of 5 x {args.batch}), {args.repo}")


main()
