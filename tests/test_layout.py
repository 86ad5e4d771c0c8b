"""The package's layout keeps its promise: only geoblock.mitm (and the tools that read mitmproxy's flow
files) import mitmproxy; the decision core, enrichment, the engine and the record never do."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import geoblock

# Modules that may import mitmproxy: the adapter package, and the replay tool (it reads .mitm files with
# mitmproxy.io).
MAY_IMPORT_MITMPROXY = ("geoblock.mitm", "geoblock.tools.replay")


def modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(geoblock.__path__, "geoblock."))


def test_only_the_adapter_imports_mitmproxy():
    pure = [m for m in modules() if not m.startswith(MAY_IMPORT_MITMPROXY)]
    assert "geoblock.engine" in pure and "geoblock.core.decide" in pure and "geoblock.enrich.locate" in pure
    code = ("import importlib, sys\n"
            f"for name in {pure!r}:\n"
            "    importlib.import_module(name)\n"
            "    loaded = sorted(m for m in sys.modules if m == 'mitmproxy' or m.startswith('mitmproxy.'))\n"
            "    assert not loaded, f'{name} imports mitmproxy: {loaded[:3]}'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_adapter_does_import_mitmproxy():
    """The check above can fail: the same probe finds mitmproxy behind the adapter."""
    code = "import sys, geoblock.mitm.addon; assert 'mitmproxy' in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


def test_the_public_names():
    assert geoblock.__all__ == ["Engine", "Facts", "GeoblockError", "Verdict"]
    assert all(getattr(geoblock, name) is not None for name in geoblock.__all__)


def test_a_connection_state_goes_with_its_connection():
    """Sessions: the state of a connection object that is gone is gone too, without client_disconnected."""
    import gc

    from mitmproxy.test import tflow

    from geoblock.mitm.sessions import Sessions

    sessions = Sessions()
    kept, dropped = tflow.tclient_conn(), tflow.tclient_conn()
    sessions.of(kept).sni = "kept.test"
    sessions.of(dropped)
    assert len(sessions) == 2
    del dropped
    gc.collect()
    assert len(sessions) == 1 and sessions.get(kept).sni == "kept.test"
    sessions.drop(kept)
    assert len(sessions) == 0 and sessions.get(kept) is None
