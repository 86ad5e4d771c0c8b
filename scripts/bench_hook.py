#!/usr/bin/env python3
"""Benchmark: the cost of geoblock's HTTP request hook (`requestheaders`) inside mitmproxy's own test
context, for an allowed keep-alive request (the throughput benchmark's request: absolute-form target
127.0.0.1:8000, Host www.example.org), shipped rules, decision log ON. Prints the best of 5 batches.

    .venv-3.11/bin/python scripts/bench_hook.py [--batch 20000] [--repo PATH]

`--repo` measures another checkout (e.g. a `git worktree` of an older commit) with this venv.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

ap = argparse.ArgumentParser()
ap.add_argument("--batch", type=int, default=20000)
ap.add_argument("--repo", default=str(Path(__file__).resolve().parents[1]))
args = ap.parse_args()
sys.path.insert(0, os.path.join(args.repo, "addons"))

from mitmproxy.addons import proxyserver  # noqa: E402
from mitmproxy.test import taddons, tflow, tutils  # noqa: E402

from geoblock.addon import GeoBlock  # noqa: E402


def main() -> None:
    gb = GeoBlock()
    with tempfile.TemporaryDirectory() as d, taddons.context(proxyserver.Proxyserver(), gb) as tctx:
        tctx.configure(gb, geoblock_rules=os.path.join(args.repo, "rules"), geoblock_country_db="",
                       geoblock_asn_db="", geoblock_log=os.path.join(d, "decisions.jsonl"), geoblock_rdap=False)
        flow = tflow.tflow(req=tutils.treq(host="127.0.0.1", port=8000, headers=[(b"host", b"www.example.org")]))
        flow.request.authority = "127.0.0.1:8000"

        async def batch(n: int) -> None:
            for _ in range(n):
                flow.response = None
                await gb.requestheaders(flow)

        loop = asyncio.new_event_loop()
        loop.run_until_complete(batch(2000))  # warm the caches
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            loop.run_until_complete(batch(args.batch))
            best = min(best, (time.perf_counter() - started) / args.batch)
        assert flow.response is None and gb.log is not None and gb.log.written >= 2000 + 5 * args.batch
        print(f"requestheaders (allowed request, decision log on): {best * 1e6:.1f} µs per request "
              f"(best of 5 x {args.batch}), {args.repo}")


main()
