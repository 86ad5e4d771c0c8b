"""The mitmproxy addon: hooks that guard, observe, judge (the engine), record and enforce.

Hooks and what they judge:
- `client_connected` (transparent mode): the original destination address, before any byte is read;
  a block closes the connection without dialling the server;
- `dns_request` (where geoblock serves DNS): the question's name; a block answers NXDOMAIN (or the
  sinkhole address); `dns_response`: every name the answer leads to, and ECH removed from it;
- `http_connect`: the CONNECT target (explicit proxy), answered with 451 when blocked (with
  `geoblock_intercept`: accepted, and the tunnel answered with the block page, see BlockedTunnel);
- `next_layer`: every layer choice: the first bytes are held until they show what the stream is; a
  ClientHello is judged on its SNI (refused with a TLS alert when blocked, before mitmproxy's own layer
  choice, so a blocked handshake is never relayed); a stream that is neither HTTP nor TLS is judged here;
- `tls_clienthello`: allowed TLS passes through undecrypted unless `geoblock_intercept` is set;
- `requestheaders`: Host, :authority and the request target of plain or decrypted HTTP, 451 page;
- `response`: a protocol switch geoblock cannot follow is refused;
- `server_connect`: last line of defence: a connection already judged blocked is never dialled.

Every hook runs under one guard (`guarded`): an exception applies the policy's `on_error` verdict (block
by default), records it, is logged once per cause, and is enforced by the refusal the hook names.

Rules and databases are watched (`geoblock_reload_interval`) and reloaded on change, on SIGHUP and on
the `geoblock.reload` command (Engine.reload: built aside, swapped whole, the last good one kept).
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import functools
import logging
import os
import signal
import struct
import traceback
from dataclasses import replace
from typing import Any, Callable, Coroutine

from mitmproxy import command, connection, ctx, exceptions, http
from mitmproxy.proxy import layer as mlayer
from mitmproxy.proxy import mode_specs
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layers import tls as mtls

from geoblock.core.decide import Facts, Verdict
from geoblock.core.names import IPAddress, InvalidHost, normalize_host
from geoblock.core.rules import RuleError
from geoblock.core.ruleset import Ruleset
from geoblock.engine import CannotJudge, Engine
from geoblock.enrich.geo import Geo
from geoblock.mitm import dial, dnsanswers, dnsforward, enforce, heap, hold
from geoblock.mitm.choose import Chooser, judged_later
from geoblock.mitm.observe import (InvalidField, client_hello_of, client_ip, client_of, ech_of, http_target,
                                   mismatch_of, name_under, peer_ip, shows_http_version, sni_name, sni_problem,
                                   uri_authority)
from geoblock.mitm.options import (DEFAULT_BLOCKED_BY, OPTIONS, OptionProblem, Settings,
                                   keep_mitmproxy_options_geoblock_needs, preflight)
from geoblock.mitm.sessions import BlockedTunnel, ConnState, HttpMemo, Sessions
from geoblock.record import DecisionLog, make_record

__all__ = ["GeoBlock", "OptionProblem", "preflight"]

logger = logging.getLogger("geoblock")

FIRST_BYTES_RECORDED = 16  # of a stream that is neither HTTP nor TLS, in its record (hex)

Refusal = Callable[[Any, Verdict], None]  # enforces a blocking verdict on a hook's object


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def guarded(stage: str, refusal: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Run a hook; on any exception, apply on_error for `stage` (fail closed by default), enforced on the
    hook's object by the addon's method named `refusal`."""

    def wrap(method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        async def hook(self: GeoBlock, obj: Any, *args: Any) -> None:
            try:
                await method(self, obj, *args)
            except Exception as exc:  # noqa: BLE001 - this is the guard
                self._on_error(stage, obj, exc, getattr(self, refusal))

        return hook

    return wrap


class GeoBlock:
    """The addon: options, lifecycle, hooks. What a verdict depends on lives in `engine`."""

    name = "geoblock"  # must not be "block" or "blocklist": those are mitmproxy built-ins

    def __init__(self) -> None:
        self.engine: Engine | None = None
        self.settings: Settings | None = None
        self.log: DecisionLog | None = None
        self.page = enforce.PageTemplate()
        self.sessions = Sessions()
        self.chooser = Chooser()  # mitmproxy's own layer choice, asked by next_layer
        self.ech_names = dnsanswers.EchPublicNames()  # ECH public names seen in DNS answers
        self.errors_seen: dict[str, int] = {}
        self.counts = {"allow": 0, "log": 0, "block": 0, "error": 0}
        self.generation = 0  # +1 with every option change; with the engine's, it dates a verdict (HttpMemo)
        self.serving = False  # running() has run: the start-up heap is in place
        self._watcher: asyncio.Task[None] | None = None
        self._dns_problem: str | None = None  # the last upstream DNS failure logged

    # ------------------------------------------------------------------ options and lifecycle

    def load(self, loader: Any) -> None:
        for name, typespec, default, text in OPTIONS:
            loader.add_option(name, typespec, default, text)

    def configure(self, updated: set[str]) -> None:
        opts = ctx.options
        dnsanswers.resolver_after(self)
        try:
            settings = Settings.parse(opts)
        except ValueError as exc:
            raise exceptions.OptionsError(f"geoblock: {exc}") from exc
        self.settings = settings
        if "geoblock_rules" in updated or self.engine is None:
            self._configure_engine(settings, updated)
        elif updated & {"geoblock_country_db", "geoblock_asn_db"}:
            self.engine.set_databases(settings.country_db, settings.asn_db)
            self._report_geo()
        if updated & {"geoblock_rdap", "geoblock_rdap_url", "geoblock_rdap_timeout"} and self.engine is not None:
            self.engine.set_rdap(settings.rdap_lookups())
        if "geoblock_log" in updated:
            self._configure_log(settings)
        if "geoblock_block_page" in updated:
            try:
                self.page = (enforce.PageTemplate.from_file(settings.block_page) if settings.block_page
                             else enforce.PageTemplate())
            except (OSError, ValueError, KeyError) as exc:
                raise exceptions.OptionsError(f"geoblock: block page template {settings.block_page}: {exc}") from exc
        self.chooser.configure(updated)
        if self.engine is not None:
            self.engine.resolver.timeout = settings.dns_timeout
        if "geoblock_gc_freeze" in updated and self.serving:  # switched while serving: apply it now
            self._settle_heap() if settings.gc_freeze else heap.release()
        self.generation += 1
        keep_mitmproxy_options_geoblock_needs(opts, updated)

    def _configure_engine(self, settings: Settings, updated: set[str]) -> None:
        try:
            ruleset = Ruleset.load(settings.rules)
        except RuleError as exc:
            raise exceptions.OptionsError(f"geoblock: rules refused: {exc}") from exc
        if self.engine is None:
            self.engine = Engine(ruleset, Geo(settings.country_db, settings.asn_db), rules_path=settings.rules,
                                 country_db=settings.country_db, asn_db=settings.asn_db)
        else:
            self.engine.set_ruleset(ruleset, settings.rules)
            if updated & {"geoblock_country_db", "geoblock_asn_db"}:
                self.engine.set_databases(settings.country_db, settings.asn_db)
        rs = ruleset
        for warning in rs.source.warnings:
            logger.warning(f"geoblock: {warning}")
        s = rs.summary()
        logger.info(f"geoblock: ruleset {s['version']}: {s['rules']} rules, {s['domains']} domains from {settings.rules}")
        self._report_geo()

    def _configure_log(self, settings: Settings) -> None:
        if self.log is not None:
            self.log.close()
            self.log = None
        if settings.log:
            try:
                self.log = DecisionLog(settings.log)
            except OSError as exc:
                raise exceptions.OptionsError(
                    f"geoblock: cannot open the decision log {settings.log}: {exc.strerror}") from exc

    def _report_geo(self) -> None:
        engine = self.engine
        if engine is None or engine.geo is None:
            return
        for line in engine.geo.describe():
            logger.info(f"geoblock: {line}")
        for warning in engine.warnings():
            logger.warning(f"geoblock: {warning}")

    def running(self) -> None:
        if self.engine is None:  # configure refused the rules: never serve without them
            logger.error("geoblock: no valid ruleset; shutting down")
            ctx.master.shutdown()
            return
        self.serving = True
        self._settle_heap()
        loop = asyncio.get_running_loop()
        if self._watcher is None:
            self._watcher = loop.create_task(self._watch())
        try:
            loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload(force=True)))
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no signals here
            pass

    def done(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        if self.engine is not None:
            self.engine.close()
        if self.log is not None:
            self.log.close()

    # ------------------------------------------------------------------ reload, status

    async def _watch(self) -> None:
        while True:
            interval = self.settings.reload_interval if self.settings else 2.0
            await asyncio.sleep(interval if interval > 0 else 1.0)
            if interval > 0:
                try:
                    await self.reload()
                except Exception as exc:  # noqa: BLE001 - the watcher must outlive any failure
                    logger.error(f"geoblock: reload failed: {exc}")

    async def reload(self, force: bool = False) -> str:
        """Reload what changed (everything when `force`): Engine.reload. Returns what it did, for a person."""
        if self.engine is None:
            return "no ruleset is loaded"
        done = await self.engine.reload(force)
        if done.rules_swapped:
            self._settle_heap()  # the old ruleset is freed, the new one frozen
        return "\n".join(done.messages) or "nothing changed"

    def _settle_heap(self) -> None:
        if self.settings is None or self.settings.gc_freeze:
            count, ms = heap.settle()
            logger.info(f"geoblock: {count} long-lived objects moved out of the collector's scans in {ms:.0f} ms")

    @command.command("geoblock.reload")
    def reload_command(self) -> None:
        """Reload geoblock's rules and GeoIP databases now (a broken file keeps the last good one)."""
        asyncio.get_running_loop().create_task(self.reload(force=True))

    @command.command("geoblock.status")
    def status(self) -> str:
        """geoblock's ruleset version, rule counts, databases and counters."""
        engine = self.engine
        lines = engine.describe() if engine is not None else ["ruleset: none"]
        c = self.counts
        lines.append(f"decisions: {c['allow']} allow, {c['log']} log, {c['block']} block, {c['error']} errors; "
                     f"reloads: {engine.reloads if engine else 0}")
        if self.log is not None:
            lines.append(f"decision log {self.log.path}: {self.log.written} written, {self.log.lost} lost")
        if engine is not None and (rdap_line := engine.describe_rdap()) is not None:
            lines.append(rdap_line)
        sizes = self.caches()
        lines.append("caches (entries/bound): " + ", ".join(
            f"{label} {n}/{bound}" for label, (n, bound) in sizes.items() if bound is not None))
        lines.append(f"connection states: {sizes['connection states'][0]}")
        frozen_note = "" if self.settings is None or self.settings.gc_freeze else " (geoblock_gc_freeze is off)"
        lines.append(f"objects kept out of the collector's scans: {heap.frozen()}{frozen_note}")
        if engine is not None and engine.last_problem:
            lines.append(f"last problem: {engine.last_problem}")
        return "\n".join(lines)

    def caches(self) -> dict[str, tuple[int, int | None]]:
        """(entries, bound) of each of geoblock's caches, and the per-connection states held now (no
        bound: each ends with its connection, so they count the open connections geoblock has seen)."""
        out = self.engine.caches() if self.engine is not None else {}
        out["ech public names"] = (len(self.ech_names), self.ech_names.limit)
        out["error causes"] = (len(self.errors_seen), None)
        out["connection states"] = (len(self.sessions), None)
        return out

    # ------------------------------------------------------------------ judging and recording

    def _judge(self, facts: Facts) -> Verdict:
        if self.engine is None:
            raise CannotJudge("no ruleset is loaded")
        return self.engine.judge(facts)

    async def _resolve(self, state: ConnState | None, name: str | None, ip: IPAddress | None,
                       names: tuple[str, ...]) -> IPAddress | None:
        if self.engine is None:
            raise CannotJudge("no ruleset is loaded")
        return await self.engine.resolve(state.session if state else None, name, ip, names)

    def _record(self, facts: Facts, verdict: Verdict, extra: dict[str, Any] | None = None,
                again: bytes | None = None) -> bytes | None:
        """Count, log and write one decision. `again`: the line of an identical earlier record after its
        timestamp, to write without building it anew. Returns that part of the line written, if any."""
        self.counts[verdict.action] += 1
        enforced = not self._monitor
        if verdict.action != "allow":
            logger.info(f"geoblock: {verdict.action}{'' if enforced else ' (monitor)'} {facts.stage} "
                        f"{verdict.name or facts.server_ip}: {verdict.reason}")
        log = self.log
        if log is None:
            return None
        if again is not None and log.write_again(again):
            return again
        if self.engine is not None:
            return log.write(self.engine.record_of(facts, verdict, enforced, extra))
        return log.write(make_record(facts, verdict, enforced, None, None, None, extra))

    @property
    def _monitor(self) -> bool:
        return self.settings is not None and self.settings.monitor

    def _enforcing(self, verdict: Verdict) -> bool:
        return verdict.action == "block" and not self._monitor

    def _policy_on_error(self) -> str:
        return self.engine.ruleset.policy.on_error if self.engine is not None else "block"

    def _invalid(self, facts: Facts, exc: InvalidHost, field_name: str) -> Verdict:
        """A name that cannot be normalised: judged by on_error, recorded with the offending value named.
        The caller enforces the verdict returned."""
        action = self._policy_on_error()
        verdict = Verdict(action, None, f"{field_name} {exc}; on_error is {action}", None, None)
        self._record(facts, verdict, {"error": "invalid-input"})
        return verdict

    def _on_error(self, stage: str, obj: Any, exc: Exception, refusal: Refusal) -> None:
        """The guard's verdict for a hook that raised: on_error, logged once per cause, recorded, and
        enforced by `refusal` on the hook's object."""
        action = self._policy_on_error()
        frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        cause = f"{type(exc).__name__} at {os.path.basename(frame.filename)}:{frame.lineno}" if frame else type(exc).__name__
        seen = self.errors_seen.get(cause, 0)
        self.errors_seen[cause] = seen + 1
        self.counts["error"] += 1
        if seen == 0:
            logger.error(
                f"geoblock: error in the {stage} stage, on_error={action} applies to this flow and to every "
                f"later one with the same cause ({cause}): {exc}",
                exc_info=(type(exc), exc, exc.__traceback__) if not isinstance(exc, CannotJudge) else None,
            )
        verdict = Verdict(action, None, f"geoblock could not judge this flow ({exc}); on_error is {action}", None)
        try:
            self._record(Facts(stage, client_ip=client_ip(client_of(obj))), verdict, {"error": cause})
        except Exception:  # noqa: BLE001 - recording must not stop enforcement
            pass
        if self._enforcing(verdict):
            refusal(obj, verdict)

    # ------------------------------------------------------------------ refusals, one per hook's object

    def _refuse_client(self, client: connection.Client, verdict: Verdict) -> None:
        """A client connection (transparent destination): closed before a byte is read or dialled."""
        self.sessions.of(client).blocked = verdict
        client.error = enforce.blocked_text(verdict)

    def _refuse_dns(self, flow: Any, verdict: Verdict) -> None:
        """A DNS question: the blocked answer (NXDOMAIN, or the sinkhole address)."""
        dnsanswers.refuse(flow, self.settings.sinkhole if self.settings else None)

    def _refuse_http(self, flow: http.HTTPFlow, verdict: Verdict) -> None:
        """A CONNECT (451 with no tunnel) or a request (the 451 page); nothing on the connection is dialled."""
        self.sessions.of(flow.client_conn).blocked = verdict
        request = flow.request
        if request.method == "CONNECT":
            flow.response = enforce.connect_refusal(verdict, self._blocked_by)
        else:  # a request that could not be judged: its target as mitmproxy read it
            flow.response = enforce.block_page(verdict, request.host, self.page, self._blocked_by, _now())

    def _refuse_layer(self, nextlayer: mlayer.NextLayer, verdict: Verdict) -> None:
        """A layer choice: a TLS alert for what may be a ClientHello, else the connection closed."""
        self.sessions.of(nextlayer.context.client).blocked = verdict
        tls = hold.may_be_client_hello(nextlayer.data_client())
        nextlayer.layer = (enforce.DenyTLS if tls else enforce.DenyStream)(nextlayer.context)

    def _refuse_hello(self, data: mtls.ClientHelloData, verdict: Verdict) -> None:
        """A ClientHello at the TLS layer: never passed through undecrypted (the handshake is mitmproxy's)."""
        self.sessions.of(data.context.client).blocked = verdict
        data.ignore_connection = False

    def _refuse_dial(self, data: Any, verdict: Verdict) -> None:
        """A server connection about to be dialled: not dialled."""
        data.server.error = enforce.blocked_text(verdict)

    @property
    def _blocked_by(self) -> str:
        return self.settings.blocked_by if self.settings else DEFAULT_BLOCKED_BY

    # ------------------------------------------------------------------ hooks: connection and DNS

    @guarded("ip", "_refuse_client")
    async def client_connected(self, client: connection.Client) -> None:
        if not isinstance(client.proxy_mode, mode_specs.TransparentMode):
            return  # only in transparent mode is the local address the server's (SO_ORIGINAL_DST)
        state = self.sessions.of(client)
        dest = peer_ip(client.sockname)
        if dest is None:
            raise CannotJudge(f"no original destination for the transparent connection from {client.peername}")
        state.connect_ip = dest
        facts = Facts("ip", client_ip=client_ip(client), server_ip=dest)
        verdict = self._judge(facts)
        self._record(facts, verdict)
        if self._enforcing(verdict):
            self._refuse_client(client, verdict)

    @guarded("dns", "_refuse_dns")
    async def dns_request(self, flow: Any) -> None:
        """Judge a DNS question before anything answers it: a blocked name gets the blocked answer and never
        goes upstream; Firefox's DNS-over-HTTPS canary gets NXDOMAIN under `doh_canary: nxdomain`.
        mitmproxy's resolver only resolves questions still without an answer
        (dns_resolver.DnsResolver._should_resolve, 11.0.2 and 12.3.1); on 11.0.2 it would run first, so
        geoblock moves it behind itself (dnsanswers.resolver_after)."""
        request = flow.request
        facts = Facts("dns", client_ip=client_ip(flow.client_conn))
        try:
            names = dnsanswers.question_names(request)
        except InvalidField as exc:
            facts.host = exc.cause.value  # type: ignore[assignment]
            return self._enforce(self._invalid(facts, exc.cause, exc.field), self._refuse_dns, flow)
        if not names:
            return  # reverse lookups of addresses and the like: nothing to judge by name
        facts.host = request.questions[-1].name
        facts.names = tuple(names)
        qtype = {"qtype": dnsanswers.qtypes(request)}
        if dnsanswers.DOH_CANARY in names and self.engine is not None and self.engine.ruleset.policy.doh_canary == "nxdomain":
            verdict = Verdict("block", "policy:doh-canary",
                              f"{dnsanswers.DOH_CANARY} is Firefox's canary: NXDOMAIN keeps its DNS over HTTPS off, "
                              f"so it uses this DNS (blocked names, ECH removed); the policy for doh_canary is nxdomain",
                              None, dnsanswers.DOH_CANARY)
            self._record(facts, verdict, qtype)
            return self._enforce(verdict, lambda f, v: dnsanswers.nxdomain(f), flow)
        verdict = self._judge(facts)
        self._record(facts, verdict, qtype)
        if self._enforcing(verdict):
            self._refuse_dns(flow, verdict)
        else:
            await self._ask_upstream(flow)

    async def _ask_upstream(self, flow: Any) -> None:
        """Ask the name server the question mitmproxy's resolver would answer by itself (A and AAAA in DNS
        mode): the resolver keeps only the addresses of the final name and drops the CNAME chain, which
        dns_response must judge. The client's message is sent as it came (dnsforward.ask) to mitmproxy's
        name servers (`dns_name_servers`, else the system's), and the whole answer is set as the flow's
        response, so the resolver leaves it alone and dns_response judges what the client will get.
        No name server answering gives SERVFAIL, as mitmproxy's resolver does. Without known name servers
        mitmproxy answers from the hosts file (getaddrinfo), which shows no chain."""
        if flow.response is not None or flow.error is not None or not dnsanswers.resolver_would_answer(flow):
            return
        servers = dnsanswers.name_servers()
        if not servers:
            return
        request = flow.request
        timeout = self.settings.dns_timeout if self.settings else 2.0
        try:
            wire = await dnsforward.ask(request.packed, servers, timeout)
            flow.response = type(request).unpack(wire)
        except (dnsforward.NoAnswer, struct.error, ValueError) as exc:
            problem = f"geoblock: DNS question {request.question.name if request.question else ''} not answered: {exc}"
            if problem != self._dns_problem:
                self._dns_problem = problem
                logger.warning(problem)
            dnsanswers.servfail(flow)

    @guarded("dns", "_refuse_dns")
    async def dns_response(self, flow: Any) -> None:
        """Judge and clean a DNS answer before the client gets it.

        Every name the answer leads to is judged, not only the question (dnsanswers.answer_chain): a
        question for an allowed alias whose CNAME chain ends at a blocked name gets the blocked answer,
        recorded with the chain. Encrypted Client Hello configurations are then removed from HTTPS and
        SVCB records in every section, so clients send a readable SNI (mitmproxy's own strip_ech, which
        geoblock turns off, covers HTTPS answers only, and would remove them before geoblock reads
        them); their public names are kept as names that front ECH (observe.ech_of)."""
        response = flow.response
        if response is None:
            return
        facts = Facts("dns", client_ip=client_ip(flow.client_conn))
        asked = dnsanswers.asked_names(flow.request)
        facts.host = asked[0] if asked else None
        try:
            chain = dnsanswers.answer_chain(response, asked)
        except InvalidField as exc:
            return self._enforce(self._invalid(facts, exc.cause, exc.field), self._refuse_dns, flow)
        if any(name not in asked for name in chain):  # beyond the question, which dns_request judged
            facts.names = tuple(dict.fromkeys([*asked, *chain]))
            verdict = self._judge(facts)
            self._record(facts, verdict, {"qtype": dnsanswers.qtypes(flow.request), "chain": list(facts.names)})
            if self._enforcing(verdict):
                return self._refuse_dns(flow, verdict)
        dnsanswers.strip_ech(response, self.ech_names)

    def _fronts_ech(self, name: str) -> bool:
        """Whether `name` fronts Encrypted Client Hello: under the policy's ech_public_names, or a public
        name seen in an ECH configuration in a DNS answer geoblock served."""
        engine = self.engine
        return (engine is not None and name_under(name, engine.ruleset.policy.ech_public_names)) or name in self.ech_names

    def _enforce(self, verdict: Verdict, refusal: Refusal, obj: Any) -> None:
        if self._enforcing(verdict):
            refusal(obj, verdict)

    # ------------------------------------------------------------------ hooks: CONNECT, layers, TLS

    @guarded("connect", "_refuse_http")
    async def http_connect(self, flow: http.HTTPFlow) -> None:
        state = self.sessions.of(flow.client_conn)
        facts = Facts("connect", client_ip=client_ip(flow.client_conn))
        try:
            target = normalize_host(flow.request.host)
        except InvalidHost as exc:
            return self._enforce(self._invalid(facts, exc, "CONNECT target"), self._refuse_http, flow)
        if isinstance(target, str):
            state.connect_name = target
            facts.names = (target,)
            facts.host = target
        else:
            state.connect_ip = target
            facts.host = flow.request.host  # the address as the client spelt it (decimal, NAT64, ...)
        facts.server_ip = await self._resolve(state, state.connect_name, state.connect_ip, facts.names)
        verdict = self._judge(facts)
        self._record(facts, verdict)
        if self._enforcing(verdict):
            state.blocked = verdict
            if not self._end_blocked_tunnel(state, flow.client_conn, "connect", facts, verdict):
                flow.response = enforce.connect_refusal(verdict, self._blocked_by)

    @guarded("stream", "_refuse_layer")
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
        state = self.sessions.of(context.client)
        if shows == hold.MORE:  # the hold ran out of time or room: judged on what it has (on_error)
            why = hold.why_incomplete(data, nextlayer.expired, self._hold_timeout)
            return self._deny_stream(nextlayer, await self._judge_stream(context, state, data, incomplete=why))
        if shows == hold.TLS and context.server.address is not None:  # no address: a handshake with the proxy
            if not await self._tls_may_go_on(nextlayer, state, data):
                return
        chosen = self.chooser.choose(context, data, nextlayer.data_server())
        if chosen is None:
            return  # mitmproxy needs more bytes too; asked again with them
        if shows != hold.TLS and not judged_later(chosen):
            if shows_http_version(data):
                chosen = self.chooser.http_instead(context, chosen)  # a request line mitmproxy took for raw TCP
            else:
                verdict = await self._judge_stream(context, state, data)
                if self._enforcing(verdict):
                    return self._deny_stream(nextlayer, verdict)
        nextlayer.layer = chosen

    @property
    def _hold_timeout(self) -> float:
        return self.settings.hold_timeout if self.settings else 10.0

    def _deny_stream(self, nextlayer: mlayer.NextLayer, verdict: Verdict) -> None:
        if self._enforcing(verdict):
            self.sessions.of(nextlayer.context.client).blocked = verdict
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
            self._on_error("tls", nextlayer, exc, self._refuse_layer)
            return False
        if not self._enforcing(verdict):
            return True
        state.blocked = verdict
        if facts is not None and self._end_blocked_tunnel(state, context.client, "tls", facts, verdict):
            return True
        nextlayer.layer = enforce.DenyTLS(context)
        return False

    async def _judge_client_hello(self, context: Context, state: ConnState, data: bytes) -> tuple[Verdict, Facts | None]:
        """Judge a whole ClientHello (`data`, its TLS records) at this layer: SNI, CONNECT target,
        destination, ECH. Returns the verdict and the facts it was reached on (None for an SNI that is
        not a host name: on_error decided). Raises observe.MalformedClientHello on a malformed one."""
        hello, _ = client_hello_of(data)
        state.tls_judged[context] = False
        facts = Facts("tls", client_ip=client_ip(context.client))
        state.learn_destination(context)
        problem = sni_problem(hello.extensions, hello.sni)
        if problem is not None:  # a server_name mitmproxy cannot read is not "no SNI"
            facts.sni = str(problem.value)
            return self._invalid(facts, problem, "SNI"), None
        names: list[str] = []
        outer: str | None = None  # this ClientHello's SNI as a name (None: absent or an address)
        if hello.sni is not None:
            facts.sni = hello.sni
            try:
                sni = normalize_host(hello.sni)
            except InvalidHost as exc:
                return self._invalid(facts, exc, "SNI"), None
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
        facts.server_ip = await self._resolve(state, state.connect_name, state.connect_ip, facts.names)
        verdict = self._judge(facts)
        self._record(facts, verdict)
        state.tls_judged[context] = not self._enforcing(verdict)
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
        facts = Facts("stream", names=tuple(dict.fromkeys(names)), client_ip=client_ip(context.client),
                      host=state.connect_name, sni=sni)
        facts.server_ip = await self._resolve(state, state.connect_name, state.connect_ip, facts.names)
        extra: dict[str, Any] = {"first_bytes": data[:FIRST_BYTES_RECORDED].hex(),
                                 "transport": context.client.transport_protocol}
        if state.blocked is not None and incomplete is None:
            # A tunnel geoblock blocked but ends itself (BlockedTunnel): whatever it carries is refused
            # for the reason the connection was blocked, not judged anew on its names.
            self._locate_only(facts)
            blocked = state.blocked
            verdict = Verdict("block", blocked.rule, f"the connection is blocked: {blocked.reason}", blocked.offshore,
                              blocked.name)
        elif incomplete is None:
            verdict = self._judge(facts)
        else:
            self._locate_only(facts)
            verdict = self.engine.on_error(incomplete) if self.engine else Verdict("block", None, incomplete, None, None)
            extra["error"] = "incomplete-first-bytes"
        self._record(facts, verdict, extra)
        return verdict

    def _locate_only(self, facts: Facts) -> None:
        """Place the server for the record of a verdict that does not depend on where it is."""
        if self.engine is not None:
            for locator in self.engine.locators:
                locator.place(facts)

    def _end_blocked_tunnel(self, state: ConnState, client: connection.Client, stage: str, facts: Facts,
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
        if not (self.settings and self.settings.intercept) or verdict.rule == "policy:ech" or not isinstance(
                client.proxy_mode, (mode_specs.RegularMode, mode_specs.TransparentMode)):
            return False
        state.blocked_tunnel = BlockedTunnel(stage, facts, verdict)
        return True

    @guarded("tls", "_refuse_hello")
    async def tls_clienthello(self, data: mtls.ClientHelloData) -> None:
        state = self.sessions.get(data.context.client)
        allowed = state.tls_judged.get(data.context) if state is not None else None
        if allowed is None:
            if data.context.server.address is None:  # a handshake with the proxy itself (secure web proxy)
                self.sessions.of(data.context.client).proxy_sni = data.client_hello.sni
                return  # what it carries is judged
            # The ClientHello reached TLS without geoblock judging it: never pass it through blindly.
            raise CannotJudge("a TLS handshake reached the TLS layer before geoblock judged it")
        if not allowed:
            data.ignore_connection = False
        elif not (self.settings and self.settings.intercept):
            data.ignore_connection = True

    # ------------------------------------------------------------------ hooks: HTTP

    def requestheaders(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        """Judge an HTTP request. A request that the connection's last judgement covers (HttpMemo) is
        recorded and enforced here and now; any other is judged by the coroutine returned, which
        mitmproxy awaits (a hook may return an awaitable). Both are guarded as every hook is."""
        try:
            request = flow.request
            state = self.sessions.of(flow.client_conn)
            if state.blocked_tunnel is not None:
                return self._answer_blocked_tunnel(flow, state.blocked_tunnel)
            data = request.data  # the URI authority as received: decoded (uri_authority) only when judged anew
            sni = state.destination_sni(flow.client_conn)
            path = data.path
            shows = (request.host, request.host_header, data.authority, data.http_version, sni, state.connect_ip,
                     None if path[:1] == b"/" else path)  # an absolute :path (HTTP/2, 3) names a server too
            memo = state.http_memo
            if memo is None or memo.generation != self._generation() or memo.shows != shows:
                state.http_memo = None
                return self._judge_request(flow, state, shows)
            memo.line_rest = self._record(memo.facts, memo.verdict, again=memo.line_rest)
            self._enforce_request(flow, state, memo.facts, memo.verdict, memo.target_name)
        except Exception as exc:  # noqa: BLE001 - the guard (see guarded)
            self._on_error("http", flow, exc, self._refuse_http)
        return None

    def _generation(self) -> tuple[int, int]:
        """What a verdict was reached under: the options' generation and the engine's (ruleset, databases)."""
        return self.generation, self.engine.generation if self.engine is not None else -1

    @guarded("http", "_refuse_http")
    async def _judge_request(self, flow: http.HTTPFlow, state: ConnState, shows: tuple[Any, ...]) -> None:
        request = flow.request
        host_header, sni = shows[1], shows[4]
        facts = Facts("http", client_ip=client_ip(flow.client_conn), host=host_header, sni=sni)
        try:
            target = http_target(request.host, host_header, sni, uri_authority(request))
        except InvalidField as exc:
            return self._enforce(self._invalid(facts, exc.cause, exc.field), self._refuse_http, flow)
        facts.names = target.names
        facts.mismatch = target.mismatch
        # The request target is what mitmproxy dials: its IP, or its name resolved, places the server.
        name, ip = target.target_name, target.target_ip or state.connect_ip
        generation = self._generation()
        facts.server_ip = await self._resolve(state, name, ip, facts.names)
        verdict = self._judge(facts)
        rest = self._record(facts, verdict)
        # Kept unless the ruleset, databases or options changed while the name was resolved (the address
        # was sought for the old ruleset), or RDAP may place the server for a later request.
        if generation == self._generation() and not self.engine.may_place_later(facts):  # type: ignore[union-attr]
            state.http_memo = HttpMemo(shows, generation, facts, verdict, name, rest)  # type: ignore[arg-type]
        self._enforce_request(flow, state, facts, verdict, name)

    def _answer_blocked_tunnel(self, flow: http.HTTPFlow, tunnel: BlockedTunnel) -> None:
        """A request inside a tunnel judged blocked (BlockedTunnel): the 451 page for the tunnel's
        verdict, whatever the request shows; recorded at stage http with its Host and SNI, the tunnel's
        server and verdict, and `blocked_at` (the stage that blocked the tunnel)."""
        request, verdict = flow.request, tunnel.verdict
        facts = replace(tunnel.facts, stage="http", host=request.host_header, sni=flow.client_conn.sni,
                        ech=False, mismatch=None)
        self._record(facts, verdict, {"blocked_at": tunnel.stage})
        flow.response = enforce.block_page(verdict, verdict.name or request.host_header or request.host,
                                           self.page, self._blocked_by, _now())

    def _enforce_request(self, flow: http.HTTPFlow, state: ConnState, facts: Facts, verdict: Verdict,
                         name: str | None) -> None:
        if self._enforcing(verdict):
            request = flow.request
            flow.response = enforce.block_page(verdict, verdict.name or request.host_header or request.host,
                                               self.page, self._blocked_by, _now())
        elif name is not None and facts.server_ip is not None and state.resolved.get(name) == facts.server_ip:
            dial.send_to_judged_address(flow, facts.server_ip, state)

    @guarded("http", "_refuse_http")
    async def response(self, flow: http.HTTPFlow) -> None:
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
        facts = Facts("http", client_ip=client_ip(flow.client_conn), host=flow.request.host_header,
                      sni=flow.client_conn.sni)
        verdict = Verdict("block", None,
                          f"the server switched the connection to {protocol or 'another protocol'!r} (HTTP 101); "
                          f"geoblock judges HTTP request by request and refuses a switch to a protocol it does "
                          f"not read (WebSocket excepted)", None, None)
        self._record(facts, verdict, {"upgrade": protocol})
        if self._enforcing(verdict):
            self.sessions.of(flow.client_conn).blocked = verdict
            flow.kill()

    # ------------------------------------------------------------------ hooks: dialling, closing

    @guarded("connect", "_refuse_dial")
    async def server_connect(self, data: Any) -> None:
        state = self.sessions.get(data.client)
        if state is None:
            return
        if state.blocked is not None and not self._monitor:
            return self._refuse_dial(data, state.blocked)
        if state.resolved:
            server = data.server
            name = state.server_names.get(server.address) if server.address else None
            if name is not None and server.sni in (None, server.address[0]):
                server.sni = name  # HTTPS sent to the judged address: the certificate is the name's
            else:
                dial.pin(state, server, data.client)

    def client_disconnected(self, client: connection.Client) -> None:
        self.sessions.drop(client)

