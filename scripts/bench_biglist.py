#!/usr/bin/env python3
"""Benchmark: one block rule whose names come from a list file of N domains (default 1,000,000), the
national-scale case: the list compiles into a trie artifact (core/listindex.py) that the process maps.

Figures, each from a fresh child process so that one does not warm the next:
  load      Ruleset.load of the rules directory with an empty artifact cache (the list read and compiled,
            in a child process, and mapped), seconds, median of --rounds runs; and once more with the
            artifact cached (a restart or a second worker maps it without compiling);
  memory    resident memory the loaded ruleset adds to the process (VmRSS after - before, MB);
  decide    one decide() of a name never seen before (the ruleset's name memo missed), median and p99
            in µs over --names names: half listed (a subdomain of an entry), half not.

    .venv-3.11/bin/python scripts/bench_biglist.py [--domains 1000000] [--rounds 3] [--out F.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TLDS = ("com", "net", "org", "io", "co", "xyz", "top", "cc", "me", "app")


def random_domain(rng: random.Random) -> str:
    labels = rng.choice((1, 1, 1, 2))
    parts = ["".join(rng.choices(string.ascii_lowercase + string.digits, k=rng.randint(4, 14))) for _ in range(labels)]
    return ".".join(parts) + "." + rng.choice(TLDS)


def write_rules(directory: Path, count: int, seed: int) -> list[str]:
    """A rules directory: one block rule taking `count` random domains (with platforms) from a list file."""
    rng = random.Random(seed)
    names: set[str] = set()
    while len(names) < count:
        names.add(random_domain(rng))
    ordered = sorted(names)
    (directory / "lists").mkdir(parents=True, exist_ok=True)
    (directory / "policy.yaml").write_text("home_countries: [CN]\ndefault: allow\n")
    (directory / "big.yaml").write_text("rules:\n  - {id: big, action: block, domains_from: [lists/big.txt]}\n")
    with (directory / "lists" / "big.txt").open("w") as f:
        f.write("# format: plain\n")
        for i, name in enumerate(ordered):
            f.write(f"{name}  Platform {i % 5000}\n")
    return ordered


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def child(rules: str, names_file: str, count: int) -> None:
    """In a fresh process: load the ruleset, then decide `count` names never seen before. Prints JSON."""
    from geoblock.core.decide import Facts, decide
    from geoblock.core.ruleset import Ruleset

    before = _rss_mb()
    started = time.perf_counter()
    rs = Ruleset.load(rules)
    load_s = time.perf_counter() - started
    added = _rss_mb() - before
    names = Path(names_file).read_text().split()[:count]
    times = []
    by_kind: dict[bool, list[int]] = {True: [], False: []}
    blocked = 0
    for name in names:
        t0 = time.perf_counter_ns()
        verdict = decide(Facts("tls", names=(name,)), rs)
        took = time.perf_counter_ns() - t0
        times.append(took)
        by_kind[verdict.action == "block"].append(took)
        blocked += verdict.action == "block"
    times.sort()
    print(json.dumps({"load_s": load_s, "rss_added_mb": added, "domains": rs.domain_count, "decisions": len(times),
                      "blocked": blocked, "median_us": statistics.median(times) / 1000,
                      "p99_us": times[int(len(times) * 0.99)] / 1000,
                      "listed_median_us": statistics.median(by_kind[True] or [0]) / 1000,
                      "unlisted_median_us": statistics.median(by_kind[False] or [0]) / 1000}))


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--domains", type=int, default=1_000_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--names", type=int, default=200_000, help="names decided per round (never seen before)")
    p.add_argument("--seed", type=int, default=15)
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="geoblock-biglist-") as tmp:
        rules = Path(tmp) / "rules"
        print(f"writing {args.domains:,} domains ...", file=sys.stderr, flush=True)
        listed = write_rules(rules, args.domains, args.seed)
        rng = random.Random(args.seed + 1)
        # half subdomains of listed names, half names under a TLD the list does not use (never listed)
        names = [f"www{i}." + rng.choice(listed) if i % 2 else f"n{i}." + random_domain(rng) + ".example"
                 for i in range(args.names)]
        names_file = Path(tmp) / "names.txt"
        names_file.write_text("\n".join(names))
        size = (rules / "lists" / "big.txt").stat().st_size
        runs = []
        for r in range(args.rounds + 1):
            # rounds 1..N: a cache of their own (the list compiles: the cold figure); the last round maps the
            # artifact round N left (a restart, a second worker, a tool: the warm figure)
            cache = Path(tmp) / f"cache-{min(r, args.rounds - 1)}"
            env = dict(os.environ, GEOBLOCK_CACHE_DIR=str(cache))
            done = subprocess.run([sys.executable, __file__, "_child", str(rules), str(names_file), str(args.names)],
                                  capture_output=True, text=True, check=True, env=env)
            runs.append(json.loads(done.stdout))
            print(f"round {r + 1}{' (artifact cached)' if r == args.rounds else ''}: {runs[-1]}", file=sys.stderr,
                  flush=True)
        warm = runs.pop()
    result = {
        "python": sys.version.split()[0], "domains": args.domains, "list_bytes": size, "rounds": runs,
        "load_s": statistics.median(r["load_s"] for r in runs),
        "load_cached_s": warm["load_s"],
        "rss_added_mb": statistics.median(r["rss_added_mb"] for r in runs),
        "median_us": statistics.median(r["median_us"] for r in runs),
        "p99_us": statistics.median(r["p99_us"] for r in runs),
        "listed_median_us": statistics.median(r["listed_median_us"] for r in runs),
        "unlisted_median_us": statistics.median(r["unlisted_median_us"] for r in runs),
    }
    if not all(r["blocked"] == args.names // 2 for r in runs):
        raise SystemExit(f"wrong verdicts: {[r['blocked'] for r in runs]} blocked, {args.names // 2} expected")
    print("| domains | list file | load and compile | load, artifact cached | memory added | "
          "one decision, new names: median | p99 | median, listed names | median, unlisted names |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {args.domains:,} | {size / 1e6:.1f} MB | {result['load_s']:.2f} s | {result['load_cached_s']:.2f} s | "
          f"{result['rss_added_mb']:.0f} MB | {result['median_us']:.1f} µs | {result['p99_us']:.1f} µs | "
          f"{result['listed_median_us']:.1f} µs | {result['unlisted_median_us']:.1f} µs |")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
