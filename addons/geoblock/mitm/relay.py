"""Watching an allowed TLS handshake that geoblock passes through until no second ClientHello can come.

geoblock judges a TLS connection on its first ClientHello and then relays the handshake undecrypted. A
TLS 1.3 server that needs another key share answers with a HelloRetryRequest (a ServerHello whose
random is the RFC 8446 section 4.1.3 value `HRR_RANDOM`), and the client sends a second ClientHello.
RFC 8446 section 4.1.2 lets that one differ only in key_share, early_data, cookie, pre_shared_key and
padding, but servers (OpenSSL's among them) read the server_name of the second one again: a client that
puts an allowed name in the first and another name in the second would reach a site never judged.

`WatchHello` sits above the layer that carries such a connection (the raw relay, or mitmproxy's TLS
layers that pass the handshake through) and relays every byte unchanged while it reads the handshake:

- the server's first handshake message: a ServerHello that is not a HelloRetryRequest (or anything
  that is not a TLS handshake) ends the watching, and the layer takes itself out of the stack;
- after a HelloRetryRequest, the client's next handshake message must be a ClientHello showing the
  same server name as the first (after normalisation), no server name where the first had none, and
  no Encrypted Client Hello where the first had none. Its records are held until it is whole (at most
  `hold.LIMIT` bytes, as for the first); then it
  goes on and the watching ends (a second HelloRetryRequest is forbidden: the client aborts).
- otherwise (a changed name, a handshake message the client must not send yet, bytes that are not
  TLS records where a ClientHello must come): the client gets a fatal access_denied alert, both
  connections are closed; `refused(context, first, second, why)` records the decision first.

Client bytes are passed on in whole TLS records while the watching lasts; the server's unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mitmproxy import connection
from mitmproxy.proxy import commands, events, layer
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layers import ClientTLSLayer, ServerTLSLayer
from mitmproxy.tls import ClientHello

from geoblock.core.names import InvalidHost, normalize_host
from geoblock.mitm import hold
from geoblock.mitm.enforce import TLS_ACCESS_DENIED
from geoblock.mitm.observe import MalformedClientHello, client_hello_of, sni_problem

__all__ = ["HRR_RANDOM", "HelloShown", "WatchHello", "shown"]

# ServerHello.random of a HelloRetryRequest (RFC 8446 section 4.1.3): SHA-256 of "HelloRetryRequest".
HRR_RANDOM = bytes.fromhex("cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c")

CHANGE_CIPHER_SPEC, ALERT, HANDSHAKE, APPLICATION_DATA = 20, 21, 22, 23
CLIENT_HELLO, SERVER_HELLO = 1, 2
EXT_ECH = 0xFE0D
RECORD_HEADER = 5
MAX_RECORD = 2**14 + 2048  # TLSCiphertext.length limit (RFC 8446 section 5.2)
# What of a ServerHello tells a HelloRetryRequest: message type, length (3), legacy_version (2), random (32).
SERVER_HELLO_HEAD = 4 + 2 + 32


@dataclass(frozen=True)
class HelloShown:
    """What one ClientHello shows of where it goes: `name`, its server_name normalised (a host name or an
    address as text; None: no server_name extension), `raw`, the server_name as sent (None: none), and
    `ech`, whether it carries the Encrypted Client Hello extension (0xfe0d)."""

    name: str | None
    raw: str | None
    ech: bool

    def describe(self) -> str:
        """The name for a reason sentence: the name, else "no name"."""
        return self.name if self.name is not None else "no name"


def shown(hello: ClientHello) -> HelloShown:
    """What `hello` (mitmproxy's parsed ClientHello) shows. Raises InvalidHost for a server_name extension
    that cannot be read as one host name (observe.sni_problem) or whose name is not a valid host."""
    problem = sni_problem(hello.extensions, hello.sni)
    if problem is not None:
        raise problem
    name = None if hello.sni is None else str(normalize_host(hello.sni))
    return HelloShown(name=name, raw=hello.sni, ech=any(t == EXT_ECH for t, _ in hello.extensions))


def changed(first: HelloShown, second: HelloShown) -> str | None:
    """Why the second ClientHello after a HelloRetryRequest may not go on (a sentence part), or None."""
    if first.name != second.name:
        return f"changed the name from {first.describe()} to {second.describe()}"
    if second.ech and not first.ech:
        return f"added Encrypted Client Hello (name {first.describe()})"
    return None


# What records a refusal: (context, the first ClientHello's showing, the second's or None when it could not
# be read, why: a sentence) -> whether the refusal is enforced (False in monitor mode).
Refused = Callable[[Context, HelloShown, "HelloShown | None", str], bool]


class WatchHello(layer.Layer):
    """The layer above `child` (the layer relaying an allowed TLS handshake undecrypted) on `context`,
    which `nextlayer` (the NextLayer that chose it) hands every event to. `first`: what the judged first
    ClientHello showed. `refused` records a refusal (see the module docstring). Once the watching ends it
    puts `child` in its place in `nextlayer`, so that later events cost nothing more."""

    def __init__(self, context: Context, child: layer.Layer, nextlayer: layer.NextLayer, first: HelloShown,
                 refused: Refused) -> None:
        super().__init__(context)
        # Kept out of the context's layer stack: the TLS layers below find their parent there by position.
        self.context.layers.remove(self)
        self.child = child
        self.nextlayer = nextlayer
        self.first = first
        self.refused_cb = refused
        self.watching = True
        self.refused = False
        self.client_buf = bytearray()  # client bytes not yet passed on (an incomplete record, a held hello)
        self.held = bytearray()  # whole client records held while the second ClientHello is incomplete
        self.client_hs = bytearray()  # the client's handshake stream, from its first message on
        self.first_len: int | None = None  # length of the first ClientHello (header included)
        self.server_buf = bytearray()
        self.server_hs = bytearray()  # the server's handshake stream, up to SERVER_HELLO_HEAD bytes
        self.server_left = 0  # payload bytes of the server's current record still to come
        self.retry = False  # the server sent a HelloRetryRequest

    def __repr__(self) -> str:
        return f"WatchHello({self.child!r})"

    # ---------------------------------------------------------------------------- events

    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        if self.refused:
            return
        if not self.watching or not isinstance(event, events.DataReceived):
            yield from self.child.handle_event(event)
            return
        if event.connection is self.context.server or event.connection == self.context.server:
            yield from self.child.handle_event(event)  # the server's bytes go on unchanged
            if self.watching and not self.refused:
                self._server_data(event.data)
                if not self.watching:
                    yield from self._stop()
            return
        if event.connection is not self.context.client and event.connection != self.context.client:
            yield from self.child.handle_event(event)
            return
        self.client_buf += event.data
        yield from self._client_records()

    def _stop(self) -> layer.CommandGenerator[None]:
        """The watching has ended: pass on what was held, and leave the stack."""
        rest = bytes(self.held + self.client_buf)
        self.held.clear()
        self.client_buf.clear()
        if rest:
            yield from self.child.handle_event(events.DataReceived(self.context.client, rest))
        self._splice()

    def _splice(self) -> None:
        """Put the child in this layer's place in its NextLayer (mitmproxy's NextLayer, once it has a layer,
        hands events straight to that layer's handle_event). Left as it is where that is not so."""
        nl = self.nextlayer
        mine = self.handle_event
        if getattr(nl, "layer", None) is self and getattr(nl, "_handle", None) == mine:
            nl.layer = self.child
            nl.handle_event = nl._handle_event = nl._handle = self.child.handle_event  # type: ignore[method-assign]

    def _intercepted(self) -> bool:
        """Whether mitmproxy's TLS layers below terminate the client's TLS themselves (an addon chose to
        decrypt after all): then the bytes seen are not the client's handshake with the server."""
        client_tls = self.child.child_layer if isinstance(self.child, ServerTLSLayer) else None
        return isinstance(client_tls, ClientTLSLayer) and client_tls.conn is self.context.client

    # ---------------------------------------------------------------------------- server

    def _server_data(self, data: bytes) -> None:
        """Read the server's first handshake message from its records; end the watching unless it is a
        HelloRetryRequest."""
        if self.retry:
            return
        if self._intercepted():
            self.watching = False
            return
        self.server_buf += data
        while len(self.server_hs) < SERVER_HELLO_HEAD and self.server_buf:
            if self.server_left == 0:
                if len(self.server_buf) < RECORD_HEADER:
                    return
                if self.server_buf[0] != HANDSHAKE:  # an alert, or no TLS: no ClientHello is accepted after it
                    self.watching = False
                    return
                self.server_left = int.from_bytes(self.server_buf[3:5], "big")
                del self.server_buf[:RECORD_HEADER]
                continue
            take = min(self.server_left, len(self.server_buf))
            self.server_hs += self.server_buf[:take]
            del self.server_buf[:take]
            self.server_left -= take
        if len(self.server_hs) < SERVER_HELLO_HEAD:
            return
        hs = self.server_hs
        if hs[0] != SERVER_HELLO or bytes(hs[6:38]) != HRR_RANDOM:
            self.watching = False
            return
        self.retry = True
        self.server_buf.clear()

    # ---------------------------------------------------------------------------- client

    def _client_records(self) -> layer.CommandGenerator[None]:
        """Pass on the client's whole records, holding the second ClientHello until it can be checked."""
        out = bytearray()
        while len(self.client_buf) >= RECORD_HEADER:
            ctype = self.client_buf[0]
            length = int.from_bytes(self.client_buf[3:5], "big")
            if ctype not in (CHANGE_CIPHER_SPEC, ALERT, HANDSHAKE, APPLICATION_DATA) or length > MAX_RECORD:
                yield from self._flush(out)
                yield from self._refuse(None, "bytes that are not a TLS record where a ClientHello may come")
                return
            if len(self.client_buf) < RECORD_HEADER + length:
                break
            record = bytes(self.client_buf[:RECORD_HEADER + length])
            del self.client_buf[:RECORD_HEADER + length]
            if ctype != HANDSHAKE:
                (self.held if self.held else out).extend(record)
                continue
            self.client_hs += record[RECORD_HEADER:]
            if self.first_len is None and len(self.client_hs) >= 4:
                self.first_len = 4 + int.from_bytes(self.client_hs[1:4], "big")
            if self.first_len is None or len(self.client_hs) <= self.first_len:
                out += record  # the first ClientHello, already judged
                continue
            if not self.retry:
                yield from self._flush(out)
                self.held += record
                yield from self._refuse(None, "the client sent another handshake message before the server "
                                              "answered its ClientHello")
                return
            yield from self._flush(out)
            self.held += record
            verdict = yield from self._second_hello()
            if verdict is not None:
                return
        yield from self._flush(out)

    def _flush(self, out: bytearray) -> layer.CommandGenerator[None]:
        if out:
            data = bytes(out)
            out.clear()
            yield from self.child.handle_event(events.DataReceived(self.context.client, data))

    def _second_hello(self) -> layer.CommandGenerator[bool | None]:
        """Check the second ClientHello once whole: True when it went on (the watching ended), False when
        refused, None while it is incomplete."""
        assert self.first_len is not None
        second = bytes(self.client_hs[self.first_len:])
        if len(second) < 4:
            return None
        whole = 4 + int.from_bytes(second[1:4], "big")
        if whole > hold.LIMIT:
            yield from self._refuse(None, f"the second ClientHello after a HelloRetryRequest is larger "
                                          f"({whole} bytes) than geoblock holds ({hold.LIMIT})")
            return False
        if len(second) < whole:
            return None
        if second[0] != CLIENT_HELLO:
            yield from self._refuse(None, "the client's answer to a HelloRetryRequest is not a ClientHello")
            return False
        message = second[:whole]
        try:
            # One handshake record around the message, for the shared parser (it reassembles records).
            hello, _ = client_hello_of(_records(message))
            now = shown(hello)
        except (MalformedClientHello, InvalidHost) as exc:
            yield from self._refuse(None, f"the second ClientHello after a HelloRetryRequest cannot be read ({exc})")
            return False
        why = changed(self.first, now)
        if why is not None:
            yield from self._refuse(now, f"the second ClientHello after a HelloRetryRequest {why}")
            return False
        self.watching = False
        yield from self._stop()
        return True

    def _refuse(self, second: HelloShown | None, why: str) -> layer.CommandGenerator[None]:
        """Record the refusal (`refused`); when it is enforced, send the client a fatal access_denied
        alert and close both connections, else (monitor mode) relay on unwatched."""
        self.watching = False
        if not self.refused_cb(self.context, self.first, second, why):
            yield from self._stop()
            return
        self.refused = True
        self.client_buf.clear()
        self.held.clear()
        yield commands.SendData(self.context.client, TLS_ACCESS_DENIED)
        yield commands.CloseConnection(self.context.client)
        if self.context.server.state is not connection.ConnectionState.CLOSED:
            yield commands.CloseConnection(self.context.server)

def _records(message: bytes) -> bytes:
    """`message` (one handshake message) in TLS handshake records of at most 2**14 bytes each."""
    out = bytearray()
    for i in range(0, len(message), 2**14):
        part = message[i:i + 2**14]
        out += bytes([HANDSHAKE, 3, 1]) + len(part).to_bytes(2, "big") + part
    return bytes(out)
