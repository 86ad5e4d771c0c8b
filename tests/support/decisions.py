"""Reading a running proxy's decision log in tests. Every record read must fit the record's schema
(record.DecisionRecord, checked by support.record_schema): one that does not fails the test reading it."""

from __future__ import annotations

import json
import time
from pathlib import Path

from support.record_schema import problems


def read(path: Path) -> list[dict]:
    """Every decision record in the log file `path`, oldest first, as it is now (none when the file does
    not exist yet). Every line must be a whole JSON record (json.JSONDecodeError otherwise) that fits the
    schema (AssertionError otherwise)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    found = [json.loads(line) for line in text.splitlines()]
    for record in found:
        wrong = problems(record)
        assert not wrong, f"a decision record that does not fit record.DecisionRecord: {wrong}: {record}"
    return found


def records(path: Path, **match: object) -> list[dict]:
    """The decision records in `path` whose fields equal every value in `match` (none when the log does
    not exist yet). Waits 50 ms first: a record is written as the proxy decides, just before or after the
    client sees the answer."""
    time.sleep(0.05)
    return [rec for rec in read(path) if all(rec.get(k) == v for k, v in match.items())]
