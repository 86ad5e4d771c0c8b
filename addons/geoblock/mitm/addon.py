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

Each hook guards, observes, asks the engine (through the shared `judging.Judging`), records and
enforces. The hooks of one protocol live in their own judge: `layers.LayerJudge` (next_layer,
tls_clienthello), `httpjudge.HttpJudge` (http_connect, requestheaders, response), `dnsjudge.DnsJudge`
(dns_request, dns_response); this class owns the options, the lifecycle, reload and status, the
connection hooks, and hands every other hook to its judge. Every hook runs under one guard
(`judging.guarded`): an exception applies the policy's `on_error` verdict (block by default), records it,
is logged once per cause, and is enforced by the refusal the hook names.

Rules and databases are watched (`geoblock_reload_interval`) and reloaded on change, on SIGHUP and on
the `geoblock.reload` command (Engine.reload: built aside, swapped whole, the last good one kept).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
from collections.abc import Coroutine
from typing import Any

from mitmproxy import command, connection, ctx, exceptions, http
from mitmproxy.proxy import layer as mlayer
from mitmproxy.proxy import mode_specs
from mitmproxy.proxy.layers import tls as mtls

from geoblock.core.model import Verdict
from geoblock.core.rules import RuleError
from geoblock.core.ruleset import Ruleset
from geoblock.engine import CannotJudge, Engine
from geoblock.enrich.geo import Geo
from geoblock.mitm import dial, dnsanswers, enforce, heap, metrics
from geoblock.mitm.dnsjudge import DnsJudge
from geoblock.mitm.httpjudge import HttpJudge
from geoblock.mitm.judging import Judging, guarded
from geoblock.mitm.layers import LayerJudge
from geoblock.mitm.observe import client_facts, peer_ip, port_of
from geoblock.mitm.options import OPTIONS, OptionProblem, Settings, keep_mitmproxy_options_geoblock_needs, preflight
from geoblock.record import DecisionLog

__all__ = ["GeoBlock", "OptionProblem", "preflight"]

logger = logging.getLogger("geoblock")


class GeoBlock:
    """The addon: options, lifecycle, reload and status, and every hook (each handed to its judge).
    What a verdict depends on lives in the engine (`judging.engine`)."""

    name = "geoblock"  # must not be "block" or "blocklist": those are mitmproxy built-ins

    def __init__(self) -> None:
        self.judging = Judging()
        self.layers = LayerJudge(self.judging)
        self.http = HttpJudge(self.judging, self.layers.end_blocked_tunnel)
        self.dns = DnsJudge(self.judging)
        self.serving = False  # running() has run: the start-up heap is in place
        self.configured = False  # configure() has run once (mitmproxy's first call is the script's load)
        self.refused: str | None = None  # what the first configure refused (see _refuse): never serve
        self.announced_monitor = False  # the monitor mode last announced in the log (said when it changes)
        self._watcher: asyncio.Task[None] | None = None
        self.endpoint: metrics.MetricsServer | None = None  # geoblock_metrics, while serving

    @property
    def engine(self) -> Engine | None:
        """The engine in force (None until the rules have loaded)."""
        return self.judging.engine

    # ------------------------------------------------------------------ options and lifecycle

    def load(self, loader: Any) -> None:
        for name, typespec, default, text in OPTIONS:
            loader.add_option(name, typespec, default, text)

    def configure(self, updated: set[str]) -> None:
        """Apply changed options. A refused value raises exceptions.OptionsError naming the option (or
        the rule file and line) once geoblock is configured; in the first call (start-up) it is
        refused through `_refuse` instead: one error line, no traceback, and mitmdump exits with 1."""
        try:
            self._configure(updated)
        except exceptions.OptionsError as exc:
            if self.configured:
                raise
            self._refuse(str(exc), exc)

    def _configure(self, updated: set[str]) -> None:
        """configure's work: `updated` is the set of changed option names. Stops at the first refused
        value with exceptions.OptionsError (its message names the option, or the rule file and line)."""
        opts, judging = ctx.options, self.judging
        dnsanswers.resolver_after(self)
        try:
            settings = Settings.parse(opts)
        except ValueError as exc:
            raise exceptions.OptionsError(f"geoblock: {exc}") from exc
        judging.settings = settings
        if "geoblock_rules" in updated or judging.engine is None:
            self._configure_engine(settings, updated)
        elif updated & {"geoblock_country_db", "geoblock_asn_db"}:
            judging.engine.set_databases(settings.country_db, settings.asn_db)
            self._report_geo()
        engine = judging.engine
        if engine is not None:
            if updated & {"geoblock_rdap", "geoblock_rdap_url", "geoblock_rdap_timeout"}:
                engine.set_rdap(settings.rdap_lookups())
            if "geoblock_rir" in updated:
                engine.set_registries(settings.rir)
            engine.resolver.timeout = settings.dns_timeout
        if "geoblock_log" in updated:
            self._configure_log(settings)
        if settings.monitor != self.announced_monitor:
            # said at start-up and whenever it changes: a gateway that blocks nothing must not look as if it did
            if settings.monitor:
                logger.warning("geoblock: MONITOR MODE (geoblock_monitor=true): every flow is decided and recorded "
                               "with enforced: false; nothing is blocked")
            else:
                logger.warning("geoblock: monitor mode off: verdicts are enforced again")
            self.announced_monitor = settings.monitor
        if updated & {"geoblock_block_page", "geoblock_block_pages"}:
            try:
                judging.page = enforce.PageSet.load(settings.block_pages, settings.block_page)
            except enforce.PageProblem as exc:  # names the file, the line and the placeholders
                raise exceptions.OptionsError(f"geoblock: {exc}") from exc
        self.layers.chooser.configure(updated)
        if "geoblock_gc_freeze" in updated and self.serving:  # switched while serving: apply it now
            self._settle_heap() if settings.gc_freeze else heap.release()
        if "geoblock_metrics" in updated and self.serving:  # changed while serving: rebind
            self._serve_metrics(settings)
        judging.generation += 1
        keep_mitmproxy_options_geoblock_needs(opts, updated)
        self.configured = True

    def _refuse(self, message: str, cause: Exception) -> None:
        """Refuse a start-up value (bad rules, an option geoblock cannot use). Changed while loaded:
        OptionsError (mitmproxy keeps the old value, or the last good ruleset, and says why). In the
        first configure (loading the script at start-up), where mitmproxy would print the OptionsError
        with a traceback, the message alone is logged as an error: mitmdump (11.0.2 and 12.x alike,
        their errorcheck addon) then prints "Error logged during startup, exiting..." and exits with
        status 1, and `running` never serves. A start-up refusal is final: `refused` stays set."""
        if self.configured:
            raise exceptions.OptionsError(message) from cause
        logger.error(message)
        self.refused = message

    def _configure_engine(self, settings: Settings, updated: set[str]) -> None:
        """Load the rules (OptionsError with file and line when they do not load); make the engine on the
        first call, else swap the ruleset (and the databases, when their options changed) into it."""
        try:
            ruleset = Ruleset.load(settings.rules)
        except RuleError as exc:
            raise exceptions.OptionsError(f"geoblock: rules refused: {exc}") from exc
        engine = self.judging.engine
        if engine is None:
            self.judging.engine = Engine(ruleset, Geo(settings.country_db, settings.asn_db), rules_path=settings.rules,
                                         country_db=settings.country_db, asn_db=settings.asn_db)
        else:
            engine.set_ruleset(ruleset, settings.rules)
            if updated & {"geoblock_country_db", "geoblock_asn_db"}:
                engine.set_databases(settings.country_db, settings.asn_db)
        for warning in ruleset.source.warnings:
            logger.warning(f"geoblock: {warning}")
        s = ruleset.summary()
        logger.info(f"geoblock: ruleset {s['version']}: {s['rules']} rules, {s['domains']} domains "
                    f"from {settings.rules}")
        self._report_geo()

    def _configure_log(self, settings: Settings) -> None:
        if self.judging.log is not None:
            self.judging.log.close()
            self.judging.log = None
        if settings.log:
            try:
                self.judging.log = DecisionLog(settings.log)
            except OSError as exc:
                raise exceptions.OptionsError(
                    f"geoblock: cannot open the decision log {settings.log}: {exc.strerror}") from exc

    def _report_geo(self) -> None:
        engine = self.judging.engine
        if engine is None or engine.geo is None:
            return
        for line in engine.geo.describe():
            logger.info(f"geoblock: {line}")
        for warning in engine.warnings():
            logger.warning(f"geoblock: {warning}")

    def running(self) -> None:
        if self.judging.engine is None:  # configure refused the rules: never serve without them
            logger.error("geoblock: no valid ruleset; shutting down")
            ctx.master.shutdown()
            return
        if self.refused is not None:  # configure refused an option at start-up (_refuse)
            logger.error(f"{self.refused}; shutting down")
            ctx.master.shutdown()
            return
        self.serving = True
        if self.endpoint is None and self.judging.settings is not None:
            self._serve_metrics(self.judging.settings)
        self._settle_heap()
        loop = asyncio.get_running_loop()
        if self._watcher is None:
            self._watcher = loop.create_task(self._watch())
        try:
            loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload(force=True)))
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no signals here
            pass

    def _serve_metrics(self, settings: Settings) -> None:
        """(Re)start the status and metrics endpoint at settings.metrics (mitm/metrics.py). An address
        that cannot be bound is logged, naming it, and the proxy goes on without the endpoint."""
        if self.endpoint is not None:
            self.endpoint.stop()
            self.endpoint = None
        if settings.metrics is None:
            return
        endpoint = metrics.MetricsServer(self, settings.metrics)
        host, port = settings.metrics
        try:
            endpoint.start()
        except OSError as exc:
            message = (f"geoblock: cannot serve metrics at {host}:{port}: {exc.strerror or exc}; geoblock_metrics "
                       f"is off until it is set again (the proxy goes on enforcing)")
            asyncio.get_running_loop().create_task(self._error_after_start_up(message))
            return
        self.endpoint = endpoint
        logger.info(f"geoblock: metrics at {endpoint.url}/metrics, status at {endpoint.url}/status, "
                    f"health at {endpoint.url}/healthz")
        if not ipaddress.ip_address(host).is_loopback:
            logger.warning(f"geoblock: the status and metrics endpoint at {endpoint.url} is reachable beyond "
                           f"this host and asks no one for credentials: /status shows file paths and the last "
                           f"problem; keep it on a management network (docs/operating.md)")

    @staticmethod
    async def _error_after_start_up(message: str) -> None:
        """Log an error once mitmproxy's start-up check is over: mitmdump exits on any error logged before
        its `running` hooks have all run (its errorcheck addon), and a problem that leaves enforcement
        intact must not stop the proxy. Waits at most 10 s."""
        check = getattr(ctx.master.addons.get("errorcheck"), "logger", None)
        for _ in range(200):
            if check is None or check not in logging.getLogger().handlers:
                break
            await asyncio.sleep(0.05)
        logger.error(message)

    def done(self) -> None:
        if self.endpoint is not None:
            self.endpoint.stop()
            self.endpoint = None
        if self._watcher is not None:
            self._watcher.cancel()
        if self.judging.engine is not None:
            self.judging.engine.close()
        if self.judging.log is not None:
            self.judging.log.close()

    # ------------------------------------------------------------------ reload, status

    async def _watch(self) -> None:
        while True:
            interval = self.judging.settings.reload_interval if self.judging.settings else 2.0
            await asyncio.sleep(interval if interval > 0 else 1.0)
            if self.judging.log is not None:
                self.judging.log.reopen_if_moved()  # rotated while idle: let go of the moved file
            if interval > 0:
                try:
                    await self.reload()
                except Exception as exc:  # noqa: BLE001 - the watcher must outlive any failure
                    logger.error(f"geoblock: reload failed: {exc}")

    async def reload(self, force: bool = False) -> str:
        """Reload what changed (everything when `force`): Engine.reload. Returns what it did, for a person."""
        if self.judging.engine is None:
            return "no ruleset is loaded"
        done = await self.judging.engine.reload(force)
        if done.rules_swapped:
            self._settle_heap()  # the old ruleset is freed, the new one frozen
        return "\n".join(done.messages) or "nothing changed"

    def _settle_heap(self) -> None:
        if self.judging.settings is None or self.judging.settings.gc_freeze:
            count, ms = heap.settle()
            logger.info(f"geoblock: {count} long-lived objects moved out of the collector's scans in {ms:.0f} ms")

    @command.command("geoblock.reload")
    def reload_command(self) -> None:
        """Reload geoblock's rules and GeoIP databases now (a broken file keeps the last good one)."""
        asyncio.get_running_loop().create_task(self.reload(force=True))

    @command.command("geoblock.status")
    def status(self) -> str:
        """geoblock's ruleset version, rule counts, databases and counters."""
        engine = self.judging.engine
        lines = engine.describe() if engine is not None else ["ruleset: none"]
        c = self.judging.counts
        lines.append(f"decisions: {c['allow']} allow, {c['log']} log, {c['block']} block, {c['error']} errors; "
                     f"reloads: {engine.reloads if engine else 0}")
        if self.judging.log is not None:
            log = self.judging.log
            lines.append(f"decision log {log.path}: {log.written} written, {log.lost} lost")
        if engine is not None and (rdap_line := engine.describe_rdap()) is not None:
            lines.append(rdap_line)
        sizes = self.caches()
        lines.append("caches (entries/bound): " + ", ".join(
            f"{label} {n}/{bound}" for label, (n, bound) in sizes.items() if bound is not None))
        lines.append(f"connection states: {sizes['connection states'][0]}")
        settings = self.judging.settings
        frozen_note = "" if settings is None or settings.gc_freeze else " (geoblock_gc_freeze is off)"
        lines.append(f"objects kept out of the collector's scans: {heap.frozen()}{frozen_note}")
        if engine is not None and engine.last_problem:
            lines.append(f"last problem: {engine.last_problem}")
        return "\n".join(lines)

    def caches(self) -> dict[str, tuple[int, int | None]]:
        """(entries, bound) of each of geoblock's caches, and the per-connection states held now (no
        bound: each ends with its connection, so they count the open connections geoblock has seen)."""
        out = self.judging.engine.caches() if self.judging.engine is not None else {}
        out["ech public names"] = (len(self.judging.ech_names), self.judging.ech_names.limit)
        out["error causes"] = (len(self.judging.errors_seen), None)
        out["connection states"] = (len(self.judging.sessions), None)
        return out

    # ------------------------------------------------------------------ hooks: each handed to its judge

    # Each returns its judge's coroutine (or nothing), which mitmproxy awaits: no second coroutine per call.

    def next_layer(self, nextlayer: mlayer.NextLayer) -> Coroutine[Any, Any, None]:
        return self.layers.next_layer(nextlayer)

    def tls_clienthello(self, data: mtls.ClientHelloData) -> Coroutine[Any, Any, None]:
        return self.layers.tls_clienthello(data)

    def http_connect(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None]:
        return self.http.http_connect(flow)

    def requestheaders(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        return self.http.requestheaders(flow)  # a coroutine only when the request must be judged anew

    def response(self, flow: http.HTTPFlow) -> None:
        self.http.response(flow)  # a protocol switch geoblock cannot follow; never waits

    def dns_request(self, flow: Any) -> Coroutine[Any, Any, None]:
        return self.dns.dns_request(flow)

    def dns_response(self, flow: Any) -> Coroutine[Any, Any, None]:
        return self.dns.dns_response(flow)

    # ------------------------------------------------------------------ hooks: connections

    @guarded("ip", "refuse_client")
    async def client_connected(self, client: connection.Client) -> None:
        if not isinstance(client.proxy_mode, mode_specs.TransparentMode):
            return  # only in transparent mode is the local address the server's (SO_ORIGINAL_DST)
        state = self.judging.sessions.of(client)
        dest = peer_ip(client.sockname)
        if dest is None:
            raise CannotJudge(f"no original destination for the transparent connection from {client.peername}")
        state.connect_ip = dest
        facts = client_facts("ip", client, port_of(client.sockname))
        facts.server_ip = dest
        verdict = self.judging.judge(facts)
        self.judging.record(facts, verdict)
        if self.judging.enforcing(verdict):
            self.refuse_client(client, verdict)

    @guarded("connect", "refuse_dial")
    async def server_connect(self, data: Any) -> None:
        state = self.judging.sessions.get(data.client)
        if state is None:
            return
        if state.blocked is not None and not self.judging.monitor:
            return self.refuse_dial(data, state.blocked)
        if state.resolved:
            server = data.server
            name = state.server_names.get(server.address) if server.address else None
            if name is not None and server.sni in (None, server.address[0]):
                server.sni = name  # HTTPS sent to the judged address: the certificate is the name's
            else:
                dial.pin(state, server, data.client)

    def client_disconnected(self, client: connection.Client) -> None:
        self.judging.sessions.drop(client)

    # ------------------------------------------------------------------ refusals of the connection hooks

    def refuse_client(self, client: connection.Client, verdict: Verdict) -> None:
        """A client connection (transparent destination): closed before a byte is read or dialled."""
        self.judging.sessions.of(client).blocked = verdict
        client.error = enforce.blocked_text(verdict)

    def refuse_dial(self, data: Any, verdict: Verdict) -> None:
        """A server connection about to be dialled: not dialled."""
        data.server.error = enforce.blocked_text(verdict)
