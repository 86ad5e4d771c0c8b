"""Encrypted DNS resolvers for the probe's tests: DNS over HTTPS (RFC 8484, GET with ?dns=) and DNS over
TLS (RFC 7858), each on host:port with the test PKI's certificate, answering A questions from a fixed
table (other names: NXDOMAIN) and counting the questions they got (`seen`). Bound inside a network
namespace when `netns` is given (support.netns.inside)."""

from __future__ import annotations

import base64
import contextlib
import socket
import ssl
import struct
import threading
import urllib.parse

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

from .servers import TestPKI


class _TlsResolver:
    def __init__(self, host: str, port: int, pki: TestPKI, answers: dict[str, str], netns: str | None = None) -> None:
        self.answers = {k.rstrip(".").lower(): v for k, v in answers.items()}
        self.seen: list[str] = []
        self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.tls.load_cert_chain(pki.cert_pem, pki.key_pem)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        if netns:
            from .netns import inside
            with inside(netns):
                self.sock = socket.socket(family, socket.SOCK_STREAM)
        else:
            self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(16)
        self.host, self.port = host, self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def answer(self, wire: bytes) -> bytes:
        query = dns.message.from_wire(wire)
        question = query.question[0]
        name = str(question.name).rstrip(".").lower()
        self.seen.append(name)
        reply = dns.message.make_response(query)
        if name not in self.answers:
            reply.set_rcode(dns.rcode.NXDOMAIN)
        elif question.rdtype == dns.rdatatype.A:
            reply.answer.append(dns.rrset.from_text(question.name, 60, "IN", "A", self.answers[name]))
        return reply.to_wire()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        with contextlib.suppress(OSError, ValueError, dns.exception.DNSException), conn:
            with self.tls.wrap_socket(conn, server_side=True) as tls:
                self.handle(tls)

    def handle(self, tls: ssl.SSLSocket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


class DohServer(_TlsResolver):
    """DNS over HTTPS: GET <any path>?dns=<base64url> (RFC 8484 section 4.1) -> 200 application/dns-message."""

    def handle(self, tls: ssl.SSLSocket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = tls.recv(4096)
            if not chunk:
                return
            head += chunk
        target = head.split(b" ", 2)[1].decode("ascii")
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(target).query).get("dns", [""])[0]
        body = self.answer(base64.urlsafe_b64decode(query + "=" * (-len(query) % 4)))
        tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/dns-message\r\nContent-Length: "
                    + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)


class DotServer(_TlsResolver):
    """DNS over TLS: two length bytes then the message, both ways (RFC 7858 section 3.3)."""

    def handle(self, tls: ssl.SSLSocket) -> None:
        data = b""
        while len(data) < 2 or len(data) < 2 + struct.unpack("!H", data[:2])[0]:
            chunk = tls.recv(4096)
            if not chunk:
                return
            data += chunk
        body = self.answer(data[2:])
        tls.sendall(struct.pack("!H", len(body)) + body)
