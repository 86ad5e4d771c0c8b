"""What geoblock keeps per client connection, for as long as the connection lives.

`Sessions` maps mitmproxy's `connection.Client` to its `ConnState`: an entry goes with its connection
object (as in mitmproxy's own proxyauth addon), and `client_disconnected` drops it at once. A TLS
judgement is kept per layer context (`tls_judged`), since TLS inside a tunnel inside TLS is a new
ClientHello to judge.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

from mitmproxy import connection
from mitmproxy.proxy.context import Context
from mitmproxy.tls import ClientHello

from geoblock.core.model import Facts, Stage, Verdict
from geoblock.core.names import IPAddress, normalize_host
from geoblock.engine import Session


@dataclass(frozen=True, slots=True)
class BlockedTunnel:
    """A tunnel judged blocked that geoblock ends itself, with `geoblock_intercept` on (explicit proxy
    CONNECT, or a ClientHello whose SNI is blocked): the CONNECT is accepted, the client's TLS handshake
    is completed by mitmproxy with its certificate for the name (as Squid does with ssl_bump and
    deny_info), and every request inside is answered with the 451 page, whatever its Host. Nothing in it
    is forwarded: the connection is also `ConnState.blocked`, so server_connect refuses any dial.

    `stage` is the stage whose verdict blocked the tunnel ("connect" or "tls"), `facts` and `verdict`
    that judgement; each request is recorded with them (`blocked_at`: the stage)."""

    stage: Stage
    facts: Facts
    verdict: Verdict


@dataclass(slots=True)
class HttpMemo:
    """The judgement of an HTTP request, kept for the next request on the same connection.

    A keep-alive client usually sends the same target, Host and SNI again and again. The verdict is a
    pure function of what the request shows, what the connection showed before (its CONNECT address
    and the names geoblock resolved for it, both fixed for the connection's life) and the ruleset,
    databases and options in force (the addon's generation changes with any of them): when all of these
    are the same as last time, so is the verdict. The request is still recorded, counted and enforced;
    only the line's time differs."""

    shows: tuple[Any, ...]  # request target, Host, URI authority, HTTP version, SNI, CONNECT address, path
    generation: tuple[int, int]  # what it was judged under (Judging.verdict_generation)
    facts: Facts
    verdict: Verdict
    target_name: str | None
    line_rest: bytes | None  # the record's line after its timestamp (DecisionLog.write)


@dataclass
class ConnState:
    """What geoblock knows about one client connection."""

    connect_name: str | None = None  # the destination's name: CONNECT target, or the address dialled
    connect_ip: IPAddress | None = None  # the destination's address: CONNECT or transparent destination
    blocked: Verdict | None = None  # the connection was judged blocked: nothing on it is dialled
    # The ClientHellos judged on this connection, by the layer context that read them: allowed or not.
    tls_judged: weakref.WeakKeyDictionary[Context, bool] = field(default_factory=weakref.WeakKeyDictionary)
    sni: str | None = None  # the last judged ClientHello's SNI, normalised
    hello: ClientHello | None = None  # the last judged ClientHello, as mitmproxy parsed it
    session: Session = field(default_factory=Session)  # names the engine resolved for this connection
    server_names: dict[tuple[str, int], str] = field(default_factory=dict)  # judged address -> TLS name
    http_memo: HttpMemo | None = None  # the last HTTP request's judgement on this connection
    proxy_sni: str | None = None  # the SNI of a handshake with the proxy itself (secure web proxy)
    blocked_tunnel: BlockedTunnel | None = None  # geoblock_intercept: a blocked tunnel ended here

    @property
    def resolved(self) -> dict[str, IPAddress | None]:
        """The names the engine resolved for this connection, to the address judged."""
        return self.session.resolved

    def destination_sni(self, client: connection.Client) -> str | None:
        """The SNI of the client's TLS toward the destination, or None. A handshake with the proxy
        itself (a secure web proxy, before the CONNECT) names the proxy, not where the flow goes."""
        sni = client.sni
        return None if sni is not None and sni == self.proxy_sni else sni

    def learn_destination(self, context: Context) -> None:
        """The destination mitmproxy will dial (`context.server.address`), when no CONNECT or transparent
        hook gave it already. Raises core.names.InvalidHost for an address that is no host."""
        address = context.server.address
        if address and self.connect_name is None and self.connect_ip is None:
            target = normalize_host(address[0])
            if isinstance(target, str):
                self.connect_name = target
            else:
                self.connect_ip = target


class Sessions:
    """`ConnState` per client connection (`connection.Client`), for as long as the connection object lives.

    Kept in a dict by the connection's id, and removed when the connection object is collected
    (`weakref.finalize`), as a `WeakKeyDictionary[connection.Client, ...]` would (mitmproxy's proxyauth
    addon keeps its state that way): the same lifetime, at a tenth of the cost per lookup (a
    WeakKeyDictionary makes a weak reference for every lookup: 380 ns, against 27 ns for this dict, on
    the request hook's path; measured with Python 3.12). `client_disconnected` drops the state at once."""

    def __init__(self) -> None:
        self._states: dict[str, ConnState] = {}

    def of(self, client: connection.Client) -> ConnState:
        """The connection's state, made on first use."""
        state = self._states.get(client.id)
        if state is None:
            state = self._states[client.id] = ConnState()
            weakref.finalize(client, self._states.pop, client.id, None)
        return state

    def get(self, client: connection.Client) -> ConnState | None:
        """The connection's state, or None when geoblock has kept none for it."""
        return self._states.get(client.id)

    def drop(self, client: connection.Client) -> None:
        """Forget the connection (it closed)."""
        self._states.pop(client.id, None)

    def __len__(self) -> int:
        return len(self._states)
