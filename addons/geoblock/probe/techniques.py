"""The probe's techniques: one function per way of reaching a service, each making one try.

Each technique is a function `(target: Target, opts: Options) -> Try` listed in `TECHNIQUES` under its
name (docs/probe.md and the probe's JSON lines use the same names). A technique never raises for what the
network does: a refusal, a reset, a timeout or an answer is an outcome (`Try.outcome` / `Try.how`, the
vocabulary of the JSON lines: "blocked" how "tls-alert" | "http-451" | "connect-451" | "connect-refused" |
"nxdomain" | "sinkhole" | "dns-refused" | "reset" | "timeout" | "closed" | "dropped"; "reached" how
"handshake" | "server-hello" | "http-answer" | "dns-answer" | "udp-answer" | "doh-answer"; "failed" how
"error"; "not-applicable"). Only a bug raises.

Paths: with `Options.proxy` every TCP technique opens its stream with a CONNECT to the proxy (RFC 9110
section 9.3.6) to the service's address (connect-address), so the proxy judges the SNI or Host inside;
without it the probe connects directly and a transparent gateway on the path judges. Techniques that a
path cannot carry (UDP through an explicit proxy) say "not-applicable". Sends only what a technique needs:
one request line and Host, one ClientHello, one DNS question.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import random
import socket
import ssl
import struct
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver

from geoblock.errors import GeoblockError
from geoblock.probe import hello as th

TLS_ALERTS: dict[str, int] = {  # OpenSSL's reason names of received alerts -> the code (RFC 8446 section 6)
    "CLOSE_NOTIFY": 0, "UNEXPECTED_MESSAGE": 10, "BAD_RECORD_MAC": 20, "HANDSHAKE_FAILURE": 40,
    "BAD_CERTIFICATE": 42, "UNSUPPORTED_CERTIFICATE": 43, "CERTIFICATE_REVOKED": 44, "CERTIFICATE_EXPIRED": 45,
    "CERTIFICATE_UNKNOWN": 46, "ILLEGAL_PARAMETER": 47, "UNKNOWN_CA": 48, "ACCESS_DENIED": 49,
    "DECODE_ERROR": 50, "DECRYPT_ERROR": 51, "PROTOCOL_VERSION": 70, "INSUFFICIENT_SECURITY": 71,
    "INTERNAL_ERROR": 80, "INAPPROPRIATE_FALLBACK": 86, "USER_CANCELLED": 90, "MISSING_EXTENSION": 109,
    "UNSUPPORTED_EXTENSION": 110, "UNRECOGNIZED_NAME": 112, "NO_APPLICATION_PROTOCOL": 120,
}


def alert_name(code: int) -> str:
    """An alert's description name (RFC 8446 section 6: 49 -> "access_denied"), else its number."""
    return next((k.lower() for k, v in TLS_ALERTS.items() if v == code), str(code))


DEFAULT_DOH = ("https://1.1.1.1/dns-query", "https://8.8.8.8/dns-query", "https://9.9.9.9/dns-query")
DEFAULT_DOT = ("1.1.1.1", "8.8.8.8", "9.9.9.9")


@dataclass(frozen=True)
class Target:
    """One name to try: `name` as written in the list; `addresses` (IP strings) given with --resolve, else
    empty (resolved when a technique needs one); `expect` "blocked" | "reached"."""

    name: str
    addresses: tuple[str, ...] = ()
    expect: str = "blocked"


@dataclass
class Options:
    """How the tries are made. `proxy` ("host", port) or None (direct: a transparent gateway on the path);
    `timeout` seconds per network step; `ca` a PEM file of trusted CAs (None: the system's); `resolver`
    an IP for plain DNS (None: the system resolver); `sinkholes` addresses a blocking resolver answers with;
    `nat64_prefix` an IPv6 /96 prefix (RFC 6052 section 2.2) or None; `doh` URLs (RFC 8484); `dot`
    resolvers ("IP", port 853 (RFC 7858), or "IP:PORT"); `resolve` name -> addresses (--resolve);
    `tls_port` / `http_port`
    the services' ports (443 / 80)."""

    proxy: tuple[str, int] | None = None
    timeout: float = 5.0
    ca: str | None = None
    resolver: str | None = None
    sinkholes: frozenset[str] = frozenset()
    nat64_prefix: str | None = None
    doh: tuple[str, ...] = DEFAULT_DOH
    dot: tuple[str, ...] = DEFAULT_DOT
    resolve: dict[str, tuple[str, ...]] = field(default_factory=dict)
    tls_port: int = 443
    http_port: int = 80


@dataclass
class Try:
    """One try's result, the fields of a "try" JSON line that the technique knows (probe_schema.md):
    `outcome` "blocked" | "reached" | "failed" | "not-applicable"; `how` (see the module); `rule` the
    x-geoblock-rule of a 451; `http_status`; `tls_alert` (the alert's description code, RFC 8446
    section 6); `address` "ip:port" connected to; `sent_name` the exact spelling sent; `detail` one line;
    `duration_s` seconds (set by the runner)."""

    outcome: str
    how: str
    detail: str = ""
    rule: str | None = None
    http_status: int | None = None
    tls_alert: int | None = None
    address: str | None = None
    sent_name: str | None = None
    duration_s: float = 0.0


class Stop(GeoblockError):
    """A try ended before its goal: carries the finished `Try` (a refusal, a reset...). Caught by
    `attempt`, never seen outside this module."""

    def __init__(self, result: Try) -> None:
        super().__init__(result.detail)
        self.result = result


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# ------------------------------------------------------------------------------------------ network steps

def resolve(name: str, opts: Options) -> str:
    """An address of `name`: --resolve first, then DNS (the --resolver over UDP, else the system's).
    Raises Stop (failed) when there is none."""
    if name in opts.resolve:
        return opts.resolve[name][0]
    try:
        if opts.resolver:
            answer = dns.query.udp(dns.message.make_query(name, "A"), opts.resolver, timeout=opts.timeout)
            for rrset in answer.answer:
                for rdata in rrset:
                    if rdata.rdtype == dns.rdatatype.A:
                        return str(rdata)
            raise Stop(Try("failed", "error", f"no address for {name} (resolver {opts.resolver}: "
                           f"{dns.rcode.to_text(answer.rcode())}); give one with --resolve"))
        infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
        return str(infos[0][4][0])
    except (OSError, dns.exception.DNSException) as exc:
        raise Stop(Try("failed", "error", f"no address for {name} ({exc}); give one with --resolve")) from None


def network_failure(exc: BaseException, where: str) -> Try:
    """The outcome of a network error: reset, timeout, closed (an EOF), tls-alert; else failed."""
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return Try("blocked", "timeout", f"{where}: no answer within the timeout")
    if isinstance(exc, ConnectionResetError):
        return Try("blocked", "reset", f"{where}: connection reset")
    if isinstance(exc, (ssl.SSLEOFError, EOFError, BrokenPipeError, ConnectionAbortedError)):
        return Try("blocked", "closed", f"{where}: connection closed without an answer")
    if isinstance(exc, ssl.SSLError) and exc.reason and exc.reason.startswith(("TLSV1_ALERT_", "SSLV3_ALERT_")):
        reason = exc.reason.split("ALERT_", 1)[1]
        return Try("blocked", "tls-alert", f"{where}: TLS alert {reason.lower()}", tls_alert=TLS_ALERTS.get(reason))
    if isinstance(exc, ConnectionRefusedError):
        return Try("blocked", "reset", f"{where}: connection refused")
    return Try("failed", "error", f"{where}: {type(exc).__name__}: {exc}")


def read_head(sock: socket.socket, limit: int = 65536) -> bytes:
    """An HTTP answer's head, up to its blank line (or what came before the peer closed)."""
    head = b""
    while b"\r\n\r\n" not in head and len(head) < limit:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    return head


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    """(status code, headers lower-cased) of an HTTP/1.x answer head; ValueError when it is none."""
    lines = head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP answer: {lines[0][:80]!r}")
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return int(parts[1]), headers


# The answers to a CONNECT that refuse the destination: 451 Unavailable For Legal Reasons (RFC 7725, what
# geoblock answers) and 403 Forbidden (what Squid's http_access deny and most proxies answer). Any other
# failure (407 Proxy Authentication Required, 502 Bad Gateway, 503, 504) says the try was not made.
REFUSALS = frozenset({451, 403})
GATEWAY_ERRORS = frozenset({502, 503, 504})  # Bad Gateway, Service Unavailable, Gateway Timeout


def open_stream(host: str, port: int, opts: Options, authority: str | None = None) -> tuple[socket.socket, str]:
    """A TCP stream to host:port, through the proxy's CONNECT to `authority` (default host:port) when
    there is one: (socket with TCP_NODELAY and the timeout, "ip:port" of the destination). Raises Stop:
    blocked/connect-451 (a 451 to the CONNECT, with its rule), blocked/connect-refused (a 403),
    failed/error (another non-2xx: 407, 5xx), or the network failure."""
    where = authority or _hostport(host, port)
    try:
        if opts.proxy is None:
            sock = socket.create_connection((host, port), timeout=opts.timeout)
        else:
            sock = socket.create_connection(opts.proxy, timeout=opts.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(opts.timeout)
    except OSError as exc:
        if opts.proxy is not None:  # the proxy itself is not there: the probe could not try
            raise Stop(Try("failed", "error", f"cannot connect to the proxy {_hostport(*opts.proxy)}: {exc}")) from None
        raise Stop(network_failure(exc, f"connect to {where}")) from None
    if opts.proxy is not None:
        try:
            sock.sendall(f"CONNECT {where} HTTP/1.1\r\nHost: {where}\r\n\r\n".encode("ascii"))
            head = read_head(sock)
        except OSError as exc:
            sock.close()
            raise Stop(network_failure(exc, f"CONNECT {where}")) from None
        try:
            status, headers = parse_head(head)
        except ValueError:
            sock.close()
            raise Stop(Try("blocked", "closed", f"CONNECT {where}: the proxy closed without an answer")) from None
        if not 200 <= status < 300:
            sock.close()
            if status not in REFUSALS:
                # not a refusal of the destination: the proxy wants credentials (407), could not reach the
                # service (502, 503, 504) or failed otherwise; nothing was tried, so nothing was enforced
                raise Stop(Try("failed", "error", f"CONNECT {where}: the proxy answered {status}, which is not a "
                                                  f"refusal (451, 403): the try could not be made",
                               http_status=status))
            how = "connect-451" if status == 451 else "connect-refused"
            raise Stop(Try("blocked", how, f"CONNECT {where}: the proxy answered {status}",
                           rule=headers.get("x-geoblock-rule"), http_status=status))
    return sock, _hostport(host, port)


def tls_context(opts: Options, verify: bool = True) -> ssl.SSLContext:
    """A client context trusting --ca (or the system's CAs); `verify` False checks nothing."""
    context = ssl.create_default_context(cafile=opts.ca)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def http_exchange(sock: socket.socket, request: bytes | list[bytes], pause: float = 0.0) -> Try:
    """Send `request` (one buffer, or segments with `pause` seconds between them) and read the answer:
    451 -> blocked/http-451 (rule from x-geoblock-rule); 502, 503, 504 -> failed/error (no answer of the
    service came through); another status -> reached/http-answer."""
    try:
        for i, part in enumerate([request] if isinstance(request, bytes) else request):
            if i and pause:
                time.sleep(pause)
            sock.sendall(part)
        head = read_head(sock)
    except OSError as exc:
        return network_failure(exc, "HTTP request")
    return _http_result(head)


def _http_result(head: bytes) -> Try:
    """What an HTTP answer's head (empty: none came) says (see http_exchange)."""
    if not head:
        return Try("blocked", "closed", "the connection closed without an HTTP answer")
    try:
        status, headers = parse_head(head)
    except ValueError as exc:
        return Try("failed", "error", str(exc))
    if status == 451:
        return Try("blocked", "http-451", "HTTP 451 (the block page)", rule=headers.get("x-geoblock-rule"),
                   http_status=status)
    if status in GATEWAY_ERRORS:
        # a proxy's or gateway's own answer that it could not reach the service (RFC 9110 section 15.6):
        # neither the service's content nor a refusal
        return Try("failed", "error", f"HTTP {status}: a gateway on the path could not get an answer from the "
                                      f"service; not an answer of the service", http_status=status)
    return Try("reached", "http-answer", f"HTTP {status}", http_status=status)


def tls_handshake(sock: socket.socket, name: str, opts: Options, sent: str | None = None) -> Try:
    """A TLS handshake with SNI `sent` (default `name`) verified for `name` against --ca: completed ->
    reached/handshake; an alert -> blocked/tls-alert; a certificate that does not verify (an
    intercepting gateway's own) -> failed, saying so (tls_sni then looks behind it). Closes `sock`."""
    sent = sent or _a_label(name)
    try:
        with tls_context(opts).wrap_socket(sock, server_hostname=sent) as tls:
            version = tls.version()
        return Try("reached", "handshake", f"TLS handshake completed ({version}), certificate verified for {sent}",
                   sent_name=sent)
    except ssl.SSLCertVerificationError as exc:
        return Try("failed", "error", f"TLS handshake: the certificate does not verify for {sent}: "
                   f"{exc.verify_message} (an intercepting gateway's own certificate?)", sent_name=sent)
    except OSError as exc:
        result = network_failure(exc, "TLS handshake")
        result.sent_name = sent
        return result
    finally:
        sock.close()  # wrap_socket leaves it open when the handshake fails


def first_tls_record(sock: socket.socket, data: bytes | list[bytes], pause: float = 0.0) -> Try:
    """Send raw ClientHello bytes (one buffer or TCP segments `pause` s apart) and read the first record
    back: a ServerHello (handshake type 2) -> reached/server-hello; an alert -> blocked/tls-alert."""
    try:
        for i, part in enumerate([data] if isinstance(data, bytes) else data):
            if i and pause:
                time.sleep(pause)
            sock.sendall(part)
        head = b""
        while len(head) < 7:  # an alert record is 7 bytes; a ServerHello's record is longer
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
    except OSError as exc:
        return network_failure(exc, "ClientHello")
    if not head:
        return Try("blocked", "closed", "the connection closed without a TLS answer")
    if head[0] == th.ALERT and len(head) >= 7:
        return Try("blocked", "tls-alert", f"TLS alert {alert_name(head[6])}", tls_alert=head[6])
    if head[0] == th.HANDSHAKE and len(head) >= 6 and head[5] == 2:
        return Try("reached", "server-hello", "a ServerHello came back")
    return Try("failed", "error", f"an unexpected first record {head[:6].hex()}")


# ------------------------------------------------------------------------------------------ techniques

Technique = Callable[[Target, Options], Try]


def _address(target: Target, opts: Options) -> str:
    return target.addresses[0] if target.addresses else resolve(target.name, opts)


def _stream(target: Target, opts: Options, port: int) -> tuple[socket.socket, str]:
    return open_stream(_address(target, opts), port, opts)


def dns_lookup(target: Target, opts: Options) -> Try:
    """Plain DNS (RFC 1035) for the name's A record, via --resolver or the system resolver: NXDOMAIN ->
    blocked/nxdomain; a sinkhole address -> blocked/sinkhole; REFUSED -> blocked/dns-refused; else
    reached/dns-answer."""
    if opts.proxy is not None and not opts.resolver:
        return Try("not-applicable", "not-applicable", "an explicit proxy resolves names itself; give --resolver "
                   "to test the network's DNS")
    name = _a_label(target.name)
    if opts.resolver:
        where = f"resolver {opts.resolver}"
        try:
            answer = dns.query.udp(dns.message.make_query(name, "A"), opts.resolver, timeout=opts.timeout)
        except dns.exception.Timeout:
            return Try("blocked", "timeout", f"{where}: no answer", address=f"{opts.resolver}:53", sent_name=name)
        except (OSError, dns.exception.DNSException) as exc:
            return Try("failed", "error", f"{where}: {exc}", address=f"{opts.resolver}:53", sent_name=name)
        rcode = answer.rcode()
        addrs = [str(r) for rrset in answer.answer for r in rrset if r.rdtype == dns.rdatatype.A]
    else:
        where = "the system resolver"
        try:
            infos = socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_STREAM)
            rcode, addrs = dns.rcode.NOERROR, [str(i[4][0]) for i in infos]
        except socket.gaierror as exc:
            if exc.errno == socket.EAI_NONAME:
                rcode, addrs = dns.rcode.NXDOMAIN, []
            else:
                return Try("failed", "error", f"{where}: {exc}", sent_name=name)
    address = f"{opts.resolver}:53" if opts.resolver else None
    if rcode == dns.rcode.NXDOMAIN:
        return Try("blocked", "nxdomain", f"{where}: NXDOMAIN", sent_name=name, address=address)
    if rcode == dns.rcode.REFUSED:
        return Try("blocked", "dns-refused", f"{where}: REFUSED", sent_name=name, address=address)
    sunk = [a for a in addrs if a in opts.sinkholes]
    if sunk:
        return Try("blocked", "sinkhole", f"{where}: the sinkhole {sunk[0]}", sent_name=name, address=address)
    if rcode != dns.rcode.NOERROR:
        return Try("failed", "error", f"{where}: {dns.rcode.to_text(rcode)}", sent_name=name, address=address)
    return Try("reached", "dns-answer", f"{where}: {', '.join(addrs) or 'no A record'}", sent_name=name,
               address=address)


def tls_sni(target: Target, opts: Options) -> Try:
    """TLS (RFC 8446) to the name's address with SNI = the name, certificate verified for it."""
    return _tls_spelled(target, opts, _a_label(target.name))


def _tls_spelled(target: Target, opts: Options, sent: str) -> Try:
    """A whole TLS handshake (Python's ssl, which sends `sent` as the SNI byte for byte) to the name's
    address, the certificate verified for `sent`: completed -> reached/handshake. A certificate that does
    not verify (an intercepting gateway's own, or one for the name without the spelling) -> the same
    without verification and one GET: 451 -> blocked/http-451 (the gateway's page); another answer ->
    reached/http-answer (content came through, the detail says the certificate did not verify)."""
    sock, address = _stream(target, opts, opts.tls_port)
    result = tls_handshake(sock, target.name, opts, sent=sent)
    result.address = address
    if result.outcome == "failed" and "does not verify" in result.detail:
        sock2, _ = _stream(target, opts, opts.tls_port)
        try:
            with tls_context(opts, verify=False).wrap_socket(sock2, server_hostname=sent) as tls:
                tls.settimeout(opts.timeout)
                answer = http_exchange(tls, _get(_a_label(target.name)))
        except OSError as exc:
            answer = network_failure(exc, "TLS without verification")
        if answer.how in ("http-451", "http-answer"):
            # 451: the intercepting gateway's block page; another answer: the service's content came through
            # the interception (reached, though not with the service's own certificate)
            answer.detail = f"{result.detail}; without verification: {answer.detail}"
            answer.address, answer.sent_name = address, sent
            return answer
        result.detail += f"; without verification: {answer.detail}"
    return result


def _get(host: str, extra: str = "") -> bytes:
    return f"GET / HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n".encode()


def _http(target: Target, opts: Options, request: bytes | list[bytes], pause: float = 0.0) -> Try:
    sock, address = _stream(target, opts, opts.http_port)
    with sock:
        result = http_exchange(sock, request, pause)
    result.address, result.sent_name = address, _a_label(target.name)
    return result


def http_host(target: Target, opts: Options) -> Try:
    """GET / (RFC 9112) with Host: the name to its address, port 80."""
    return _http(target, opts, _get(_a_label(target.name)))


def http_blank_line(target: Target, opts: Options) -> Try:
    """An empty line before the request line (RFC 9112 section 2.2 lets a server ignore it)."""
    return _http(target, opts, b"\r\n" + _get(_a_label(target.name)))


def http_split(target: Target, opts: Options) -> Try:
    """The request in 1 to 3 byte TCP segments (TCP_NODELAY, 10 ms apart): a name split over segments."""
    data, rng, parts, i = _get(_a_label(target.name)), random.Random(target.name), [], 0
    head_end = data.index(b"\r\n\r\n")
    while i < head_end:
        n = rng.randint(1, 3)
        parts.append(data[i:i + n])
        i += n
    parts.append(data[i:])
    return _http(target, opts, parts, pause=0.01)


def h2c_upgrade(target: Target, opts: Options) -> Try:
    """GET with Upgrade: h2c and HTTP2-Settings (RFC 7540 section 3.2): 451 -> blocked; 101 or another
    answer -> reached."""
    settings = "AAMAAABkAAQCAAAAAAIAAAAA"  # base64url SETTINGS: 100 streams, 32 MiB window, no push (as curl sends)
    request = (f"GET / HTTP/1.1\r\nHost: {_a_label(target.name)}\r\nConnection: Upgrade, HTTP2-Settings\r\n"
               f"Upgrade: h2c\r\nHTTP2-Settings: {settings}\r\n\r\n").encode()
    return _http(target, opts, request)


def connect_name(target: Target, opts: Options) -> Try:
    """CONNECT name:443 to the proxy (the proxy resolves it), then TLS with SNI = the name."""
    if opts.proxy is None:
        return Try("not-applicable", "not-applicable", "no --proxy: CONNECT is an explicit proxy's")
    authority = _hostport(_a_label(target.name), opts.tls_port)
    sock, _ = open_stream(_a_label(target.name), opts.tls_port, opts, authority=authority)
    result = tls_handshake(sock, target.name, opts)
    result.address = authority
    return result


def connect_address(target: Target, opts: Options) -> Try:
    """CONNECT ip:443 to the proxy, then TLS with SNI = the name (the proxy judges the SNI)."""
    if opts.proxy is None:
        return Try("not-applicable", "not-applicable", "no --proxy: CONNECT is an explicit proxy's")
    return tls_sni(target, opts)


def _raw_hello(target: Target, opts: Options, data: bytes | list[bytes], sent: str, pause: float = 0.0) -> Try:
    sock, address = _stream(target, opts, opts.tls_port)
    with sock:
        result = first_tls_record(sock, data, pause)
    result.address, result.sent_name = address, sent
    return result


def _hello_for(sent: str) -> th.Hello:
    base = th.Hello.parse(th.client_hello(None))
    return base.with_server_name(th.server_name_body(sent.encode("ascii")))


def tls_split_records(target: Target, opts: Options) -> Try:
    """The ClientHello fragmented over TLS records of 20 bytes (RFC 8446 section 5.1) and each record in
    its own TCP segment, 10 ms apart, then the handshake completed and the certificate verified: a
    handshake's transcript is its messages, not their records (RFC 8446 section 4.4.1), so Python's ssl
    goes on from the re-framed hello. Completed -> reached/handshake; an alert -> blocked/tls-alert; a
    certificate that does not verify -> the same split without verification and one GET (as tls-sni)."""
    sent = _a_label(target.name)
    sock, address = _stream(target, opts, opts.tls_port)
    with sock:
        result = _split_handshake(sock, sent, opts, verify=True)
    if result.outcome == "failed" and "does not verify" in result.detail:
        sock2, _ = _stream(target, opts, opts.tls_port)
        with sock2:
            answer = _split_handshake(sock2, sent, opts, verify=False)
        answer.detail = f"{result.detail}; without verification: {answer.detail}"
        result = answer if answer.how in ("http-451", "http-answer") else result
    result.address, result.sent_name = address, sent
    return result


def _split_handshake(sock: socket.socket, sent: str, opts: Options, verify: bool) -> Try:
    """The handshake of tls_split_records on `sock` (an ssl.SSLObject over memory BIOs, the first flight
    re-framed); with `verify` False, one GET over it once it completes."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = tls_context(opts, verify=verify).wrap_bio(incoming, outgoing, server_hostname=sent)
    first = True
    try:
        while True:
            try:
                tls.do_handshake()
                done = True
            except ssl.SSLWantReadError:
                done = False
            flight = outgoing.read()
            if flight and first:
                for i, part in enumerate(_reframed(flight, 20)):
                    if i:
                        time.sleep(0.01)
                    sock.sendall(part)
                first = False
            elif flight:
                sock.sendall(flight)
            if done:
                break
            data = sock.recv(65536)
            if not data:
                return Try("blocked", "closed", "the connection closed during the TLS handshake")
            if first is False and data[:1] == bytes([th.ALERT]) and len(data) >= 7 and not tls.version():
                return Try("blocked", "tls-alert", f"TLS alert {alert_name(data[6])}", tls_alert=data[6])
            incoming.write(data)
    except ssl.SSLCertVerificationError as exc:
        return Try("failed", "error", f"TLS handshake: the certificate does not verify for {sent}: "
                   f"{exc.verify_message} (an intercepting gateway's own certificate?)")
    except ssl.SSLError as exc:
        return Try("blocked", "tls-alert", f"TLS handshake refused: {exc.reason or exc}")
    except OSError as exc:
        return network_failure(exc, "TLS handshake")
    if verify:
        return Try("reached", "handshake", f"TLS handshake completed ({tls.version()}) from a ClientHello split "
                                           f"over records, certificate verified for {sent}")
    tls.write(_get(sent))
    sock.sendall(outgoing.read())
    answer = b""
    try:
        while b"\r\n\r\n" not in answer:
            try:
                answer += tls.read(65536)
                continue
            except ssl.SSLWantReadError:
                pass
            data = sock.recv(65536)
            if not data:
                break
            incoming.write(data)
    except (OSError, ssl.SSLError) as exc:
        return network_failure(exc, "HTTP over TLS")
    return _http_result(answer)


def _reframed(flight: bytes, size: int) -> list[bytes]:
    """The handshake records of `flight` (a client's first flight: its ClientHello) as records of at most
    `size` bytes of the same handshake message, byte for byte (RFC 8446 section 5.1 lets a handshake
    message span records), with the flight's record version."""
    message = b"".join(record[5:] for record in _records_of(flight) if record[0] == th.HANDSHAKE)
    version = flight[1:3]
    return [bytes([th.HANDSHAKE]) + version + struct.pack("!H", len(message[i:i + size])) + message[i:i + size]
            for i in range(0, len(message), size)]


def _records_of(data: bytes) -> list[bytes]:
    """TLS records `data` holds, one bytes each (for sending each in its own TCP segment)."""
    parts, i = [], 0
    while i < len(data):
        n = 5 + struct.unpack("!H", data[i + 3:i + 5])[0]
        parts.append(data[i:i + n])
        i += n
    return parts


def sni_case(target: Target, opts: Options) -> Try:
    """SNI in mixed case (DNS names compare case-insensitively, RFC 4343): BiNaNcE.CoM, in a whole
    handshake (the certificate is checked, so an intercepting gateway's answer is told from the service's)."""
    sent = "".join(c.upper() if i % 2 == 0 else c.lower() for i, c in enumerate(_a_label(target.name)))
    return _tls_spelled(target, opts, sent)


def sni_trailing_dot(target: Target, opts: Options) -> Try:
    """SNI with a trailing dot (the absolute form; RFC 6066 section 3 forbids it, servers differ), in a
    whole handshake."""
    return _tls_spelled(target, opts, _a_label(target.name).rstrip(".") + ".")


def _a_label(name: str) -> str:
    try:
        return name.encode("idna").decode("ascii")
    except UnicodeError:
        return name.encode("ascii", "replace").decode("ascii")


def sni_idna(target: Target, opts: Options) -> Try:
    """For an internationalised name: the A-label with an upper-case XN-- prefix (the U-label cannot go
    in SNI, RFC 6066 section 3); not-applicable for an ASCII name."""
    a_label = _a_label(target.name)
    if "xn--" not in a_label.lower():
        return Try("not-applicable", "not-applicable", "an ASCII name has no IDNA form")
    sent = ".".join("XN--" + label[4:] if label.lower().startswith("xn--") else label for label in a_label.split("."))
    return _tls_spelled(target, opts, sent)


def ech(target: Target, opts: Options) -> Try:
    """A ClientHello with SNI = the name and a GREASE-shaped encrypted_client_hello (0xfe0d, RFC 9849)."""
    data = _hello_for(_a_label(target.name)).with_extension(th.EXT_ECH, th.ech_outer_body()).records()
    return _raw_hello(target, opts, data, _a_label(target.name))


def esni(target: Target, opts: Options) -> Try:
    """A ClientHello with SNI = the name and an encrypted_server_name extension (0xffce, ESNI drafts)."""
    data = _hello_for(_a_label(target.name)).with_extension(th.EXT_ESNI, th.esni_body()).records()
    return _raw_hello(target, opts, data, _a_label(target.name))


def ipv4_embedded(target: Target, opts: Options) -> Try:
    """TLS to the IPv4 address embedded in IPv6: the NAT64 prefix (RFC 6052 section 2.2, /96) and 6to4
    (RFC 3056, 2002:V4ADDR::). Reached if either completes; else blocked with both outcomes."""
    if not opts.nat64_prefix:
        return Try("not-applicable", "not-applicable", "no NAT64 prefix given (--nat64-prefix)")
    v4 = ipaddress.IPv4Address(_address(target, opts))
    prefix = ipaddress.IPv6Network(opts.nat64_prefix, strict=False)
    forms = [str(ipaddress.IPv6Address(int(prefix.network_address) | int(v4))),
             str(ipaddress.IPv6Address((0x2002 << 112) | (int(v4) << 80)))]
    results = []
    for address in forms:
        try:
            sock, where = open_stream(address, opts.tls_port, opts)
        except Stop as stop:
            stop.result.address = _hostport(address, opts.tls_port)
            results.append(stop.result)
            continue
        result = tls_handshake(sock, target.name, opts)
        result.address = where
        results.append(result)
    reached = [r for r in results if r.outcome == "reached"]
    chosen = reached[0] if reached else next((r for r in results if r.outcome == "blocked"), results[0])
    chosen.detail = "; ".join(f"{r.address}: {r.outcome} ({r.detail})" for r in results)
    return chosen


def quic(target: Target, opts: Options) -> Try:
    """A QUIC Initial (RFC 9000 section 17.2.2) with SNI = the name, built by aioquic, to address:443/UDP:
    any answer -> reached/udp-answer; none within the timeout -> blocked/dropped."""
    if opts.proxy is not None:
        return Try("not-applicable", "not-applicable", "an explicit proxy carries no UDP (QUIC goes around it)")
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection

    address = _address(target, opts)
    where = (address, opts.tls_port)
    conn = QuicConnection(configuration=QuicConfiguration(is_client=True, server_name=_a_label(target.name),
                                                          alpn_protocols=["h3"]))
    conn.connect(where, now=time.time())
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(opts.timeout)
        try:
            for datagram, _ in conn.datagrams_to_send(now=time.time()):
                sock.sendto(datagram, where)
            data = sock.recv(65536)
        except TimeoutError:
            return Try("blocked", "dropped", f"no UDP answer within {opts.timeout:g} s",
                       address=_hostport(*where), sent_name=_a_label(target.name))
        except OSError as exc:
            result = network_failure(exc, "QUIC")
            result.address = _hostport(*where)
            return result
    return Try("reached", "udp-answer", f"a UDP answer of {len(data)} bytes", address=_hostport(*where),
               sent_name=_a_label(target.name))


def _question(name: str) -> dns.message.Message:
    query = dns.message.make_query(_a_label(name), "A")
    query.id = 0  # RFC 8484 section 4.1: 0 for HTTP caching
    return query


def _first_a(answer: dns.message.Message) -> str | None:
    return next((str(r) for rrset in answer.answer for r in rrset if r.rdtype == dns.rdatatype.A), None)


def _after_answer(target: Target, opts: Options, address: str | None, via: str) -> Try:
    """The second step of doh/dot: TLS to the address the encrypted resolver gave."""
    if address is None:
        return Try("blocked", "nxdomain", f"{via}: no address for {target.name}")
    sock, where = open_stream(address, opts.tls_port, opts)
    result = tls_handshake(sock, target.name, opts)
    result.address = where
    result.detail = f"{via} answered {address}; then {result.detail}"
    return result


def _tls_to_resolver(host: str, port: int, opts: Options, sni: str | None) -> ssl.SSLSocket:
    address = host
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(host)
        sni = None
    if sni is not None:
        address = opts.resolve[host][0] if host in opts.resolve else resolve(host, opts)
    sock, _ = open_stream(address, port, opts)
    context = tls_context(opts)
    if sni is None:
        context.check_hostname = False  # an IP URL: the certificate is still checked against the CAs
    try:
        return context.wrap_socket(sock, server_hostname=sni or host)
    except OSError as exc:
        sock.close()
        raise Stop(network_failure(exc, f"TLS to the resolver {host}")) from None


def doh(target: Target, opts: Options) -> Try:
    """DNS over HTTPS (RFC 8484 section 4.1, GET with ?dns=) to each --doh URL until one answers, then
    TLS with SNI = the name to the address it gave: reached only if that handshake completes."""
    notes = []
    for url in opts.doh:
        parts = urllib.parse.urlsplit(url)
        host, port = parts.hostname or "", parts.port or 443
        wire = base64.urlsafe_b64encode(_question(target.name).to_wire()).rstrip(b"=").decode("ascii")
        try:
            with _tls_to_resolver(host, port, opts, host) as tls:
                tls.sendall((f"GET {parts.path or '/'}?dns={wire} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                             "Accept: application/dns-message\r\nConnection: close\r\n\r\n").encode("ascii"))
                data = b""
                while chunk := tls.recv(65536):
                    data += chunk
        except Stop as stop:
            notes.append(f"{url}: {stop.result.how} ({stop.result.detail})")
            continue
        except OSError as exc:
            notes.append(f"{url}: {network_failure(exc, 'DoH').detail}")
            continue
        head, _, body = data.partition(b"\r\n\r\n")
        try:
            status, _h = parse_head(head + b"\r\n\r\n")
            answer = dns.message.from_wire(body)
        except (ValueError, dns.exception.DNSException) as exc:
            notes.append(f"{url}: no DNS answer ({exc})")
            continue
        if status != 200:
            notes.append(f"{url}: HTTP {status}")
            continue
        return _after_answer(target, opts, _first_a(answer), f"DoH {url}")
    return Try("blocked", "closed" if notes else "timeout", "no DoH resolver answered: " + "; ".join(notes))


def dot_address(value: str) -> tuple[str, int]:
    """(ip, port) of a --dot value: "IP" (port 853, RFC 7858 section 3.1), "IPv4:PORT" or "[IPv6]:PORT".
    ValueError when it is none of these."""
    with contextlib.suppress(ValueError):
        return str(ipaddress.ip_address(value)), 853
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"not IP or IP:PORT: {value!r}")
    return str(ipaddress.ip_address(host.strip("[]"))), int(port)


def dot(target: Target, opts: Options) -> Try:
    """DNS over TLS (RFC 7858, port 853: two length bytes then the message, RFC 1035 section 4.2.2) to
    each --dot address until one answers, then TLS with SNI = the name to the address it gave."""
    notes = []
    for server in opts.dot:
        host, port = dot_address(server)
        try:
            with _tls_to_resolver(host, port, opts, None) as tls:
                wire = _question(target.name).to_wire()
                tls.sendall(struct.pack("!H", len(wire)) + wire)
                data = b""
                while len(data) < 2 or len(data) < 2 + struct.unpack("!H", data[:2])[0]:
                    chunk = tls.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                answer = dns.message.from_wire(data[2:])
        except Stop as stop:
            notes.append(f"{server}: {stop.result.how} ({stop.result.detail})")
            continue
        except (OSError, dns.exception.DNSException, struct.error) as exc:
            notes.append(f"{server}: {type(exc).__name__} {exc}")
            continue
        return _after_answer(target, opts, _first_a(answer), f"DoT {server}")
    return Try("blocked", "closed" if notes else "timeout", "no DoT resolver answered: " + "; ".join(notes))


TECHNIQUES: dict[str, Technique] = {
    "dns": dns_lookup, "tls-sni": tls_sni, "http-host": http_host, "connect-name": connect_name,
    "connect-address": connect_address, "http-blank-line": http_blank_line, "http-split": http_split,
    "tls-split-records": tls_split_records, "sni-case": sni_case, "sni-trailing-dot": sni_trailing_dot,
    "sni-idna": sni_idna, "h2c-upgrade": h2c_upgrade, "ipv4-embedded": ipv4_embedded, "quic": quic,
    "ech": ech, "esni": esni, "doh": doh, "dot": dot,
}
"""Every technique by its name (probe_schema.md's list, in its order)."""


def attempt(technique: str, target: Target, opts: Options) -> Try:
    """Run one technique (a name of TECHNIQUES) for `target`: its Try with `duration_s` set. Any
    exception a technique lets through becomes failed/error (a probe bug must not stop the run)."""
    started = time.monotonic()
    try:
        result = TECHNIQUES[technique](target, opts)
    except Stop as stop:
        result = stop.result
    except Exception as exc:  # noqa: BLE001 - reported in the try's detail, the run goes on
        result = Try("failed", "error", f"{type(exc).__name__}: {exc}")
    result.duration_s = round(time.monotonic() - started, 4)
    result.detail = " ".join(result.detail.split())
    return result
