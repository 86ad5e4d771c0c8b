"""The layer choice: which protocol layer mitmproxy would put next on a connection, and who judges it.

geoblock takes every layer decision itself (its `next_layer` hook runs before mitmproxy's and sets the
layer), so that no layer is put in place before geoblock knows who judges what it carries. The choice
itself stays mitmproxy's: `Chooser` asks mitmproxy's own next-layer logic, with the same options
(`ignore_hosts`, `allow_hosts`, `tcp_hosts`, `rawtcp`, ...), on the bytes geoblock has held.
"""

from __future__ import annotations

from mitmproxy.addons import next_layer as _mitmproxy_next_layer
from mitmproxy.proxy import layer
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layers import ClientTLSLayer, HttpLayer, ServerTLSLayer, TCPLayer
from mitmproxy.proxy.layers.http import HTTPMode
from mitmproxy.tls import ClientHello


class Chooser:
    """mitmproxy's own layer choice (`mitmproxy.addons.next_layer.NextLayer._next_layer`, the same in
    mitmproxy 11.0.2 and 12.x), run by geoblock on a private instance configured from the same options.
    """

    def __init__(self) -> None:
        self.addon = _mitmproxy_next_layer.NextLayer()

    def configure(self, updated: set[str]) -> None:
        """Follow mitmproxy's options (`ignore_hosts`, `allow_hosts`, `tcp_hosts`, `udp_hosts`)."""
        self.addon.configure(updated)

    def choose(self, context: Context, data_client: bytes, data_server: bytes) -> layer.Layer | None:
        """The layer mitmproxy would put next for these first bytes, or None while it needs more of them.
        Building a layer appends it to `context.layers` (mitmproxy's Layer constructor)."""
        try:
            return self.addon._next_layer(context, data_client, data_server)
        except _mitmproxy_next_layer.NeedsMoreData:
            return None

    @staticmethod
    def pass_through(context: Context, chosen: layer.Layer, hello: ClientHello) -> layer.Layer:
        """A raw relay (TCPLayer, ignore=True) in place of `chosen` when `chosen` is the pair of TLS layers
        mitmproxy puts on a TCP ClientHello (ServerTLSLayer over ClientTLSLayer): what those layers end
        in when tls_clienthello passes the handshake through (ignore_connection), with the client's sni
        and alpn_offers set from `hello` as the TLS layer sets them. Any other choice is returned as it
        is. The client and the server see the same bytes either way."""
        client_tls = getattr(chosen, "child_layer", None)
        if not (type(chosen) is ServerTLSLayer and type(client_tls) is ClientTLSLayer
                and context.client.transport_protocol == "tcp"):
            return chosen
        for built in (chosen, client_tls):
            while built in context.layers:
                context.layers.remove(built)
        context.client.sni = hello.sni
        context.client.alpn_offers = hello.alpn_protocols
        return TCPLayer(context, ignore=True)

    @staticmethod
    def http_instead(context: Context, chosen: layer.Layer) -> layer.Layer:
        """An HTTP layer (as mitmproxy puts inside a tunnel or a transparent connection) in place of
        `chosen`, which is taken off the context's layer stack."""
        while chosen in context.layers:
            context.layers.remove(chosen)
        return HttpLayer(context, HTTPMode.transparent)


def innermost(chosen: layer.Layer) -> layer.Layer:
    """The innermost layer of a chosen stack (TLS over HTTP, ...): the one that carries the bytes."""
    inner = chosen
    while (child := getattr(inner, "child_layer", None)) is not None:
        inner = child
    return inner


def judged_later(chosen: layer.Layer) -> bool:
    """Whether what `chosen` carries is judged by a later geoblock hook: HTTP requests (`requestheaders`),
    or another layer choice (a TLS layer's inner stream comes to `next_layer` again once the handshake
    is done). Anything else (raw TCP or UDP relay, QUIC, DNS relayed to the server the connection goes
    to, a layer mitmproxy adds later) carries bytes to that server that geoblock does not judge one by
    one: it must be judged, on its address, before it is put in place. (A DNS message relayed so is
    judged again by the DNS hooks; a message without a name to judge would otherwise cross unjudged.)"""
    return isinstance(innermost(chosen), (HttpLayer, layer.NextLayer))
