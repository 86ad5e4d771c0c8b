"""Name resolution for rules that need a server's location when only its name is known.

Asynchronous, cached (positive and negative), coalesced (one lookup per name in flight) and bounded:
lookups run on a small dedicated thread pool, so a slow resolver can never starve the proxy's own
connection set-up, and each waits at most `timeout` seconds. geoblock never connects to a server to
learn where it is.

A resolver that fails (a timeout, a server failure) is reported once per cause on the "geoblock"
logger, with what it means (such names follow unknown_country); further failures are counted in
`stats`, and the first success after them says resolution works again. A name that does not exist is
an answer, not a failure, and is not logged.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import socket
import time
from collections import OrderedDict
from collections.abc import Callable

from geoblock.core.names import InvalidHost, IPAddress, normalize_ip

logger = logging.getLogger("geoblock")

LookupFn = Callable[[str], list[str]]

# getaddrinfo's answers that a name has no address: not a resolver failure
_NO_SUCH_NAME = {getattr(socket, n) for n in ("EAI_NONAME", "EAI_NODATA", "EAI_ADDRFAMILY") if hasattr(socket, n)}


def system_lookup(name: str) -> list[str]:
    """Addresses for a name from the system resolver (getaddrinfo), in the order it prefers."""
    infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class Resolver:
    def __init__(
        self,
        timeout: float = 2.0,
        workers: int = 8,
        ttl: float = 300.0,
        negative_ttl: float = 30.0,
        max_entries: int = 65536,
        lookup: LookupFn = system_lookup,
    ) -> None:
        self.timeout = timeout
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.max_entries = max_entries
        self._lookup = lookup
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="geoblock-dns")
        self._max_pending = workers * 16
        self._cache: OrderedDict[str, tuple[float, IPAddress | None]] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[IPAddress | None]] = {}
        self.stats = {"lookups": 0, "hits": 0, "failures": 0, "timeouts": 0, "shed": 0}
        self._reported: set[str] = set()  # failure causes logged since resolution last worked

    def cached(self, name: str) -> tuple[bool, IPAddress | None]:
        entry = self._cache.get(name)
        if entry is None or entry[0] < time.monotonic():
            return False, None
        return True, entry[1]

    async def resolve(self, name: str) -> IPAddress | None:
        """The first address of `name`, or None when it cannot be resolved in time."""
        hit, addr = self.cached(name)
        if hit:
            self.stats["hits"] += 1
            return addr
        pending = self._inflight.get(name)
        if pending is not None:
            return await asyncio.shield(pending)
        if len(self._inflight) >= self._max_pending:
            self.stats["shed"] += 1
            return None
        loop = asyncio.get_running_loop()
        future: asyncio.Future[IPAddress | None] = loop.create_future()
        self._inflight[name] = future
        try:
            addr = await self._run(loop, name)
            future.set_result(addr)
            return addr
        finally:
            del self._inflight[name]
            if not future.done():
                future.set_result(None)

    async def _run(self, loop: asyncio.AbstractEventLoop, name: str) -> IPAddress | None:
        self.stats["lookups"] += 1
        addr: IPAddress | None = None
        failure: str | None = None
        try:
            found = await asyncio.wait_for(loop.run_in_executor(self._pool, self._lookup, name), self.timeout)
            for text in found:
                try:
                    addr = normalize_ip(text)
                    break
                except InvalidHost:
                    continue
        except TimeoutError:
            self.stats["timeouts"] += 1
            failure = f"no answer within {self.timeout:g} s"
        except (OSError, UnicodeError, ValueError) as exc:
            self.stats["failures"] += 1
            if not (isinstance(exc, socket.gaierror) and exc.errno in _NO_SUCH_NAME):
                failure = (exc.strerror if isinstance(exc, OSError) and exc.strerror else None) or type(exc).__name__
        self._report(name, addr, failure)
        ttl = self.ttl if addr is not None else self.negative_ttl
        self._cache[name] = (time.monotonic() + ttl, addr)
        self._cache.move_to_end(name)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
        return addr

    def _report(self, name: str, addr: IPAddress | None, failure: str | None) -> None:
        if failure is not None and failure not in self._reported:
            self._reported.add(failure)
            logger.warning(
                f"geoblock: name resolution failed: {failure} (first seen for {name}); names whose location a "
                f"rule needs follow unknown_country while it fails (retried after {self.negative_ttl:g} s); "
                f"further failures of this kind are counted, not logged"
            )
        elif addr is not None and self._reported:
            self._reported.clear()
            logger.warning(
                f"geoblock: name resolution works again ({self.stats['timeouts']} timeouts, "
                f"{self.stats['failures']} failures so far)"
            )

    def sizes(self) -> dict[str, tuple[int, int | None]]:
        """(entries, bound) of the answer cache and of the lookups in flight, for geoblock.status."""
        return {"dns": (len(self._cache), self.max_entries), "dns in flight": (len(self._inflight), self._max_pending)}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
