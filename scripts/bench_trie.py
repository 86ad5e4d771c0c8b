#!/usr/bin/env python3
"""Benchmark: the lookup structure for a national-scale list, chosen by measurement (issue 15).

For N random domains (default 1,000,000) it builds each candidate, saves it, opens the saved file in a
fresh process and asks the questions a decision asks (is the name, or a suffix of it at a label boundary,
an entry?), for names half listed (a subdomain of an entry) and half not. Candidates:

  set       a Python set of the names, probed once per suffix (what geoblock's suffix maps do);
  marisa    marisa-trie (a static, memory-mappable succinct trie) over the names reversed character by
            character with a trailing dot, so that an entry's key is a prefix of a subdomain's key at a
            label boundary; `prefixes()` answers every covering entry in one call. Two build settings:
            the default (3 tries) and num_tries=1;
  dawg      DAWG2 (a directed acyclic word graph) over the same keys, `prefixes()`.

Figures per candidate: build seconds (from the Python list of keys), file bytes, resident memory the
opened structure adds (MB; marisa is memory-mapped, so this is the pages a lookup touched), and one
lookup's median and p99 in µs.

    .venv-3.11/bin/python scripts/bench_trie.py [--domains 1000000] [--out F.json]
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

from bench_biglist import _rss_mb  # the same reading of VmRSS

TLDS = ("com", "net", "org", "io", "co", "xyz", "top", "cc", "me", "app")


def names_of(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    names: set[str] = set()
    while len(names) < count:
        labels = rng.choice((1, 1, 1, 2))
        parts = ["".join(rng.choices(string.ascii_lowercase + string.digits, k=rng.randint(4, 14)))
                 for _ in range(labels)]
        names.add(".".join(parts) + "." + rng.choice(TLDS))
    return sorted(names)


def build(kind: str, names: list[str], path: str) -> float:
    keys = [n[::-1] + "." for n in names]
    started = time.perf_counter()
    if kind == "set":
        obj = set(names)
        elapsed = time.perf_counter() - started
        with open(path, "w") as f:
            f.write("\n".join(sorted(obj)))
        return elapsed
    if kind.startswith("marisa"):
        import marisa_trie

        trie = marisa_trie.Trie(keys, num_tries=1) if kind == "marisa-1" else marisa_trie.Trie(keys)
        elapsed = time.perf_counter() - started
        trie.save(path)
        return elapsed
    import dawg

    d = dawg.DAWG(keys)
    elapsed = time.perf_counter() - started
    d.save(path)
    return elapsed


def child(kind: str, path: str, queries_file: str) -> None:
    queries = open(queries_file).read().split()
    before = _rss_mb()
    if kind == "set":
        obj: object = set(open(path).read().split("\n"))
    elif kind.startswith("marisa"):
        import marisa_trie

        obj = marisa_trie.Trie()
        obj.mmap(path)  # type: ignore[attr-defined]
    else:
        import dawg

        obj = dawg.DAWG()
        obj.load(path)  # type: ignore[attr-defined]
    times = []
    found = 0
    for name in queries:
        t0 = time.perf_counter_ns()
        if kind == "set":
            hit = name in obj  # type: ignore[operator]
            dot = name.find(".")
            while dot >= 0 and not hit:
                hit = name[dot + 1:] in obj  # type: ignore[operator]
                dot = name.find(".", dot + 1)
        else:
            hit = bool(obj.prefixes(name[::-1] + "."))  # type: ignore[attr-defined]
        times.append(time.perf_counter_ns() - t0)
        found += hit
    times.sort()
    print(json.dumps({"rss_mb": _rss_mb() - before, "median_us": statistics.median(times) / 1000,
                      "p99_us": times[int(len(times) * 0.99)] / 1000, "found": found, "queries": len(times)}))


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        child(sys.argv[2], sys.argv[3], sys.argv[4])
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--domains", type=int, default=1_000_000)
    p.add_argument("--queries", type=int, default=200_000)
    p.add_argument("--seed", type=int, default=15)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    names = names_of(args.domains, args.seed)
    rng = random.Random(args.seed + 1)
    sample = rng.sample(names, min(args.queries, len(names)))
    queries = [("www." + n if i % 2 else n[:-1] + "q") for i, n in enumerate(sample)]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        qfile = os.path.join(tmp, "queries")
        with open(qfile, "w") as f:
            f.write("\n".join(queries))
        for kind in ("set", "marisa", "marisa-1", "dawg"):
            path = os.path.join(tmp, kind)
            try:
                build_s = build(kind, names, path)
            except ImportError as exc:
                print(f"{kind}: not installed ({exc})", file=sys.stderr)
                continue
            out = subprocess.run([sys.executable, __file__, "_child", kind, path, qfile], check=True,
                                 capture_output=True, text=True).stdout
            res = json.loads(out)
            res.update(build_s=build_s, file_bytes=os.path.getsize(path))
            results[kind] = res
            print(f"| {kind} | {build_s:.2f} s | {res['file_bytes'] / 1e6:.1f} MB | {res['rss_mb']:.0f} MB | "
                  f"{res['median_us']:.2f} µs | {res['p99_us']:.2f} µs | {res['found']:,}/{res['queries']:,} |",
                  flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"domains": args.domains, "python": sys.version.split()[0], "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
