"""A mitmproxy script loaded beside geoblock by scripts/soak.py and tests/test_soak.py (never in production).

- Every `soak_probe_interval` seconds it writes, atomically, a JSON snapshot of the running geoblock to
  `soak_probe`: its `geoblock.status` text, its caches' sizes and bounds, the per-connection states it
  holds, its decision counters and the decision log's written/lost counts. mitmdump has no command
  channel; this reads the proxy from inside without opening a network port.
- `soak_dns` (a JSON object, domain -> IPv4 address) stands in for DNS: geoblock's resolver looks names
  up with it (a name and its subdomains get the address; others do not exist), so names can resolve to
  local test servers. Only the lookup function is replaced: geoblock's cache, coalescing and thread
  pool stay in the path, and mitmproxy dials the address geoblock judged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from typing import Any

from mitmproxy import ctx

logger = logging.getLogger("soakprobe")


class SoakProbe:
    name = "soakprobe"

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None

    def load(self, loader: Any) -> None:
        loader.add_option("soak_probe", str, "", "soak test: where to write geoblock's status snapshots (JSON)")
        loader.add_option("soak_probe_interval", float, 1.0, "soak test: seconds between snapshots")
        loader.add_option("soak_dns", str, "", "soak test: JSON file of domain -> address for geoblock's resolver")

    def running(self) -> None:
        geoblock = ctx.master.addons.get("geoblock")
        if geoblock is None:
            raise RuntimeError("soak probe: geoblock is not loaded")
        if ctx.options.soak_dns:
            with open(ctx.options.soak_dns) as f:
                table: dict[str, str] = json.load(f)

            def lookup(name: str) -> list[str]:
                labels = name.split(".")
                for i in range(len(labels)):
                    addr = table.get(".".join(labels[i:]))
                    if addr is not None:
                        return [addr]
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

            geoblock.engine.resolver._lookup = lookup
        if ctx.options.soak_probe and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(geoblock))

    async def _loop(self, geoblock: Any) -> None:
        path = ctx.options.soak_probe
        while True:
            try:
                self.write(geoblock, path)
            except Exception as exc:  # noqa: BLE001 - keep probing; the soak reports a stale snapshot
                logger.error(f"soak probe: {exc!r}")
            await asyncio.sleep(ctx.options.soak_probe_interval)

    @staticmethod
    def write(geoblock: Any, path: str) -> None:
        log = geoblock.judging.log
        snapshot = {
            "time": time.time(),
            "status": ctx.master.commands.call("geoblock.status"),
            "caches": {k: {"entries": n, "bound": b} for k, (n, b) in geoblock.caches().items()},
            "counts": dict(geoblock.judging.counts),
            "errors_seen": dict(geoblock.judging.errors_seen),
            "log": None if log is None else {"written": log.written, "lost": log.lost},
            "resolver": dict(geoblock.engine.resolver.stats),
        }
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            json.dump(snapshot, f)
        os.replace(tmp, path)

    def done(self) -> None:
        if self._task is not None:
            self._task.cancel()


addons = [SoakProbe()]
