"""Holding a stream's first bytes until they show what the stream is.

mitmproxy chooses a connection's next layer (HTTP, TLS, raw TCP, ...) on the first bytes it has, however
few: fewer than 3 bytes, or an empty line before the request line, and it relays the stream as raw TCP;
the first bytes of a ClientHello, and it starts its TLS layer before the server name is known. geoblock
therefore holds the first bytes of every stream in `HoldFirstBytes` until

- they are a whole TLS ClientHello (reassembled from its records and TCP segments), or
- a whole first line has come (an HTTP request line, after any empty lines before it), or
- they cannot be the start of either (`stream_state` says "other"),

and then hands them on, as one piece, to a fresh `Replayed` next layer, whose `next_layer` hook
(geoblock's included) sees them whole and judges. The hold is bounded: at most `LIMIT` bytes and
`timeout` seconds; a stream still unreadable past either is failed by geoblock (the policy's on_error).
"""

from __future__ import annotations

from mitmproxy.proxy import commands, events, layer
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layers.tls import get_client_hello

from geoblock.mitm.observe import LINE, MORE, OTHER, request_line_state, strip_empty_lines

# A ClientHello is a few hundred bytes (a few KiB with post-quantum key shares), a request line rarely
# more than 8 KiB; geoblock holds at most this much while waiting for either to be complete.
LIMIT = 64 * 1024

TLS = "tls"  # stream_state: a whole TLS ClientHello (or a TLS handshake record that is none)


def may_be_client_hello(data: bytes) -> bool:
    """Whether `data` may be (the start of) a TLS handshake record: 0x16, then 0x03 (RFC 8446 5.1)."""
    return bool(data) and data[0] == 0x16 and (len(data) < 2 or data[1] == 0x03)


# The TLS record content types other than handshake (RFC 8446 section 5.1; heartbeat: RFC 6520): no
# client sends one before its ClientHello, and a server may skip one (Go's crypto/tls drops a warning
# alert), so a stream that opens with one is TLS to geoblock, whose ClientHello it cannot judge there.
_OTHER_RECORDS = frozenset({0x14, 0x15, 0x17, 0x18})  # change_cipher_spec, alert, application_data, heartbeat


def starts_like_other_record(data: bytes) -> bool:
    """Whether `data` may be (the start of) a TLS record that is not a handshake: a content type of
    `_OTHER_RECORDS`, then 0x03 (RFC 8446 section 5.1)."""
    return bool(data) and data[0] in _OTHER_RECORDS and (len(data) < 2 or data[1] == 0x03)


def stream_state(data: bytes) -> str:
    """What a stream's first bytes show: "tls" (a whole ClientHello, a handshake record mitmproxy
    cannot read as one, or a TLS record of another type where the ClientHello should be: the TLS
    judgement refuses those, on_error), observe.LINE (a whole first line), observe.MORE (still
    incomplete) or observe.OTHER (neither TLS nor the start of an HTTP request line)."""
    if starts_like_other_record(data):
        # before: relayed as a stream that shows no name (policy `unreadable`, log by default), so a
        # warning alert in front of a ClientHello took a listed SNI to a server that skips the alert
        return MORE if len(data) < 2 else TLS
    if may_be_client_hello(data):
        if len(data) < 3:
            return MORE
        try:
            # whole or not, as mitmproxy's parse_client_hello tells it, without parsing it: the judgement
            # parses it once (observe.client_hello_of), and a second parse cost a connection about 3 %
            return MORE if get_client_hello(data) is None else TLS
        except ValueError:
            return TLS  # a handshake record that is no ClientHello: the TLS judgement fails it closed
    return request_line_state(data)


class Replayed(layer.NextLayer):
    """The next layer that `HoldFirstBytes` hands the held bytes to. `expired` is True when the hold
    ran out of time before the bytes showed what the stream is."""

    def __init__(self, context: Context, expired: bool) -> None:
        super().__init__(context)
        self.expired = expired


class HoldFirstBytes(layer.Layer):
    """Holds a connection's first bytes (see the module's text), then replays them, whole, to a
    `Replayed` next layer; every later event goes to that layer.

    `timeout`: seconds to hold at most (mitmproxy's RequestWakeup). Empty lines before a whole first line
    are dropped on the way (RFC 9112 section 2.2 lets a server ignore them), so mitmproxy reads the
    request line as HTTP rather than relaying the stream as raw TCP."""

    def __init__(self, context: Context, timeout: float) -> None:
        super().__init__(context)
        self.context.layers.remove(self)  # like NextLayer: not a protocol layer of the stack
        self.held: list[events.Event] = []
        self.next: Replayed | None = None
        self.timeout = timeout
        self.wakeup: commands.RequestWakeup | None = None

    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        if isinstance(event, events.Wakeup) and event.command is self.wakeup:
            if self.next is None:  # still holding: time is up
                yield from self._replay(expired=True)
            return  # the wakeup is this layer's own: the layers after it never asked for it
        if self.next is not None:
            yield from self.next.handle_event(event)
            return
        client = self.context.client
        self.held.append(event)
        if isinstance(event, events.ConnectionClosed) and event.connection == client:
            yield commands.CloseConnection(client)
            return
        if not isinstance(event, events.DataReceived):
            return
        if self.wakeup is None:
            self.wakeup = commands.RequestWakeup(self.timeout)
            yield self.wakeup
        data = self._data()
        if len(data) < LIMIT and stream_state(data) == MORE:
            return  # wait for more
        yield from self._replay(expired=False)

    def _data(self) -> bytes:
        client = self.context.client
        return b"".join(e.data for e in self.held if isinstance(e, events.DataReceived) and e.connection == client)

    def _replay(self, expired: bool) -> layer.CommandGenerator[None]:
        # The client's bytes go on as one event: a NextLayer asks its hook on the first data event, and
        # must see them all.
        client = self.context.client
        data = self._data()
        if request_line_state(data) == LINE:
            data = strip_empty_lines(data)
        replay = [e for e in self.held if not (isinstance(e, events.DataReceived) and e.connection == client)]
        if data:
            replay.append(events.DataReceived(client, data))
        self.held = []
        self.next = Replayed(self.context, expired)
        for e in replay:
            yield from self.next.handle_event(e)


__all__ = ["HoldFirstBytes", "LIMIT", "LINE", "MORE", "OTHER", "Replayed", "TLS", "may_be_client_hello",
           "starts_like_other_record", "stream_state"]


def must_hold(shows: str, data: bytes) -> bool:
    """Whether the first bytes are held for more: not yet a whole ClientHello or first line, or a line
    that is empty so far (the hold drops empty lines before a request line, RFC 9112 section 2.2)."""
    return shows == MORE or (shows == LINE and data[:1] in b"\r\n")


def why_incomplete(data: bytes, expired: bool, timeout: float) -> str:
    """Why first bytes the hold gave up on were never judged as HTTP or TLS, for the record."""
    limit = "" if expired else f" (the most geoblock holds is {LIMIT} bytes)"
    within = f" within {timeout:g} s" if expired else ""
    return f"no complete request line or TLS ClientHello in the first {len(data)} bytes{within}{limit}"
