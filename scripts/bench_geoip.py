#!/usr/bin/env python3
"""Benchmark: one GeoIP lookup (country and ASN of a server address) read with geoip2's Reader and models,
as geoblock does (`Geo`, enrich/geo.py), against the raw maxminddb reader and its dict records (how geoblock
read databases before), cache cold and warm.

The databases are generated (tests/support's writer, mmdb-writer): `--networks` random public IPv4 /24
networks, each with a GeoLite2-Country-shaped record (continent, country and registered country with
geoname ids and names in GeoLite2's eight languages) and a GeoLite2-ASN record. Each call is timed alone
(time.perf_counter_ns) over `--iterations` addresses drawn from those networks, after a warm-up:

  cold  no cache: every lookup reads the database and builds the answer (a server address seen the first
        time: `Geo._locate` for geoip2, reader.get + the dict reading of the old code for maxminddb)
  warm  through the per-address cache (`Geo.locate`, an lru_cache of 65,536 addresses) with every address
        already in it: what every decision after the first one for an address pays

Prints a table of medians and p99 in microseconds and writes JSON.

    .venv-3.11/bin/python scripts/bench_geoip.py [--networks 20000] [--iterations 100000] [--out FILE]
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import _paths  # noqa: F401 - makes tests/support importable as `support`
import maxminddb
from mmdb_writer import MmdbU32, MMDBWriter
from netaddr import IPSet

from geoblock.core.countries import ISO_3166_ALPHA2
from geoblock.enrich.geo import Geo

LANGS = ["de", "en", "es", "fr", "ja", "pt-BR", "ru", "zh-CN"]
COUNTRIES = sorted(ISO_3166_ALPHA2)


def names(word: str) -> dict[str, str]:
    return {lang: f"{word} ({lang})" for lang in LANGS}


def country_record(code: str, rng: random.Random) -> dict[str, Any]:
    place = {"geoname_id": MmdbU32(rng.randrange(1, 1 << 24)), "iso_code": code, "names": names(code)}
    return {"continent": {"code": "AS", "geoname_id": MmdbU32(6255147), "names": names("Asia")},
            "country": place, "registered_country": dict(place)}


def write_databases(directory: Path, networks: list[str], seed: int) -> tuple[Path, Path]:
    rng = random.Random(seed)
    country = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoLite2-Country", languages=LANGS,
                         description="geoblock benchmark country database")
    asn = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoLite2-ASN", languages=["en"],
                     description="geoblock benchmark ASN database")
    for net in networks:
        country.insert_network(IPSet([net]), country_record(rng.choice(COUNTRIES), rng))
        number = rng.randrange(1, 400000)
        asn.insert_network(IPSet([net]), {"autonomous_system_number": MmdbU32(number),
                                          "autonomous_system_organization": f"Example Networks {number}"})
    paths = directory / "GeoLite2-Country.mmdb", directory / "GeoLite2-ASN.mmdb"
    country.to_db_file(str(paths[0]))
    asn.to_db_file(str(paths[1]))
    return paths


def raw_locator(country_path: Path, asn_path: Path) -> tuple[Callable[[Any], Any], list[Any]]:
    """The lookup as geoblock did it before geoip2: maxminddb's reader, its dict records read by hand."""
    readers = [maxminddb.open_database(str(country_path)), maxminddb.open_database(str(asn_path))]
    country, asn = readers

    def code(part: object) -> str | None:
        if isinstance(part, dict):
            value = part.get("iso_code")
            if isinstance(value, str) and value.strip():
                return value.strip().upper()
        return None

    def locate(addr: Any) -> tuple[str | None, int | None]:
        record = country.get(addr)
        where = None
        if isinstance(record, dict):
            traits = record.get("traits")
            _anycast = isinstance(traits, dict) and traits.get("is_anycast") is True
            for key in ("country", "registered_country"):
                found = code(record.get(key))
                if found in ISO_3166_ALPHA2:
                    where = found
                    break
        answer = asn.get(addr)
        number = answer.get("autonomous_system_number") if isinstance(answer, dict) else None
        return where, number if isinstance(number, int) else None

    return locate, readers


def timed(fn: Callable[[Any], Any], addresses: list[Any], n: int) -> list[int]:
    out = []
    k = len(addresses)
    gc.disable()
    try:
        for i in range(n):
            addr = addresses[i % k]
            t = time.perf_counter_ns()
            fn(addr)
            out.append(time.perf_counter_ns() - t)
    finally:
        gc.enable()
    return out


def figures(samples: list[int]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"median_us": round(statistics.median(ordered) / 1000, 2),
            "p99_us": round(ordered[max(0, int(len(ordered) * 0.99) - 1)] / 1000, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--networks", type=int, default=20000, help="/24 networks in the generated databases")
    ap.add_argument("--iterations", type=int, default=100000, help="timed lookups per case")
    ap.add_argument("--seed", type=int, default=15)
    ap.add_argument("--out", help="write the figures as JSON here")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    nets = sorted({f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}.0/24"
                   for _ in range(args.networks)})
    # distinct addresses, at most the cache's size, so that "warm" is all hits and "cold" all misses
    addresses = [ipaddress.ip_address(n.replace(".0/24", f".{rng.randrange(1, 255)}")) for n in nets][:65536]
    rng.shuffle(addresses)
    with tempfile.TemporaryDirectory(prefix="geoblock-bench-geoip-") as tmp:
        started = time.perf_counter()
        country_path, asn_path = write_databases(Path(tmp), nets, args.seed)
        print(f"databases: {len(nets)} networks written in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        geo = Geo(str(country_path), str(asn_path))
        assert not geo.problems, geo.problems
        raw, readers = raw_locator(country_path, asn_path)
        for addr in addresses[:1000]:  # both read the same databases the same way
            assert (geo._locate(addr)[0].country, geo._locate(addr)[1]) == raw(addr), addr
        raw_cached = lru_cache(maxsize=65536)(raw)
        cases: dict[str, Callable[[Any], Any]] = {
            "maxminddb, cold": raw, "geoip2, cold": geo._locate,
            "maxminddb, warm": raw_cached, "geoip2, warm": geo.locate,
        }
        for fn in (raw_cached, geo.locate):
            for addr in addresses:
                fn(addr)  # fills the caches
        results: dict[str, dict[str, float]] = {}
        for name, fn in cases.items():
            timed(fn, addresses, min(args.iterations, 5000))  # warm-up
            results[name] = figures(timed(fn, addresses, args.iterations))
        geo.close()
        for reader in readers:
            reader.close()
    lines = ["| lookup (country + ASN of one address) | median µs | p99 µs |", "|---|---:|---:|"]
    lines += [f"| {name} | {r['median_us']:.2f} | {r['p99_us']:.2f} |" for name, r in results.items()]
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text(json.dumps({
            "python": platform.python_version(), "networks": len(nets), "addresses": len(addresses),
            "iterations": args.iterations, "results": results}, indent=1))


if __name__ == "__main__":
    main()
