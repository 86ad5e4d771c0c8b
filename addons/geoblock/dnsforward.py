"""Asking an upstream name server a DNS question as the client asked it, and returning its whole answer.

mitmproxy's DNS resolver answers A and AAAA questions itself (mitmproxy_rs's resolver, or getaddrinfo)
and builds a new answer holding only the addresses: the CNAME chain the name server returned is gone
before any hook sees it. Where geoblock serves DNS it asks the name server itself instead, so that the
answer it judges (every name in it) is the answer the client gets. Nothing here imports mitmproxy.
"""

from __future__ import annotations

import asyncio
import struct

PORT = 53
_TC = 0x0200  # the header's truncation flag (RFC 1035 section 4.1.1)
_QR = 0x8000  # the header's response flag


class NoAnswer(Exception):
    """No name server gave a usable answer; the message says what each did."""


def check_answer(query: bytes, answer: bytes) -> None:
    """Raise ValueError unless `answer` is a response to `query`: same ID, QR set (RFC 1035 4.1.1), and
    the same question section (RFC 5452 section 9.1: an answer to another question is spoofed or stale)."""
    if len(answer) < 12:
        raise ValueError("shorter than a DNS header")
    if answer[:2] != query[:2]:
        raise ValueError("another message ID")
    if not int.from_bytes(answer[2:4], "big") & _QR:
        raise ValueError("not a response")
    qcount = int.from_bytes(query[4:6], "big")
    if answer[4:6] != query[4:6]:
        raise ValueError("another question count")
    if qcount:
        end = _questions_end(query)
        if answer[12:end].lower() != query[12:end].lower():
            raise ValueError("another question")


def _questions_end(message: bytes) -> int:
    """The offset after the question section (names in a query are not compressed)."""
    p = 12
    for _ in range(int.from_bytes(message[4:6], "big")):
        while True:
            if p >= len(message):
                raise ValueError("truncated question")
            n = message[p]
            if n & 0xC0:
                p += 2
                break
            p += 1 + n
            if n == 0:
                break
        p += 4  # type, class
    return p


class _Datagram(asyncio.DatagramProtocol):
    def __init__(self, query: bytes) -> None:
        self.query = query
        self.answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: object) -> None:
        if self.answer.done():
            return
        try:
            check_answer(self.query, data)
        except ValueError:
            return  # not ours: keep waiting (RFC 5452 section 9.1)
        self.answer.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.answer.done():
            self.answer.set_exception(exc)


async def _udp(query: bytes, server: str, port: int, timeout: float) -> bytes:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(lambda: _Datagram(query), remote_addr=(server, port))
    try:
        transport.sendto(query)
        return await asyncio.wait_for(protocol.answer, timeout)
    finally:
        transport.close()


async def _tcp(query: bytes, server: str, port: int, timeout: float) -> bytes:
    async def exchange() -> bytes:
        reader, writer = await asyncio.open_connection(server, port)
        try:
            writer.write(struct.pack("!H", len(query)) + query)  # RFC 1035 section 4.2.2 framing
            await writer.drain()
            (size,) = struct.unpack("!H", await reader.readexactly(2))
            return await reader.readexactly(size)
        finally:
            writer.close()

    answer = await asyncio.wait_for(exchange(), timeout)
    check_answer(query, answer)
    return answer


async def ask(query: bytes, servers: list[str], timeout: float, port: int = PORT) -> bytes:
    """The answer (wire form) of the first of `servers` (addresses, at `port`) that answers `query` (a DNS
    message in wire form, sent unchanged), over UDP, and again over TCP when the UDP answer is truncated
    (RFC 7766 section 5). `timeout`: seconds for each exchange. Raises NoAnswer when none answers."""
    problems = []
    for server in servers:
        try:
            answer = await _udp(query, server, port, timeout)
            if int.from_bytes(answer[2:4], "big") & _TC:
                answer = await _tcp(query, server, port, timeout)
            return answer
        except asyncio.TimeoutError:
            problems.append(f"{server}: no answer in {timeout:g} s")
        except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
            problems.append(f"{server}: {exc}")
    raise NoAnswer("; ".join(problems) or "no name servers")
