"""The soak test's load (scripts/soak.py; tests/test_soak.py): local upstream servers, the client load
that drives a proxy with held and churning connections and checks every answer, and the soak's test data.

- `DNS` (name -> IPv4 address; a name and its subdomains) is what the soak resolves names with: the load
  (`resolve`) and, through soak_probe.py, geoblock's own resolver inside mitmdump. 127.0.0.1 (HOME, CN)
  and 127.0.0.3 (US) serve allowed names; 127.0.0.2 (BLOCKED_AT, SG) is where blocked names resolve;
  127.0.0.5 (NETBLOCKED) is blocked by `SOAK_RULES`, a network rule added to the shipped rules.
- `upstream(host, tls)`: an asyncio HTTP/1.1 keep-alive upstream (support.servers.KeepAliveServer),
  plain or TLS, counting accepted TCP connections and requests, its body naming it.
- `Load`: client slots that each hold a connection open (plain HTTP keep-alive, or CONNECT + TLS passed
  through), plus churn (short connections: blocked CONNECTs, blocked SNIs, one-shot TLS and HTTP). Every
  answer is checked; `Load.ops` counts the outcomes by kind, `Load.errors` anything else by kind, and
  `Load.records` the decision records ("stage action") geoblock must have written.
- `PROBE`: soak_probe.py, the mitmproxy script loaded beside geoblock (`mitmdump -s`).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import random
import ssl
import time
from pathlib import Path
from typing import Any

from support.servers import KeepAliveServer

PROBE = Path(__file__).resolve().with_name("soak_probe.py")

HOME, BLOCKED_AT, US, NETBLOCKED = "127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.5"
# The DNS stand-in: a name and its subdomains resolve to the address (geoblock's resolver asks it).
DNS = {
    "allowed.test": HOME,
    "example-shop.test": US,
    "binance.com": BLOCKED_AT,
    "okx.com": BLOCKED_AT,
    "bitfinex.com": BLOCKED_AT,
    "netblocked.test": NETBLOCKED,
}
ALLOWED_DOMAINS = ["allowed.test", "example-shop.test"]
POPULAR_ALLOWED = ["allowed.test", "www.allowed.test", "api.allowed.test", "www.example-shop.test", "example-shop.test"]
BLOCKED_DOMAINS = ["binance.com", "okx.com", "bitfinex.com"]
POPULAR_BLOCKED = ["binance.com", "www.binance.com", "api.binance.com", "www.okx.com", "bitfinex.com"]
SOAK_RULES = """\
# soak test: a server network blocked whatever the name. A rule on the server's address applies to every
# flow, so geoblock resolves every name it judges (through its resolver and cache).
rules:
  - id: soak-blocked-network
    action: block
    description: soak test, a blocked server network
    networks: [127.0.0.5/32]
"""
CERT_NAMES = ["allowed.test", "*.allowed.test", "example-shop.test", "*.example-shop.test"]


def resolve(name: str) -> str:
    """The address `DNS` gives `name` (the longest listed suffix); KeyError for a name it does not list."""
    labels = name.split(".")
    for i in range(len(labels)):
        addr = DNS.get(".".join(labels[i:]))
        if addr is not None:
            return addr
    raise KeyError(name)


def upstream(host: str, tls: ssl.SSLContext | None) -> KeepAliveServer:
    """A soak upstream on `host` (not started), plain or TLS; its body says which, so a client can tell
    that the answer came from the server the name resolves to."""
    kind = "tls" if tls else "http"
    return KeepAliveServer(host, tls, body=f"soak upstream {host} {kind}\n".encode())


# ---------------------------------------------------------------------------------------------------
# Client load


class Unexpected(Exception):
    """An answer that is neither the allowed nor the blocked one."""


async def read_response(reader: asyncio.StreamReader, body: bool = True) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise Unexpected(f"bad status line {lines[0][:60]!r}")
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    content = b""
    if body and "content-length" in headers:
        content = await reader.readexactly(int(headers["content-length"]))
    elif body and headers.get("transfer-encoding"):
        raise Unexpected(f"unexpected transfer-encoding {headers['transfer-encoding']}")
    return int(parts[1]), headers, content


class Load:
    def __init__(self, args: argparse.Namespace, proxy_port: int, servers: dict[tuple[str, str], KeepAliveServer],
                 client_tls: ssl.SSLContext) -> None:
        self.args = args
        self.proxy_port = proxy_port
        self.servers = servers
        self.client_tls = client_tls
        self.stop = asyncio.Event()
        self.seq = itertools.count(1)
        self.rng = random.Random(args.seed)
        self.open = 0  # client connections established and not yet closed
        self.ops: collections.Counter[str] = collections.Counter()  # checked outcomes by kind
        self.errors: collections.Counter[str] = collections.Counter()
        self.error_examples: dict[str, str] = {}
        self.records: collections.Counter[str] = collections.Counter()  # expected "stage action"
        self.names: set[str] = set()
        self.connections = 0
        self.requests = 0  # HTTP requests answered (plain and inside tunnels)
        self.handshakes = 0  # TLS handshakes completed through the proxy
        self.alerts = 0
        self.churn_skipped = 0

    # -- names -------------------------------------------------------------------------------------

    def _name(self, domains: list[str], popular: list[str], fresh: float) -> str:
        if self.rng.random() < fresh * self.args.fresh:
            name = f"s{next(self.seq):x}.{self.rng.choice(domains)}"
        else:
            name = self.rng.choice(popular)
        self.names.add(name)
        return name

    def allowed_name(self, fresh: float = 0.5) -> str:
        return self._name(ALLOWED_DOMAINS, POPULAR_ALLOWED, fresh)

    def blocked_name(self, fresh: float = 0.5) -> str:
        return self._name(BLOCKED_DOMAINS, POPULAR_BLOCKED, fresh)

    # -- plumbing ----------------------------------------------------------------------------------

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.proxy_port, limit=1 << 16), self.args.op_timeout)
        except asyncio.TimeoutError:
            raise Unexpected(f"timeout: connecting to the proxy took over {self.args.op_timeout:g} s") from None
        self.open += 1
        self.connections += 1
        return reader, writer

    async def close(self, writer: asyncio.StreamWriter) -> None:
        self.open -= 1
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), 5)
        except (OSError, asyncio.TimeoutError, ssl.SSLError):
            pass

    async def think(self) -> None:
        mean = self.args.think
        try:
            await asyncio.wait_for(self.stop.wait(), self.rng.uniform(0.5 * mean, 1.5 * mean))
        except asyncio.TimeoutError:
            pass

    async def guarded(self, kind: str, op: Any) -> None:
        try:
            await op  # each exchange has its own time limit (answer(), start_tls)
        except Exception as exc:  # noqa: BLE001 - every failure is counted by kind
            if isinstance(exc, asyncio.TimeoutError):
                what = "timeout"
            elif isinstance(exc, Unexpected):
                what = str(exc).split(":")[0]
            elif isinstance(exc, ssl.SSLError):
                what = f"SSLError {exc.reason}"
            else:
                what = type(exc).__name__
            key = f"{kind}: {what}"
            self.errors[key] += 1
            self.error_examples.setdefault(key, repr(exc)[:300])

    # -- exchanges (each checks its answer and counts the decision records it causes) ----------------

    async def http_exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, blocked: bool) -> None:
        """One plain HTTP request through the proxy, allowed or blocked, by request-target name or IP."""
        by_name = self.rng.random() < 0.5
        if blocked:
            if self.rng.random() < 0.25:  # an allowed name on a server in the blocked network
                host, addr = self.allowed_name(), NETBLOCKED
                by_name = False
            else:
                host = self.blocked_name()
                addr = resolve(host)
        else:
            host = self.allowed_name(fresh=0.2)
            addr = resolve(host)
        port = self.servers[(addr, "http")].port
        target = f"{host}:{port}" if by_name else f"{addr}:{port}"
        writer.write(f"GET http://{target}/ HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: geoblock-soak\r\n"
                     f"Accept: */*\r\n\r\n".encode())
        status, headers, body = await self.answer(reader, f"GET http://{target}/ Host {host}")
        if blocked:
            if status != 451 or 'rel="blocked-by"' not in headers.get("link", ""):
                raise Unexpected(f"http-blocked status {status}: {body[:80]!r}")
            self.records["http block"] += 1
            self.ops["http blocked 451"] += 1
        else:
            if status != 200 or body != self.servers[(addr, "http")].body:
                raise Unexpected(f"http-allowed status {status}: {body[:80]!r}")
            self.records["http allow"] += 1
            self.ops["http allowed 200"] += 1
        self.requests += 1

    async def connect_exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                               authority: str) -> tuple[int, dict[str, str], bytes]:
        writer.write(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        return await self.answer(reader, f"CONNECT {authority}")

    async def answer(self, reader: asyncio.StreamReader, what: str) -> tuple[int, dict[str, str], bytes]:
        """The response to `what`; waiting longer than --op-timeout is an error that names the request."""
        t0 = time.monotonic()
        try:
            return await asyncio.wait_for(read_response(reader), self.args.op_timeout)
        except asyncio.TimeoutError:
            raise Unexpected(f"timeout: no answer to {what} within {self.args.op_timeout:g} s") from None
        except (OSError, asyncio.IncompleteReadError) as exc:
            raise Unexpected(f"{type(exc).__name__}: {what} after {time.monotonic() - t0:.1f} s: {exc}") from None

    async def tunnel_get(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, name: str,
                         server: KeepAliveServer) -> None:
        writer.write(f"GET / HTTP/1.1\r\nHost: {name}\r\nUser-Agent: geoblock-soak\r\n\r\n".encode())
        status, _, body = await self.answer(reader, f"GET https://{name}/ (tunnel)")
        if status != 200 or body != server.body:
            raise Unexpected(f"tls-request status {status}: {body[:80]!r}")
        self.requests += 1
        self.ops["https allowed 200"] += 1

    async def open_tls(self, fresh: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str, KeepAliveServer]:
        """CONNECT (to the name, or to its address) + TLS passed through to the allowed TLS upstream."""
        name = self.allowed_name(fresh)
        addr = resolve(name)
        server = self.servers[(addr, "tls")]
        authority = f"{addr}:{server.port}" if self.rng.random() < 0.3 else f"{name}:{server.port}"
        reader, writer = await self.connect()
        try:
            status, _, body = await self.connect_exchange(reader, writer, authority)
            if status != 200:
                raise Unexpected(f"connect-allowed status {status}: {body[:80]!r}")
            self.records["connect allow"] += 1
            await writer.start_tls(self.client_tls, server_hostname=name,  # verifies the upstream's own cert
                                   ssl_handshake_timeout=self.args.op_timeout)
        except BaseException:
            await self.close(writer)
            raise
        self.records["tls allow"] += 1
        self.handshakes += 1
        self.ops["tls passed through"] += 1
        return reader, writer, name, server

    # -- held slots --------------------------------------------------------------------------------

    async def slot(self, ramp: float) -> None:
        await asyncio.sleep(self.rng.uniform(0, ramp))
        while not self.stop.is_set():
            lifetime = self.rng.uniform(self.args.lifetime_min, self.args.lifetime_max)
            if self.rng.random() < 0.5:
                await self.guarded("held-http", self.held_http(lifetime))
            else:
                await self.guarded("held-tls", self.held_tls(lifetime))

    async def held_http(self, lifetime: float) -> None:
        end = time.monotonic() + lifetime
        reader, writer = await self.connect()
        try:
            while True:
                await self.http_exchange(reader, writer, blocked=self.rng.random() < self.args.blocked_share)
                if self.stop.is_set() or time.monotonic() >= end:
                    return
                await self.think()
        finally:
            await self.close(writer)

    async def held_tls(self, lifetime: float) -> None:
        end = time.monotonic() + lifetime
        reader, writer, name, server = await self.open_tls(fresh=0.5)
        try:
            while True:
                await self.tunnel_get(reader, writer, name, server)
                if self.stop.is_set() or time.monotonic() >= end:
                    return
                await self.think()
        finally:
            await self.close(writer)

    # -- churn -------------------------------------------------------------------------------------

    CHURN = (
        ("connect-blocked", 3),
        ("sni-blocked", 3),
        ("connect-netblocked", 1),
        ("tls-oneshot", 3),
        ("http-blocked-oneshot", 2),
    )

    async def churn(self) -> None:
        kinds = [k for k, _ in self.CHURN]
        weights = [w for _, w in self.CHURN]
        rate = self.args.churn
        if rate <= 0:
            return
        cap = max(50, int(rate * 5))
        running: set[asyncio.Task[None]] = set()
        next_at = time.monotonic()
        while not self.stop.is_set():
            next_at += self.rng.expovariate(rate)
            delay = next_at - time.monotonic()
            if delay > 0:
                try:
                    await asyncio.wait_for(self.stop.wait(), delay)
                    break
                except asyncio.TimeoutError:
                    pass
            if len(running) >= cap:
                self.churn_skipped += 1
                continue
            kind = self.rng.choices(kinds, weights)[0]
            task = asyncio.create_task(self.guarded(kind, getattr(self, "op_" + kind.replace("-", "_"))()))
            running.add(task)
            task.add_done_callback(running.discard)
        if running:
            await asyncio.gather(*running)

    async def op_connect_blocked(self) -> None:
        name = self.blocked_name()
        server = self.servers[(BLOCKED_AT, "tls")]
        reader, writer = await self.connect()
        try:
            status, headers, body = await self.connect_exchange(reader, writer, f"{name}:{server.port}")
            if status != 451:
                raise Unexpected(f"connect-blocked status {status}: {body[:80]!r}")
            self.records["connect block"] += 1
            self.ops["connect blocked 451"] += 1
        finally:
            await self.close(writer)

    async def op_connect_netblocked(self) -> None:
        name = f"s{next(self.seq):x}.netblocked.test" if self.rng.random() < self.args.fresh else "www.netblocked.test"
        self.names.add(name)
        server = self.servers[(NETBLOCKED, "tls")]
        reader, writer = await self.connect()
        try:
            status, headers, body = await self.connect_exchange(reader, writer, f"{name}:{server.port}")
            if status != 451:
                raise Unexpected(f"connect-netblocked status {status}: {body[:80]!r}")
            self.records["connect block"] += 1
            self.ops["connect blocked network 451"] += 1
        finally:
            await self.close(writer)

    async def op_sni_blocked(self) -> None:
        """CONNECT to the address of the blocked server (allowed by itself), then TLS with a blocked SNI."""
        name = self.blocked_name()
        server = self.servers[(BLOCKED_AT, "tls")]
        reader, writer = await self.connect()
        try:
            status, _, body = await self.connect_exchange(reader, writer, f"{BLOCKED_AT}:{server.port}")
            if status != 200:
                raise Unexpected(f"connect-ip status {status}: {body[:80]!r}")
            self.records["connect allow"] += 1
            try:
                await writer.start_tls(self.client_tls, server_hostname=name,
                                       ssl_handshake_timeout=self.args.op_timeout)
            except ssl.SSLError as exc:
                if exc.reason != "TLSV1_ALERT_ACCESS_DENIED":
                    raise
            else:
                raise Unexpected("sni-blocked handshake completed")
            self.records["tls block"] += 1
            self.alerts += 1
            self.ops["sni blocked alert"] += 1
        finally:
            await self.close(writer)

    async def op_tls_oneshot(self) -> None:
        reader, writer, name, server = await self.open_tls(fresh=0.9)
        try:
            await self.tunnel_get(reader, writer, name, server)
        finally:
            await self.close(writer)

    async def op_http_blocked_oneshot(self) -> None:
        reader, writer = await self.connect()
        try:
            await self.http_exchange(reader, writer, blocked=True)
        finally:
            await self.close(writer)
