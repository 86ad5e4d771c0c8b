"""Layers: every layer choice of a connection, and the judgement of what its first bytes show.

geoblock's `next_layer` hook runs before mitmproxy's own and takes every layer decision
(`LayerJudge.next_layer`): the first bytes are held until they show what the stream is
(`hold.HoldFirstBytes`), a TLS ClientHello is judged here on its SNI (stage "tls"), mitmproxy's own choice
is asked for (`choose.Chooser`), and whatever it chose is judged by one owner: HTTP by the request hooks
(`httpjudge.HttpJudge`), anything else here as a stream that shows no name (stage "stream").
`tls_clienthello` then lets through undecrypted only what was judged allowed.
"""

from __future__ import annotations

from collections.abc import Callable

from mitmproxy import connection
from mitmproxy.proxy import layer as mlayer
from mitmproxy.proxy import mode_specs
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layers import tls as mtls

from geoblock.core.model import Facts, Stage, Verdict
from geoblock.core.names import InvalidHost, normalize_host
from geoblock.engine import CannotJudge
from geoblock.mitm import enforce, hold, relay
from geoblock.mitm.choose import Chooser, judged_later
from geoblock.mitm.judging import Judging, guarded
from geoblock.mitm.observe import (
    client_facts,
    client_hello_of,
    ech_of,
    mismatch_of,
    name_under,
    peer_ip,
    port_of,
    shows_http_version,
    sni_name,
    sni_problem,
)
from geoblock.mitm.sessions import BlockedTunnel, ConnState
from geoblock.record import RecordExtra

FIRST_BYTES_RECORDED = 16  # of a stream that is neither HTTP nor TLS, in its record (hex)


class LayerJudge:
    """The `next_layer` and `tls_clienthello` hooks, over the adapter's shared `Judging`."""

    def __init__(self, judging: Judging) -> None:
        self.judging = judging
        self.chooser = Chooser()  # mitmproxy's own layer choice, asked by next_layer
        # Asked for each allowed ClientHello. The gateway runner (mitm/run.py) answers True while geoblock
        # is the only addon with a tls_clienthello hook (apart from mitmproxy's tlsconfig, which has
        # nothing to do for a handshake passed through): an allowed ClientHello that is not to be
        # decrypted then goes straight to a raw relay (Chooser.pass_through) instead of through
        # mitmproxy's TLS layers, which would parse it again, ask tls_clienthello and relay the same
        # bytes through two idle TLS layers. mitmdump with the script: always False.
        self.direct_pass: Callable[[], bool] = lambda: False

    @guarded("stream", "refuse")
    async def next_layer(self, nextlayer: mlayer.NextLayer) -> None:
        """Choose the connection's next layer, and judge it before a byte is relayed.

        Every layer choice goes through here (geoblock's hook runs before mitmproxy's own, and takes its
        decision): the first bytes are held until they show what the stream is (hold.HoldFirstBytes),
        a ClientHello is judged on its SNI, mitmproxy's own choice is asked for (`Chooser`), and whatever
        it chose is judged by one owner: HTTP by the request hooks, request by request (a first line with
        an HTTP version is read as HTTP whatever mitmproxy guessed); anything else (raw TCP or UDP, QUIC,
        DNS relayed to the connection's server, a layer mitmproxy adds later) here, as a stream that
        shows no name. The hold's bounds (LIMIT bytes, geoblock_hold_timeout) end in on_error."""
        if nextlayer.layer is not None:
            return
        context, data = nextlayer.context, nextlayer.data_client()
        shows = hold.stream_state(data) if context.client.transport_protocol == "tcp" else hold.OTHER
        if not isinstance(nextlayer, hold.Replayed) and hold.must_hold(shows, data):
            nextlayer.layer = hold.HoldFirstBytes(context, self._hold_timeout)
            return
        state = self.judging.sessions.of(context.client)
        if shows == hold.MORE:  # the hold ran out of time or room: judged on what it has (on_error)
            expired = isinstance(nextlayer, hold.Replayed) and nextlayer.expired
            why = hold.why_incomplete(data, expired, self._hold_timeout)
            return self._deny_stream(nextlayer, await self._judge_stream(context, state, data, incomplete=why))
        if shows == hold.TLS and context.server.address is not None:  # no address: a handshake with the proxy
            if not await self._tls_may_go_on(nextlayer, state, data):
                return
        chosen = self.chooser.choose(context, data, nextlayer.data_server())
        if chosen is None:
            return  # mitmproxy needs more bytes too; asked again with them
        if shows == hold.TLS and state.hello is not None and self._passes(state, context):
            if self.direct_pass():
                chosen = self.chooser.pass_through(context, chosen, state.hello)
            # Passed through undecrypted: watched until no second ClientHello can come (relay.WatchHello).
            chosen = relay.WatchHello(context, chosen, nextlayer, relay.shown(state.hello), self._hello_changed)
        if shows != hold.TLS and not judged_later(chosen):
            if shows_http_version(data):
                chosen = self.chooser.http_instead(context, chosen)  # a request line mitmproxy took for raw TCP
            else:
                verdict = await self._judge_stream(context, state, data)
                if self.judging.enforcing(verdict):
                    return self._deny_stream(nextlayer, verdict)
        nextlayer.layer = chosen

    def _hello_changed(self, context: Context, first: relay.HelloShown, second: relay.HelloShown | None,
                       why: str) -> bool:
        """Record the refusal of a connection whose second ClientHello (after a HelloRetryRequest) does not
        show what the first, judged one showed (relay.WatchHello): stage "tls", rule
        "policy:hello-retry", the second ClientHello's SNI (None when it could not be read) and names.
        Returns whether it is enforced (not in monitor mode)."""
        state = self.judging.sessions.of(context.client)
        facts = client_facts("tls", context.client, port_of(context.server.address))
        shown = [sni_name(second.raw) if second else None, sni_name(first.raw), state.connect_name]
        facts.names = tuple(dict.fromkeys(n for n in shown if n))
        facts.sni = second.raw if second else None
        facts.host = state.connect_name
        facts.server_ip = peer_ip(context.server.peername) or state.connect_ip
        self.judging.place(facts)
        verdict = Verdict(action="block", rule="policy:hello-retry", offshore=None,
                          name=facts.names[0] if facts.names else None,
                          reason=f"{why}: a retried handshake must show the name that was judged (RFC 8446 "
                                 f"section 4.1.2)")
        self.judging.record(facts, verdict)
        if not self.judging.enforcing(verdict):
            return False
        state.blocked = verdict
        return True

    def _passes(self, state: ConnState, context: Context) -> bool:
        """Whether the ClientHello just judged on `context` goes through undecrypted: allowed (or only
        logged), no geoblock_intercept, no blocked tunnel kept for the page (what tls_clienthello decides)."""
        return (state.tls_judged.get(context) is True and state.blocked_tunnel is None
                and not (self.judging.settings and self.judging.settings.intercept))

    @property
    def _hold_timeout(self) -> float:
        return self.judging.settings.hold_timeout if self.judging.settings else 10.0

    def _deny_stream(self, nextlayer: mlayer.NextLayer, verdict: Verdict) -> None:
        if self.judging.enforcing(verdict):
            self.judging.sessions.of(nextlayer.context.client).blocked = verdict
            nextlayer.layer = enforce.DenyStream(nextlayer.context)

    async def _tls_may_go_on(self, nextlayer: mlayer.NextLayer, state: ConnState, data: bytes) -> bool:
        """Judge the ClientHello in `data` (stage tls, its own guard); False when the layer choice ends
        here (refused with a TLS alert)."""
        context = nextlayer.context
        if state.blocked_tunnel is not None:  # blocked at CONNECT: mitmproxy ends its TLS (BlockedTunnel)
            state.tls_judged[context] = False
            return True
        try:
            verdict, facts = await self._judge_client_hello(context, state, data)
        except Exception as exc:  # noqa: BLE001 - the guard, for the tls stage
            self.judging.on_error("tls", nextlayer, exc, self.refuse)
            return False
        if not self.judging.enforcing(verdict):
            return True
        state.blocked = verdict
        if facts is not None and self.end_blocked_tunnel(state, context.client, "tls", facts, verdict):
            return True
        nextlayer.layer = enforce.DenyTLS(context)
        return False

    async def _judge_client_hello(self, context: Context, state: ConnState,
                                  data: bytes) -> tuple[Verdict, Facts | None]:
        """Judge a whole ClientHello (`data`, its TLS records) at this layer: SNI, CONNECT target,
        destination, ECH. Returns the verdict and the facts it was reached on (None for an SNI that is
        not a host name: on_error decided). Raises observe.MalformedClientHello on a malformed one."""
        hello, _ = client_hello_of(data)
        state.tls_judged[context] = False
        state.hello = hello
        facts = client_facts("tls", context.client, port_of(context.server.address))
        state.learn_destination(context)
        problem = sni_problem(hello.extensions, hello.sni)
        if problem is not None:  # a server_name mitmproxy cannot read is not "no SNI"
            facts.sni = str(problem.value)
            return self.judging.invalid(facts, problem, "SNI"), None
        names: list[str] = []
        outer: str | None = None  # this ClientHello's SNI as a name (None: absent or an address)
        if hello.sni is not None:
            facts.sni = hello.sni
            try:
                sni = normalize_host(hello.sni)
            except InvalidHost as exc:
                return self.judging.invalid(facts, exc, "SNI"), None
            if isinstance(sni, str):
                names.append(sni)
                state.sni = outer = sni
        if state.connect_name and state.connect_name not in names:
            names.append(state.connect_name)
        facts.names = tuple(names)
        seen = ech_of(hello.extensions, outer, self._fronts_ech)
        if seen is not None:  # a placeholder (GREASE) is recorded, not judged as a hidden name
            facts.ech, facts.ech_grease, facts.ech_why = seen.hides_name, not seen.hides_name, seen.why
        if state.sni and state.connect_name:
            facts.mismatch = mismatch_of([("SNI", state.sni), ("CONNECT target", state.connect_name)])
        facts.host = state.connect_name
        facts.server_ip = await self.judging.resolve(state, state.connect_name, state.connect_ip, facts.names)
        verdict = self.judging.judge(facts)
        self.judging.record(facts, verdict)
        state.tls_judged[context] = not self.judging.enforcing(verdict)
        return verdict, facts

    async def _judge_stream(self, context: Context, state: ConnState, data: bytes,
                            incomplete: str | None = None) -> Verdict:
        """Judge a stream that is neither HTTP nor TLS (stage "stream"): on its destination and the names
        the connection showed before it (a CONNECT target; the SNI of TLS geoblock decrypted), with the
        policy's `unreadable` verdict when that is stricter. `incomplete`: why the first bytes never
        showed what the stream is; the policy's `on_error` verdict then applies, recorded with an error."""
        state.learn_destination(context)
        sni = state.destination_sni(context.client)
        names = [n for n in (sni_name(sni), state.connect_name) if n]
        facts = client_facts("stream", context.client, port_of(context.server.address))
        facts.names, facts.host, facts.sni = tuple(dict.fromkeys(names)), state.connect_name, sni
        facts.server_ip = await self.judging.resolve(state, state.connect_name, state.connect_ip, facts.names)
        extra: RecordExtra = {"first_bytes": data[:FIRST_BYTES_RECORDED].hex(),
                                 "transport": context.client.transport_protocol}
        if state.blocked is not None and incomplete is None:
            # A tunnel geoblock blocked but ends itself (BlockedTunnel): whatever it carries is refused
            # for the reason the connection was blocked, not judged anew on its names.
            self.judging.place(facts)
            blocked = state.blocked
            verdict = Verdict(action="block", rule=blocked.rule, reason=f"the connection is blocked: {blocked.reason}",
                              offshore=blocked.offshore, name=blocked.name)
        elif incomplete is None:
            verdict = self.judging.judge(facts)
        else:
            self.judging.place(facts)
            verdict = self.judging.on_error_verdict(incomplete)
            extra["error"] = "incomplete-first-bytes"
        self.judging.record(facts, verdict, extra)
        return verdict

    def end_blocked_tunnel(self, state: ConnState, client: connection.Client, stage: Stage, facts: Facts,
                            verdict: Verdict) -> bool:
        """With geoblock_intercept, keep a tunnel just judged blocked open so that its requests get the
        451 page over TLS (BlockedTunnel); the next_layer hook then puts in place the TLS layer mitmproxy
        chooses, which completes the client's handshake with its own certificate for the name. Its
        `upstream_cert` would first dial the server for that server's certificate only where
        mitmproxy's tlsconfig asks to establish server TLS first, which it does only with
        connection_strategy=eager (mitmproxy 11.0.2 and 12.3.1); geoblock keeps it lazy, and
        server_connect refuses a blocked connection anyway (mitmproxy then completes the client's
        handshake without the server's certificate). Only in the explicit and transparent proxy modes:
        elsewhere (an upstream proxy) the tunnel would be mitmproxy's to open. Not for a ClientHello
        refused because it uses Encrypted Client Hello (the `ech` policy): mitmproxy cannot accept ECH,
        and a client that really sent it aborts a handshake that did not (RFC 9849 section 6.1.6), so
        it gets the TLS alert at once. Returns whether the tunnel is kept for the page; False: refuse it
        as without interception."""
        modes = (mode_specs.RegularMode, mode_specs.TransparentMode)
        if not self.judging.intercept or verdict.rule == "policy:ech" or not isinstance(client.proxy_mode, modes):
            return False
        state.blocked_tunnel = BlockedTunnel(stage, facts, verdict)
        return True

    @guarded("tls", "refuse_hello")
    async def tls_clienthello(self, data: mtls.ClientHelloData) -> None:
        state = self.judging.sessions.get(data.context.client)
        allowed = state.tls_judged.get(data.context) if state is not None else None
        if allowed is None:
            if data.context.server.address is None:  # a handshake with the proxy itself (secure web proxy)
                self.judging.sessions.of(data.context.client).proxy_sni = data.client_hello.sni
                return  # what it carries is judged
            # The ClientHello reached TLS without geoblock judging it: never pass it through blindly.
            raise CannotJudge("a TLS handshake reached the TLS layer before geoblock judged it")
        if not allowed:
            data.ignore_connection = False
        elif not (self.judging.settings and self.judging.settings.intercept):
            data.ignore_connection = True

    def refuse(self, nextlayer: mlayer.NextLayer, verdict: Verdict) -> None:
        """A layer choice: a TLS alert for what may be a ClientHello, else the connection closed."""
        self.judging.sessions.of(nextlayer.context.client).blocked = verdict
        first = nextlayer.data_client()
        tls = hold.may_be_client_hello(first) or hold.starts_like_other_record(first)
        nextlayer.layer = (enforce.DenyTLS if tls else enforce.DenyStream)(nextlayer.context)

    def refuse_hello(self, data: mtls.ClientHelloData, verdict: Verdict) -> None:
        """A ClientHello at the TLS layer: never passed through undecrypted (the handshake is mitmproxy's)."""
        self.judging.sessions.of(data.context.client).blocked = verdict
        data.ignore_connection = False

    def _fronts_ech(self, name: str) -> bool:
        """Whether `name` fronts Encrypted Client Hello: under the policy's ech_public_names, or a public
        name seen in an ECH configuration in a DNS answer geoblock served."""
        engine = self.judging.engine
        fronts = engine is not None and name_under(name, engine.ruleset.policy.ech_public_names)
        return fronts or name in self.judging.ech_names

