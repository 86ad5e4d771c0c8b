"""Asking an upstream name server a DNS question as the client asked it, and returning its whole answer.

mitmproxy's DNS resolver answers A and AAAA questions itself (mitmproxy_rs's resolver, or getaddrinfo)
and builds a new answer holding only the addresses: the CNAME chain the name server returned is gone
before any hook sees it. Where geoblock serves DNS it asks the name server itself instead, so that the
answer it judges (every name in it) is the answer the client gets. Nothing here imports mitmproxy.

The exchange is dnspython's (`dns.asyncquery.udp_with_fallback`, already installed with mitmproxy and
ipwhois, pinned in pyproject.toml): UDP, again over TCP when the answer is truncated (RFC 7766 section
5), and answers that do not match the query's ID and question ignored (RFC 5452 section 9.1).
"""

from __future__ import annotations

import dns.asyncquery
import dns.exception
import dns.message

from geoblock.errors import GeoblockError

PORT = 53


class NoAnswer(GeoblockError):
    """No name server gave a usable answer; the message says what each did."""


async def ask(query: bytes, servers: list[str], timeout: float, port: int = PORT) -> bytes:
    """The answer (wire form) of the first of `servers` (addresses, at `port`) that answers `query` (a DNS
    message in wire form, as the client sent it). `timeout`: seconds for each name server.
    Raises NoAnswer when none answers, ValueError when `query` is not a DNS message."""
    try:
        message = dns.message.from_wire(query)
    except dns.exception.DNSException as exc:
        raise ValueError(f"not a DNS message: {exc}") from None
    problems = []
    for server in servers:
        try:
            # ignore_unexpected: from another address or with another ID; ignore_errors: an answer to
            # another question, or one that does not parse (dnspython 2.6+): keep waiting for the real one.
            answer, _ = await dns.asyncquery.udp_with_fallback(message, server, timeout=timeout, port=port,
                                                               ignore_unexpected=True, ignore_errors=True)
            return answer.to_wire()
        except dns.exception.Timeout:
            problems.append(f"{server}: no answer in {timeout:g} s")
        except (OSError, dns.exception.DNSException) as exc:
            problems.append(f"{server}: {exc}")
    raise NoAnswer("; ".join(problems) or "no name servers")
