"""The probe's run: names x techniques, scheduled with bounded concurrency and a rate, written as JSON lines.

The file's shape is the contract in docs/probe.md (one "run" line first, one "try" line per try as it
finishes, flushed at once so a killed probe loses nothing recorded, one "end" line last); after it is
closed its SHA-256 goes to FILE.sha256 in `sha256sum` format.

- `load_names(path)`: a list file (geoblock.core.lists: errors name file:line) or a rules file or
  directory (the domains of its block rules).
- `Plan` holds what to try; `run(plan, out)` makes the tries and writes the lines.
- `finding(expect, outcome, control)`: what a try means (enforced, leak, inconclusive, reached,
  overblocked, not-applicable, failed).

Control tries (--control direct or HOST:PORT) are lines of their own with "path": "control", written just
before the gateway try they serve; their finding says only whether the service answered ("reached"; a
block on the control path is "inconclusive"; else "failed" or "not-applicable"). The end line's "tries"
counts every try line; its "counts" and "leaks" count the gateway path's only.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import json
import random
import socket
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from geoblock import __version__
from geoblock.core.lists import read_list
from geoblock.core.rules import load_rules
from geoblock.errors import GeoblockError
from geoblock.probe.evidence import write_digest
from geoblock.probe.techniques import TECHNIQUES, Options, Target, Try, attempt


class ProbeInputError(GeoblockError, ValueError):
    """Bad input for the probe (a missing or bad list, a bad option value): one line for the user."""


def now_iso() -> str:
    """The current UTC time, ISO 8601 with milliseconds and "Z"."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def load_names(path: str) -> list[str]:
    """The names of `path`, in file order without repeats: a list file's entries (geoblock's list format,
    docs/lists.md), or the domain entries of a rules file or directory's block rules ("*.name" entries
    as www.name). Raises ProbeInputError naming the file (and line) when it does not read."""
    from geoblock.core.rules import RuleError

    p = Path(path)
    if not p.exists():
        raise ProbeInputError(f"{path}: no such file or directory")
    try:
        if p.is_dir() or p.suffix in (".yaml", ".yml"):
            names = []
            for rule in load_rules(path).rules:
                if rule.action != "block":
                    continue
                for spec in rule.all_domains():
                    names.append(_as_written(spec.name, spec.mode, spec.text))
            return list(dict.fromkeys(names))
        listed = read_list(path)
    except RuleError as exc:
        raise ProbeInputError(str(exc)) from None
    return list(dict.fromkeys(_as_written(e.name, e.mode, e.text) for e in listed.entries))


def _as_written(name: str, mode: str, text: str) -> str:
    """A name to try for an entry: as written (a U-label stays one), "www." before a "*." entry's name."""
    if mode == "below":
        return "www." + name
    written = text.strip().lstrip("=")
    return written if written and " " not in written else name


def finding(expect: str, outcome: str, control: dict[str, str] | None) -> str:
    """What a gateway-path try means (docs/probe.md): blocked + blocked -> "enforced" ("inconclusive" when
    the control try of the same name and technique was not reached: the service may be down); blocked +
    reached -> "leak"; reached + reached -> "reached"; reached + blocked -> "overblocked"; otherwise the
    outcome ("failed", "not-applicable")."""
    if outcome in ("failed", "not-applicable"):
        return outcome
    if expect == "blocked":
        if outcome == "reached":
            return "leak"
        if control is not None and control.get("outcome") != "reached":
            return "inconclusive"
        return "enforced"
    return "reached" if outcome == "reached" else "overblocked"


class TokenBucket:
    """At most `rate` takes a second on average, bursts of up to `burst` (thread-safe)."""

    def __init__(self, rate: float, burst: float = 1.0) -> None:
        self.rate, self.capacity = rate, max(1.0, burst)
        self.tokens, self.last = self.capacity, time.monotonic()
        self.lock = threading.Lock()

    def take(self) -> None:
        """Wait until a token is there and take it."""
        while True:
            with self.lock:
                now = time.monotonic()
                self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
                self.last = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                wait = (1 - self.tokens) / self.rate
            time.sleep(wait)


@dataclass
class Plan:
    """What a run tries: `targets` (expected blocked first, then the allowed ones), `techniques` (names of
    TECHNIQUES), `opts` for the gateway path; `control` the control path's Options (direct or another
    proxy) or None; `control_file` the control lines read from a file ((name, technique) -> {"outcome",
    "how"}); `names_source` and `control_label` as the run line says them; `concurrency` threads; `rate`
    tries a second; `sample`/`seed` as given; `status_url` the gateway's /status."""

    targets: list[Target]
    techniques: list[str]
    opts: Options
    names_source: str
    names_total: int
    control: Options | None = None
    control_file: dict[tuple[str, str], dict[str, str]] | None = None
    control_label: str | None = None
    concurrency: int = 4
    rate: float = 10.0
    sample: int | None = None
    seed: int | None = None
    status_url: str | None = None


def sample_names(names: list[str], n: int | None, seed: int | None) -> list[str]:
    """`n` names drawn from `names` without repeats (all when n is None or larger), in list order;
    reproducible for a given `seed`."""
    if n is None or n >= len(names):
        return list(names)
    chosen = set(random.Random(seed).sample(range(len(names)), n))
    return [name for i, name in enumerate(names) if i in chosen]


def read_control_file(path: str) -> dict[tuple[str, str], dict[str, str]]:
    """A control run's try lines (another probe's JSON lines, e.g. from a measurement host outside the
    gateway): (name, technique) -> {"outcome", "how"} of its gateway-path tries. ProbeInputError naming
    file:line for a line that is not JSON."""
    out: dict[tuple[str, str], dict[str, str]] = {}
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeError) as exc:
        raise ProbeInputError(f"{path}: cannot read the control file ({exc.__class__.__name__})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            raise ProbeInputError(f"{path}:{number}: not a JSON line") from None
        if isinstance(obj, dict) and obj.get("record") == "try" and obj.get("path", "gateway") == "gateway":
            out[(str(obj.get("name")), str(obj.get("technique")))] = {"outcome": str(obj.get("outcome")),
                                                                      "how": str(obj.get("how"))}
    return out


def read_status(url: str | None, timeout: float) -> tuple[Any, str | None]:
    """(the JSON of the gateway's /status at `url`, None) or (None, why not)."""
    if not url:
        return None, None
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:  # noqa: S310 - the operator's URL
            return json.loads(answer.read().decode("utf-8")), None
    except (OSError, ValueError) as exc:
        return None, f"{url}: {exc}"


@dataclass
class Summary:
    """What a finished run found: tries, counts by finding, the leak lines, seconds, the run id."""

    run_id: str
    tries: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    leaks: list[dict[str, Any]] = field(default_factory=list)
    overblocked: list[dict[str, Any]] = field(default_factory=list)
    duration_s: float = 0.0


def _line(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"


def run(plan: Plan, out: TextIO, progress: Callable[[str], None] = lambda _: None) -> Summary:
    """Make every try of `plan` and write the JSON lines to `out` (run line first, each try as it
    finishes, flushed, end line last). `progress` gets one line per name finished. Returns the Summary.
    KeyboardInterrupt: the tries not started are cancelled and it propagates (no end line is written)."""
    run_id = str(uuid.uuid4())
    status, status_error = read_status(plan.status_url, plan.opts.timeout)
    if isinstance(status, dict) and isinstance(status.get("sinkhole"), str):  # a gateway that says its sinkhole
        plan.opts.sinkholes = plan.opts.sinkholes | {status["sinkhole"]}
    control_label = f"file:{plan.control_label}" if plan.control_file is not None else plan.control_label
    header = {
        "record": "run", "run_id": run_id, "probe_version": __version__, "started": now_iso(),
        "via": "proxy" if plan.opts.proxy else "transparent",
        "proxy": f"{plan.opts.proxy[0]}:{plan.opts.proxy[1]}" if plan.opts.proxy else None,
        "control": control_label, "names_source": plan.names_source, "names_total": plan.names_total,
        "sample": plan.sample, "seed": plan.seed, "techniques": list(plan.techniques),
        "options": {"concurrency": plan.concurrency, "rate": plan.rate, "timeout_s": plan.opts.timeout},
        "observer_hostname": socket.gethostname(), "gateway_status": status, "gateway_status_error": status_error,
    }
    lock = threading.Lock()
    out.write(_line(header))
    out.flush()
    summary = Summary(run_id)
    started = time.monotonic()
    bucket = TokenBucket(plan.rate)
    left = {t.name: len(plan.techniques) for t in plan.targets}

    def emit(target: Target, technique: str, path: str, result: Try, control: dict[str, str] | None) -> None:
        found = finding(target.expect, result.outcome, control) if path == "gateway" else (
            "reached" if result.outcome == "reached" else
            result.outcome if result.outcome in ("failed", "not-applicable") else "inconclusive")
        record = {"record": "try", "run_id": run_id, "ts": now_iso(), "name": target.name,
                  "expect": target.expect, "technique": technique, "path": path, **asdict(result),
                  "finding": found, "control": control}
        with lock:
            out.write(_line(record))
            out.flush()
            summary.tries += 1
            if path == "gateway":
                summary.counts[found] += 1
                if found == "leak":
                    summary.leaks.append(record)
                elif found == "overblocked":
                    summary.overblocked.append(record)

    def one(target: Target, technique: str) -> None:
        control: dict[str, str] | None = None
        if plan.control is not None:
            bucket.take()
            c = attempt(technique, target, plan.control)
            emit(target, technique, "control", c, None)
            control = {"outcome": c.outcome, "how": c.how}
        elif plan.control_file is not None:
            control = plan.control_file.get((target.name, technique))  # None: the control run has no such try
        bucket.take()
        result = attempt(technique, target, plan.opts)
        if plan.control_file is not None and control is None:
            result.detail += " (no control try for it in the control file)"
        emit(target, technique, "gateway", result, control)
        with lock:
            left[target.name] -= 1
            done = left[target.name] == 0
        if done:
            progress(f"{target.name}: done")

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, plan.concurrency))
    try:
        futures = [pool.submit(one, t, tech) for t in plan.targets for tech in plan.techniques]
        for f in concurrent.futures.as_completed(futures):
            f.result()
    except BaseException:  # Ctrl-C: no new tries; the lines written stay (no end line: the run did not end)
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    summary.duration_s = round(time.monotonic() - started, 3)
    end = {"record": "end", "run_id": run_id, "ended": now_iso(), "duration_s": summary.duration_s,
           "tries": summary.tries, "counts": dict(summary.counts), "leaks": len(summary.leaks)}
    out.write(_line(end))
    out.flush()
    return summary


__all__ = ["TECHNIQUES", "Options", "Plan", "ProbeInputError", "Summary", "Target", "finding", "load_names",
           "read_control_file", "run", "sample_names", "write_digest"]
