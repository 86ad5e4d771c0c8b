"""Reading a running proxy's decision log in tests."""

from __future__ import annotations

import json
import time
from pathlib import Path


def records(path: Path, **match: object) -> list[dict]:
    """The decision records in `path` whose fields equal every value in `match` (none when the log does
    not exist yet). Waits 50 ms first: a record is written as the proxy decides, just before or after the
    client sees the answer."""
    time.sleep(0.05)
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        if all(rec.get(k) == v for k, v in match.items()):
            out.append(rec)
    return out
