"""geoblock's addon driven in-process, inside mitmproxy's own test context (`mitmproxy.test.taddons`).

The one place the tests (the `gb` fixture in tests/conftest.py, test_faults, test_replay) and the fuzz
targets build the addon this way: `configure` runs as under mitmdump, and the hooks are then called
with mitmproxy's test flows and connections.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from mitmproxy.addons import proxyserver
from mitmproxy.test import taddons

from geoblock.mitm.addon import GeoBlock
from support.decisions import read


@contextlib.contextmanager
def geoblock_in_context(rules: Path | str, geo_dir: Path | None, log: Path | None, *,
                        with_proxyserver: bool = True, **options: object) -> Iterator[GeoBlock]:
    """A configured GeoBlock inside `taddons.context`, for the duration of the `with` block.

    - `rules`: the rules directory (or file) for `geoblock_rules`;
    - `geo_dir`: the directory holding GeoLite2-Country.mmdb and GeoLite2-ASN.mmdb (the test databases of
      support.geodb), or None for no databases;
    - `log`: the decision log file (JSON lines), or None for no decision log;
    - `with_proxyserver`: also load mitmproxy's Proxyserver addon, which declares `connection_strategy`
      (geoblock forces it to "lazy", as under mitmdump);
    - `options`: any other option, by name (e.g. `geoblock_rdap=False`).

    The addon gets two attributes for the tests: `tctx` (the test context: `gb.tctx.configure(gb, ...)`
    reconfigures it) and `log_path` (`log`; read it with `logged`). Errors in `configure` (bad rules or
    databases) propagate as mitmproxy raises them."""
    addon = GeoBlock()
    addons = [proxyserver.Proxyserver(), addon] if with_proxyserver else [addon]
    with taddons.context(*addons) as tctx:
        tctx.configure(
            addon,
            geoblock_rules=str(rules),
            geoblock_country_db=str(geo_dir / "GeoLite2-Country.mmdb") if geo_dir is not None else "",
            geoblock_asn_db=str(geo_dir / "GeoLite2-ASN.mmdb") if geo_dir is not None else "",
            geoblock_log=str(log) if log is not None else "",
            **options,
        )
        addon.tctx = tctx  # type: ignore[attr-defined]
        addon.log_path = log  # type: ignore[attr-defined]
        yield addon


def logged(addon: GeoBlock) -> list[dict]:
    """The decision records `addon` (from `geoblock_in_context`) has written so far, oldest first."""
    path = addon.log_path  # type: ignore[attr-defined]
    assert path is not None, "this addon has no decision log"
    return read(path)
