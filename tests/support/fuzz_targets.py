"""Fuzz targets and their oracles, shared by the fuzzer (scripts/fuzz.py, atheris) and the regression
tests (tests/test_fuzz_corpus.py, plain pytest: nothing here imports atheris). The ClientHello bytes
come from support.tls_bytes.

Each target turns one input (bytes) into one case and returns its findings:

- `crash`: an exception geoblock does not document for that input (or, for the ClientHello path, an
  exception that escaped the hook's guard or reached it without being one geoblock raises on purpose:
  `GUARDED_CAUSES`);
- `fail-open`: geoblock let through (or loaded) something that an independent, deliberately simple
  reference check says is blocked (or is stricter).

Targets:

- `clienthello`: the bytes a client sends first, through the addon's real `next_layer` hook (mitmproxy's
  `parse_client_hello`, the shipped rules, a test GeoIP database);
- `host`: (request target, Host header, SNI) through `observe.http_target` and `decide`;
- `rules`: a YAML rule file (or policy.yaml) through `Ruleset.load`.

Input layout: the first byte of an input chooses the variant (server address, structured or raw, rule
file or policy file); the rest is read by `Provider`, a tiny deterministic byte reader, so a saved input
replays the same case without atheris.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import re
import shutil
import socket
import struct
import tempfile
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import idna
import yaml

from support.shipped import copy_shipped_rules, shipped_list_names
from support.geodb import write_asn_db, write_country_db
from support.tls_bytes import (alpn_ext, client_hello, client_hello_body, handshake_message, handshake_records,
                               sni_ext, tls_ext)

REPO = Path(__file__).resolve().parents[2]
FUZZ_DIR = REPO / "tests" / "fuzz"
SEEDS_DIR = FUZZ_DIR / "seeds"
CORPUS_DIR = FUZZ_DIR / "corpus"
FUZZ_RULES = FUZZ_DIR / "rules"
SHIPPED_RULES = REPO / "rules"

TARGETS = ("clienthello", "host", "rules", "lists")


# The errors geoblock raises on purpose in the ClientHello path, which its guard turns into on_error:
# a ClientHello that cannot be read (observe.MalformedClientHello), a flow that cannot be judged
# (engine.CannotJudge). Any other cause the guard catches is an internal error: a crash.
GUARDED_CAUSES = frozenset({"MalformedClientHello", "CannotJudge"})


@dataclass(frozen=True)
class Finding:
    kind: str  # "crash" | "fail-open"
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}"


class Provider:
    """Reads choices from fuzz bytes, deterministically; past the end every read gives zeros."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def left(self) -> int:
        return len(self.data) - self.pos

    def u8(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def int(self, lo: int, hi: int) -> int:
        """An integer in [lo, hi]."""
        span = hi - lo + 1
        value = self.u8() if span <= 256 else (self.u8() << 8) | self.u8()
        return lo + value % span

    def chance(self, in_256: int) -> bool:
        return self.u8() < in_256

    def pick(self, items: Sequence[Any]) -> Any:
        return items[self.int(0, len(items) - 1)]

    def take(self, n: int) -> bytes:
        out = self.data[self.pos : self.pos + n]
        self.pos += len(out)
        return out

    def chunk(self, limit: int = 32) -> bytes:
        return self.take(self.int(0, limit))

    def rest(self) -> bytes:
        return self.take(self.left())


# ----------------------------------------------------------------------------------------------
# The reference: what the shipped rules block, read and checked without geoblock's own code.


def _reference_lists() -> tuple[tuple[str, ...], tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]]:
    """Blocked domains (plain "name and subdomains" entries of unconditional block rules) and blocked
    networks (block rules with only `networks`), read with yaml.safe_load from the shipped rules and
    the fuzz rules."""
    domains: list[str] = []
    networks: list[Any] = []
    files = sorted(SHIPPED_RULES.glob("*.yaml")) + sorted(FUZZ_RULES.glob("*.yaml"))
    for f in files:
        data = yaml.safe_load(f.read_text(encoding="utf-8")) or {}
        for rule in data.get("rules") or ():
            if rule.get("action") != "block":
                continue
            keys = set(rule) - {"id", "action", "description"}
            if keys == {"domains"}:
                domains += [d.lower() for d in rule["domains"] if not d.startswith(("=", "*."))]
            elif keys == {"domains_from", "notice"} and f.parent == SHIPPED_RULES:
                domains += shipped_list_names()
            elif keys == {"networks"}:
                networks += [ipaddress.ip_network(n) for n in rule["networks"]]
    return tuple(domains), tuple(networks)


BLOCKED_DOMAINS, BLOCKED_NETWORKS = _reference_lists()
_BLOCKED_SET = frozenset(BLOCKED_DOMAINS)
# names the structured generators build on: blocked ones (often), and a few allowed ones
BLOCKED_BASES = ("binance.com", "okx.com", "api.binance.com", "bitfinex.com", "www.okx.com", "bybit.com")
ALLOWED_BASES = ("example.org", "allowed.test", "binance.com.example.org", "notbinance.com", "coinbase.example")
for _b in BLOCKED_BASES:
    assert any(_b == d or _b.endswith("." + d) for d in BLOCKED_DOMAINS), _b


def blocked_name(name: str) -> str | None:
    """The blocked domain `name` is (or is under), else None. `name` as the reference spells it."""
    labels = name.split(".")
    for i in range(len(labels)):
        suffix = ".".join(labels[i:])
        if suffix in _BLOCKED_SET:
            return suffix
    return None


def blocked_address(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr in net for net in BLOCKED_NETWORKS)


_DOTS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})


def reference_names(text: str) -> set[str]:
    """Spellings a lenient server or resolver might make of `text`: lower case, trailing dots gone,
    Unicode folded (NFKC, ideographic dots) and IDNA-encoded where Python's own codec or `idna` can."""
    out: set[str] = set()
    base = text.strip(" \t\r\n")
    for cand in {base, unicodedata.normalize("NFKC", base).translate(_DOTS)}:
        cand = cand.lower().rstrip(".")
        if not cand:
            continue
        out.add(cand)
        for encode in (lambda s: s.encode("idna").decode("ascii"),  # IDNA 2003 (ß -> ss)
                       lambda s: idna.encode(s, uts46=True).decode("ascii")):  # IDNA 2008 + UTS 46
            try:
                out.add(encode(cand).lower().rstrip("."))
            except (UnicodeError, ValueError, idna.IDNAError):
                pass
    return out


def reference_blocked_name(text: str) -> str | None:
    for cand in reference_names(text):
        hit = blocked_name(cand)
        if hit:
            return f"{cand!r} is under {hit}"
    return None


_LEGACY = re.compile(r"[0-9a-fA-FxX.]+\Z")


def reference_host(text: str) -> tuple[str, list[Any]]:
    """(host part, addresses it spells): userinfo, brackets and port removed the simple way."""
    host = text.strip(" \t\r\n").rsplit("@", 1)[-1]
    if host.startswith("[") and "]" in host:
        host = host[1 : host.index("]")]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    addrs: list[Any] = []
    for cand in reference_names(host) | {host}:
        try:
            addrs.append(ipaddress.ip_address(cand.split("%", 1)[0]))
            continue
        except ValueError:
            pass
        if _LEGACY.match(cand) and cand.rstrip("."):
            try:
                addrs.append(ipaddress.IPv4Address(socket.inet_aton(cand.rstrip("."))))
            except OSError:
                pass
    return host, addrs


# ----------------------------------------------------------------------------------------------
# TLS: a reference reader of ClientHellos' server_name extensions (the bytes: support.tls_bytes)


@dataclass
class RefHello:
    complete: bool  # the records hold the whole handshake message
    sni_exts: int = 0  # server_name extensions
    names: tuple[tuple[int, bytes], ...] = ()  # (name_type, name) of every entry of every one
    strict: bool = False  # framed as RFC 8446 says (every length consistent): what a conforming server reads


def reference_hello(data: bytes) -> RefHello:
    """Read the handshake records and the server_name extensions the simple way (RFC 8446 layout).

    Every server_name entry found is collected; `strict` says whether every length in the message is
    consistent. A conforming server (OpenSSL, BoringSSL, Go, rustls) refuses a ClientHello that is not,
    so only a strict one says what such a server would read."""
    msg, pos = b"", 0
    while len(data) >= pos + 5 and data[pos] == 0x16:
        size = struct.unpack("!H", data[pos + 3 : pos + 5])[0]
        if len(data) < pos + 5 + size:
            break
        msg += data[pos + 5 : pos + 5 + size]
        pos += 5 + size
        if len(msg) >= 4 and len(msg) >= 4 + int.from_bytes(msg[1:4], "big"):
            break
    if len(msg) < 4 or len(msg) < 4 + int.from_bytes(msg[1:4], "big"):
        return RefHello(False)
    body = msg[4 : 4 + int.from_bytes(msg[1:4], "big")]
    strict = msg[0] == 1
    try:
        p = 2 + 32
        strict &= body[p] <= 32
        p += 1 + body[p]
        ciphers = struct.unpack("!H", body[p : p + 2])[0]
        strict &= ciphers >= 2 and ciphers % 2 == 0
        p += 2 + ciphers
        strict &= body[p] >= 1
        p += 1 + body[p]
        if p == len(body):
            return RefHello(True, strict=strict)  # no extensions (TLS 1.2 and older allow it)
        strict &= struct.unpack("!H", body[p : p + 2])[0] == len(body) - p - 2
        p += 2
    except (IndexError, struct.error):
        return RefHello(True)
    names: list[tuple[int, bytes]] = []
    count = 0
    while p + 4 <= len(body):
        ext_type, size = struct.unpack("!HH", body[p : p + 4])
        ext = body[p + 4 : p + 4 + size]
        strict &= len(ext) == size
        p += 4 + size
        if ext_type != 0:
            continue
        count += 1
        strict &= len(ext) >= 2 and struct.unpack("!H", ext[:2])[0] == len(ext) - 2
        q = 2
        while q + 3 <= len(ext):
            name_type, n = ext[q], struct.unpack("!H", ext[q + 1 : q + 3])[0]
            names.append((name_type, ext[q + 3 : q + 3 + n]))
            q += 3 + n
        strict &= q == len(ext)
    strict &= p == len(body)
    return RefHello(True, count, tuple(names), bool(strict))


# ----------------------------------------------------------------------------------------------
# Names the generators splice: blocked and allowed names in many spellings


_CONFUSABLE_DOTS = ("\u3002", "\uff0e", "\uff61")


def spelled_name(p: Provider) -> str:
    """A name, often a blocked one, in one of many spellings, with fuzz bytes spliced in."""
    base = p.pick(BLOCKED_BASES) if p.chance(200) else p.pick(ALLOWED_BASES)
    how = p.int(0, 11)
    if how == 1:
        base = base.upper()
    elif how == 2:
        base = "".join(c.upper() if p.chance(128) else c for c in base)
    elif how == 3:
        base = base.replace(".", p.pick(_CONFUSABLE_DOTS))
    elif how == 4:
        base = "".join(chr(ord(c) + 0xFEE0) if c.isalnum() and p.chance(100) else c for c in base)  # fullwidth
    elif how == 5:
        base = f"xn--{p.chunk(6).decode('latin-1').lower()}.{base}"
    elif how == 6:
        base = p.pick(("bücher.", "ñ.", "ß.", "ς.", "\u200b", "\u00ad", "a\u0301.")) + base
    elif how == 7:
        label = "a" * p.int(60, 66)
        base = f"{label}.{base}"
    elif how == 8:
        base = base + "." * p.int(1, 3)
    elif how == 9:
        at = p.int(0, len(base))
        base = base[:at] + p.chunk(4).decode("latin-1") + base[at:]
    if p.chance(60):
        base = p.chunk(8).decode("utf-8", "replace") + base
    if p.chance(60):
        base = base + p.chunk(8).decode("utf-8", "replace")
    return base


def _encode_name(p: Provider, name: str) -> bytes:
    how = p.int(0, 3)
    if how == 0:
        return name.encode("utf-8", "surrogateescape")
    if how == 1:
        return name.encode("latin-1", "replace")
    try:
        return idna.encode(name, uts46=True)
    except (idna.IDNAError, UnicodeError):
        return name.encode("utf-8", "surrogateescape")


# ----------------------------------------------------------------------------------------------
# Shared set-up: rules directory (shipped + fuzz rules), test GeoIP databases


_WORK: Path | None = None


def workdir() -> Path:
    global _WORK
    if _WORK is None:
        shm = Path("/dev/shm")
        _WORK = Path(tempfile.mkdtemp(prefix="geoblock-fuzz-", dir=shm if shm.is_dir() else None))
        rules = _WORK / "rules"
        copy_shipped_rules(rules)
        for f in FUZZ_RULES.glob("*.yaml"):
            shutil.copy(f, rules / f.name)
        write_country_db(_WORK / "GeoLite2-Country.mmdb")
        write_asn_db(_WORK / "GeoLite2-ASN.mmdb")
        import atexit

        atexit.register(shutil.rmtree, _WORK, True)
    return _WORK


def cleanup() -> None:
    """Remove the work directory now (a process ending with os._exit runs no atexit handlers)."""
    global _WORK
    if _WORK is not None:
        shutil.rmtree(_WORK, ignore_errors=True)
        _WORK = None


class Target:
    name = ""

    def setup(self) -> None:
        """Expensive set-up, once per process."""

    def one(self, data: bytes) -> list[Finding]:
        raise NotImplementedError

    def seeds(self) -> list[bytes]:
        raise NotImplementedError


# ----------------------------------------------------------------------------------------------
# clienthello


# server addresses by the test GeoIP database: CN (home), SG (offshore), not placed, a blocked network
SERVERS = (("127.0.0.1", 443), ("127.0.0.2", 443), ("127.0.0.4", 443), ("127.0.0.5", 443))


class ClientHelloTarget(Target):
    """First byte: bits 0-1 the server address (SERVERS), bit 2 structured (else raw bytes)."""

    name = "clienthello"

    def setup(self) -> None:
        from mitmproxy.proxy import context, events, layer
        from mitmproxy.proxy.layers import modes
        from mitmproxy.net.tls import starts_like_tls_record
        from mitmproxy.proxy.layers import tls as mtls
        from mitmproxy.test import tflow

        from geoblock.mitm import enforce
        from geoblock.mitm import hold
        from support.harness import geoblock_in_context

        work = workdir()
        logging.getLogger("geoblock").setLevel(logging.CRITICAL)
        # the addon stays in its test context for the life of the process
        self._tctx_cm = geoblock_in_context(work / "rules", work, None, geoblock_rdap=False,
                                            geoblock_reload_interval="0")
        self.gb = self._tctx_cm.__enter__()
        self.tctx = self.gb.tctx
        logging.getLogger("geoblock").setLevel(logging.CRITICAL)
        self.loop = asyncio.new_event_loop()
        self._context, self._events, self._layer, self._tflow, self._modes = context, events, layer, tflow, modes
        self._parse, self._starts_like_tls = mtls.parse_client_hello, starts_like_tls_record
        self._deny = (enforce.DenyTLS, enforce.DenyStream)
        self._hold = hold.HoldFirstBytes

    # -- input -> client bytes

    def client_bytes(self, data: bytes) -> tuple[tuple[str, int], bytes]:
        if not data:
            return SERVERS[0], b""
        server = SERVERS[data[0] & 3]
        if not data[0] & 4:
            return server, data[1:]
        return server, self.structured(Provider(data[1:]))

    @staticmethod
    def structured(p: Provider) -> bytes:
        exts: list[bytes] = []
        n_sni = p.pick((1, 1, 1, 1, 1, 0, 2, 2, 3))
        for _ in range(n_sni):
            names = [_encode_name(p, spelled_name(p)) for _ in range(p.pick((1, 1, 1, 1, 2, 3, 0)))]
            exts.append(sni_ext(names, 0 if p.chance(230) else p.u8()))
        if p.chance(100):
            exts.append(alpn_ext([b"h2", b"http/1.1"][: p.int(1, 2)]))
        if p.chance(40):
            exts.append(tls_ext(0xFE0D, p.chunk(16)))  # encrypted_client_hello
        if p.chance(60):
            exts.append(tls_ext(p.int(0, 0xFFFF), p.chunk(16)))
        if p.chance(60):
            at = p.int(0, len(exts))
            exts.insert(at, tls_ext(43, b"\x02\x03\x04"))  # supported_versions
        if len(exts) > 1 and p.chance(60):
            i, j = p.int(0, len(exts) - 1), p.int(0, len(exts) - 1)
            exts[i], exts[j] = exts[j], exts[i]
        body = client_hello_body(exts, session_id=p.chunk(32))
        msg_type = 1 if p.chance(240) else p.u8()
        hs = handshake_message(body, msg_type)
        if p.chance(30):  # a length field that lies
            at = p.int(0, len(hs) - 1)
            hs = hs[:at] + bytes([p.u8()]) + hs[at + 1 :]
        cuts = [p.int(1, max(1, len(hs) - 1)) for _ in range(p.pick((0, 0, 0, 1, 2, 3)))]
        version = b"\x03" + bytes([p.pick((1, 1, 3, 3, 0, 2, 4, 0xFF))])
        out = handshake_records(hs, cuts, version)
        if p.chance(30):
            out = out[: p.int(0, len(out))]
        if p.chance(30):
            out += p.chunk(16)
        return out

    # -- the case

    def run_hook(self, server: tuple[str, int], data: bytes) -> tuple[str, Any, dict[str, int]]:
        """Drive the real `next_layer` hook; (outcome, layer, new error causes)."""
        gb = self.gb
        client = self._tflow.tclient_conn()
        client.peername = ("127.0.0.1", 50000)
        ctx = self._context.Context(client, self.tctx.options)
        ctx.server.address = server
        self._modes.TransparentProxy(ctx)  # the layer below a layer choice (mitmproxy's choice reads the stack)
        nl = self._layer.NextLayer(ctx)
        nl.events.append(self._events.DataReceived(client, data))
        errors_before = dict(gb.judging.errors_seen)
        try:
            self.loop.run_until_complete(gb.next_layer(nl))
            state = gb.judging.sessions.get(client)
            judged = state.tls_judged.get(ctx) if state is not None else None
            if isinstance(nl.layer, self._deny):
                outcome = "block"
            elif isinstance(nl.layer, self._hold):
                outcome = "waiting"  # geoblock holds the bytes until they show what the stream is
            elif judged is None:
                outcome = "not-tls"
            elif judged:
                outcome = "allow"
            else:
                outcome = "undecided"
        finally:
            gb.client_disconnected(client)
        new_errors = {k: v - errors_before.get(k, 0) for k, v in gb.judging.errors_seen.items() if v != errors_before.get(k, 0)}
        return outcome, nl.layer, new_errors

    def one(self, data: bytes) -> list[Finding]:
        server, payload = self.client_bytes(data)
        try:
            outcome, _, errors = self.run_hook(server, payload)
        except BaseException as exc:  # noqa: BLE001 - escaped the guard: a crash
            if isinstance(exc, KeyboardInterrupt):
                raise
            return [Finding("crash", f"{type(exc).__name__} escaped the next_layer guard: {exc}")]
        findings = [Finding("crash", f"the guard caught an internal error: {cause}")
                    for cause in errors if cause.split(" ", 1)[0] not in GUARDED_CAUSES]
        findings += self.judge(server, payload, outcome)
        return findings

    def judge(self, server: tuple[str, int], payload: bytes, outcome: str) -> list[Finding]:
        if outcome == "block":
            return []
        if outcome == "not-tls":
            if self._starts_like_tls(payload):
                return [Finding("fail-open", "mitmproxy sees a TLS record but geoblock did not judge it")]
            return []
        ref = reference_hello(payload)
        if outcome == "waiting":
            if ref.complete:
                return [Finding("fail-open", "a complete ClientHello left waiting for more bytes")]
            return []
        if outcome != "allow":
            return [Finding("fail-open", f"unexpected outcome {outcome}")]
        out: list[Finding] = []
        if server == SERVERS[3]:
            out.append(Finding("fail-open", f"server {server[0]} is in a blocked network, yet allowed"))
        hello = self._parse(payload)
        if hello is not None and hello.sni is not None:
            hit = reference_blocked_name(hello.sni)
            if hit:
                out.append(Finding("fail-open", f"SNI {hello.sni!r} allowed: {hit}"))
        if not ref.strict:
            # Framing a conforming server refuses (an odd cipher-suites length, extension lengths that
            # disagree, ...), which mitmproxy's lenient parser may read otherwise than the RFC layout
            # does (it found no server_name where the layout has one): malformed, never allowed.
            out.append(Finding("fail-open", f"a malformed ClientHello was allowed (server_name entries by the RFC "
                                            f"layout: {list(ref.names)[:3]!r}; mitmproxy's SNI "
                                            f"{None if hello is None else hello.sni!r})"))
            return out
        for name_type, raw in ref.names:
            hit = reference_blocked_name(raw.decode("utf-8", "surrogateescape"))
            if hit:
                out.append(Finding("fail-open", f"server_name entry {raw!r} (type {name_type}) allowed: {hit}"))
        unreadable = hello is None or hello.sni is None
        if ref.sni_exts and (unreadable or ref.sni_exts > 1 or len(ref.names) != 1 or ref.names[0][0] != 0):
            out.append(Finding("fail-open", f"a server_name extension geoblock could not judge exactly was allowed "
                                            f"({ref.sni_exts} extension(s), entries {list(ref.names)[:3]!r}, "
                                            f"mitmproxy's SNI {None if hello is None else hello.sni!r})"))
        return out

    def seeds(self) -> list[bytes]:
        out: list[bytes] = []
        hellos = [
            ("binance.com", ()), ("API.Binance.COM.", ()), ("api.binance.com", ("h2", "http/1.1")),
            ("okx.com", ()), ("www.okx.com", ("http/1.1",)), ("xn--bcher-kva.example", ()),
            ("xn--binance-xyz.com", ()), ("bücher.example", ()), ("example.org", ()), ("allowed.test", ("h2",)),
            (None, ()), (None, ("h2",)), ("127.0.0.1", ()), ("notbinance.com", ()),
        ]
        for i, (sni, alpn) in enumerate(hellos):
            sni_wire = sni.encode("idna").decode() if sni and not sni.isascii() else sni
            data = client_hello(sni_wire, alpn)
            out.append(bytes([i & 3]) + data)
            if i < 4:
                out.append(bytes([(i + 1) & 3]) + data[: 5 + i * 20])  # a split prefix: waits
                # the same hello in two records
                hs = data[5:]
                out.append(bytes([1]) + handshake_records(hs, [len(hs) // 2]))
        # hand-built: several names, several extensions, names mitmproxy cannot read
        for exts in ([sni_ext([b"binance.com", b"ok.test"])], [sni_ext([b"ok.test"]), sni_ext([b"binance.com"])],
                     [sni_ext([b"xn--a.binance.com"])], [sni_ext([b"a" * 64 + b".binance.com"])],
                     [sni_ext([b"binance.com\x00"])], [sni_ext([b"binance.com"], name_type=1)],
                     [tls_ext(0xFE0D, b"\x00" * 8), sni_ext([b"public.example"])], [tls_ext(0, b"")]):
            out.append(bytes([1]) + handshake_records(handshake_message(client_hello_body(exts))))
        # structured inputs
        for k in range(12):
            out.append(bytes([4 | (k & 3)]) + bytes((k * 37 + j * 11) & 0xFF for j in range(48)))
        return out


# ----------------------------------------------------------------------------------------------
# host


class HostTarget(Target):
    """First byte: bits 0-5, for each of request target, Host, SNI, 2 bits: absent, fuzz text,
    spelled name, address form."""

    name = "host"

    def setup(self) -> None:
        from geoblock.core import decide as decide_mod
        from geoblock.engine import Engine
        from geoblock.enrich.geo import Geo
        from geoblock.core.names import InvalidHost
        from geoblock.mitm.observe import InvalidField, http_target
        from geoblock.core.ruleset import Ruleset

        work = workdir()
        self.rs = Ruleset.load(str(work / "rules"))
        self.geo = Geo(str(work / "GeoLite2-Country.mmdb"), str(work / "GeoLite2-ASN.mmdb"))
        self.engine = Engine(self.rs, self.geo)  # the proxy's own judgement: GeoIP, then the decision
        self.Facts, self.decide = decide_mod.Facts, decide_mod.decide
        self.http_target, self.InvalidField, self.InvalidHost = http_target, InvalidField, InvalidHost

    @staticmethod
    def address_form(p: Provider) -> str:
        v4 = ipaddress.IPv4Address(p.pick(("127.0.0.5", "203.0.113.7", "127.0.0.1", "198.51.100.1")))
        n = int(v4)
        how = p.int(0, 9)
        if how == 0:
            text = str(v4)
        elif how == 1:
            text = str(n)
        elif how == 2:
            text = hex(n)
        elif how == 3:
            text = ".".join(oct(b).replace("0o", "0") for b in v4.packed)
        elif how == 4:
            text = f"{v4.packed[0]}.{n & 0xFFFFFF}"
        elif how == 5:
            text = f"[::ffff:{v4}]"
        elif how == 6:
            text = f"[2001:db8:bad::{p.int(0, 0xFFFF):x}]"
        elif how == 7:
            text = f"::ffff:{n >> 16:x}:{n & 0xFFFF:x}"
        elif how == 8:
            text = str(v4).replace(".", p.pick(_CONFUSABLE_DOTS))
        else:
            text = "".join(chr(ord(c) + 0xFEE0) if c.isdigit() else c for c in str(v4))
        if p.chance(80):
            text += f":{p.int(0, 70000)}"
        if p.chance(30):
            text += "."
        return text

    def fields(self, data: bytes) -> tuple[str | None, str | None, str | None]:
        if not data:
            return None, None, None
        kinds = data[0]
        p = Provider(data[1:])
        out: list[str | None] = []
        for i in range(3):
            kind = (kinds >> (2 * i)) & 3
            if kind == 0:
                out.append(None)
            elif kind == 1:
                raw = p.chunk(40)
                out.append(raw.decode("utf-8", "surrogateescape") if p.chance(200) else raw.decode("latin-1"))
            elif kind == 2:
                text = spelled_name(p)
                if p.chance(60):
                    text += f":{p.int(0, 70000)}"
                if p.chance(20):
                    text = p.pick(("user@", "binance.com@", " ", "\t")) + text
                out.append(text)
            else:
                out.append(self.address_form(p))
        return out[0], out[1], out[2]

    def one(self, data: bytes) -> list[Finding]:
        request_host, host_header, sni = self.fields(data)
        try:
            target = self.http_target(request_host, host_header, sni)
        except self.InvalidField as exc:
            if not isinstance(exc.cause, self.InvalidHost) or not exc.field:
                return [Finding("crash", f"InvalidField without its cause or field: {exc!r}")]
            return []  # judged by on_error (block by default)
        except Exception as exc:  # noqa: BLE001
            return [Finding("crash", f"http_target({request_host!r}, {host_header!r}, {sni!r}) raised "
                                     f"{type(exc).__name__}: {exc}")]
        try:
            facts = self.Facts("http", names=target.names, server_ip=target.target_ip, mismatch=target.mismatch)
            verdict = self.engine.judge(facts)
        except Exception as exc:  # noqa: BLE001
            return [Finding("crash", f"decide on {target!r} raised {type(exc).__name__}: {exc}")]
        if verdict.action == "block":
            return []
        out = []
        for field, value in (("request target", request_host), ("Host", host_header), ("SNI", sni)):
            if not value:
                continue
            host, addrs = reference_host(value)
            hit = reference_blocked_name(host)
            if hit:
                out.append(Finding("fail-open", f"{field} {value!r} got {verdict.action}: {hit} (geoblock's names "
                                                f"{target.names})"))
            for addr in addrs if field == "request target" else ():  # the address dialled
                if blocked_address(addr):
                    out.append(Finding("fail-open", f"{field} {value!r} got {verdict.action}: it spells {addr}, in a "
                                                    f"blocked network"))
        return out

    def seeds(self) -> list[bytes]:
        out = []
        texts = [
            (b"binance.com", b"binance.com:443", b""), (b"127.0.0.1", b"API.Binance.COM.", b""),
            (b"example.org", b"example.org", b"binance.com"), (b"2130706437", b"", b""),
            (b"0x7f000005", b"[::ffff:127.0.0.5]:80", b""), (b"xn--bcher-kva.example", b"b\xc3\xbccher.example", b""),
            (b"\xef\xbd\x82inance.com", b"okx\xe3\x80\x82com", b""), (b"user@binance.com", b"binance.com.:80", b""),
            (b"[2001:db8:bad::1]", b"203.0.113.9", b"allowed.test"),
        ]
        for r, h, s in texts:
            kinds = (1 if r else 0) | ((1 if h else 0) << 2) | ((1 if s else 0) << 4)
            body = b""
            for t in (r, h, s):
                if t:
                    body += bytes([len(t), 0]) + t
            out.append(bytes([kinds]) + body)
        for k in range(24):
            kinds = (k * 53 + 7) & 0x3F
            out.append(bytes([kinds]) + bytes((k * 29 + j * 7) & 0xFF for j in range(40)))
        return out


# ----------------------------------------------------------------------------------------------
# rules


_SIMPLE_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,40}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,40}[a-z0-9])?)*\Z")


class RulesTarget(Target):
    """First byte: bit 0 set = the rest is policy.yaml next to the shipped crypto list; else a rule
    file loaded alone."""

    name = "rules"

    def setup(self) -> None:
        from geoblock.core.decide import Facts, decide
        from geoblock.core.names import normalize_host
        from geoblock.core.rules import RuleError
        from geoblock.core.ruleset import Ruleset

        work = workdir()
        self.Facts, self.decide, self.normalize_host = Facts, decide, normalize_host
        self.RuleError, self.Ruleset = RuleError, Ruleset
        self.single = work / "single"
        self.single.mkdir(exist_ok=True)
        self.with_policy = work / "with-policy"
        self.with_policy.mkdir(exist_ok=True)
        shutil.copy(SHIPPED_RULES / "crypto-exchanges.yaml", self.with_policy / "crypto-exchanges.yaml")
        shutil.copytree(SHIPPED_RULES / "lists", self.with_policy / "lists", dirs_exist_ok=True)

    def one(self, data: bytes) -> list[Finding]:
        as_policy = bool(data[:1]) and bool(data[0] & 1)
        text_bytes = data[1:]
        if as_policy:
            path, source = self.with_policy / "policy.yaml", self.with_policy
        else:
            path = source = self.single / "fuzz.yaml"
        path.write_bytes(text_bytes)
        try:
            rs = self.Ruleset.load(str(source))
        except self.RuleError as exc:
            return self.judge_error(exc, source, path, text_bytes)
        except Exception as exc:  # noqa: BLE001
            return [Finding("crash", f"loading {'policy' if as_policy else 'rule'} file raised {type(exc).__name__}: {exc}")]
        try:
            return self.judge_loaded(rs, text_bytes, as_policy)
        except Exception as exc:  # noqa: BLE001
            return [Finding("crash", f"judging a loaded ruleset raised {type(exc).__name__}: {exc}")]

    def judge_error(self, exc: Any, source: Path, path: Path, text_bytes: bytes) -> list[Finding]:
        files = {str(p) for p in source.glob("*.yaml")} if source.is_dir() else {str(source)}
        message = str(exc)
        if exc.path not in files or not message.startswith(exc.path):
            return [Finding("crash", f"RuleError does not name a rule file: {message!r}")]
        if exc.path != str(path):
            return []  # the shipped file, named with its own line (a clash with it)
        lines = _yaml_lines(text_bytes)
        if exc.line is not None:
            # libyaml puts an error at the end of a file without a final line break one line further on
            if not 1 <= exc.line <= lines + 1 or f"{exc.path}:{exc.line}: " not in message:
                return [Finding("crash", f"RuleError names line {exc.line} of a {lines}-line file: {message!r}")]
            return []
        if exc.message.startswith("bad YAML"):
            where = _yaml_position(text_bytes)
            if where is not None:
                return [Finding("crash", f"the YAML parser gives line {where} but the error names none: {message!r}")]
            return []
        if exc.message.startswith(("no such", "no rule files", "cannot read")):
            return []
        return [Finding("crash", f"RuleError without a line: {message!r}")]

    def judge_loaded(self, rs: Any, text_bytes: bytes, as_policy: bool) -> list[Finding]:
        try:
            data = yaml.safe_load(text_bytes.decode("utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError, ValueError, TypeError, RecursionError):
            return []  # the reference loader cannot read it: nothing simple to compare with
        if not isinstance(data, dict):
            return []
        out: list[Finding] = []
        rules = data.get("rules") if isinstance(data.get("rules"), list) else []
        any_allow = any(isinstance(r, dict) and r.get("action") == "allow" for r in rules)
        policy = rs.policy
        for key in ("default", "unknown_country", "on_error", "ech", "name_mismatch"):
            want = data.get(key)
            if isinstance(want, str) and getattr(policy, key) != want:
                out.append(Finding("fail-open", f"{key}: {want} in the file, {getattr(policy, key)} loaded"))
        homes = data.get("home_countries")
        if isinstance(homes, list) and all(isinstance(c, str) for c in homes):
            if set(policy.home_countries) != {c.upper() for c in homes}:
                out.append(Finding("fail-open", f"home_countries {homes} in the file, {sorted(policy.home_countries)} loaded"))
        if any_allow:
            return out
        checks: list[tuple[str, str]] = []  # (name, why it must be blocked)
        if as_policy:
            checks += [("binance.com", "the shipped list"), ("api.okx.com", "the shipped list")]
        if data.get("default") == "block":
            checks.append(("unlisted-name.example", "default: block"))
        for rule in rules:
            if not isinstance(rule, dict) or rule.get("action") != "block":
                continue
            if set(rule) - {"id", "action", "description", "domains", "patterns"}:
                continue  # conditions on the server or client: not an obvious check
            domains = rule.get("domains")
            domains = [domains] if isinstance(domains, str) else domains if isinstance(domains, list) else []
            for d in domains:
                if not isinstance(d, str):
                    continue
                d = d.strip()
                if d.startswith("="):
                    names = [d[1:]]
                elif d.startswith("*."):
                    names = ["sub." + d[2:]]
                else:
                    names = [d, "sub." + d]
                checks += [(n.lower().removesuffix("."), f"domain {d!r} of rule {rule.get('id')!r}") for n in names]
            patterns = rule.get("patterns")
            patterns = [patterns] if isinstance(patterns, str) else patterns if isinstance(patterns, list) else []
            for pat in patterns:
                if isinstance(pat, str):
                    checks.append((pat.strip().lower().replace("*", "x").replace("?", "y"),
                                   f"pattern {pat!r} of rule {rule.get('id')!r}"))
        for name, why in checks:
            if not _SIMPLE_NAME.match(name) or len(name) > 200:
                continue
            try:
                if self.normalize_host(name) != name:
                    continue  # e.g. an address form: not a name
            except ValueError:
                continue
            verdict = self.decide(self.Facts("tls", names=(name,)), rs)
            if verdict.action != "block":
                out.append(Finding("fail-open", f"{name} must be blocked ({why}) but gets {verdict.action}"))
        return out

    def seeds(self) -> list[bytes]:
        out = [b"\x00" + (SHIPPED_RULES / "review.yaml").read_bytes(),
               b"\x01" + (SHIPPED_RULES / "policy.yaml").read_bytes(),
               b"\x00" + (REPO / "tests" / "rules" / "extra.yaml").read_bytes(),
               b"\x00" + (FUZZ_RULES / "networks.yaml").read_bytes()]
        head = (SHIPPED_RULES / "crypto-exchanges.yaml").read_text().splitlines()
        out.append(b"\x00" + "\n".join(head[:20]).encode())
        texts = [
            "rules:\n  - id: a\n    action: block\n    domains: [binance.com, '=x.example', '*.y.example']\n",
            "rules:\n  - id: a\n    action: block\n    domains: binance.com\n  - id: a\n    action: log\n    domains: [b.example]\n",
            "rules:\n  - id: p\n    action: block\n    patterns: ['*coin*', 'b?t.example']\n",
            "rules:\n  - id: n\n    action: block\n    networks: [10.0.0.0/8, '2001:db8::/32', '::ffff:1.2.3.0/120']\n    clients: [192.0.2.0/24]\n",
            "rules:\n  - id: c\n    action: log\n    countries: [SG, us]\n    asns: [AS13335, 64500]\n    offshore: true\n",
            "rules:\n  - id: u\n    action: block\n    domains: [bücher.example, xn--bcher-kva.example, 'ＢＩＮＡＮＣＥ.com']\n",
            "rules:\n  - id: bad\n    action: blok\n    domains: [x..y]\n",
            "rules:\n  - {id: f, action: block, domains: [a.example], extra: 1}\n",
            "rules: [\n", "rules:\n  - id: x\n\taction: block\n", "rules: &a [*a]\n", "? [a]\n: b\n",
            "rules:\n  - id: x\n    action: allow\n    domains: [binance.com]\n",
        ]
        out += [b"\x00" + t.encode() for t in texts]
        policies = [
            "home_countries: [DE, sg]\ndefault: block\nunknown_country: block\non_error: allow\n",
            "default: log\nech: block\nname_mismatch: allow\n", "on_error: on\n", "home_countries: []\n",
            "default: allow\ndefault: block\n", "home_countries: DE\nrules:\n  - id: x\n    action: block\n    domains: [okx.com]\n",
            "home_countries: [XX]\n", "\xff\xfe", "default: !!binary aGVsbG8=\n",
        ]
        out += [b"\x01" + t.encode("utf-8", "surrogateescape") for t in policies]
        out.append(b"\x01\xff\xfedefault: block\n")
        return out


# ----------------------------------------------------------------------------------------------
# lists


_HOSTS_SELF = {"localhost", "localhost.localdomain", "local", "broadcasthost", "0.0.0.0"}


def reference_list_names(text: str) -> list[str] | None:
    """The names a list file's lines put in force, read without geoblock's code: plain `name [...]`,
    hosts `address name...`, adblock `||name^`; `#` after whitespace or at the start begins a comment.
    Only names a simple reading is sure of (lower-case ASCII with a dot, no notation); None when the file
    declares a format (then lines are read another way)."""
    names: list[str] = []
    for raw in re.split(r"\r\n|\r|\n", text):
        if re.match(r"\s*#\s*format\s*:", raw):
            return None
        words: list[str] = []
        for word in raw.split():
            if word.startswith("#"):
                break
            words.append(word)
        if not words:
            continue
        first = words[0]
        if first.startswith("||") and first.endswith("^"):
            candidates = [first[2:-1]]
        elif re.fullmatch(r"[0-9.]+|[0-9a-f:]+", first) and len(words) > 1 and ("." in first or ":" in first):
            candidates = [w for w in words[1:] if w not in _HOSTS_SELF]
        else:
            candidates = [first]
        names += [c for c in candidates if _SIMPLE_NAME.match(c) and "." in c and len(c) < 200]
    return names


class ListsTarget(Target):
    """The input is a list file named by a block rule (`domains_from`). It loads, or is refused with a
    RuleError naming the list file (or the rule file) and a line within it; and once loaded, every name
    a simple reading of its lines finds is blocked, with its subdomains."""

    name = "lists"

    def setup(self) -> None:
        from geoblock.core.decide import Facts, decide
        from geoblock.core.rules import RuleError
        from geoblock.core.ruleset import Ruleset

        self.Facts, self.decide, self.RuleError, self.Ruleset = Facts, decide, RuleError, Ruleset
        self.rules = workdir() / "list-rules"
        (self.rules / "lists").mkdir(parents=True, exist_ok=True)
        (self.rules / "r.yaml").write_text("rules:\n  - {id: listed, action: block, domains_from: [lists/l.txt]}\n")
        self.path = self.rules / "lists" / "l.txt"

    def one(self, data: bytes) -> list[Finding]:
        self.path.write_bytes(data)
        try:
            rs = self.Ruleset.load(str(self.rules))
        except self.RuleError as exc:
            if exc.path != str(self.path):
                return [Finding("crash", f"RuleError names another file: {exc}")]
            lines = len(re.split(rb"\r\n|\r|\n", data))
            if exc.line is None and not exc.message.startswith(("the list holds no entries", "bad CSV")):
                return [Finding("crash", f"RuleError without a line: {exc}")]
            if exc.line is not None and not 1 <= exc.line <= lines:
                return [Finding("crash", f"RuleError line {exc.line} outside the file's {lines} lines: {exc}")]
            return []
        except Exception as exc:  # noqa: BLE001
            return [Finding("crash", f"loading a list raised {type(exc).__name__}: {exc}")]
        return self.judge_loaded(rs, data)

    def judge_loaded(self, rs: Any, data: bytes) -> list[Finding]:
        """Fail-opens of a loaded ruleset against the reference reading of the list's bytes."""
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            return [Finding("crash", "a list that is not UTF-8 was loaded")]
        names = reference_list_names(text)
        out: list[Finding] = []
        for name in names or ():
            for asked in (name, "sub." + name):
                verdict = self.decide(self.Facts("tls", names=(asked,)), rs)
                if verdict.action != "block":
                    out.append(Finding("fail-open", f"{asked} must be blocked (line of {name!r}) but gets "
                                                    f"{verdict.action}"))
        return out

    def seeds(self) -> list[bytes]:
        texts = [
            (SHIPPED_RULES / "lists" / "exchanges.txt").read_text(),
            "binance.com  Binance\n=www.okx.com OKX\n*.bitfinex.com\n.kraken.com Kraken # comment\n",
            "0.0.0.0 localhost\n0.0.0.0 binance.com www.binance.com\n127.0.0.1\tokx.com\n",
            "[Adblock Plus 2.0]\n! c\n||bybit.com^\n||kucoin.com^$important\n@@||x.example^\n",
            "# format: hosts\n0.0.0.0 a.example\nb.example\n",
            "# format: adblock\n||a.example^\n",
            "# source: https://x.example/\n# retrieved: 2026-11-30\n# platform: P\na.example\n",
            "binance.com okx.com\n", "Binance binance.com\n", "Service unavailable\n",
            "bücher.example  Bücher\nＢＩＮＡＮＣＥ.com\nxn--bcher-kva.example\n",
            "a.example\r\nb.example\r\n", "\ufeffa.example\n", "a.example\x00\n", "a.example#x\n",
            "https://www.binance.com/en\n", "203.0.113.9\n", "bin*ance.com\n", "a..example\n",
            "a.example\nA.EXAMPLE.\n", "x" * 300 + ".example\n", "\n\n# only comments\n",
            "a.example " + "P" * 120 + "\n", "okx.com\u2028bybit.com\n", "okx.com\x85bybit.com\n",
        ]
        out = [t.encode("utf-8") for t in texts]
        out.append(b"a.example\n\xff\xfe\n")
        return out


_YAML_BREAK = re.compile("\r\n|\r|\n|\x85|\u2028|\u2029")


def _yaml_lines(text_bytes: bytes) -> int:
    """Lines as YAML counts them (CR, LF, CRLF, NEL, LS and PS end a line); as bytes when not UTF-8."""
    try:
        breaks = len(_YAML_BREAK.findall(text_bytes.decode("utf-8")))
    except UnicodeDecodeError:
        breaks = 0
    return max(breaks, text_bytes.count(b"\n")) + 1


def _yaml_position(text_bytes: bytes) -> int | None:
    """The line the YAML parser itself gives for its error, if any (pure-Python parser, as reference)."""
    try:
        text = text_bytes.decode("utf-8")
    except UnicodeDecodeError:
        return None
    try:
        yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        return mark.line + 1 if mark is not None else None
    except yaml.reader.ReaderError as exc:
        return text[: exc.position].count("\n") + 1
    except (yaml.YAMLError, RecursionError):
        return None
    return None


TARGET_CLASSES: dict[str, Callable[[], Target]] = {
    "clienthello": ClientHelloTarget,
    "host": HostTarget,
    "rules": RulesTarget,
    "lists": ListsTarget,
}


def make_target(name: str) -> Target:
    target = TARGET_CLASSES[name]()
    target.setup()
    return target


def input_name(kind: str, data: bytes) -> str:
    return f"{'crash' if kind == 'crash' else 'failopen'}-{hashlib.sha1(data).hexdigest()}"
