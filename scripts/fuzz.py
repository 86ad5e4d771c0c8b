#!/usr/bin/env python3
"""Coverage-guided fuzzing (atheris / libFuzzer) of geoblock's ClientHello path, Host/authority parser
rule loader and list reader, with fail-open oracles (tests/support/fuzz_targets.py).

    scripts/fuzz.py all --runs 100000          # the four targets in turn, then a summary
    scripts/fuzz.py clienthello --max-seconds 60
    scripts/fuzz.py host --runs 5000 --seed 1  # reproducible (libFuzzer's -seed)
    scripts/fuzz.py replay                     # seeds + saved findings through the oracles, no atheris
    scripts/fuzz.py seeds                      # rewrite the seed corpus (tests/fuzz/seeds/)

Run it with a project virtual environment's Python (.venv-3.11/bin/python scripts/fuzz.py ...).
Each target runs in its own process (libFuzzer owns argv and ends the process). A case is one call of
the target; the run stops after --runs cases or --max-seconds, whichever comes first. Every finding is
saved as tests/fuzz/corpus/<target>/crash-<sha1> or failopen-<sha1> (replayed by
tests/test_fuzz_corpus.py); the exit status is 1 when there is any.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _paths  # makes tests/support importable as `support`

REPO = _paths.REPO
FUZZ_DIR = REPO / "tests" / "fuzz"
TARGETS = ("clienthello", "host", "rules", "lists")

# Coverage feedback. atheris instruments whole top-level packages as they are imported (its `include`
# matches "mitmproxy", never "mitmproxy.tls"): geoblock (and idna, yaml) that way; in mitmproxy only the
# ClientHello parser's own modules, function by function after import.
PACKAGES = {"clienthello": ["geoblock"], "host": ["geoblock", "idna"], "rules": ["geoblock", "yaml"],
            "lists": ["geoblock", "idna"]}
MODULES = {
    "clienthello": ["mitmproxy.tls", "mitmproxy.proxy.layers.tls", "mitmproxy.net.check",
                    "mitmproxy.contrib.kaitaistruct.tls_client_hello", "kaitaistruct"],
    "host": [], "rules": [], "lists": [],
}
# atheris 2.3.0 on CPython 3.11 miscompiles this generator: instrumented, it segfaults on some inputs
# (a harness artefact: the same inputs run fine uninstrumented, and under atheris 3.1.0 on 3.12).
SKIP = {"handshake_record_contents"} if sys.version_info < (3, 12) else set()
KEEP_PER_CAUSE = 3  # inputs saved per kind of finding (all are counted)
MAX_LEN = {"clienthello": 2048, "host": 256, "rules": 4096, "lists": 4096}


# ------------------------------------------------------------------------------------------ worker


def worker(args: argparse.Namespace, libfuzzer_args: list[str]) -> None:
    import atheris

    import importlib
    import inspect

    for name in MODULES[args.target]:
        importlib.import_module(name)  # before geoblock, so the hook below leaves mitmproxy alone
    with atheris.instrument_imports(include=PACKAGES[args.target]):
        from support import fuzz_targets

        target = fuzz_targets.make_target(args.target)

    def instrument(owner: object, module: str) -> int:
        count = 0
        for name, obj in list(vars(owner).items()):
            if isinstance(obj, property):
                obj = obj.fget
            if inspect.isfunction(obj) and obj.__module__ == module and name not in SKIP:
                atheris.instrument_func(obj)
                count += 1
            elif inspect.isclass(obj) and obj.__module__ == module and obj is not owner:
                count += instrument(obj, module)
        return count

    for name in MODULES[args.target]:
        n = instrument(sys.modules[name], name)
        print(f"INFO: instrumented {n} functions of {name}", file=sys.stderr)
    findings_dir = Path(args.findings_dir)
    state = {"cases": 0, "crash": 0, "fail-open": 0, "t0": 0.0}
    findings: list[dict[str, str]] = []
    seen: dict[str, int] = {}
    runs, max_seconds = args.runs, args.max_seconds

    def finish() -> None:
        seconds = time.monotonic() - state["t0"]
        stats = {
            "target": args.target, "cases": state["cases"], "crashes": state["crash"],
            "fail_opens": state["fail-open"], "seconds": round(seconds, 2),
            "exec_per_s": round(state["cases"] / seconds) if seconds > 0 else None,
            "findings": findings[:50], "python": sys.version.split()[0],
        }
        Path(args.stats).write_text(json.dumps(stats))
        fuzz_targets.cleanup()  # os._exit skips atexit
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1 if state["crash"] or state["fail-open"] else 0)

    def test_one_input(data: bytes) -> None:
        if state["cases"] == 0:
            state["t0"] = time.monotonic()
        state["cases"] += 1
        found = target.one(data)
        for finding in found:
            state[finding.kind] += 1
            # one cause tends to recur thousands of times: keep (and print) a few inputs per kind of message
            signature = re.sub(r"\d+|'[^']*'|\"[^\"]*\"|\S*/\S*", "", finding.detail)[:100]
            seen[signature] = seen.get(signature, 0) + 1
            if seen[signature] > KEEP_PER_CAUSE:
                continue
            path = findings_dir / fuzz_targets.input_name(finding.kind, data)
            if not path.exists():
                path.write_bytes(data)
            findings.append({"kind": finding.kind, "detail": finding.detail[:500], "input": str(path)})
            print(f"FINDING {finding} -> {path}", file=sys.stderr, flush=True)
        if state["cases"] >= runs or (max_seconds and time.monotonic() - state["t0"] >= max_seconds):
            finish()

    atheris.Setup([sys.argv[0], *libfuzzer_args], test_one_input)
    atheris.Fuzz()


# ------------------------------------------------------------------------------------------ parent

_STATUS = re.compile(r"#(\d+)\s+(\w+)\s+cov: (\d+) ft: (\d+) corp: (\d+)/")


def run_target(target: str, args: argparse.Namespace) -> dict:
    findings_dir = Path(args.corpus_dir) / target if args.corpus_dir else FUZZ_DIR / "corpus" / target
    findings_dir.mkdir(parents=True, exist_ok=True)  # libFuzzer's artifact_prefix must exist
    with tempfile.TemporaryDirectory(prefix=f"geoblock-fuzz-{target}-") as tmp:
        stats_file = Path(tmp) / "stats.json"
        work_corpus = Path(tmp) / "corpus"  # libFuzzer writes the inputs it keeps here, not into the repo
        work_corpus.mkdir()
        corpora = [str(work_corpus)]
        if not args.no_seed_corpus:
            corpora += [str(d) for d in (FUZZ_DIR / "seeds" / target, FUZZ_DIR / "corpus" / target) if d.is_dir()]
        libfuzzer = [f"-max_len={MAX_LEN[target]}", "-timeout=60", "-rss_limit_mb=2048",
                     f"-artifact_prefix={findings_dir}/"]
        dictionary = FUZZ_DIR / "dicts" / f"{target}.dict"
        if dictionary.exists():
            libfuzzer.append(f"-dict={dictionary}")
        if args.seed is not None:
            libfuzzer.append(f"-seed={args.seed}")
        if args.max_seconds:
            libfuzzer.append(f"-max_total_time={int(args.max_seconds) + 120}")  # backstop only
        cmd = [sys.executable, str(Path(__file__).resolve()), "_worker", target, "--runs", str(args.runs),
               "--max-seconds", str(args.max_seconds or 0), "--stats", str(stats_file),
               "--findings-dir", str(findings_dir), "--", *libfuzzer, *corpora]
        started = time.monotonic()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                              cwd=REPO)
        wall = time.monotonic() - started
        log = proc.stdout
        if args.verbose:
            sys.stderr.write(log)
        stats: dict = json.loads(stats_file.read_text()) if stats_file.exists() else {
            "target": target, "cases": None, "crashes": None, "fail_opens": None, "findings": [],
            "error": f"the fuzzer process ended (status {proc.returncode}) before finishing; its last output:\n"
                     + "\n".join(log.splitlines()[-30:]),
        }
    statuses = _STATUS.findall(log)
    if statuses:
        inited = next((s for s in statuses if s[1] == "INITED"), statuses[0])
        last = statuses[-1]
        stats.update(cov_inited=int(inited[2]), ft_inited=int(inited[3]), cov=int(last[2]), ft=int(last[3]),
                     corpus=int(last[4]))
    stats["wall_seconds"] = round(wall, 1)
    stats["returncode"] = proc.returncode
    for line in log.splitlines():
        if line.startswith("FINDING"):
            print(line, file=sys.stderr)
    return stats


def summary(results: list[dict]) -> str:
    head = f"{'target':<12} {'cases':>8} {'seconds':>8} {'exec/s':>7} {'crashes':>8} {'fail-opens':>10}  coverage (cov/ft, libFuzzer)"
    lines = [head, "-" * len(head)]
    for r in results:
        cov = f"cov {r.get('cov_inited', '?')}->{r.get('cov', '?')}, ft {r.get('ft_inited', '?')}->{r.get('ft', '?')}, corpus {r.get('corpus', '?')}"
        lines.append(f"{r['target']:<12} {r['cases'] if r['cases'] is not None else '-':>8} {r.get('seconds', '-'):>8} "
                     f"{r.get('exec_per_s', '-'):>7} {r['crashes'] if r['crashes'] is not None else '-':>8} "
                     f"{r['fail_opens'] if r['fail_opens'] is not None else '-':>10}  {cov}")
        if r.get("error"):
            lines.append(f"  {r['error']}")
    return "\n".join(lines)


def replay(targets: list[str]) -> int:
    from support import fuzz_targets

    bad = 0
    for name in targets:
        target = fuzz_targets.make_target(name)
        files = sorted(p for d in (FUZZ_DIR / "seeds" / name, FUZZ_DIR / "corpus" / name) if d.is_dir()
                       for p in d.iterdir() if p.is_file())
        for path in files:
            for finding in target.one(path.read_bytes()):
                bad += 1
                print(f"{path.relative_to(REPO)}: {finding}")
        print(f"{name}: {len(files)} inputs replayed")
    return 1 if bad else 0


def write_seeds() -> None:
    import hashlib

    from support import fuzz_targets

    for name in TARGETS:
        target = fuzz_targets.make_target(name)
        d = FUZZ_DIR / "seeds" / name
        d.mkdir(parents=True, exist_ok=True)
        for old in d.glob("seed-*"):
            old.unlink()
        for data in target.seeds():
            (d / f"seed-{hashlib.sha1(data).hexdigest()[:16]}").write_bytes(data)
        print(f"{name}: {len(list(d.iterdir()))} seeds in {d.relative_to(REPO)}")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_worker":
        argv = sys.argv[2:]
        split = argv.index("--") if "--" in argv else len(argv)
        p = argparse.ArgumentParser()
        p.add_argument("target", choices=TARGETS)
        p.add_argument("--runs", type=int, required=True)
        p.add_argument("--max-seconds", type=float, default=0)
        p.add_argument("--stats", required=True)
        p.add_argument("--findings-dir", required=True)
        worker(p.parse_args(argv[:split]), argv[split + 1 :])
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=(*TARGETS, "all", "replay", "seeds"))
    p.add_argument("--runs", type=int, default=100_000, help="cases per target (default 100000)")
    p.add_argument("--max-seconds", type=float, default=0, help="stop a target after this many seconds (0: no limit)")
    p.add_argument("--seed", type=int, default=None, help="libFuzzer's random seed (reproducible runs)")
    p.add_argument("--corpus-dir", default=None,
                   help="save findings under DIR/<target>/ instead of tests/fuzz/corpus/<target>/")
    p.add_argument("--no-seed-corpus", action="store_true", help="start from an empty corpus")
    p.add_argument("--json", default=None, help="also write the results as JSON to this file")
    p.add_argument("-v", "--verbose", action="store_true", help="show libFuzzer's output")
    args = p.parse_args()
    if args.what == "seeds":
        write_seeds()
        return 0
    if args.what == "replay":
        return replay(list(TARGETS))
    if args.runs < 1:
        p.error("--runs must be at least 1")
    targets = list(TARGETS) if args.what == "all" else [args.what]
    results = []
    for target in targets:
        print(f"fuzzing {target}: up to {args.runs} cases"
              + (f" or {args.max_seconds:g} s" if args.max_seconds else "") + " ...", file=sys.stderr, flush=True)
        results.append(run_target(target, args))
    print(f"Python {sys.version.split()[0]}")
    print(summary(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    failed = any(r.get("error") or r["crashes"] or r["fail_opens"] for r in results)
    print("FINDINGS: see the FINDING lines above; inputs saved for replay" if failed else "no crashes, no fail-opens")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
