"""Enforcement: what a client of a blocked flow receives. This is the only module that builds mitmproxy
responses and layers.

- CONNECT to a blocked target: HTTP 451 answering the CONNECT, before any TLS;
- TLS with a blocked SNI: a fatal `access_denied` alert, then close (`DenyTLS`);
- HTTP with a blocked Host: 451 Unavailable For Legal Reasons, a `Link: <...>; rel="blocked-by"` header
  (RFC 7725) and an HTML page in the reader's language (`Accept-Language`; templates in mitm/pages.py)
  saying that access was restricted, by whom, on what basis, whom to ask, and the name, rule and time;
- a stream that is neither HTTP nor TLS: closed without a byte (`DenyStream`).
"""

from __future__ import annotations

from mitmproxy import http
from mitmproxy.proxy import commands, events, layer

from geoblock.core.model import Verdict
from geoblock.core.names import unicode_name
from geoblock.mitm.pages import PageProblem, PageSet, PageTemplate, page_values

__all__ = ["TLS_ACCESS_DENIED", "REASON_451", "PageProblem", "PageSet", "PageTemplate", "DenyStream", "DenyTLS",
           "block_page", "blocked_text", "connect_refusal"]

# TLS record: content type alert (21), TLS 1.2 record version, length 2, level fatal (2),
# description access_denied (49).
TLS_ACCESS_DENIED = bytes.fromhex("15030300020231")

REASON_451 = "Unavailable For Legal Reasons"


def _headers(verdict: Verdict, blocked_by: str, content_type: str) -> dict[str, str]:
    # No "connection" header: it is forbidden in HTTP/2 and HTTP/3 responses (RFC 9113 8.2.2).
    headers = {"content-type": content_type, "cache-control": "no-store"}
    if blocked_by:
        headers["link"] = f'<{blocked_by}>; rel="blocked-by"'
    if verdict.rule:
        headers["x-geoblock-rule"] = verdict.rule
    return headers


def block_page(verdict: Verdict, host: str, pages: PageSet, blocked_by: str, ts: str, *,
               accept_language: str | None = None, operator: str = "", contact: str = "",
               notice: str | None = None) -> http.Response:
    """The 451 response to an HTTP request `verdict` blocks, in the language `accept_language` (the
    request's Accept-Language value, None: none) asks for (PageSet.choose): the page names `host` (in
    Unicode), the rule, the reason, the platform (Verdict.platform), `ts` (the decision's time), who
    restricts access (`operator`), on what basis (`notice`: the rule's, else the policy's) and whom to ask
    (`contact`). `blocked_by` is the RFC 7725 `Link` target ("" for none). Headers: `Content-Language`
    (the page's language, when known) and `Vary: Accept-Language` (when the page depends on it)."""
    page = pages.choose(accept_language)
    values = page_values(host=unicode_name(host) if host else "", rule=verdict.rule or "(none)",
                         reason=verdict.reason, ts=ts, platform=verdict.platform,
                         operator=operator, notice=notice, contact=contact, lang=page.lang or "")
    headers = _headers(verdict, blocked_by, "text/html; charset=utf-8")
    if page.lang:
        headers["content-language"] = page.lang
    if pages.negotiated:
        headers["vary"] = "Accept-Language"
    response = http.Response.make(451, page.render(values), headers)
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
