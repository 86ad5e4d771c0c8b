"""Waiting in tests for something another thread or process does (a reload, a lookup, a log line)."""

from __future__ import annotations

import time
from typing import Callable


def wait_for(predicate: Callable[[], object], timeout: float = 15.0, what: str = "condition",
             every: float = 0.1) -> object:
    """Poll `predicate` every `every` seconds until it returns something truthy, and return that;
    AssertionError naming `what` after `timeout` seconds (the predicate is asked once more at the end)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)
