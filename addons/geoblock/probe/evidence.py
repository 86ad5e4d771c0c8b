"""The probe's evidence: its JSON lines read and checked, and the SHA-256 sidecar that lets them be filed.

A probe run writes OUT.jsonl (docs/probe.md: one "run" line, one "try" line per try, one "end" line) and,
once the file is closed, OUT.jsonl.sha256 in `sha256sum`'s format ("<64 hex>  <basename>\\n"), so anyone
can check the file later with `sha256sum -c OUT.jsonl.sha256` or with

    geoblock probe-verify OUT.jsonl

which checks the digest and every line's structure and prints the run's id, times, counts and leaks.
Exit codes: 0 the digest matches and every line is well formed; 1 the digest does not match, a line is
malformed, or the end line's totals disagree with the lines (the evidence is not what the probe wrote);
2 the file or its sidecar cannot be read.

- `read(path) -> Evidence`: every line parsed and checked against the schema; EvidenceError names
  `file:line` and the bad field.
- `digest_file(path) -> str`, `write_digest(path) -> Path`, `verify(path) -> bool`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geoblock.errors import GeoblockError

OUTCOMES = ("blocked", "reached", "failed", "not-applicable")
HOWS = {
    "blocked": ("tls-alert", "http-451", "connect-451", "connect-refused", "nxdomain", "sinkhole", "dns-refused",
                "reset", "timeout", "closed", "dropped"),
    "reached": ("handshake", "server-hello", "http-answer", "dns-answer", "udp-answer", "doh-answer"),
    "failed": ("error",),
    "not-applicable": ("not-applicable",),
}
FINDINGS = ("leak", "overblocked", "inconclusive", "enforced", "reached", "failed", "not-applicable")
"""Every finding, in the order a reader cares about them (leaks first)."""

_SHA256_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")


class EvidenceError(GeoblockError):
    """Evidence that does not read: a line that is not JSON or lacks a field of the schema (the message
    names `file:line` and the field), or a file or sidecar that cannot be opened."""


@dataclass
class Evidence:
    """One probe run as read from its JSON lines: `run` the first line (dict), `tries` every "try" line
    in file order (gateway and control paths), `end` the last line or None (a run stopped early has
    none), `path` the file read."""

    path: Path
    run: dict[str, Any]
    tries: list[dict[str, Any]] = field(default_factory=list)
    end: dict[str, Any] | None = None

    @property
    def gateway_tries(self) -> list[dict[str, Any]]:
        """The tries through the gateway (the ones judged), without the control path's."""
        return [t for t in self.tries if t.get("path", "gateway") == "gateway"]

    @property
    def leaks(self) -> list[dict[str, Any]]:
        """The gateway tries whose finding is "leak", sorted by name then technique."""
        return sorted((t for t in self.gateway_tries if t["finding"] == "leak"),
                      key=lambda t: (t["name"], t["technique"]))

    def counts(self) -> Counter[str]:
        """Gateway tries by finding (what the end line's "counts" says, recounted from the lines)."""
        return Counter(t["finding"] for t in self.gateway_tries)


def _need(obj: dict[str, Any], key: str, types: type | tuple[type, ...], where: str, choices: tuple[str, ...] = (),
          nullable: bool = False) -> None:
    if key not in obj:
        raise EvidenceError(f"{where}: field {key!r} missing")
    value = obj[key]
    if value is None and nullable:
        return
    if not isinstance(value, types) or isinstance(value, bool):  # JSON true is not a number here
        raise EvidenceError(f"{where}: field {key!r} has the wrong type ({type(value).__name__}: {value!r:.60})")
    if choices and value not in choices:
        raise EvidenceError(f"{where}: field {key!r} is {value!r:.60}, not one of {', '.join(choices)}")


def check_run(obj: dict[str, Any], where: str) -> None:
    """Raise EvidenceError (naming `where` and the field) unless `obj` is a well-formed "run" line."""
    for key in ("run_id", "probe_version", "started", "via", "names_source"):
        _need(obj, key, str, where, ("transparent", "proxy") if key == "via" else ())
    _need(obj, "techniques", list, where)
    _need(obj, "names_total", int, where)
    for key in ("proxy", "control"):
        _need(obj, key, str, where, nullable=True)
    _need(obj, "options", dict, where)


def check_try(obj: dict[str, Any], where: str, run_id: str) -> None:
    """Raise EvidenceError unless `obj` is a well-formed "try" line of the run `run_id`."""
    _need(obj, "run_id", str, where, (run_id,))
    for key in ("ts", "name", "technique", "detail"):
        _need(obj, key, str, where)
    _need(obj, "expect", str, where, ("blocked", "reached"))
    _need(obj, "path", str, where, ("gateway", "control"))
    _need(obj, "outcome", str, where, OUTCOMES)
    _need(obj, "how", str, where, HOWS[obj["outcome"]])
    _need(obj, "finding", str, where, FINDINGS)
    for key in ("rule", "address", "sent_name"):
        _need(obj, key, str, where, nullable=True)
    for key in ("http_status", "tls_alert"):
        _need(obj, key, int, where, nullable=True)
    _need(obj, "duration_s", (int, float), where)
    _need(obj, "control", dict, where, nullable=True)


def check_end(obj: dict[str, Any], where: str, run_id: str) -> None:
    """Raise EvidenceError unless `obj` is a well-formed "end" line of the run `run_id`."""
    _need(obj, "run_id", str, where, (run_id,))
    _need(obj, "ended", str, where)
    _need(obj, "duration_s", (int, float), where)
    for key in ("tries", "leaks"):
        _need(obj, key, int, where)
    _need(obj, "counts", dict, where)


def _check_totals(ev: Evidence, where: str) -> None:
    """The end line's totals against the lines above it: a line lost or added shows here."""
    assert ev.end is not None
    counted = {"tries": len(ev.tries), "leaks": len(ev.leaks)}
    for key, n in counted.items():
        if ev.end[key] != n:
            raise EvidenceError(f"{where}: field {key!r} is {ev.end[key]}, but the file has {n}")
    if {k: v for k, v in ev.end["counts"].items() if v} != dict(ev.counts()):
        raise EvidenceError(f"{where}: field 'counts' is {ev.end['counts']}, but the file has {dict(ev.counts())}")


def read(path: str | os.PathLike[str]) -> Evidence:
    """Read and check the probe's JSON lines at `path` (UTF-8, one object a line, probe_schema.md):
    the first line "run", then "try" lines, then at most one "end" line, last, whose totals ("tries",
    "counts", "leaks") must match the lines above it. Raises EvidenceError naming `file:line` and the bad
    field for a line that is not JSON, not an object, of an unknown or misplaced record, missing a field,
    or an end line whose totals disagree; or naming the file when it cannot be read or is empty."""
    p = Path(path)
    text = _text_of(p, "cannot read")
    evidence: Evidence | None = None
    for number, line in enumerate(text.splitlines(), 1):
        where = f"{p}:{number}"
        if not line.strip():
            raise EvidenceError(f"{where}: empty line")
        try:
            obj = json.loads(line)
        except ValueError:
            raise EvidenceError(f"{where}: not a JSON line") from None
        if not isinstance(obj, dict):
            raise EvidenceError(f"{where}: not a JSON object")
        record = obj.get("record")
        if evidence is None:
            if record != "run":
                raise EvidenceError(f"{where}: field 'record' is {record!r:.40}; the first line must be 'run'")
            check_run(obj, where)
            evidence = Evidence(p, obj)
            continue
        if evidence.end is not None:
            raise EvidenceError(f"{where}: a line after the 'end' line")
        if record == "try":
            check_try(obj, where, evidence.run["run_id"])
            evidence.tries.append(obj)
        elif record == "end":
            check_end(obj, where, evidence.run["run_id"])
            evidence.end = obj
            _check_totals(evidence, where)
        else:
            raise EvidenceError(f"{where}: field 'record' is {record!r:.40}, not 'try' or 'end'")
    if evidence is None:
        raise EvidenceError(f"{p}: empty: no 'run' line")
    return evidence


def digest_file(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of the file at `path` (FIPS 180-4), as 64 lowercase hex digits. OSError if unreadable."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sidecar(path: str | os.PathLike[str]) -> Path:
    """Where `path`'s digest goes: the same name with ".sha256" added."""
    p = Path(path)
    return p.with_name(p.name + ".sha256")


def write_digest(path: str | os.PathLike[str]) -> Path:
    """Write `path`'s SHA-256 to `path`.sha256 in `sha256sum`'s format ("<hex>  <basename>\\n", so
    `sha256sum -c` run in the file's directory checks it) and return the sidecar's path."""
    side = sidecar(path)
    side.write_text(f"{digest_file(path)}  {Path(path).name}\n", encoding="utf-8")
    return side


def _text_of(path: Path, failing: str) -> str:
    """The UTF-8 text of `path`; EvidenceError "<path>: <failing> (<why>)" when it cannot be read."""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc.__class__.__name__
        raise EvidenceError(f"{path}: {failing} ({why})") from None


def recorded_digest(path: str | os.PathLike[str]) -> str:
    """The hex digest the sidecar of `path` records (lowercase). EvidenceError when the sidecar is missing,
    unreadable, or not one `sha256sum` line naming `path`'s file."""
    side = sidecar(path)
    text = _text_of(side, "cannot read the digest")
    lines = text.splitlines()
    match = _SHA256_LINE.match(lines[0]) if len(lines) == 1 else None
    if match is None:
        raise EvidenceError(f"{side}:1: not a sha256sum line ('<64 hex digits>  <file name>')")
    if match.group(2) != Path(path).name:
        raise EvidenceError(f"{side}:1: names {match.group(2)!r}, not {Path(path).name!r}")
    return match.group(1).lower()


def verify(path: str | os.PathLike[str]) -> bool:
    """Whether the file at `path` still has the SHA-256 its sidecar (`path`.sha256) records. EvidenceError
    when the file or its sidecar cannot be read (see recorded_digest)."""
    recorded = recorded_digest(path)
    try:
        return digest_file(path) == recorded
    except OSError as exc:
        raise EvidenceError(f"{path}: cannot read ({exc.strerror})") from None


def describe(evidence: Evidence) -> list[str]:
    """Lines for a person: the run's id, times, counts by finding, and every leak."""
    run, end = evidence.run, evidence.end
    gateway = evidence.gateway_tries
    lines = [f"run {run['run_id']} (probe {run['probe_version']}, via {run['via']}"
             f"{' ' + run['proxy'] if run.get('proxy') else ''}, control {run.get('control') or 'none'})",
             f"started {run['started']}, "
             + (f"ended {end['ended']} ({end['duration_s']:.1f} s)" if end else "no end line (the run was stopped)"),
             f"{len(evidence.tries)} tries ({len(gateway)} through the gateway): "
             + (", ".join(f"{n} {k}" for k, n in sorted(evidence.counts().items(),
                                                          key=lambda kv: FINDINGS.index(kv[0]))) or "none")]
    leaks = evidence.leaks
    lines.append(f"{len(leaks)} leak(s)")
    lines += [f"LEAK {t['name']} {t['technique']}: {t['how']} at {t['address'] or '-'} ({t['detail']})"
              for t in leaks]
    return lines


def cmd_verify(args: argparse.Namespace) -> int:
    """`geoblock probe-verify FILE.jsonl`: the exit status (see the module)."""
    prog = "geoblock probe-verify"
    path = Path(args.file)
    try:
        recorded = recorded_digest(path)
        actual = digest_file(path)
    except EvidenceError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{prog}: {path}: cannot read ({exc.strerror})", file=sys.stderr)
        return 2
    if actual != recorded:
        print(f"{prog}: {path}: DIGEST MISMATCH: the file's SHA-256 is {actual}, its sidecar records {recorded}: "
              "the file changed after the probe wrote it", file=sys.stderr)
        return 1
    try:
        evidence = read(path)
    except EvidenceError as exc:
        print(f"{prog}: the digest matches but a line is malformed: {exc}", file=sys.stderr)
        return 1
    for line in describe(evidence):
        print(line)
    print(f"{path}: sha256 {actual}: OK")
    return 0


def add_parser(sub: Any) -> None:
    """Add `geoblock probe-verify` to the `geoblock` command's subparsers `sub`."""
    p = sub.add_parser("probe-verify", help="check a probe's evidence: its SHA-256 sidecar and its lines",
                       description="Check FILE.jsonl against FILE.jsonl.sha256 and check every line's structure; "
                                   "print the run's id, times, counts and leaks. Exit 0 OK, 1 digest mismatch or "
                                   "a malformed line, 2 unreadable.")
    p.add_argument("file", metavar="FILE.jsonl", help="the probe's JSON lines (its .sha256 sidecar next to it)")
    p.set_defaults(func=cmd_verify)


__all__ = ["FINDINGS", "HOWS", "OUTCOMES", "Evidence", "EvidenceError", "add_parser", "check_end", "check_run",
           "check_try", "cmd_verify", "describe", "digest_file", "read", "recorded_digest", "sidecar", "verify",
           "write_digest"]
