"""Enforcement: what a client of a blocked flow receives. This is the only module that builds mitmproxy
responses and layers.

- CONNECT to a blocked target: HTTP 451 answering the CONNECT, before any TLS;
- TLS with a blocked SNI: a fatal `access_denied` alert, then close (`DenyTLS`);
- HTTP with a blocked Host: 451 Unavailable For Legal Reasons, a `Link: <...>; rel="blocked-by"` header
  (RFC 7725) and a short HTML page naming the rule (the template can be replaced);
- a stream that is neither HTTP nor TLS: closed without a byte (`DenyStream`).
"""

from __future__ import annotations

import html
import string
from pathlib import Path

from mitmproxy import http
from mitmproxy.proxy import commands, events, layer

from geoblock.core.model import Verdict
from geoblock.core.names import unicode_name

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
        """`text`: the template; `origin`: where it came from, for messages. Raises KeyError (an unknown
        placeholder) or ValueError (a malformed one) at once rather than on a blocked flow."""
        self.template = string.Template(text)
        self.origin = origin
        # Refuse templates with unknown or malformed placeholders now rather than on a blocked flow.
        self.render(host="h", rule="r", reason="x", ts="t")

    @classmethod
    def from_file(cls, path: str) -> PageTemplate:
        """The template in the UTF-8 file `path`. Raises OSError (unreadable), UnicodeDecodeError, or
        KeyError / ValueError (an unknown or malformed placeholder: see __init__)."""
        text = Path(path).read_text(encoding="utf-8")
        return cls(text, origin=path)

    def render(self, host: str, rule: str, reason: str, ts: str) -> str:
        """The page's HTML, every value HTML-escaped."""
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
    """The 451 response to an HTTP request `verdict` blocks: the page names `host` (in Unicode), the rule
    and the reason; `blocked_by` is the RFC 7725 `Link` target ("" for none); `ts` the decision's time."""
    body = page.render(host=unicode_name(host) if host else "", rule=verdict.rule or "(none)", reason=verdict.reason,
                       ts=ts)
    response = http.Response.make(451, body, _headers(verdict, blocked_by, "text/html; charset=utf-8"))
    response.reason = REASON_451
    return response


def connect_refusal(verdict: Verdict, blocked_by: str) -> http.Response:
    """The 451 answer to a CONNECT `verdict` blocks (before any TLS): a plain-text line naming the rule and
    the reason, the RFC 7725 `Link` header to `blocked_by` ("" for none) and `x-geoblock-rule`."""
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


class DenyStream(layer.Layer):
    """Closes a blocked stream that is neither HTTP nor TLS: no byte is sent to the client, and the
    server is never dialled. (A raw stream has no way to say why; the decision log does.)"""

    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        if isinstance(event, events.Start):
            yield commands.CloseConnection(self.context.client)


def blocked_text(verdict: Verdict) -> str:
    """The error mitmproxy logs for a connection geoblock closes or never dials: the rule, else (on_error,
    a policy verdict without a rule) the reason."""
    return f"blocked by geoblock rule {verdict.rule}" if verdict.rule else f"blocked by geoblock: {verdict.reason}"
