"""Local test servers on loopback addresses: HTTP and HTTPS, each counting the TCP connections it
accepted, so a test can assert that a blocked server saw nothing.

- `TestServer`: http.server in a thread, recording each request's Host and path (the functional tests);
- `KeepAliveServer`: asyncio, a fixed 200 answer, for load (the soak test and the benchmarks);
- `make_pki`: a test CA and a server certificate for the test names.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import http.server
import ipaddress
import socket
import socketserver
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

TEST_NAMES = [
    "allowed.test", "www.allowed.test", "binance.com", "api.binance.com", "okx.com",
    "offshore-only.test", "coin-exchange.test", "localhost", "xn--bcher-kva.example",
]


@dataclass
class TestPKI:
    __test__ = False
    ca_pem: Path
    cert_pem: Path
    key_pem: Path
    cert_der: bytes


def make_pki(directory: Path, names: list[str] = TEST_NAMES) -> TestPKI:
    """A test CA and one server certificate for `names` and the loopback addresses."""
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "geoblock test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    sans += [x509.IPAddress(ipaddress.ip_address(f"127.0.0.{i}")) for i in range(1, 8)]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pki = TestPKI(directory / "ca.pem", directory / "server.pem", directory / "server-key.pem",
                  cert.public_bytes(serialization.Encoding.DER))
    pki.ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pki.key_pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
    return pki


class _Handler(http.server.BaseHTTPRequestHandler):
    disable_nagle_algorithm = True
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        server: "_HTTPServer" = self.server  # type: ignore[assignment]
        server.owner.requests.append((self.headers.get("Host"), self.path))
        if self.headers.get("Upgrade"):
            return self._switch(server.owner, self.headers["Upgrade"])
        body = f"hello from {server.owner.host}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def __getattr__(self, name: str):  # noqa: ANN204 - any method is served like GET (lenient servers do)
        if name.startswith("do_"):
            return self.do_GET
        raise AttributeError(name)

    def _switch(self, owner: "TestServer", protocol: str) -> None:
        """Agree to any Upgrade (101 Switching Protocols, RFC 9110 15.2.2). For WebSocket (RFC 6455):
        the handshake, then one client frame echoed back. For anything else: every byte that follows is
        kept in `owner.switched`, and echoed back after "switched: " (after a greeting of the server's own)."""
        self.send_response(101)
        self.send_header("Upgrade", protocol.split(",")[0].strip())
        self.send_header("Connection", "Upgrade")
        websocket = protocol.strip().lower() == "websocket"
        if websocket:
            key = self.headers.get("Sec-WebSocket-Key", "")
            accept = base64.b64encode(hashlib.sha1((key + _WS_GUID).encode()).digest()).decode()
            self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        if websocket:
            head = self.rfile.read(2)
            n = head[1] & 0x7F
            mask = self.rfile.read(4)
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(n)))
            with owner.lock:
                owner.switched.append(payload)
            self.wfile.write(bytes([0x81, len(payload)]) + payload)  # one unmasked text frame
            self.wfile.flush()
            return
        self.connection.settimeout(5)
        with contextlib.suppress(OSError):
            self.connection.sendall(b"server speaks first: ")  # as an h2c server sends its SETTINGS at once
            while chunk := self.connection.recv(65536):
                with owner.lock:
                    owner.switched.append(chunk)
                self.connection.sendall(b"switched: " + chunk)

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass


_WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    owner: "TestServer"

    def server_bind(self) -> None:
        # HTTPServer.server_bind asks getfqdn(host), a reverse DNS lookup: not wanted in tests (and it
        # waits ~10 s for a resolver a network namespace cannot reach).
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def get_request(self):  # type: ignore[no-untyped-def]
        sock, addr = self.socket.accept()
        with self.owner.lock:
            self.owner.connections += 1
        return sock, addr

    def finish_request(self, request, client_address):  # type: ignore[no-untyped-def]
        if self.owner.tls is not None:
            try:
                request = self.owner.tls.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError):
                with self.owner.lock:
                    self.owner.tls_failures += 1
                return
        super().finish_request(request, client_address)

    def handle_error(self, request, client_address):  # type: ignore[no-untyped-def]
        pass


class TestServer:
    """An HTTP(S) server on `host`, port chosen by the system; `.connections` counts accepted TCP."""

    __test__ = False  # not a pytest test class

    def __init__(self, host: str, pki: TestPKI | None = None, port: int = 0) -> None:
        self.host = host
        self.connections = 0
        self.tls_failures = 0
        self.requests: list[tuple[str | None, str]] = []
        self.switched: list[bytes] = []  # what came after a 101 (see _Handler._switch)
        self.lock = threading.Lock()
        self.tls: ssl.SSLContext | None = None
        if pki is not None:
            self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.tls.load_cert_chain(pki.cert_pem, pki.key_pem)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_class = type("TestHTTPServer", (_HTTPServer,), {"address_family": family})
        with self._binding():
            self.httpd = server_class((host, port), _Handler)
        self.httpd.owner = self
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.1,), daemon=True)
        self.thread.start()

    def _binding(self) -> contextlib.AbstractContextManager[None]:
        """Where the listening socket is made (a subclass binds inside a network namespace)."""
        return contextlib.nullcontext()

    def reset(self) -> None:
        with self.lock:
            self.connections = 0
            self.tls_failures = 0
            self.requests.clear()
            self.switched.clear()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _KeepAliveProtocol(asyncio.Protocol):
    """One client connection of a KeepAliveServer: answers each request head (GET, no body; pipelined
    requests too) with the server's fixed response."""

    def __init__(self, server: "KeepAliveServer") -> None:
        self.server = server
        self.buf = b""
        self.transport: Any = None  # an asyncio.Transport once connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # asyncio sets TCP_NODELAY on TCP sockets itself

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        n = 0
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            buf = buf[end + 4:]  # GETs without a body
            n += 1
        self.buf = buf
        if n and self.transport is not None:
            self.server.requests += n
            self.transport.write(self.server.response * n)


class KeepAliveServer:
    """An asyncio HTTP/1.1 keep-alive server on `host` (TLS when `tls` is given), port chosen by the
    system: every request (a GET without a body) gets 200 with `body` (bytes, text/plain). Much cheaper
    per request than TestServer (no thread per connection), for the soak test and the benchmarks.

    `kind` is "tls" or "http"; `accepted` counts TCP connections (on accept, before any TLS handshake);
    `requests` counts the requests answered; `port` is set once started. Start it with `await start()` in
    a running event loop, or `start_in_thread()` on its own loop in a daemon thread; `close()` stops it.
    """

    def __init__(self, host: str, tls: ssl.SSLContext | None = None, body: bytes = b"ok\n",
                 backlog: int = 2048) -> None:
        self.host, self.tls, self.body, self.backlog = host, tls, body, backlog
        self.kind = "tls" if tls else "http"
        self.response = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\n\r\n" + body)
        self.accepted = 0
        self.requests = 0
        self.port = 0
        self._srv: asyncio.AbstractServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # set when it runs in its own thread
        self._thread: threading.Thread | None = None

    def _factory(self) -> _KeepAliveProtocol:
        self.accepted += 1  # called on accept, before the TLS handshake
        return _KeepAliveProtocol(self)

    async def start(self) -> "KeepAliveServer":
        """Listen in the running event loop."""
        loop = asyncio.get_running_loop()
        self._srv = await loop.create_server(self._factory, self.host, 0, ssl=self.tls, backlog=self.backlog)
        self.port = self._srv.sockets[0].getsockname()[1]
        return self

    def start_in_thread(self, timeout: float = 10.0) -> "KeepAliveServer":
        """Listen in a new event loop run by a daemon thread. RuntimeError when not listening within
        `timeout` seconds."""
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self.start())
            ready.set()
            loop.run_forever()

        self._loop = loop
        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise RuntimeError(f"the keep-alive server on {self.host} did not start within {timeout:g} s")
        return self

    def close(self) -> None:
        if self._loop is None:
            if self._srv is not None:
                self._srv.close()
            return

        def stop() -> None:
            if self._srv is not None:
                self._srv.close()
            assert self._loop is not None
            self._loop.stop()

        self._loop.call_soon_threadsafe(stop)
        if self._thread is not None:
            self._thread.join(5)
