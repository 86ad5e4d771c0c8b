"""Helpers shared by geoblock's benchmark scripts."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def calibrate() -> float:
    """Milliseconds for a fixed pure-Python loop (best of 4): a speed index of the machine now (lower = faster).

    On shared virtual machines the CPU speed available varies from minute to minute without any process
    of this machine using it (the host's other guests): this makes that visible next to each figure.
    """
    best = float("inf")
    for _ in range(4):  # the first run wakes the CPU up; the best of the others is kept
        t0 = time.perf_counter()
        x = 0
        for i in range(1_000_000):
            x += i
        best = min(best, time.perf_counter() - t0)
    return best * 1000


def source_state() -> dict:
    """The commit measured, and whether the engine or rules differ from it (read-only git)."""
    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    return {"commit": git("rev-parse", "--short", "HEAD") or None,
            "uncommitted": git("status", "--porcelain", "--", "addons", "rules").splitlines()}
