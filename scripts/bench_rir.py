#!/usr/bin/env python3
"""Benchmark: one lookup in the registries' delegation data (`geoblock.enrich.rir.country`), the country
source of last resort, and the engine's `place` with only that locator (no GeoIP database). Prints the
median and p99 in nanoseconds over `--iterations` lookups cycling through addresses the data holds
(IPv4 and IPv6, four registries), after a warm-up.

    .venv-3.11/bin/python scripts/bench_rir.py [--iterations 200000]
"""

from __future__ import annotations

import argparse
import statistics
import time

from geoblock.core.model import Facts
from geoblock.core.names import normalize_ip
from geoblock.enrich import rir
from geoblock.enrich.locate import RirLocator

ADDRESSES = [normalize_ip(a) for a in ("193.0.6.139", "2001:67c:2e8::1", "1.0.16.1", "8.8.8.8", "41.0.0.1",
                                       "200.160.2.3")]


def timed(fn, n: int) -> list[int]:
    out = []
    k = len(ADDRESSES)
    for i in range(n):
        addr = ADDRESSES[i % k]
        t = time.perf_counter_ns()
        fn(addr)
        out.append(time.perf_counter_ns() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iterations", type=int, default=200000)
    args = ap.parse_args()
    locator = RirLocator()

    def place(addr) -> None:
        locator.place(Facts("connect", server_ip=addr))

    print(f"data: {rir.BUILD}")
    for label, fn in (("rir.country", rir.country), ("RirLocator.place (incl. Facts)", place)):
        timed(fn, 10000)
        ns = sorted(timed(fn, args.iterations))
        print(f"{label}: median {statistics.median(ns):.0f} ns, p99 {ns[int(len(ns) * 0.99)]:.0f} ns "
              f"over {args.iterations} lookups")


if __name__ == "__main__":
    main()
