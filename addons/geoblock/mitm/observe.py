"""Observation: turning what a flow shows (raw strings) into normalised names and addresses.

Shared by the addon's hooks and the offline tools, so a recorded flow is judged exactly as a live one.
Pure functions; the ClientHello is read with mitmproxy's own TLS parser (client_hello_of).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, cast

from mitmproxy import connection, http
from mitmproxy.proxy.layers.tls import get_client_hello
from mitmproxy.tls import ClientHello

from geoblock.core.model import Facts, Stage
from geoblock.core.names import InvalidHost, IPAddress, as_written, normalize_host, normalize_ip
from geoblock.errors import GeoblockError


class InvalidField(GeoblockError, ValueError):
    """A field of a flow whose value is not a valid host; `field` says which (SNI, Host, ...), `cause` is
    the InvalidHost that says why. Also a ValueError (a bad value)."""

    def __init__(self, field: str, cause: InvalidHost) -> None:
        self.field = field
        self.cause = cause
        super().__init__(f"{field} {cause}")


@dataclass(frozen=True, slots=True)
class HttpTarget:
    names: tuple[str, ...]  # request target, Host, SNI: normalised, distinct, IP literals left out
    target_name: str | None  # the request target when it is a name (what mitmproxy resolves and dials)
    target_ip: IPAddress | None  # the request target when it is an IP literal
    mismatch: str | None = None  # "request target a ≠ Host b" / "SNI a ≠ Host b" when names differ


def http_target(request_host: str | None, host_header: str | None, sni: str | None,
                authority: str | None = None) -> HttpTarget:
    """Names and target of an HTTP request. Raises InvalidField.

    `authority` is the authority of an absolute-form request target (`uri_authority`): inside a tunnel
    mitmproxy dials the tunnel's server but forwards the absolute URI, and a server must route on it
    rather than on Host (RFC 9112, 3.2.2), so it is judged like the Host."""
    names: list[str] = []
    seen: list[tuple[str, str]] = []
    target_name: str | None = None
    target_ip: IPAddress | None = None
    for field, value in (("request target", request_host), ("URI authority", authority), ("Host", host_header),
                         ("SNI", sni)):
        if not value:
            continue
        try:
            host = normalize_host(value)
        except InvalidHost as exc:
            raise InvalidField(field, exc) from None
        if isinstance(host, str):
            seen.append((field, host))
            if host not in names:
                names.append(host)
            if field == "request target":
                target_name = host
        elif field == "request target":
            target_ip = host
    return HttpTarget(tuple(names), target_name, target_ip, mismatch_of(seen))


_ABSOLUTE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://([^/?#]*)")


def uri_authority(request: http.Request) -> str | None:
    """The authority of an absolute-form request target, or None.

    HTTP/1: mitmproxy parses an absolute-form target (RFC 9112 3.2.2) into `request.authority`. HTTP/2
    and 3: the authority is the `:authority` pseudo-header, which mitmproxy already gives as the Host;
    but a `:path` holding a whole URL (`https://binance.com/`) names a server too: mitmproxy forwards it
    as the request target, and an HTTP/1 server must route on it (RFC 9112 3.2.2)."""
    if getattr(request, "is_http2", False) or getattr(request, "is_http3", False):
        path = getattr(request, "path", "") or ""
        if path.startswith("/") or path == "*":
            return None
        match = _ABSOLUTE.match(path)
        return match.group(1) if match else None
    return getattr(request, "authority", None) or None


def mismatch_of(seen: list[tuple[str, str]]) -> str | None:
    """A sentence naming the first two fields whose names differ, or None."""
    for field, name in seen[1:]:
        if name != seen[0][1]:
            return f"{seen[0][0]} {seen[0][1]} ≠ {field} {name}"
    return None


def sni_problem(extensions: Iterable[tuple[int, bytes]], sni: str | None) -> InvalidHost | None:
    """Why the server_name extensions of a ClientHello cannot be judged, or None when they can.

    `sni` is mitmproxy's reading of them: None when the extension is absent, but also when its name is
    not a valid host (NUL, control or non-ASCII bytes, an empty or over-long label) or it lists several
    names. A server may still read a name from such an extension, so a ClientHello carrying one must not
    be judged as one without SNI. Several server_name extensions are refused too (TLS forbids repeating
    an extension; mitmproxy reads the first valid one, a server may read another).
    """
    bodies = [body for ext_type, body in extensions if ext_type == 0]
    if not bodies:
        return None
    shown = "; ".join(", ".join(n.decode("utf-8", "backslashreplace") for n in _server_names(b)) or repr(b)
                      for b in bodies)
    if len(bodies) > 1:
        return InvalidHost(shown, "the ClientHello has more than one server_name extension")
    if sni is None:
        names = _server_names(bodies[0])
        why = ("the server_name extension lists several names" if len(names) > 1
               else "the server_name extension does not hold a valid host name")
        return InvalidHost(shown, why)
    return None


def client_hello_problem(message: bytes) -> str | None:
    """Why a ClientHello handshake message (type, length, body) is not framed as RFC 8446 lays it out,
    or None when every length in it is consistent.

    mitmproxy's parser is lenient: it reads extensions to the end of the message whatever their declared
    length, a cipher-suite list of odd length, a server_name list of any declared length. On a malformed
    message it may so read no server_name, or another one, where a server reading the declared lengths
    finds one. Conforming servers refuse such messages; geoblock refuses them rather than judge a name
    it may have misread.
    """
    if len(message) < 4 or message[0] != 1:
        return "not a ClientHello message"
    body = message[4:]
    p = 2 + 32  # version, random
    if len(body) < p + 1 or body[p] > 32:
        return "bad session id"
    p += 1 + body[p]
    if len(body) < p + 2:
        return "truncated before the cipher suites"
    n = int.from_bytes(body[p:p + 2], "big")
    if n < 2 or n % 2 or len(body) < p + 2 + n:
        return "bad cipher-suite list length"
    p += 2 + n
    if len(body) < p + 1 or body[p] < 1 or len(body) < p + 1 + body[p]:
        return "bad compression-method list"
    p += 1 + body[p]
    if p == len(body):
        return None  # no extensions
    if len(body) < p + 2 or int.from_bytes(body[p:p + 2], "big") != len(body) - p - 2:
        return "the extensions' length does not match the message"
    p += 2
    while p < len(body):
        if len(body) < p + 4:
            return "truncated extension header"
        ext_type, size = int.from_bytes(body[p:p + 2], "big"), int.from_bytes(body[p + 2:p + 4], "big")
        ext = body[p + 4:p + 4 + size]
        if len(ext) != size:
            return "an extension runs past the message"
        if ext_type == 0:
            q = 2
            while q + 3 <= len(ext):
                q += 3 + int.from_bytes(ext[q + 1:q + 3], "big")
            if len(ext) < 2 or int.from_bytes(ext[:2], "big") != len(ext) - 2 or q != len(ext):
                return "the server_name extension's lengths do not match"
        p += 4 + size
    return None


def _server_names(body: bytes) -> list[bytes]:
    """The names in a server_name extension's body (as far as it can be read)."""
    names = []
    p = 2
    while p + 3 <= len(body):
        n = int.from_bytes(body[p + 1:p + 3], "big")
        names.append(body[p + 3:p + 3 + n])
        p += 3 + n
    return names


# The first bytes of a stream, as far as geoblock reads them before a layer is chosen (hold.HoldFirstBytes).
MORE = "more"  # they may still become an HTTP request line: wait for more
LINE = "line"  # a whole first line has come (after any leading empty lines): a request line or not
OTHER = "other"  # they cannot be the start of an HTTP request

_EMPTY_LINE_BYTES = b"\r\n"
_LEADING_WHITESPACE = b"\r\n \t\x0b\x0c"
# Bytes a request line (method, target, version; RFC 9112 section 3) may hold besides its final CRLF: no
# control character but horizontal tab, and no DEL. Non-ASCII bytes are let through: lenient servers
# accept raw UTF-8 in a request target.
_NOT_IN_A_REQUEST_LINE = bytes(c for c in range(32) if c not in (9, 13)) + b"\x7f"


# A request line as lenient servers read it: white space, a method of visible characters, white space, a
# target, white space and an HTTP version (RFC 9112 section 3 with the leniency of section 3 note).
_REQUEST_LINE = re.compile(rb"[ \t\x0b\x0c]*[\x21-\x7e]+[ \t\x0b\x0c]+[^\r\n]*?[ \t]HTTP/\d", re.IGNORECASE)


def shows_http_version(data: bytes) -> bool:
    """Whether the first line of `data` (after any empty lines) is a request line: a method, a target and
    an HTTP version token (`HTTP/1.1`, RFC 9112 section 2.3), whatever the method or the spacing.
    mitmproxy's own guess wants a method of 3+ letters and a space before the first LF; lenient servers
    accept more (`X / HTTP/1.1`, `M-SEARCH`, a tab or a leading space), so geoblock reads any such stream
    as HTTP."""
    rest = strip_empty_lines(data)
    end = rest.find(b"\n")
    return _REQUEST_LINE.match(rest if end < 0 else rest[:end]) is not None


def strip_empty_lines(data: bytes) -> bytes:
    """`data` without the empty lines (CRLF or bare LF) before its first line. RFC 9112 section 2.2: a
    server that is receiving a request SHOULD ignore at least one empty line received before the
    request-line, and common servers ignore any number."""
    return data.lstrip(_EMPTY_LINE_BYTES)


def request_line_state(data: bytes) -> str:
    """What the first bytes of a stream say about an HTTP/1 request line: MORE, LINE or OTHER.

    - LINE: after any leading empty lines, a whole first line (up to LF) has come;
    - MORE: nothing but empty lines (or white space) so far, or the start of a line that can still become
      a request line (a letter first, as every method is a token of letters in practice, then no control
      bytes);
    - OTHER: anything else (binary protocols, TLS records, a server greeting's absence is not read).
    Pure: `data` is bytes, nothing is consumed."""
    rest = data.lstrip(_LEADING_WHITESPACE)  # lenient servers skip spaces and tabs before the method too
    if not rest:
        return MORE
    if not (65 <= rest[0] <= 90 or 97 <= rest[0] <= 122):
        return OTHER
    end = rest.find(b"\n")
    line = rest if end < 0 else rest[:end]
    if len(line.translate(None, _NOT_IN_A_REQUEST_LINE)) != len(line):
        return OTHER
    return MORE if end < 0 else LINE


def peer_ip(peername: connection.Address | None) -> IPAddress | None:
    """The IP of a (host, port, ...) peer address, or None (no address, or not an IP address)."""
    if peername is None:
        return None
    try:
        return normalize_ip(peername[0])
    except (InvalidHost, TypeError, IndexError, ValueError):
        return None


def client_ip(conn: connection.Connection | None) -> IPAddress | None:
    """The address of a client connection (anything with a `peername`), or None (also for no connection).
    An IPv6 client address that carries an IPv4 address stays the IPv6 address it connected from
    (names.as_written): `clients` rules and the record see the address as it came."""
    addr = peer_ip(getattr(conn, "peername", None))
    return None if addr is None else as_written(addr)


def port_of(address: connection.Address | None) -> int | None:
    """The port of a (host, port, ...) address, or None (no address)."""
    if not address:
        return None
    port = address[1]
    return port if isinstance(port, int) else None


def client_facts(stage: Stage, conn: connection.Client | None, server_port: int | None = None) -> Facts:
    """Facts for `stage` with what the client connection `conn` shows: its address (`client_ip`), its port
    and mitmproxy's id of it (`connection_id`: a UUID, the same for every flow and stage of the
    connection); `server_port`: the port of the server the flow goes to, where known. For no connection
    (None): none of these."""
    if conn is None:
        return Facts(stage, server_port=server_port)
    return Facts(stage, client_ip=client_ip(conn), client_port=port_of(conn.peername), connection_id=conn.id,
                 server_port=server_port)


def server_port_of(obj: Any) -> int | None:
    """The port of the server a hook's object goes to, where it shows one: an HTTP flow's request port, the
    server address of a layer's context or of hook data (server_connect, ClientHelloData); else None."""
    request = getattr(obj, "request", None)
    if request is not None:
        port = getattr(request, "port", None)  # a DNS flow's request (a DNS message) has none
        return port if isinstance(port, int) else None
    server = getattr(obj, "server", None)
    if server is None and (context := getattr(obj, "context", None)) is not None:
        server = context.server
    return port_of(getattr(server, "address", None))


# ------------------------------------------------------------------ Encrypted Client Hello

TLS_EXT_ECH = 0xFE0D  # encrypted_client_hello, RFC 9849 section 5 (drafts 13 and later)
# The earlier code points of the same mechanism. Encrypted SNI (draft-ietf-tls-esni-00 to -06) used
# encrypted_server_name 0xffce; the ECH drafts 8 to 12 used 0xfe08 to 0xfe0c, one per draft. No client
# sends them as a placeholder: a ClientHello with one of them means to hide its name.
TLS_EXT_ESNI = 0xFFCE
TLS_EXT_ECH_DRAFTS = frozenset(range(0xFE08, 0xFE0D))


@dataclass(frozen=True, slots=True)
class EchSeen:
    """An encrypted-SNI extension in a ClientHello, and whether it counts as hiding a name.

    `extension` is the TLS extension type seen (0xfe0d, 0xffce or 0xfe08..0xfe0c); `hides_name` is
    False for a placeholder (GREASE ECH, RFC 9849 section 6.2): 0xfe0d beside an ordinary outer SNI, a
    name that fronts no known ECH service; `why` is a phrase for the decision's reason."""

    extension: int
    hides_name: bool
    why: str


def ech_of(extensions: Iterable[tuple[int, bytes]], sni: str | None,
           fronts_ech: Callable[[str], bool]) -> EchSeen | None:
    """Whether a ClientHello uses encrypted SNI, and whether that counts as a hidden name; None when
    no such extension is present.

    `extensions` are the ClientHello's (type, body) pairs; `sni` its outer server name, normalised, or
    None when it has none (or it is an address); `fronts_ech(name)` says whether a name is a known ECH
    public name (the configured `ech_public_names`, and public names geoblock saw in ECH configurations
    in DNS answers).

    The rule, for real traffic: Chromium (and Firefox with ECH on) sends 0xfe0d on every connection,
    with the real name as SNI, when the site publishes no ECH configuration ("GREASE ECH", RFC 9849
    section 6.2); the extension then hides nothing, and cannot be told from a real one by its bytes.
    A real ECH ClientHelloOuter carries the configuration's public_name as SNI (RFC 9849 section 6.1),
    so 0xfe0d counts when the outer SNI is absent or is a name that fronts ECH. The older code points
    (0xffce, 0xfe08..0xfe0c) always count."""
    types = {ext_type for ext_type, _ in extensions}
    old = sorted(types & (TLS_EXT_ECH_DRAFTS | {TLS_EXT_ESNI}))
    if old:
        kind = "Encrypted SNI" if old[0] == TLS_EXT_ESNI else "a draft of Encrypted Client Hello"
        return EchSeen(old[0], True, f"{kind} (extension 0x{old[0]:04x}), which no client sends as a placeholder")
    if TLS_EXT_ECH not in types:
        return None
    if sni is None:
        return EchSeen(TLS_EXT_ECH, True, "Encrypted Client Hello (extension 0xfe0d) without an outer SNI")
    if fronts_ech(sni):
        return EchSeen(TLS_EXT_ECH, True, f"Encrypted Client Hello (extension 0xfe0d) whose outer SNI {sni} "
                                          "is a public name that fronts ECH")
    return EchSeen(TLS_EXT_ECH, False, f"a placeholder Encrypted Client Hello (GREASE, extension 0xfe0d) "
                                       f"beside the ordinary SNI {sni}")


def name_under(name: str, domains: frozenset[str]) -> bool:
    """Whether `name` (normalised) is one of `domains` or below one of them."""
    while True:
        if name in domains:
            return True
        dot = name.find(".")
        if dot < 0:
            return False
        name = name[dot + 1:]


def ech_config_public_names(config_list: bytes) -> list[str]:
    """The public names in an ECHConfigList (the `ech` SvcParam of an HTTPS or SVCB record), as written.

    Layout (RFC 9849 section 4): ECHConfigList = ECHConfig<4..2^16-1>; ECHConfig = uint16 version,
    uint16 length, contents. For version 0xfe0d the contents are HpkeKeyConfig (uint8 config_id, uint16
    kem_id, public_key<1..2^16-1>, cipher_suites<4..2^16-4>), uint8 maximum_name_length,
    public_name<1..255>, extensions<0..2^16-1>. Configurations of other versions are skipped, as
    clients skip them. Raises ValueError when a length runs past its container."""
    if len(config_list) < 2 or int.from_bytes(config_list[:2], "big") != len(config_list) - 2:
        raise ValueError("the ECHConfigList's length does not match its data")
    names: list[str] = []
    p = 2
    while p < len(config_list):
        if p + 4 > len(config_list):
            raise ValueError("truncated ECHConfig header")
        version = int.from_bytes(config_list[p:p + 2], "big")
        size = int.from_bytes(config_list[p + 2:p + 4], "big")
        contents = config_list[p + 4:p + 4 + size]
        if len(contents) != size:
            raise ValueError("an ECHConfig runs past the list")
        p += 4 + size
        if version != TLS_EXT_ECH:
            continue
        q = 1 + 2  # config_id, kem_id
        for _ in range(2):  # public_key, cipher_suites
            if q + 2 > size:
                raise ValueError("truncated ECHConfig key configuration")
            q += 2 + int.from_bytes(contents[q:q + 2], "big")
        q += 1  # maximum_name_length
        if q + 1 > size:
            raise ValueError("truncated ECHConfig before its public_name")
        n = contents[q]
        name = contents[q + 1:q + 1 + n]
        if n == 0 or len(name) != n:
            raise ValueError("bad ECHConfig public_name length")
        names.append(name.decode("ascii", "backslashreplace"))
    return names


class MalformedClientHello(GeoblockError, ValueError):
    """First bytes that frame a TLS ClientHello but cannot be read as one; the message says how."""


def client_hello_of(data: bytes) -> tuple[ClientHello, bytes]:
    """The ClientHello of a connection's first bytes `data` (whole TLS records, as the hold passes them on):
    mitmproxy's parsed `tls.ClientHello` and the raw handshake message it was read from (reassembled from
    its records, `mitmproxy.proxy.layers.tls.get_client_hello`). Raises MalformedClientHello for one that
    is incomplete, that mitmproxy's parser refuses, or whose framing mitmproxy's lenient parser may have
    misread (client_hello_problem)."""
    try:
        raw = get_client_hello(data)
        if raw is None:
            raise ValueError("incomplete")
        hello = ClientHello(raw[4:])  # what parse_client_hello does, without reassembling twice
    except (EOFError, ValueError) as exc:
        raise MalformedClientHello(f"malformed TLS ClientHello ({exc or 'Invalid ClientHello'})") from None
    framing = client_hello_problem(raw)
    if framing is not None:
        raise MalformedClientHello(f"malformed TLS ClientHello ({framing})")
    return hello, raw


def client_of(obj: object) -> connection.Client | None:
    """The client connection of a hook's object (a flow, a layer choice, hook data, a client), or None."""
    for path in ("client_conn", "client"):
        if (conn := getattr(obj, path, None)) is not None:
            return conn  # a flow's client_conn, hook data's client
    context = getattr(obj, "context", None)
    if context is not None:
        return context.client  # a layer's context
    return cast("connection.Client", obj) if hasattr(obj, "peername") else None  # a client itself


def sni_name(sni: str | None) -> str | None:
    """The SNI of a TLS layer geoblock already judged, normalised, or None (absent, or an IP literal)."""
    if sni is None:
        return None
    try:
        name = normalize_host(sni)
    except InvalidHost:
        return None  # refused when its ClientHello was judged; never reaches here allowed
    return name if isinstance(name, str) else None
