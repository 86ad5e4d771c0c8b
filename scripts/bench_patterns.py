#!/usr/bin/env python3
"""Benchmark: pattern rules at scale. A ruleset of N rules with one glob pattern each (generated: `*word*`,
`word-*.example`, `*.word.*`, `api?.word.*`, `*word??.net`, with random words), compiled by `Ruleset` as
the proxy compiles it, and one name matched against all of them:

  before  the per-rule loop geoblock used: every pattern rule's own expression (the rule's globs as one,
          fnmatch.translate) tried on the name
  after   `Ruleset.patterns` (core/patterns.py): one Aho-Corasick pass over the name for the globs'
          literals, then only the candidate globs' expressions

Names: "unlisted" (random names no pattern matches, most of a gateway's traffic) and "listed" (names built
from the patterns). Each match is timed alone (time.perf_counter_ns) after a warm-up; the script checks
that both ways give the same rules for every name, then prints the median and p99 in microseconds per name
and how long loading the ruleset takes (YAML, checks, compile) and building the PatternSet alone, and writes
JSON.

    .venv-3.11/bin/python scripts/bench_patterns.py [--patterns 100 1000 10000] [--iterations 20000] [--out F]
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import platform
import random
import re
import string
import tempfile
import time
from pathlib import Path

from bench_geoip import figures, timed  # one timing loop and one summary for both benchmarks

from geoblock.core.patterns import PatternSet
from geoblock.core.ruleset import Ruleset

SHAPES = ["*{w}*", "{w}-*.example", "*.{w}.*", "api?.{w}.*", "*{w}??.net"]


def word(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randrange(6, 12)))


def globs(n: int, rng: random.Random) -> list[str]:
    return [SHAPES[i % len(SHAPES)].format(w=word(rng)) for i in range(n)]


def filled(glob: str, rng: random.Random) -> str:
    """A name the glob matches: `*` filled with a label or two, `?` with a letter."""
    out = []
    for ch in glob:
        out.append({"*": lambda: rng.choice(["www", "api.cdn", "x"]), "?": lambda: rng.choice("ab1")}.get(
            ch, lambda c=ch: c)())
    return "".join(out)


def write_rules(directory: Path, patterns: list[str]) -> Path:
    (directory / "policy.yaml").write_text("home_countries: [CN]\ndefault: allow\n")
    lines = ["rules:"]
    for i, p in enumerate(patterns):
        lines.append(f"  - {{id: p{i}, action: log, patterns: ['{p}']}}")
    (directory / "rules.yaml").write_text("\n".join(lines) + "\n")
    return directory


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--patterns", type=int, nargs="+", default=[100, 1000, 10000], help="pattern rules")
    ap.add_argument("--iterations", type=int, default=20000, help="timed names per case")
    ap.add_argument("--seed", type=int, default=15)
    ap.add_argument("--out", help="write the figures as JSON here")
    args = ap.parse_args()
    rows: list[dict[str, object]] = []
    for count in args.patterns:
        rng = random.Random(args.seed)
        patterns = globs(count, rng)
        with tempfile.TemporaryDirectory(prefix="geoblock-bench-patterns-") as tmp:
            write_rules(Path(tmp), patterns)
            started = time.perf_counter()
            rs = Ruleset.load(tmp)
            compiled_s = time.perf_counter() - started
        # the matcher geoblock had before PatternSet: each pattern rule's globs as one expression, all tried
        pattern_rules = tuple((r.index, re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in r.spec.patterns)))
                              for r in rs.rules if r.spec.patterns)
        started = time.perf_counter()
        PatternSet((p, i) for i, p in enumerate(patterns))
        set_s = time.perf_counter() - started

        def before(name: str, pattern_rules: tuple = pattern_rules) -> list[int]:
            return [index for index, expression in pattern_rules if expression.match(name)]

        after = rs.patterns.matches
        names = {
            "unlisted": [f"{word(rng)}.{rng.choice(['com', 'org', 'cn', 'example.net'])}" for _ in range(2000)],
            "listed": [filled(rng.choice(patterns), rng) for _ in range(2000)],
        }
        for group in names.values():
            for name in group:
                assert before(name) == after(name), name
        row: dict[str, object] = {"patterns": count, "compile_s": round(compiled_s, 2),
                                  "patternset_s": round(set_s, 3)}
        for kind, group in names.items():
            iterations = args.iterations if count <= 1000 else max(200, args.iterations // 10)  # before is slow
            for way, fn in (("before", before), ("after", after)):
                timed(fn, group, min(iterations, 500))  # warm-up
                row[f"{kind} {way}"] = figures(timed(fn, group, iterations))
        rows.append(row)
    lines = ["| pattern rules | name | before: per-rule regexes, median µs (p99) | after: PatternSet, median µs (p99) "
             "| ruleset load s (PatternSet build s) |", "|---:|---|---:|---:|---:|"]
    for row in rows:
        for kind in ("unlisted", "listed"):
            b, a = row[f"{kind} before"], row[f"{kind} after"]
            lines.append(f"| {row['patterns']:,} | {kind} | {b['median_us']:.2f} ({b['p99_us']:.2f}) "  # type: ignore[index]
                         f"| {a['median_us']:.2f} ({a['p99_us']:.2f}) | {row['compile_s']} ({row['patternset_s']}) |")  # type: ignore[index]
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text(json.dumps({"python": platform.python_version(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
