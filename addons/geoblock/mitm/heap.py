"""Keeping long-lived data out of the garbage collector's full scans.

CPython's cyclic collector walks every tracked container it holds in its oldest generation on each full
collection. In a running proxy that is the code loaded at start-up (modules, functions, classes), the
compiled ruleset and the databases' readers: objects that live as long as the process, or until a reload
replaces them, and that the collector can never free. A full collection stalls every connection while it
walks them (about 80 ms for mitmdump's own start-up heap; 45 to 65 ms more for a 100,000-domain
ruleset), and the walks add up to a few per cent of the proxy's CPU.

`settle()` collects once and moves every object then alive into the collector's permanent generation
(`gc.freeze`), where full collections no longer walk it. A frozen object is still freed as soon as
nothing refers to it (reference counting); only a cycle of frozen objects that becomes unreachable waits
until the next `settle()` (which unfreezes, collects and freezes again) or `release()`. Settling when
few flows are in hand keeps that small: at start-up there are none, and at a reload it is bounded by the
objects of the connections open at that moment.
"""

from __future__ import annotations

import gc
import time


def settle() -> tuple[int, float]:
    """Unfreeze, collect, then freeze what is alive. Returns (objects frozen, milliseconds taken)."""
    started = time.perf_counter()
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count(), (time.perf_counter() - started) * 1000


def release() -> None:
    """Hand every frozen object back to the collector (the oldest generation)."""
    gc.unfreeze()


def frozen() -> int:
    return gc.get_freeze_count()
