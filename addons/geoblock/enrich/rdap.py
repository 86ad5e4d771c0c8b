"""RDAP country fallback: the country a regional internet registry records for a server's network,
for addresses the GeoIP database cannot place.

The proxy's hot path calls `RdapLocator.country(ip)`, which never blocks: it answers from a cache (by
address, and by the RDAP network range so that neighbours of a known address hit too) or returns None at
once and schedules one background lookup on a small dedicated thread pool. Lookups are coalesced (one
per address in flight), bounded (pool size plus a queue limit beyond which new lookups are shed and
counted), time-limited (`timeout` per socket operation, no retries, no rate-limit sleeps) and cached
positively (`ttl`) and negatively (`negative_ttl`). Addresses that are not globally routable are never
looked up. An answer is the `country` of the RDAP network object, an ISO 3166-1 alpha-2 code; anything
else (no country, "EU", an HTTP error, a timeout, an answer that is not an RDAP network) is a negative
result. Each distinct failure cause is logged once on the "geoblock" logger; after that it is counted.

The RDAP network's `country` is where the registrant of the address block says it is, not where the
server is: it is a fallback, and flows placed this way should say so (country_source "rdap").

How ipwhois is used: the query goes to `<bootstrap_url>/ip/<address>` (a bootstrap service answers
with a redirect to the registry that holds the address, which is followed; an internal RDAP mirror may
answer directly), fetched by `ipwhois.net.Net.get_http_json` and parsed by `ipwhois.rdap.RDAP.lookup`
given that response (its documented `response` argument). That is what `IPWhois.lookup_rdap(
bootstrap=True)` does, minus its reading of the URL from the module global `ipwhois.rdap.BOOTSTRAP_URL`:
so the URL is per locator, configurable, and no ipwhois module state is patched. `RIR_RDAP` is only
used by ipwhois when bootstrap is off (after an ASN lookup over DNS/whois), which this module never does.

No mitmproxy import here: the addon owns the locator and calls `country()` from its hooks.
"""

from __future__ import annotations

import bisect
import ipaddress
import logging
import queue
import re
import ssl
import threading
import time
import urllib.request
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

import dns.exception
import ipwhois.rdap
from ipwhois.exceptions import (
    BaseIpwhoisException,
    HTTPLookupError,
    HTTPRateLimitError,
    InvalidNetworkObject,
    IPDefinedError,
)
from ipwhois.net import Net

from geoblock.core.countries import ISO_3166_ALPHA2
from geoblock.core.model import CountrySource
from geoblock.core.names import InvalidHost, IPAddress, normalize_ip

logger = logging.getLogger("geoblock")

SOURCE: CountrySource = "rdap"  # the Facts.country_source value for countries found here

# ipwhois's own default (ARIN's bootstrap service, which redirects to the registry holding the address).
DEFAULT_BOOTSTRAP_URL: str = ipwhois.rdap.BOOTSTRAP_URL

# A network range is cached (and answers for its neighbours) only when it is no broader than this:
# a /8 of IPv4 or a /32 of IPv6, the size of a registry's allocation to a large network.
_MAX_RANGE_BITS = {4: 24, 6: 96}
# How many overlapping ranges a range-cache look-up examines before giving up (a miss is only a lookup).
_RANGE_PROBES = 4

_HTTP_CODE = re.compile(r"error code (\d{3})")

# Negative results that are answers (the registry knows the network but gives no usable country),
# logged at INFO; every other cause is a failure, logged at WARNING.
NO_COUNTRY = "the RDAP network has no country"
NOT_ISO = "the RDAP network's country is not ISO 3166-1 alpha-2"
_NO_COUNTRY = frozenset({NO_COUNTRY, NOT_ISO})


@dataclass(frozen=True, slots=True)
class RdapAnswer:
    """The outcome of one RDAP lookup: a country, or None and the cause."""

    country: str | None
    cause: str | None = None  # why there is no country; a short, address-free category
    start: int | None = None  # the network range the answer holds for, when usable
    end: int | None = None
    handle: str | None = None


def make_opener(proxies: Mapping[str, str] | None = None) -> urllib.request.OpenerDirector:
    """An HTTP(S)-only opener (no file:, ftp: or data: handlers, so a redirect cannot leave HTTP).

    `proxies` None uses the environment's proxy settings (http_proxy, https_proxy, no_proxy); {} none.
    """
    opener = urllib.request.OpenerDirector()
    handlers: list[urllib.request.BaseHandler] = [
        urllib.request.ProxyHandler(None if proxies is None else dict(proxies)),
        urllib.request.UnknownHandler(),
        urllib.request.HTTPHandler(),
        urllib.request.HTTPSHandler(context=ssl.create_default_context()),
        urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.HTTPRedirectHandler(),
        urllib.request.HTTPErrorProcessor(),
    ]
    for handler in handlers:
        opener.add_handler(handler)
    return opener


def check_bootstrap_url(url: str) -> str:
    """The URL without a trailing slash; ValueError unless it is an absolute http(s) URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"RDAP bootstrap URL must be an http:// or https:// URL without query: {url!r}")
    return url.rstrip("/")


def lookup_country(
    addr: IPAddress,
    bootstrap_url: str = DEFAULT_BOOTSTRAP_URL,
    timeout: float = 5.0,
    opener: urllib.request.OpenerDirector | None = None,
) -> RdapAnswer:
    """One blocking RDAP lookup of `addr` (for a worker thread or a CLI). Never raises for lookup errors.

    `timeout` bounds each socket operation (connect, each read), not the whole exchange.
    """
    started = time.monotonic()
    url = f"{check_bootstrap_url(bootstrap_url)}/ip/{addr}"
    try:
        net = Net(str(addr), timeout=timeout, proxy_opener=opener or make_opener())
        response = net.get_http_json(url=url, retry_count=0, rate_limit_timeout=0)
        result = ipwhois.rdap.RDAP(net).lookup(
            response=response, bootstrap=True, depth=0, retry_count=0, rate_limit_timeout=0,
            root_ent_check=False, inc_raw=False,
        )
    except IPDefinedError:
        return RdapAnswer(None, "address is reserved (ipwhois)")
    except HTTPRateLimitError:
        return RdapAnswer(None, "rate limited by the RDAP server")
    except HTTPLookupError as exc:
        # ipwhois folds every transport failure (and a body that is not JSON) into this one error,
        # with the URL (hence the address) in its message: only the HTTP status survives as a cause.
        code = _HTTP_CODE.search(str(exc))
        if code:
            return RdapAnswer(None, f"HTTP {code.group(1)} from the RDAP server")
        if time.monotonic() - started >= timeout * 0.9:
            return RdapAnswer(None, f"no answer within {timeout:g} s")
        return RdapAnswer(None, "connection failed or the answer is not JSON")
    except InvalidNetworkObject:
        return RdapAnswer(None, "the answer is not an RDAP IP network object")
    except BaseIpwhoisException as exc:
        return RdapAnswer(None, f"ipwhois {type(exc).__name__}")
    except OSError as exc:
        return RdapAnswer(None, f"network error ({type(exc).__name__})")
    except dns.exception.DNSException as exc:
        # ipwhois's Net sets up a dnspython resolver even for RDAP over HTTP, so a host without a
        # usable /etc/resolv.conf cannot do RDAP lookups through ipwhois at all.
        return RdapAnswer(None, f"ipwhois cannot start without a DNS resolver configuration ({exc})")
    except (ValueError, TypeError, AttributeError, KeyError):
        # ipwhois's parser lets some malformed values through (e.g. a handle that is not a string).
        return RdapAnswer(None, "malformed RDAP answer")
    return _answer_from(addr, result)


def _answer_from(addr: IPAddress, result: Any) -> RdapAnswer:
    network = result.get("network") if isinstance(result, dict) else None
    if not isinstance(network, dict):
        return RdapAnswer(None, "the answer is not an RDAP IP network object")
    code = network.get("country")
    if not isinstance(code, str) or not code.strip():
        return RdapAnswer(None, NO_COUNTRY)
    code = code.strip().upper()
    if code not in ISO_3166_ALPHA2:
        return RdapAnswer(None, NOT_ISO)
    start = end = None
    first: IPAddress | None
    last: IPAddress | None
    try:
        first = ipaddress.ip_address(network.get("start_address") or "")
        last = ipaddress.ip_address(network.get("end_address") or "")
    except ValueError:
        first = last = None
    if (
        first is not None and last is not None
        and first.version == last.version == addr.version
        and int(first) <= int(addr) <= int(last)
        and int(last) - int(first) < (1 << _MAX_RANGE_BITS[addr.version])
    ):
        start, end = int(first), int(last)
    handle = network.get("handle") if isinstance(network.get("handle"), str) else None
    return RdapAnswer(code, None, start, end, handle)


def cache_sizes() -> dict[str, tuple[int, int | None]]:
    """(entries, bound) of this module's cache, for geoblock.status."""
    info = lookupable.cache_info()
    return {"rdap lookupable": (info.currsize, info.maxsize)}


@lru_cache(maxsize=8192)
def lookupable(addr: IPAddress) -> bool:
    """Whether an address could be in a registry's RDAP: globally routable, not special-purpose."""
    return bool(
        addr.is_global
        and not addr.is_multicast
        and not addr.is_reserved
        and not addr.is_unspecified
        and not addr.is_loopback
        and not addr.is_link_local
    )


@dataclass(slots=True)
class _Range:
    version: int
    start: int
    end: int
    country: str
    expires: float


class RdapLocator:
    """Non-blocking, cached, bounded RDAP country lookups (see the module's documentation)."""

    def __init__(
        self,
        enabled: bool = True,
        timeout: float = 5.0,
        workers: int = 4,
        ttl: float = 24 * 3600.0,
        negative_ttl: float = 3600.0,
        max_entries: int = 65536,
        max_queued: int = 256,
        bootstrap_url: str = DEFAULT_BOOTSTRAP_URL,
        proxies: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if timeout <= 0 or workers < 1 or max_entries < 1 or max_queued < 0 or ttl <= 0 or negative_ttl < 0:
            raise ValueError("RDAP: timeout, ttl > 0; workers, max_entries >= 1; max_queued, negative_ttl >= 0")
        self.enabled = enabled
        self.timeout = timeout
        self.workers = workers
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.max_entries = max_entries
        self.max_queued = max_queued
        self.bootstrap_url = check_bootstrap_url(bootstrap_url)
        self._opener = make_opener(proxies)
        self._clock = clock
        self._lock = threading.Lock()
        # address -> (expires, country or None); LRU order, oldest first
        self._cache: OrderedDict[IPAddress, tuple[float, str | None]] = OrderedDict()
        # network ranges of positive answers: per IP version a sorted list of (start, end) and the
        # entries, plus an LRU order over them
        self._range_keys: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
        self._ranges: OrderedDict[tuple[int, int, int], _Range] = OrderedDict()
        self._inflight: set[IPAddress] = set()
        self._running = 0
        self._closed = False
        self._counts = {
            "lookups": 0, "answers": 0, "negatives": 0, "skipped": 0, "shed": 0,
            "coalesced": 0, "hits": 0, "range_hits": 0, "stale": 0,
        }
        self._causes: dict[str, int] = {}
        self._logged: set[str] = set()
        # A fixed pool of daemon threads, all started here: starting a thread blocks its starter until
        # the thread runs (milliseconds under load), which must not happen on the hot path, as it would
        # with concurrent.futures' lazily grown pool. Daemon threads also never hold up interpreter exit
        # while a lookup hangs.
        self._queue: queue.SimpleQueue[IPAddress | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._worker, name=f"geoblock-rdap-{i}", daemon=True)
            for i in range(workers if enabled else 0)
        ]
        for thread in self._threads:
            thread.start()

    # -- hot path ------------------------------------------------------------------------------------

    def country(self, ip: str | IPAddress) -> str | None:
        """The cached RDAP country of `ip`, or None (and a background lookup scheduled). Never blocks.

        An expired positive answer is still returned while its refresh runs; the refresh's result
        (country or negative) replaces it.
        """
        if not self.enabled:
            return None
        if isinstance(ip, str):
            try:
                addr = normalize_ip(ip)
            except InvalidHost:
                with self._lock:
                    self._counts["skipped"] += 1
                return None
        else:
            addr = normalize_ip(ip) if ip.version == 6 else ip
        if not lookupable(addr):
            with self._lock:
                self._counts["skipped"] += 1
            return None
        now = self._clock()
        stale: str | None = None
        with self._lock:
            entry = self._cache.get(addr)
            if entry is not None:
                expires, code = entry
                if expires > now:
                    self._cache.move_to_end(addr)
                    if code is not None:
                        self._counts["hits"] += 1
                    return code
                stale = code
            if stale is None:  # nothing for this address, or an expired negative: a neighbour's range?
                found = self._range_hit(addr, now)
                if found is not None:
                    self._counts["range_hits"] += 1
                    self._store(addr, found.expires, found.country)
                    return found.country
            if stale is not None:
                self._counts["stale"] += 1
            if addr in self._inflight:
                self._counts["coalesced"] += 1
                return stale
            if self._closed:
                return stale
            if len(self._inflight) >= self.workers + self.max_queued:
                self._counts["shed"] += 1
                return stale
            self._inflight.add(addr)
            self._counts["lookups"] += 1
            self._queue.put(addr)  # never blocks: the queue is unbounded, its length bounded above
        return stale

    # -- background ----------------------------------------------------------------------------------

    def _worker(self) -> None:
        while True:
            addr = self._queue.get()
            if addr is None:
                return
            if self._closed:
                self._release(addr)
                continue
            self._work(addr)

    def _work(self, addr: IPAddress) -> None:
        with self._lock:
            self._running += 1
        try:
            answer = lookup_country(addr, self.bootstrap_url, self.timeout, self._opener)
        except Exception as exc:  # noqa: BLE001 - a worker must always record a result
            answer = RdapAnswer(None, f"unexpected error ({type(exc).__name__})")
        except BaseException:
            with self._lock:
                self._running -= 1
                self._inflight.discard(addr)
            raise
        cause = None
        now = self._clock()
        with self._lock:
            self._running -= 1
            self._inflight.discard(addr)
            if answer.country is not None:
                self._counts["answers"] += 1
                expires = now + self.ttl
                self._store(addr, expires, answer.country)
                if answer.start is not None and answer.end is not None:
                    self._add_range(_Range(addr.version, answer.start, answer.end, answer.country, expires))
            else:
                self._counts["negatives"] += 1
                self._store(addr, now + self.negative_ttl, None)
                key = answer.cause or "no answer"
                self._causes[key] = self._causes.get(key, 0) + 1
                if key not in self._logged:
                    self._logged.add(key)
                    cause = key
        if cause is not None:
            logger.log(
                logging.INFO if cause in _NO_COUNTRY else logging.WARNING,
                "RDAP country lookup via %s: %s (first seen for %s; further results of this kind are "
                "counted, not logged)", self.bootstrap_url, cause, addr,
            )

    def _release(self, addr: IPAddress) -> None:
        """Forget an address whose lookup was dropped before it ran (close())."""
        with self._lock:
            self._inflight.discard(addr)

    # -- caches (callers hold the lock) --------------------------------------------------------------

    def _store(self, addr: IPAddress, expires: float, code: str | None) -> None:
        self._cache[addr] = (expires, code)
        self._cache.move_to_end(addr)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)

    def _range_hit(self, addr: IPAddress, now: float) -> _Range | None:
        keys = self._range_keys[addr.version]
        if not keys:
            return None
        value = int(addr)
        i = bisect.bisect_right(keys, (value, 1 << 128)) - 1
        for j in range(i, max(-1, i - _RANGE_PROBES), -1):
            start, end = keys[j]
            if start <= value <= end:
                key = (addr.version, start, end)
                entry = self._ranges[key]
                if entry.expires <= now:
                    self._drop_range(key)
                    return None
                self._ranges.move_to_end(key)
                return entry
        return None

    def _add_range(self, entry: _Range) -> None:
        key = (entry.version, entry.start, entry.end)
        if key in self._ranges:
            self._ranges[key] = entry
            self._ranges.move_to_end(key)
            return
        self._ranges[key] = entry
        bisect.insort(self._range_keys[entry.version], (entry.start, entry.end))
        while len(self._ranges) > self.max_entries:
            self._drop_range(next(iter(self._ranges)))

    def _drop_range(self, key: tuple[int, int, int]) -> None:
        version, start, end = key
        del self._ranges[key]
        keys = self._range_keys[version]
        i = bisect.bisect_left(keys, (start, end))
        if i < len(keys) and keys[i] == (start, end):
            del keys[i]

    # -- reporting and life cycle --------------------------------------------------------------------

    def sizes(self) -> dict[str, tuple[int, int | None]]:
        """(entries, bound) of the answer and range caches and of the lookups in flight."""
        with self._lock:
            return {"rdap": (len(self._cache), self.max_entries), "rdap ranges": (len(self._ranges), self.max_entries),
                    "rdap in flight": (len(self._inflight), self.workers + self.max_queued)}

    def stats(self) -> dict[str, int]:
        """Counters: lookups (started), answers, negatives, skipped (not global or not an address),
        shed (queue full), coalesced (already in flight), hits / range_hits (cached answers), stale
        (expired answers served while refreshing), cache_entries, range_entries, in_flight (queued or
        running), running."""
        with self._lock:
            out = dict(self._counts)
            out["cache_entries"] = len(self._cache)
            out["range_entries"] = len(self._ranges)
            out["in_flight"] = len(self._inflight)
            out["running"] = self._running
            return out

    def negative_causes(self) -> dict[str, int]:
        """How many negative results each cause produced."""
        with self._lock:
            return dict(self._causes)

    def close(self) -> None:
        """Stop scheduling and drop queued lookups, without waiting; running ones end by their timeout
        (their results are still cached) and the worker threads then exit."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            while True:
                try:
                    addr = self._queue.get_nowait()
                except queue.Empty:
                    break
                if addr is not None:
                    self._inflight.discard(addr)
            for _ in self._threads:
                self._queue.put(None)
