"""HTTP: the CONNECT target, and every request of plain or decrypted HTTP (request target, Host,
`:authority`), judged request by request; a protocol switch geoblock cannot follow is refused.

A keep-alive request that shows exactly what the connection's previous request showed, under the same
ruleset, databases and options, takes that verdict again (`sessions.HttpMemo`) and is still recorded
and enforced.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any

from mitmproxy import connection, http

from geoblock.core.model import Facts, Stage, Verdict
from geoblock.core.names import InvalidHost, normalize_host
from geoblock.mitm import dial, enforce
from geoblock.mitm.judging import Judging, guarded, guarded_sync
from geoblock.mitm.observe import InvalidField, client_facts, http_target, uri_authority
from geoblock.mitm.sessions import BlockedTunnel, ConnState, HttpMemo
from geoblock.record import RecordExtra

EndTunnel = Callable[[ConnState, connection.Client, Stage, Facts, Verdict], bool]


class HttpJudge:
    """The `http_connect`, `requestheaders` and `response` hooks, over the adapter's shared `Judging`.
    `end_blocked_tunnel`: LayerJudge.end_blocked_tunnel (geoblock_intercept keeps a blocked tunnel for
    the page)."""

    def __init__(self, judging: Judging, end_blocked_tunnel: EndTunnel) -> None:
        self.judging = judging
        self.end_blocked_tunnel = end_blocked_tunnel

    @guarded("connect", "refuse")
    async def http_connect(self, flow: http.HTTPFlow) -> None:
        state = self.judging.sessions.of(flow.client_conn)
        facts = client_facts("connect", flow.client_conn, flow.request.port)
        try:
            target = normalize_host(flow.request.host)
        except InvalidHost as exc:
            return self.judging.enforce(self.judging.invalid(facts, exc, "CONNECT target"), self.refuse, flow)
        if isinstance(target, str):
            state.connect_name = target
            facts.names = (target,)
            facts.host = target
        else:
            state.connect_ip = target
            facts.host = flow.request.host  # the address as the client spelt it (decimal, NAT64, ...)
        facts.server_ip = await self.judging.resolve(state, state.connect_name, state.connect_ip, facts.names)
        verdict = self.judging.judge(facts)
        self.judging.record(facts, verdict)
        if self.judging.enforcing(verdict):
            state.blocked = verdict
            if not self.end_blocked_tunnel(state, flow.client_conn, "connect", facts, verdict):
                flow.response = enforce.connect_refusal(verdict, self.judging.blocked_by)

    def requestheaders(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        """Judge an HTTP request. A request that the connection's last judgement covers (HttpMemo) is
        recorded and enforced here and now; any other is judged by the coroutine returned, which
        mitmproxy awaits (a hook may return an awaitable). Both are guarded as every hook is."""
        try:
            request = flow.request
            state = self.judging.sessions.of(flow.client_conn)
            if state.blocked_tunnel is not None:
                self._answer_blocked_tunnel(flow, state.blocked_tunnel)
                return None
            data = request.data  # the URI authority as received: decoded (uri_authority) only when judged anew
            sni = state.destination_sni(flow.client_conn)
            path = data.path
            shows = (request.host, request.host_header, data.authority, data.http_version, sni, state.connect_ip,
                     None if path[:1] == b"/" else path,  # an absolute :path (HTTP/2, 3) names a server too
                     data.port)  # the same verdict, but the record's server_port
            memo = state.http_memo
            if memo is None or memo.generation != self.judging.verdict_generation() or memo.shows != shows:
                state.http_memo = None
                return self._judge_request(flow, state, shows)
            memo.line_rest = self.judging.record(memo.facts, memo.verdict, again=memo.line_rest)
            self._enforce_request(flow, state, memo.facts, memo.verdict, memo.target_name)
        except Exception as exc:  # noqa: BLE001 - the guard (see guarded)
            self.judging.on_error("http", flow, exc, self.refuse)
        return None

    @guarded("http", "refuse")
    async def _judge_request(self, flow: http.HTTPFlow, state: ConnState, shows: tuple[Any, ...]) -> None:
        request = flow.request
        host_header, sni = shows[1], shows[4]
        facts = client_facts("http", flow.client_conn, request.port)
        facts.host, facts.sni = host_header, sni
        try:
            target = http_target(request.host, host_header, sni, uri_authority(request))
        except InvalidField as exc:
            return self.judging.enforce(self.judging.invalid(facts, exc.cause, exc.field), self.refuse, flow)
        facts.names = target.names
        facts.mismatch = target.mismatch
        # The request target is what mitmproxy dials: its IP, or its name resolved, places the server.
        name, ip = target.target_name, target.target_ip or state.connect_ip
        generation = self.judging.verdict_generation()
        facts.server_ip = await self.judging.resolve(state, name, ip, facts.names)
        verdict = self.judging.judge(facts)
        rest = self.judging.record(facts, verdict)
        # Kept unless the ruleset, databases or options changed while the name was resolved (the address
        # was sought for the old ruleset), or RDAP may place the server for a later request.
        if generation == self.judging.verdict_generation() and not self.judging.may_place_later(facts):
            state.http_memo = HttpMemo(shows, generation, facts, verdict, name, rest)
        self._enforce_request(flow, state, facts, verdict, name)

    def _answer_blocked_tunnel(self, flow: http.HTTPFlow, tunnel: BlockedTunnel) -> None:
        """A request inside a tunnel judged blocked (BlockedTunnel): the 451 page for the tunnel's
        verdict, whatever the request shows; recorded at stage http with its Host and SNI, the tunnel's
        server and verdict, and `blocked_at` (the stage that blocked the tunnel)."""
        request, verdict = flow.request, tunnel.verdict
        facts = replace(tunnel.facts, stage="http", host=request.host_header, sni=flow.client_conn.sni,
                        ech=False, mismatch=None, server_port=request.port)
        self.judging.record(facts, verdict, RecordExtra(blocked_at=tunnel.stage))
        flow.response = self.judging.block_page(verdict, verdict.name or request.host_header or request.host,
                                                request)

    def _enforce_request(self, flow: http.HTTPFlow, state: ConnState, facts: Facts, verdict: Verdict,
                         name: str | None) -> None:
        if self.judging.enforcing(verdict):
            request = flow.request
            flow.response = self.judging.block_page(verdict, verdict.name or request.host_header or request.host,
                                                    request)
        elif name is not None and facts.server_ip is not None and state.resolved.get(name) == facts.server_ip:
            dial.send_to_judged_address(flow, facts.server_ip, state)

    @guarded_sync("http", "refuse")
    def response(self, flow: http.HTTPFlow) -> None:
        """Refuse a protocol switch geoblock cannot follow. After `101 Switching Protocols` mitmproxy
        relays anything but WebSocket as raw TCP (an `h2c` upgrade it did not strip, any other
        protocol): later requests on the connection (HTTP/2 streams with another `:authority`, ...) would
        cross unjudged. Such a flow is killed: the client gets no 101 and the connection is closed, to the
        server too, which may already speak the new protocol. (A 502 in its place would leave mitmproxy
        reading that protocol as HTTP/1.) WebSocket messages show no new name and go on as mitmproxy
        relays them."""
        response = flow.response
        if response is None or response.status_code != 101 or flow.websocket is not None:
            return
        protocol = response.headers.get("upgrade", "")
        facts = client_facts("http", flow.client_conn, flow.request.port)
        facts.host, facts.sni = flow.request.host_header, flow.client_conn.sni
        verdict = Verdict(action="block", rule=None, offshore=None, name=None,
                          reason=f"the server switched the connection to {protocol or 'another protocol'!r} "
                                 f"(HTTP 101); geoblock judges HTTP request by request and refuses a switch to a "
                                 f"protocol it does not read (WebSocket excepted)")
        self.judging.record(facts, verdict, RecordExtra(upgrade=protocol))
        if self.judging.enforcing(verdict):
            self.judging.sessions.of(flow.client_conn).blocked = verdict
            flow.kill()

    def refuse(self, flow: http.HTTPFlow, verdict: Verdict) -> None:
        """A CONNECT (451 with no tunnel) or a request (the 451 page); nothing on the connection is dialled."""
        self.judging.sessions.of(flow.client_conn).blocked = verdict
        request = flow.request
        if request.method == "CONNECT":
            flow.response = enforce.connect_refusal(verdict, self.judging.blocked_by)
        else:  # a request that could not be judged: its target as mitmproxy read it
            flow.response = self.judging.block_page(verdict, request.host, request)
