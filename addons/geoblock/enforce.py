"""Enforcement: what a client of a blocked flow receives. This is the only module that builds mitmproxy
responses and layers.

- CONNECT to a blocked target: HTTP 451 answering the CONNECT, before any TLS;
- TLS with a blocked SNI: a fatal `access_denied` alert, then close (`DenyTLS`);
- HTTP with a blocked Host: 451 Unavailable For Legal Reasons, a `Link: <...>; rel="blocked-by"` header
  (RFC 7725) and a short HTML page naming the rule (the template can be replaced).

It also holds `AwaitClientHello`, the layer that keeps a connection's first bytes until they are a whole
ClientHello, so a ClientHello split into several TCP segments is judged whole.
"""

from __future__ import annotations

import html
import string
from pathlib import Path

from mitmproxy import http
from mitmproxy.proxy import commands, events, layer
from mitmproxy.proxy.layers.tls import parse_client_hello

from .decide import Verdict
from .names import unicode_name

# TLS record: content type alert (21), TLS 1.2 record version, length 2, level fatal (2),
# description access_denied (49).
TLS_ACCESS_DENIED = bytes.fromhex("15030300020231")

REASON_451 = "Unavailable For Legal Reasons"

DEFAULT_PAGE = """<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>451 Unavailable For Legal Reasons</title></head>
<body>
<h1>Unavailable For Legal Reasons</h1>
<p>Access to <strong>$host</strong> is blocked by this network's gateway.</p>
<p>Rule: <code>$rule</code></p>
<p>Reason: $reason</p>
<p><small>$ts</small></p>
</body>
</html>
"""


class PageTemplate:
    """The HTML block page: a `string.Template` with $host, $rule, $reason and $ts (all HTML-escaped)."""

    def __init__(self, text: str = DEFAULT_PAGE, origin: str = "built-in") -> None:
        self.template = string.Template(text)
        self.origin = origin
        # Refuse templates with unknown or malformed placeholders now rather than on a blocked flow.
        self.render(host="h", rule="r", reason="x", ts="t")

    @classmethod
    def from_file(cls, path: str) -> "PageTemplate":
        text = Path(path).read_text(encoding="utf-8")
        return cls(text, origin=path)

    def render(self, host: str, rule: str, reason: str, ts: str) -> str:
        values = {k: html.escape(v) for k, v in (("host", host), ("rule", rule), ("reason", reason), ("ts", ts))}
        return self.template.substitute(values)


def _headers(verdict: Verdict, blocked_by: str, content_type: str) -> dict[str, str]:
    # No "connection" header: it is forbidden in HTTP/2 and HTTP/3 responses (RFC 9113 8.2.2).
    headers = {"content-type": content_type, "cache-control": "no-store"}
    if blocked_by:
        headers["link"] = f'<{blocked_by}>; rel="blocked-by"'
    if verdict.rule:
        headers["x-geoblock-rule"] = verdict.rule
    return headers


def block_page(verdict: Verdict, host: str, page: PageTemplate, blocked_by: str, ts: str) -> http.Response:
    body = page.render(host=unicode_name(host) if host else "", rule=verdict.rule or "(none)", reason=verdict.reason, ts=ts)
    response = http.Response.make(451, body, _headers(verdict, blocked_by, "text/html; charset=utf-8"))
    response.reason = REASON_451
    return response


def connect_refusal(verdict: Verdict, blocked_by: str) -> http.Response:
    body = f"Blocked by geoblock rule {verdict.rule or '(none)'}: {verdict.reason}\n"
    response = http.Response.make(451, body, _headers(verdict, blocked_by, "text/plain; charset=utf-8"))
    response.reason = REASON_451
    return response


class DenyTLS(layer.Layer):
    """Answers a ClientHello with a fatal access_denied alert and closes; never dials the server."""

    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        if isinstance(event, events.Start):
            yield commands.SendData(self.context.client, TLS_ACCESS_DENIED)
            yield commands.CloseConnection(self.context.client)
        # Everything after that (more data, the client closing) needs no answer.


# A ClientHello is a few hundred bytes (a few KiB with post-quantum key shares); geoblock holds at most
# this much while waiting for one to be complete.
CLIENT_HELLO_LIMIT = 64 * 1024


def may_be_client_hello(data: bytes) -> bool:
    """Whether `data` may be (the start of) a TLS handshake record: 0x16, then 0x03."""
    return bool(data) and data[0] == 0x16 and (len(data) < 2 or data[1] == 0x03)


class AwaitClientHello(layer.Layer):
    """Holds a connection's first bytes until they are a whole TLS ClientHello (or cannot be one, or
    exceed CLIENT_HELLO_LIMIT), then replays them to a fresh NextLayer, whose next_layer hook (geoblock's
    included) sees the complete ClientHello.

    Without it, mitmproxy picks its TLS layer as soon as the first 3 bytes look like TLS, and raw TCP
    pass-through when fewer than 3 bytes came first: a ClientHello split into several TCP segments would
    reach the TLS layer unjudged, or the server unread."""

    def __init__(self, context) -> None:  # type: ignore[no-untyped-def]
        super().__init__(context)
        self.context.layers.remove(self)  # like NextLayer: not a protocol layer of the stack
        self.held: list[events.Event] = []
        self.next: layer.NextLayer | None = None

    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        if self.next is not None:
            yield from self.next.handle_event(event)
            return
        self.held.append(event)
        if isinstance(event, events.ConnectionClosed) and event.connection == self.context.client:
            yield commands.CloseConnection(self.context.client)
            return
        if not isinstance(event, events.DataReceived):
            return
        data = b"".join(e.data for e in self.held
                        if isinstance(e, events.DataReceived) and e.connection == self.context.client)
        if may_be_client_hello(data) and len(data) < CLIENT_HELLO_LIMIT:
            try:
                if len(data) < 3 or parse_client_hello(data) is None:
                    return  # wait for more
            except ValueError:
                pass  # not a ClientHello: the next layer says so
        # The client's bytes go on as one event: a NextLayer asks its hook on the first data event, and
        # must see them all.
        client = self.context.client
        replay = [e for e in self.held if not (isinstance(e, events.DataReceived) and e.connection == client)]
        replay.append(events.DataReceived(client, data))
        self.held = []
        self.next = layer.NextLayer(self.context)
        for e in replay:
            yield from self.next.handle_event(e)
