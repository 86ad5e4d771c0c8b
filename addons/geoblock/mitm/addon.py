"""The mitmproxy addon: thin hooks that observe, enrich, decide, enforce and record.

Hooks and what they decide on:
- `client_connected` (transparent mode): the original destination address, before any byte is read;
  a block closes the connection without dialling the server;
- `dns_request` (where geoblock serves DNS): the question's name; a block answers NXDOMAIN (or the
  sinkhole address);
- `http_connect`: the CONNECT target (explicit proxy), answered with 451 when blocked (with
  `geoblock_intercept`: accepted, and the tunnel answered with the block page, see BlockedTunnel);
- `next_layer`: the ClientHello's SNI, refused with a TLS alert when blocked (checked before mitmproxy's
  own layer choice, so a blocked handshake is never relayed; with `geoblock_intercept` the handshake is
  completed with mitmproxy's certificate for the name and the tunnel answered with the block page);
- `tls_clienthello`: allowed TLS passes through undecrypted unless `geoblock_intercept` is set;
- `requestheaders`: Host, :authority and the request target of plain or decrypted HTTP, 451 page;
- `server_connect`: last line of defence: a connection already judged blocked is never dialled.

Rules and databases are watched (`geoblock_reload_interval`) and reloaded on change, on SIGHUP and on
the `geoblock.reload` command: a new ruleset or database is built aside and swapped in whole; one that
does not load keeps the last good one, and the reason (file and line) is logged.

Every hook runs under one guard: an exception applies the policy's `on_error` verdict (block by default),
records it, and is logged once per cause.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as _dt
import functools
import logging
import os
import signal
import struct
import time
import traceback
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Coroutine

from mitmproxy import command, ctx, dns, exceptions, http
from mitmproxy.net.dns import https_records, response_codes, types as dns_types
from mitmproxy.proxy import mode_specs
from mitmproxy.proxy import layer as mlayer
from mitmproxy.proxy.layers import tls as mtls
from mitmproxy.tls import ClientHello

from geoblock.mitm import dnsforward
from geoblock.mitm import enforce
from geoblock.mitm import heap
from geoblock.mitm import hold
from geoblock.core import names as _names
from geoblock import record as _record
from geoblock.mitm.choose import Chooser, judged_later
from geoblock.core.decide import Facts, Verdict, decide
from geoblock.enrich.geo import Geo
from geoblock.core.names import IPAddress, InvalidHost, as_written, normalize_host, normalize_ip
from geoblock.mitm.observe import (InvalidField, client_hello_problem, client_ip, ech_config_public_names, ech_of, http_target,
                      mismatch_of, name_under, peer_ip, shows_http_version, sni_problem, uri_authority)
from geoblock.paths import DEFAULT_ASN_DB, DEFAULT_COUNTRY_DB, DEFAULT_LOG, DEFAULT_RULES
from geoblock.record import DecisionLog, make_record
from geoblock.enrich import rdap
from geoblock.enrich.resolve import Resolver
from geoblock.core.rules import RuleError
from geoblock.core.ruleset import Ruleset
from geoblock.watch import files_stamp, rules_stamp

logger = logging.getLogger("geoblock")

DEFAULT_BLOCKED_BY = "https://geoblock.invalid/"
FIRST_BYTES_RECORDED = 16  # of a stream that is neither HTTP nor TLS, in its record (hex)
ECH_NAMES_LIMIT = 4096  # ECH public names learnt from DNS answers, the least recently seen dropped first
DOH_CANARY = "use-application-dns.net"  # Firefox: NXDOMAIN (or no address) here keeps DNS over HTTPS off
# record types whose names lead a client to an address: their owner names and targets are judged
_LEADING_TYPES = frozenset({dns_types.A, dns_types.AAAA, dns_types.CNAME, dns_types.DNAME, dns_types.HTTPS,
                            dns_types.SVCB})

OPTIONS: tuple[tuple[str, type, Any, str], ...] = (
    ("geoblock_rules", str, DEFAULT_RULES,
     "geoblock: a rules file or a directory of *.yaml rule files (policy.yaml + rule lists)."),
    ("geoblock_country_db", str, DEFAULT_COUNTRY_DB,
     "geoblock: a GeoIP2/GeoLite2 Country or City database (.mmdb). Empty = none: rules that need a "
     "country follow unknown_country."),
    ("geoblock_asn_db", str, DEFAULT_ASN_DB,
     "geoblock: a GeoLite2-ASN database (.mmdb). Empty = none: rules on ASNs follow unknown_country."),
    ("geoblock_log", str, DEFAULT_LOG,
     "geoblock: the decision log, one JSON object per line per decision. Empty = off."),
    ("geoblock_monitor", bool, False,
     "geoblock: log-only mode: decide and record every flow (enforced: false), block nothing."),
    ("geoblock_intercept", bool, False,
     "geoblock: decrypt allowed TLS so Host checks apply inside it, and answer a blocked HTTPS name "
     "(CONNECT target or SNI) with the HTML page over TLS instead of refusing the tunnel (clients must "
     "trust mitmproxy's CA). Default: allowed TLS passes through undecrypted."),
    ("geoblock_block_page", str, "",
     "geoblock: an HTML template for the 451 page ($host, $rule, $reason, $ts). Empty = built-in."),
    ("geoblock_blocked_by", str, DEFAULT_BLOCKED_BY,
     'geoblock: the URI sent in the 451 answer\'s Link: <URI>; rel="blocked-by" header (RFC 7725).'),
    ("geoblock_reload_interval", str, "2",
     "geoblock: seconds between checks of the rule files and databases for changes (hot reload). "
     "0 = only on SIGHUP or the geoblock.reload command."),
    ("geoblock_dns_timeout", str, "2",
     "geoblock: seconds to wait for a name's address when a rule needs the server's location; in DNS mode, "
     "for each name server's answer to a question geoblock forwards."),
    ("geoblock_hold_timeout", str, "10",
     "geoblock: seconds a connection's first bytes are held while they do not yet show a whole request "
     "line or TLS ClientHello; a stream still unreadable then is refused (on_error)."),
    ("geoblock_dns_sinkhole", str, "",
     "geoblock: where geoblock serves DNS, the address blocked names resolve to (A or AAAA by its "
     "family). Empty = answer NXDOMAIN."),
    ("geoblock_rdap", bool, True,
     "geoblock: when the GeoIP database has no country for a public address, look it up over RDAP in the "
     "background (the flow in hand follows unknown_country; later flows use the answer)."),
    ("geoblock_rdap_url", str, rdap.DEFAULT_BOOTSTRAP_URL,
     "geoblock: the RDAP bootstrap service (<url>/ip/<address>), e.g. an internal mirror."),
    ("geoblock_rdap_timeout", str, "5",
     "geoblock: seconds an RDAP lookup may take."),
    ("geoblock_gc_freeze", bool, True,
     "geoblock: after start-up and after each rules reload, move the objects then alive (loaded code, the "
     "compiled rules, the databases' readers) out of the garbage collector's full scans (gc.freeze): "
     "shorter collection pauses and less CPU per request. false = leave the collector as it is."),
)


class OptionProblem(Exception):
    """A geoblock option given on the command line that mitmproxy would drop the addon over."""


def preflight() -> None:
    """Check geoblock's --set values before mitmproxy applies them.

    mitmproxy applies a script's --set values when the script registers; a malformed one (a bool that
    is not true/false, an option given twice) makes it drop the whole script silently and serve
    without geoblock, and a misspelt option name is ignored. Refusing here makes mitmdump stop at
    start-up with a message instead.
    """
    try:
        deferred = dict(ctx.options.deferred)
    except AttributeError:  # not loaded by mitmproxy (a plain import)
        return
    known = {name: typespec for name, typespec, _, _ in OPTIONS}
    for name, value in deferred.items():
        if not name.startswith("geoblock"):
            continue
        if name not in known:
            raise OptionProblem(f"geoblock: unknown option {name!r}; geoblock's options are: {', '.join(known)}")
        values = getattr(value, "val", None)
        if values is None:
            continue  # already typed (set from a config file or an API)
        if len(values) > 1:
            raise OptionProblem(f"geoblock: option {name} is given more than once: {values}")
        if known[name] is bool and values and values[0] not in ("", "true", "false", "toggle"):
            raise OptionProblem(f"geoblock: option {name} must be true or false, not {values[0]!r}")
        if known[name] is str and not values:
            raise OptionProblem(f"geoblock: option {name} needs a value ({name}=...)")


@dataclass
class ConnState:
    """What geoblock knows about one client connection."""

    connect_name: str | None = None
    connect_ip: IPAddress | None = None
    blocked: Verdict | None = None
    # The ClientHellos judged on this connection, by the layer context that read them: allowed or not.
    # Per layer, not per connection: TLS inside a tunnel inside TLS is a new ClientHello to judge.
    tls_judged: "weakref.WeakKeyDictionary[Any, bool]" = field(default_factory=weakref.WeakKeyDictionary)
    sni: str | None = None
    resolved: dict[str, IPAddress | None] = field(default_factory=dict)
    server_names: dict[tuple[str, int], str] = field(default_factory=dict)  # judged address -> TLS name
    http_memo: "HttpMemo | None" = None  # the last HTTP request's judgement on this connection
    proxy_sni: str | None = None  # the SNI of a handshake with the proxy itself (secure web proxy)
    blocked_tunnel: "BlockedTunnel | None" = None  # geoblock_intercept: a blocked tunnel ended here


@dataclass(frozen=True, slots=True)
class BlockedTunnel:
    """A tunnel judged blocked that geoblock ends itself, with `geoblock_intercept` on (explicit proxy
    CONNECT, or a ClientHello whose SNI is blocked): the CONNECT is accepted, the client's TLS handshake
    is completed by mitmproxy with its certificate for the name (as Squid does with ssl_bump and
    deny_info), and every request inside is answered with the 451 page, whatever its Host. Nothing in it
    is forwarded: the connection is also `ConnState.blocked`, so server_connect refuses any dial.

    `stage` is the stage whose verdict blocked the tunnel ("connect" or "tls"), `facts` and `verdict`
    that judgement; each request is recorded with them (`blocked_at`: the stage)."""

    stage: str
    facts: Facts
    verdict: Verdict


@dataclass(slots=True)
class HttpMemo:
    """The judgement of an HTTP request, kept for the next request on the same connection.

    A keep-alive client usually sends the same target, Host and SNI again and again. The verdict is a
    pure function of what the request shows, what the connection showed before (its CONNECT address
    and the names geoblock resolved for it, both fixed for the connection's life) and the ruleset,
    databases and options in force (GeoBlock.generation changes with any of them): when all of these
    are the same as last time, so is the verdict. The request is still recorded, counted and enforced;
    only the line's time differs."""

    shows: tuple[Any, ...]  # request target, Host, URI authority, HTTP version, SNI, CONNECT address
    generation: int  # GeoBlock.generation when it was judged
    facts: Facts
    verdict: Verdict
    target_name: str | None
    line_rest: bytes | None  # the record's line after its timestamp (DecisionLog.write)


class Failure(Exception):
    """A flow geoblock could not judge: its verdict is the policy's on_error."""


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def guarded(stage: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Run a hook; on any exception, apply on_error for `stage` (fail closed by default)."""

    def wrap(method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        async def hook(self: "GeoBlock", obj: Any, *args: Any) -> None:
            try:
                await method(self, obj, *args)
            except Exception as exc:  # noqa: BLE001 - this is the guard
                self._on_error(stage, obj, exc)

        return hook

    return wrap


class GeoBlock:
    name = "geoblock"  # must not be "block" or "blocklist": those are mitmproxy built-ins

    def __init__(self) -> None:
        self.ruleset: Ruleset | None = None
        self.geo: Geo | None = None
        self.log: DecisionLog | None = None
        self.resolver = Resolver()
        self.rdap: rdap.RdapLocator | None = None
        self.page = enforce.PageTemplate()
        self.conns: dict[str, ConnState] = {}
        self.errors_seen: dict[str, int] = {}
        self.counts = {"allow": 0, "log": 0, "block": 0, "error": 0}
        self._rules_stamp: object = None
        self._geo_stamp: object = None
        self._watcher: asyncio.Task[None] | None = None
        self.last_problem: str | None = None
        self.reloads = 0
        self.reload_interval = 2.0
        self.monitor = False
        self.generation = 0  # +1 whenever the ruleset, the databases or an option changes (HttpMemo)
        self.sinkhole: IPAddress | None = None
        self.gc_freeze = True
        self.serving = False  # running() has run: the start-up heap is in place
        self.chooser = Chooser()  # mitmproxy's own layer choice, asked by next_layer
        self.hold_timeout = 10.0
        self.ech_names: OrderedDict[str, None] = OrderedDict()  # ECH public names seen in DNS answers
        self._dns_problem: str | None = None  # the last upstream DNS failure logged

    # ------------------------------------------------------------------ options

    def load(self, loader: Any) -> None:
        for name, typespec, default, text in OPTIONS:
            loader.add_option(name, typespec, default, text)

    def configure(self, updated: set[str]) -> None:
        opts = ctx.options
        _resolver_after_geoblock(self)
        self.generation += 1
        if "geoblock_rules" in updated:
            try:
                ruleset = Ruleset.load(opts.geoblock_rules)
            except RuleError as exc:
                raise exceptions.OptionsError(f"geoblock: rules refused: {exc}") from None
            self.ruleset = ruleset
            self._rules_stamp = rules_stamp(opts.geoblock_rules)
            for warning in ruleset.source.warnings:
                logger.warning(f"geoblock: {warning}")
            s = ruleset.summary()
            logger.info(
                f"geoblock: ruleset {s['version']}: {s['rules']} rules, {s['domains']} domains "
                f"from {opts.geoblock_rules}"
            )
        if updated & {"geoblock_country_db", "geoblock_asn_db", "geoblock_rules"}:
            if updated & {"geoblock_country_db", "geoblock_asn_db"} or self.geo is None:
                if self.geo is not None:
                    self.geo.close()
                self.geo = Geo(opts.geoblock_country_db or None, opts.geoblock_asn_db or None)
                self._geo_stamp = files_stamp(opts.geoblock_country_db, opts.geoblock_asn_db)
            self._report_geo()
        if "geoblock_log" in updated:
            if self.log is not None:
                self.log.close()
                self.log = None
            if opts.geoblock_log:
                try:
                    self.log = DecisionLog(opts.geoblock_log)
                except OSError as exc:
                    raise exceptions.OptionsError(
                        f"geoblock: cannot open the decision log {opts.geoblock_log}: {exc.strerror}"
                    ) from None
        if "geoblock_block_page" in updated:
            try:
                self.page = (
                    enforce.PageTemplate.from_file(opts.geoblock_block_page)
                    if opts.geoblock_block_page
                    else enforce.PageTemplate()
                )
            except (OSError, ValueError, KeyError) as exc:
                raise exceptions.OptionsError(
                    f"geoblock: block page template {opts.geoblock_block_page}: {exc}"
                ) from None
        self.chooser.configure(updated)
        if "geoblock_hold_timeout" in updated:
            self.hold_timeout = _seconds(opts.geoblock_hold_timeout, "geoblock_hold_timeout", 0.1, 300)
        if "geoblock_dns_timeout" in updated:
            self.resolver.timeout = _seconds(opts.geoblock_dns_timeout, "geoblock_dns_timeout", 0.01, 30)
        if updated & {"geoblock_rdap", "geoblock_rdap_url", "geoblock_rdap_timeout"}:
            timeout = _seconds(opts.geoblock_rdap_timeout, "geoblock_rdap_timeout", 0.1, 60)
            try:
                url = rdap.check_bootstrap_url(opts.geoblock_rdap_url)
            except ValueError as exc:
                raise exceptions.OptionsError(f"geoblock: geoblock_rdap_url: {exc}") from None
            if self.rdap is not None:
                self.rdap.close()
            self.rdap = rdap.RdapLocator(enabled=True, timeout=timeout, bootstrap_url=url) if opts.geoblock_rdap else None
        if "geoblock_dns_sinkhole" in updated:
            self.sinkhole = None
            if opts.geoblock_dns_sinkhole:
                try:
                    self.sinkhole = as_written(normalize_ip(opts.geoblock_dns_sinkhole))
                except InvalidHost as exc:
                    raise exceptions.OptionsError(f"geoblock: geoblock_dns_sinkhole: {exc}") from None
        if "geoblock_monitor" in updated:
            self.monitor = bool(opts.geoblock_monitor)
        if "geoblock_gc_freeze" in updated:
            self.gc_freeze = bool(opts.geoblock_gc_freeze)
            if self.serving and self.gc_freeze:  # switched while serving: apply it now
                self._settle_heap()
            elif self.serving:
                heap.release()
        if "geoblock_reload_interval" in updated:
            self.reload_interval = _seconds(opts.geoblock_reload_interval, "geoblock_reload_interval", 0, 3600)
        if "connection_strategy" in updated or "geoblock_rules" in updated:
            # With "eager", mitmproxy dials the server before the ClientHello is read: a blocked server
            # would see a connection. geoblock needs "lazy".
            if getattr(opts, "connection_strategy", "lazy") != "lazy":
                logger.info("geoblock: setting connection_strategy=lazy so blocked servers are never dialled")
                opts.update(connection_strategy="lazy")
        if "strip_ech" in updated or "geoblock_rules" in updated:
            # mitmproxy's own strip_ech runs before geoblock's dns_response and removes ECH configurations
            # from HTTPS answers before geoblock reads their public names (the names that front ECH).
            # geoblock removes them itself, from every section (dns_response).
            if getattr(opts, "strip_ech", False):
                logger.info("geoblock: setting strip_ech=false: geoblock removes ECH from DNS answers itself, "
                            "after reading their public names")
                opts.update(strip_ech=False)

    def _report_geo(self) -> None:
        if self.geo is None or self.ruleset is None:
            return
        rs = self.ruleset
        for line in self.geo.describe():
            logger.info(f"geoblock: {line}")
        for problem in self.geo.problems:
            logger.warning(f"geoblock: {problem}")
        needy = [r.id for r in rs.rules if r.spec.offshore is not None or r.spec.countries]
        if self.geo.country_info is None and needy:
            logger.warning(
                f"geoblock: without a country database, the {len(needy)} rule(s) that need a server's country "
                f"({', '.join(needy[:5])}{', ...' if len(needy) > 5 else ''}) cannot place servers and give "
                f"unknown_country={rs.policy.unknown_country}; domain rules are enforced as usual. "
                f"Install one with scripts/geoip-update or set geoblock_country_db."
            )
        asn_rules = [r.id for r in rs.rules if r.spec.asns]
        if self.geo.asn_info is None and asn_rules:
            logger.warning(
                f"geoblock: without an ASN database, the {len(asn_rules)} rule(s) on ASNs give "
                f"unknown_country={rs.policy.unknown_country}."
            )

    def running(self) -> None:
        if self.ruleset is None:  # configure refused the rules: never serve without them
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
        self.resolver.close()
        if self.rdap is not None:
            self.rdap.close()
        if self.log is not None:
            self.log.close()
        if self.geo is not None:
            self.geo.close()

    # ------------------------------------------------------------------ hot reload

    async def _watch(self) -> None:
        while True:
            interval = self.reload_interval
            await asyncio.sleep(interval if interval > 0 else 1.0)
            if interval > 0:
                try:
                    await self.reload()
                except Exception as exc:  # noqa: BLE001 - the watcher must outlive any failure
                    logger.error(f"geoblock: reload failed: {exc}")

    async def reload(self, force: bool = False) -> str:
        """Reload what changed (everything when `force`); build aside in a thread, then swap."""
        opts = ctx.options
        rules_now = rules_stamp(opts.geoblock_rules)
        geo_now = files_stamp(opts.geoblock_country_db, opts.geoblock_asn_db)
        said: list[str] = []
        if force or rules_now != self._rules_stamp:
            self._rules_stamp = rules_now  # a broken edit is reported once, not at every check
            started = time.perf_counter()
            try:
                ruleset = await asyncio.to_thread(Ruleset.load, opts.geoblock_rules)
            except RuleError as exc:
                old = self.ruleset.version if self.ruleset else "none"
                self.last_problem = f"rules change refused, keeping ruleset {old}: {exc}"
                logger.error(f"geoblock: {self.last_problem}")
                said.append(self.last_problem)
            else:
                old = self.ruleset.version if self.ruleset else "none"
                self.ruleset = ruleset
                self.generation += 1
                self.reloads += 1
                self.last_problem = None
                s = ruleset.summary()
                msg = (f"rules reloaded: ruleset {old} -> {ruleset.version}, {s['rules']} rules, "
                       f"{s['domains']} domains, in {(time.perf_counter() - started) * 1000:.0f} ms")
                logger.info(f"geoblock: {msg}")
                said.append(msg)
                self._settle_heap()  # the old ruleset is freed, the new one frozen
        if force or geo_now != self._geo_stamp:
            self._geo_stamp = geo_now
            old_geo = self.geo
            geo = await asyncio.to_thread(
                Geo, opts.geoblock_country_db or None, opts.geoblock_asn_db or None, 65536, old_geo
            )
            self.geo = geo
            self.generation += 1
            if old_geo is not None:
                old_geo.close()  # readers handed over to the new Geo stay open
            for problem in geo.problems:
                logger.error(f"geoblock: database change refused: {problem}")
                said.append(problem)
            msg = "databases reloaded: " + "; ".join(geo.describe())
            logger.info(f"geoblock: {msg}")
            said.append(msg)
        return "\n".join(said) or "nothing changed"

    def _settle_heap(self) -> None:
        if self.gc_freeze:
            count, ms = heap.settle()
            logger.info(f"geoblock: {count} long-lived objects moved out of the collector's scans in {ms:.0f} ms")

    @command.command("geoblock.reload")
    def reload_command(self) -> None:
        """Reload geoblock's rules and GeoIP databases now (a broken file keeps the last good one)."""
        asyncio.get_running_loop().create_task(self.reload(force=True))

    @command.command("geoblock.status")
    def status(self) -> str:
        """geoblock's ruleset version, rule counts, databases and counters."""
        lines = []
        rs = self.ruleset
        if rs is None:
            lines.append("ruleset: none")
        else:
            s = rs.summary()
            by = ", ".join(f"{n} {a}" for a, n in s["by_action"].items())  # type: ignore[union-attr]
            lines.append(f"ruleset {rs.version}: {s['rules']} rules ({by}), {s['domains']} domains, "
                         f"{len(rs.source.files)} files, from {ctx.options.geoblock_rules}")
        if self.geo is not None:
            lines.extend(self.geo.describe())
        c = self.counts
        lines.append(f"decisions: {c['allow']} allow, {c['log']} log, {c['block']} block, {c['error']} errors; "
                     f"reloads: {self.reloads}")
        if self.log is not None:
            lines.append(f"decision log {self.log.path}: {self.log.written} written, {self.log.lost} lost")
        if self.rdap is not None:
            st = self.rdap.stats()
            lines.append(f"rdap: {st['answers']} answers, {st['negatives']} negatives, {st['in_flight']} in flight, "
                         f"{st['cache_entries']} cached, {st['shed']} shed")
        sizes = self.caches()
        lines.append("caches (entries/bound): " + ", ".join(
            f"{label} {n}/{bound}" for label, (n, bound) in sizes.items() if bound is not None))
        lines.append(f"connection states: {sizes['connection states'][0]}")
        lines.append(f"objects kept out of the collector's scans: {heap.frozen()}"
                     + ("" if self.gc_freeze else " (geoblock_gc_freeze is off)"))
        if self.last_problem:
            lines.append(f"last problem: {self.last_problem}")
        return "\n".join(lines)

    def caches(self) -> dict[str, tuple[int, int | None]]:
        """(entries, bound) of each of geoblock's caches, and the per-connection states held now (no
        bound: each ends with its connection, so they count the open connections geoblock has seen)."""
        out: dict[str, tuple[int, int | None]] = {**_names.cache_sizes(), **_record.cache_sizes(),
                                                  **rdap.cache_sizes()}
        if self.ruleset is not None:
            out.update(self.ruleset.sizes())
        if self.geo is not None:
            out.update(self.geo.sizes())
        out.update(self.resolver.sizes())
        if self.rdap is not None:
            out.update(self.rdap.sizes())
        out["ech public names"] = (len(self.ech_names), ECH_NAMES_LIMIT)
        out["error causes"] = (len(self.errors_seen), None)
        out["connection states"] = (len(self.conns), None)
        return out

    # ------------------------------------------------------------------ enrichment and decision

    def _locate(self, facts: Facts) -> None:
        if facts.server_ip is not None and self.geo is not None:
            self.geo.place(facts)
            if facts.country is not None:
                return
        if self._rdap_may_place(facts):
            # Non-blocking: a cached RDAP answer, else a background lookup for later flows.
            country = self.rdap.country(facts.server_ip)  # type: ignore[union-attr,arg-type]
            if country is not None:
                facts.country, facts.country_source = country, rdap.SOURCE

    def _rdap_may_place(self, facts: Facts) -> bool:
        """Whether RDAP is asked for the country of this server: its answer may come for a later flow."""
        rs = self.ruleset
        return (facts.country is None and facts.server_ip is not None and self.rdap is not None
                and rs is not None and rs.needs_country and rdap.lookupable(facts.server_ip))

    async def _server_ip(self, state: ConnState | None, name: str | None, ip: IPAddress | None,
                         names: tuple[str, ...]) -> IPAddress | None:
        """The server's address: the dialled IP literal, else the resolved name when rules need it."""
        if ip is not None:
            return ip
        rs = self.ruleset
        if name is None or rs is None or not rs.needs_server_ip(names):
            return None
        if state is not None and name in state.resolved:
            return state.resolved[name]
        addr = await self.resolver.resolve(name)
        if state is not None:
            state.resolved[name] = addr
        return addr

    def _decide(self, facts: Facts) -> Verdict:
        rs = self.ruleset
        if rs is None:
            raise Failure("no ruleset is loaded")
        self._locate(facts)
        return decide(facts, rs)

    def _record(self, facts: Facts, verdict: Verdict, extra: dict[str, Any] | None = None,
                again: bytes | None = None) -> bytes | None:
        """Count, log and write one decision. `again`: the line of an identical earlier record after its
        timestamp, to write without building it anew. Returns that part of the line written, if any."""
        self.counts[verdict.action] += 1
        enforced = not self.monitor
        if verdict.action != "allow":
            logger.info(
                f"geoblock: {verdict.action}{'' if enforced else ' (monitor)'} {facts.stage} "
                f"{verdict.name or facts.server_ip}: {verdict.reason}"
            )
        log = self.log
        if log is None:
            return None
        if again is not None and log.write_again(again):
            return again
        rs, geo = self.ruleset, self.geo
        return log.write(make_record(facts, verdict, enforced, rs.version if rs else None,
                                     geo.country_build if geo else None, geo.asn_build if geo else None, extra))

    def _enforcing(self, verdict: Verdict) -> bool:
        return verdict.action == "block" and not self.monitor

    def _state(self, client: Any) -> ConnState:
        state = self.conns.get(client.id)
        if state is None:
            state = self.conns[client.id] = ConnState()
        return state

    # ------------------------------------------------------------------ hooks

    @guarded("ip")
    async def client_connected(self, client: Any) -> None:
        if not isinstance(client.proxy_mode, mode_specs.TransparentMode):
            return  # only in transparent mode is the local address the server's (SO_ORIGINAL_DST)
        state = self._state(client)
        dest = peer_ip(client.sockname)
        if dest is None:
            raise Failure(f"no original destination for the transparent connection from {client.peername}")
        state.connect_ip = dest
        facts = Facts("ip", client_ip=client_ip(client), server_ip=dest)
        verdict = self._decide(facts)
        self._record(facts, verdict)
        if self._enforcing(verdict):
            state.blocked = verdict
            client.error = f"blocked by geoblock rule {verdict.rule}"

    @guarded("dns")
    async def dns_request(self, flow: Any) -> None:
        """Judge a DNS question before anything answers it: a blocked name gets the blocked answer
        (_refuse_dns) and never goes upstream; Firefox's DNS-over-HTTPS canary gets NXDOMAIN under
        `doh_canary: nxdomain`. mitmproxy's resolver only resolves questions still without an answer
        (dns_resolver.DnsResolver._should_resolve, 11.0.2 and 12.3.1); on 11.0.2 it would run first, so
        geoblock moves it behind itself (_resolver_after_geoblock)."""
        request = flow.request
        facts = Facts("dns", client_ip=client_ip(flow.client_conn))
        names: list[str] = []
        for question in request.questions:
            facts.host = question.name
            try:
                host = normalize_host(question.name)
            except InvalidHost as exc:
                return self._invalid(facts, exc, "DNS question", flow)
            if isinstance(host, str) and host not in names:
                names.append(host)
        if not names:
            return  # reverse lookups of addresses and the like: nothing to judge by name
        facts.names = tuple(names)
        qtype = {"qtype": [dns_types.to_str(q.type) for q in request.questions]}
        rs = self.ruleset
        if DOH_CANARY in names and rs is not None and rs.policy.doh_canary == "nxdomain":
            verdict = Verdict("block", "policy:doh-canary",
                              f"{DOH_CANARY} is Firefox's canary: NXDOMAIN keeps its DNS over HTTPS off, so it "
                              f"uses this DNS (blocked names, ECH removed); the policy for doh_canary is nxdomain",
                              None, DOH_CANARY)
            self._record(facts, verdict, qtype)
            if self._enforcing(verdict):
                flow.response = request.fail(response_codes.NXDOMAIN)
            return
        verdict = self._decide(facts)
        self._record(facts, verdict, qtype)
        if self._enforcing(verdict):
            self._refuse_dns(flow)
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
        if flow.response is not None or flow.error is not None or not _resolver_would_answer(flow):
            return
        servers = _name_servers()
        if not servers:
            return
        request = flow.request
        try:
            wire = await dnsforward.ask(request.packed, servers, self.resolver.timeout)
            flow.response = type(request).unpack(wire)
        except (dnsforward.NoAnswer, struct.error, ValueError) as exc:
            problem = f"geoblock: DNS question {request.question.name if request.question else ''} not answered: {exc}"
            if problem != self._dns_problem:
                self._dns_problem = problem
                logger.warning(problem)
            flow.response = request.fail(response_codes.SERVFAIL)

    @guarded("dns")
    async def dns_response(self, flow: Any) -> None:
        """Judge and clean a DNS answer before the client gets it.

        Every name the answer leads to is judged, not only the question: the owner names of address,
        alias and service-binding records (A, AAAA, CNAME, DNAME, HTTPS, SVCB) in the answer section and,
        where the answer leads to them, in the additional section, and their targets. A question for an allowed alias whose CNAME chain ends at a blocked
        name gets the blocked answer (_refuse_dns), recorded with the chain.

        Encrypted Client Hello configurations are removed from HTTPS and SVCB records in every section, so
        clients send a readable SNI (mitmproxy's own strip_ech, which geoblock turns off, covers HTTPS
        answers only, and would remove them before geoblock reads them); the public names in them are kept (ECH_NAMES_LIMIT) as names that front ECH (observe.ech_of).
        A record whose service binding data cannot be parsed is dropped rather than passed on with its ECH;
        any other failure here applies on_error to the answer."""
        response = flow.response
        if response is None:
            return
        if await self._judge_answer(flow, response):
            return
        for section in ("answers", "authorities", "additionals"):
            records = getattr(response, section)
            kept = [rr for rr in records if self._without_ech(rr)]
            if len(kept) != len(records):
                setattr(response, section, kept)

    async def _judge_answer(self, flow: Any, response: Any) -> bool:
        """Judge the names an answer leads to beyond its question; True when it was refused."""
        asked: list[str] = []
        for question in flow.request.questions:
            try:
                host = normalize_host(question.name)
            except InvalidHost:
                continue
            if isinstance(host, str):
                asked.append(host)
        chain: list[str] = []
        facts = Facts("dns", client_ip=client_ip(flow.client_conn), host=asked[0] if asked else None)
        # Every leading record of the answer section; of the additional section, those whose owner the
        # answer leads to (an HTTPS target's addresses): other additional data (a name server's glue)
        # is not where the client goes, and resolvers do not hand it to applications.
        todo = [rr for rr in response.answers if rr.type in _LEADING_TYPES]
        pending = [rr for rr in response.additionals if rr.type in _LEADING_TYPES]
        while todo:
            for rr in todo:
                try:
                    target = _target_of(rr)
                except Exception:  # noqa: BLE001 - malformed service binding data: the record is dropped below
                    continue
                for shown, text in (("DNS answer owner name", rr.name), ("DNS answer target", target)):
                    if not text or text == ".":
                        continue
                    try:
                        host = normalize_host(text)
                    except InvalidHost as exc:
                        self._invalid(facts, exc, shown, flow)
                        return True
                    if isinstance(host, str) and host not in chain:
                        chain.append(host)
            reached = set(chain) | set(asked)
            todo = [rr for rr in pending if _dns_owner(rr) in reached]
            pending = [rr for rr in pending if rr not in todo]
        if not any(name not in asked for name in chain):
            return False  # nothing beyond the question, which dns_request judged
        facts.names = tuple(dict.fromkeys([*asked, *chain]))
        verdict = self._decide(facts)
        self._record(facts, verdict, {"qtype": [dns_types.to_str(q.type) for q in flow.request.questions],
                                      "chain": list(facts.names)})
        if self._enforcing(verdict):
            self._refuse_dns(flow)
            return True
        return False

    def _without_ech(self, rr: Any) -> bool:
        """Remove the ECH configuration from an HTTPS or SVCB record, learning its public names; False
        when the record must be dropped (its service binding data cannot be parsed)."""
        if rr.type not in (dns_types.HTTPS, dns_types.SVCB):
            return True
        try:
            ech = rr.https_ech
            if ech is None:
                return True
            rr.https_ech = None
        except Exception:  # noqa: BLE001 - malformed service binding data
            return False
        try:
            public_names = ech_config_public_names(base64.b64decode(ech))
        except ValueError:  # binascii.Error too: the record is passed on without it, nothing to learn
            return True
        for text in public_names:
            try:
                name = normalize_host(text)
            except InvalidHost:
                continue
            if isinstance(name, str):
                self.ech_names[name] = None
                self.ech_names.move_to_end(name)
                if len(self.ech_names) > ECH_NAMES_LIMIT:
                    self.ech_names.popitem(last=False)
        return True

    def _fronts_ech(self, name: str) -> bool:
        """Whether `name` fronts Encrypted Client Hello: under the policy's ech_public_names, or a public
        name seen in an ECH configuration in a DNS answer geoblock served."""
        rs = self.ruleset
        return (rs is not None and name_under(name, rs.policy.ech_public_names)) or name in self.ech_names

    def _refuse_dns(self, flow: Any) -> None:
        """Answer a blocked question: the sinkhole address for A/AAAA when set, else NXDOMAIN.

        Set even when mitmproxy's resolver already answered (11.x resolves before script hooks)."""
        request = flow.request
        sink = self.sinkhole
        if sink is not None and request.questions:
            q = request.questions[0]
            if q.type == dns_types.A and sink.version == 4:
                flow.response = request.succeed([dns.ResourceRecord.A(q.name, sink, ttl=60)])
                return
            if q.type == dns_types.AAAA and sink.version == 6:
                flow.response = request.succeed([dns.ResourceRecord.AAAA(q.name, sink, ttl=60)])
                return
        flow.response = request.fail(response_codes.NXDOMAIN)

    @guarded("connect")
    async def http_connect(self, flow: http.HTTPFlow) -> None:
        state = self._state(flow.client_conn)
        facts = Facts("connect", client_ip=client_ip(flow.client_conn))
        try:
            target = normalize_host(flow.request.host)
        except InvalidHost as exc:
            return self._invalid(facts, exc, "CONNECT target", flow)
        if isinstance(target, str):
            state.connect_name = target
            facts.names = (target,)
            facts.host = target
        else:
            state.connect_ip = target
            facts.host = flow.request.host  # the address as the client spelt it (decimal, NAT64, ...)
        facts.server_ip = await self._server_ip(state, state.connect_name, state.connect_ip, facts.names)
        verdict = self._decide(facts)
        self._record(facts, verdict)
        if self._enforcing(verdict):
            state.blocked = verdict
            if not self._end_blocked_tunnel(state, flow.client_conn, "connect", facts, verdict):
                flow.response = enforce.connect_refusal(verdict, ctx.options.geoblock_blocked_by)

    @guarded("stream")
    async def next_layer(self, nextlayer: mlayer.NextLayer) -> None:
        """Choose the connection's next layer, and judge it before a byte is relayed.

        Every layer choice goes through here (geoblock's hook runs before mitmproxy's own, and takes its
        decision): the first bytes are held until they show what the stream is (hold.HoldFirstBytes),
        mitmproxy's own choice is asked for (`Chooser`), and then whatever it chose is judged by one
        owner: a TLS ClientHello here, on its SNI; HTTP by the request hooks, request by request (a first
        line with an HTTP version is read as HTTP whatever mitmproxy guessed); anything else (raw TCP or
        UDP, QUIC, DNS relayed to the connection's server, a layer mitmproxy adds later) here, as a
        stream that shows no name. A blocked stream gets a layer that refuses it. The hold's bounds
        (LIMIT bytes, geoblock_hold_timeout) end in the policy's on_error verdict."""
        if nextlayer.layer is not None:
            return
        context = nextlayer.context
        data = nextlayer.data_client()
        tcp = context.client.transport_protocol == "tcp"
        shows = hold.stream_state(data) if tcp else hold.OTHER  # datagrams are judged one by one
        if not isinstance(nextlayer, hold.Replayed):
            if shows == hold.MORE or (shows == hold.LINE and data[:1] in b"\r\n"):
                nextlayer.layer = hold.HoldFirstBytes(context, self.hold_timeout)
                return
        state = self._state(context.client)
        if shows == hold.MORE:  # the hold ran out of time or room: judged on what it has (on_error)
            limit = "" if nextlayer.expired else f" (the most geoblock holds is {hold.LIMIT} bytes)"
            within = f" within {self.hold_timeout:g} s" if nextlayer.expired else ""
            why = f"no complete request line or TLS ClientHello in the first {len(data)} bytes{within}{limit}"
            verdict = await self._judge_stream(context, state, data, incomplete=why)
            if self._enforcing(verdict):
                state.blocked = verdict
                nextlayer.layer = enforce.DenyStream(context)
            return
        if shows == hold.TLS and context.server.address is not None:  # no address: a handshake with the proxy
            if state.blocked_tunnel is not None:  # blocked at CONNECT: mitmproxy ends its TLS (BlockedTunnel)
                state.tls_judged[context] = False
            else:
                try:
                    verdict, facts = await self._judge_client_hello(context, state, data)
                except Exception as exc:  # noqa: BLE001 - the guard, for the tls stage
                    return self._on_error("tls", nextlayer, exc)
                if self._enforcing(verdict):
                    state.blocked = verdict
                    if facts is None or not self._end_blocked_tunnel(state, context.client, "tls", facts, verdict):
                        nextlayer.layer = enforce.DenyTLS(context)
                        return
        chosen = self.chooser.choose(context, data, nextlayer.data_server())
        if chosen is None:
            return  # mitmproxy needs more bytes too; asked again with them
        if shows != hold.TLS and not judged_later(chosen) and shows_http_version(data):
            chosen = self.chooser.http_instead(context, chosen)  # a request line mitmproxy took for raw TCP
        if shows != hold.TLS and not judged_later(chosen):
            verdict = await self._judge_stream(context, state, data)
            if self._enforcing(verdict):
                state.blocked = verdict
                nextlayer.layer = enforce.DenyStream(context)
                return
        nextlayer.layer = chosen

    async def _judge_client_hello(self, context: Any, state: ConnState, data: bytes) -> tuple[Verdict, Facts | None]:
        """Judge a whole ClientHello (`data`, its TLS records) at this layer: SNI, CONNECT target,
        destination, ECH. Returns the verdict and the facts it was reached on (None for an SNI that is
        not a host name: on_error decided). Raises Failure on a malformed one."""
        try:
            raw = mtls.get_client_hello(data)  # reassembled from its records
            if raw is None:
                raise ValueError("incomplete")
            hello = ClientHello(raw[4:])  # what parse_client_hello does, without reassembling twice
        except (EOFError, ValueError) as exc:
            raise Failure(f"malformed TLS ClientHello ({exc or 'Invalid ClientHello'})") from None
        framing = client_hello_problem(raw)
        if framing is not None:  # mitmproxy's lenient parser may have misread it (see client_hello_problem)
            raise Failure(f"malformed TLS ClientHello ({framing})")
        state.tls_judged[context] = False
        facts = Facts("tls", client_ip=client_ip(context.client))
        self._learn_destination(state, context)
        problem = sni_problem(hello.extensions, hello.sni)
        if problem is not None:  # a server_name mitmproxy cannot read is not "no SNI"
            facts.sni = str(problem.value)
            return self._invalid(facts, problem, "SNI", None), None
        names: list[str] = []
        outer: str | None = None  # this ClientHello's SNI as a name (None: absent or an address)
        if hello.sni is not None:
            facts.sni = hello.sni
            try:
                sni = normalize_host(hello.sni)
            except InvalidHost as exc:
                return self._invalid(facts, exc, "SNI", None), None
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
        facts.server_ip = await self._server_ip(state, state.connect_name, state.connect_ip, facts.names)
        verdict = self._decide(facts)
        self._record(facts, verdict)
        state.tls_judged[context] = not self._enforcing(verdict)
        return verdict, facts

    async def _judge_stream(self, context: Any, state: ConnState, data: bytes, incomplete: str | None = None) -> Verdict:
        """Judge a stream that is neither HTTP nor TLS (stage "stream"): on its destination and the names
        the connection showed before it (a CONNECT target; the SNI of TLS geoblock decrypted), with the
        policy's `unreadable` verdict when that is stricter. `incomplete`: why the first bytes never
        showed what the stream is; the policy's `on_error` verdict then applies, recorded with an error."""
        self._learn_destination(state, context)
        sni = self._destination_sni(state, context.client)
        names = [n for n in (_sni_name(sni), state.connect_name) if n]
        facts = Facts("stream", names=tuple(dict.fromkeys(names)), client_ip=client_ip(context.client),
                      host=state.connect_name, sni=sni)
        facts.server_ip = await self._server_ip(state, state.connect_name, state.connect_ip, facts.names)
        extra: dict[str, Any] = {"first_bytes": data[:FIRST_BYTES_RECORDED].hex(),
                                 "transport": context.client.transport_protocol}
        if state.blocked is not None and incomplete is None:
            # A tunnel geoblock blocked but ends itself (BlockedTunnel): whatever it carries is refused
            # for the reason the connection was blocked, not judged anew on its names.
            self._locate(facts)
            blocked = state.blocked
            verdict = Verdict("block", blocked.rule, f"the connection is blocked: {blocked.reason}", blocked.offshore,
                              blocked.name)
        elif incomplete is None:
            verdict = self._decide(facts)
        else:
            self._locate(facts)
            action = self.ruleset.policy.on_error if self.ruleset else "block"
            verdict = Verdict(action, None, f"{incomplete}; on_error is {action}", None, None)
            extra["error"] = "incomplete-first-bytes"
        self._record(facts, verdict, extra)
        return verdict

    @staticmethod
    def _destination_sni(state: ConnState, client: Any) -> str | None:
        """The SNI of the client's TLS toward the destination, or None. A handshake with the proxy
        itself (a secure web proxy, before the CONNECT) names the proxy, not where the flow goes."""
        sni = client.sni
        return None if sni is not None and sni == state.proxy_sni else sni

    @staticmethod
    def _learn_destination(state: ConnState, context: Any) -> None:
        """The destination mitmproxy will dial, when no CONNECT or transparent hook gave it already."""
        address = context.server.address
        if address and state.connect_name is None and state.connect_ip is None:
            target = normalize_host(address[0])
            if isinstance(target, str):
                state.connect_name = target
            else:
                state.connect_ip = target

    @staticmethod
    def _end_blocked_tunnel(state: ConnState, client: Any, stage: str, facts: Facts, verdict: Verdict) -> bool:
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
        if not ctx.options.geoblock_intercept or verdict.rule == "policy:ech" or not isinstance(
                client.proxy_mode, (mode_specs.RegularMode, mode_specs.TransparentMode)):
            return False
        state.blocked_tunnel = BlockedTunnel(stage, facts, verdict)
        return True

    @guarded("tls")
    async def tls_clienthello(self, data: mtls.ClientHelloData) -> None:
        state = self.conns.get(data.context.client.id)
        allowed = state.tls_judged.get(data.context) if state is not None else None
        if allowed is None:
            if data.context.server.address is None:  # a handshake with the proxy itself (secure web proxy)
                self._state(data.context.client).proxy_sni = data.client_hello.sni
                return  # what it carries is judged
            # The ClientHello reached TLS without geoblock judging it: never pass it through blindly.
            raise Failure("a TLS handshake reached the TLS layer before geoblock judged it")
        if not allowed:
            data.ignore_connection = False
            return
        if not ctx.options.geoblock_intercept:
            data.ignore_connection = True

    def requestheaders(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        """Judge an HTTP request. A request that the connection's last judgement covers (HttpMemo) is
        recorded and enforced here and now; any other is judged by the coroutine returned, which
        mitmproxy awaits (a hook may return an awaitable). Both are guarded as every hook is."""
        try:
            request = flow.request
            state = self._state(flow.client_conn)
            if state.blocked_tunnel is not None:
                return self._answer_blocked_tunnel(flow, state.blocked_tunnel)
            data = request.data  # the URI authority as received: decoded (uri_authority) only when judged anew
            sni = self._destination_sni(state, flow.client_conn)
            path = data.path
            shows = (request.host, request.host_header, data.authority, data.http_version, sni, state.connect_ip,
                     None if path[:1] == b"/" else path)  # an absolute :path (HTTP/2, 3) names a server too
            memo = state.http_memo
            if memo is None or memo.generation != self.generation or memo.shows != shows:
                state.http_memo = None
                return self._judge_request(flow, state, shows)
            memo.line_rest = self._record(memo.facts, memo.verdict, again=memo.line_rest)
            self._enforce_request(flow, state, memo.facts, memo.verdict, memo.target_name)
        except Exception as exc:  # noqa: BLE001 - the guard (see guarded)
            self._on_error("http", flow, exc)
        return None

    @guarded("http")
    async def _judge_request(self, flow: http.HTTPFlow, state: ConnState, shows: tuple[Any, ...]) -> None:
        request = flow.request
        host_header, sni = shows[1], shows[4]
        facts = Facts("http", client_ip=client_ip(flow.client_conn), host=host_header, sni=sni)
        try:
            target = http_target(request.host, host_header, sni, uri_authority(request))
        except InvalidField as exc:
            return self._invalid(facts, exc.cause, exc.field, flow)
        facts.names = target.names
        facts.mismatch = target.mismatch
        # The request target is what mitmproxy dials: its IP, or its name resolved, places the server.
        name, ip = target.target_name, target.target_ip or state.connect_ip
        generation = self.generation
        facts.server_ip = await self._server_ip(state, name, ip, facts.names)
        verdict = self._decide(facts)
        rest = self._record(facts, verdict)
        # Kept unless the ruleset, databases or options changed while the name was resolved (the address
        # was sought for the old ruleset), or RDAP may place the server for a later request.
        if generation == self.generation and not self._rdap_may_place(facts):
            state.http_memo = HttpMemo(shows, generation, facts, verdict, name, rest)
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
                                           self.page, ctx.options.geoblock_blocked_by, _now())

    def _enforce_request(self, flow: http.HTTPFlow, state: ConnState, facts: Facts, verdict: Verdict,
                         name: str | None) -> None:
        if self._enforcing(verdict):
            request = flow.request
            flow.response = enforce.block_page(
                verdict, verdict.name or request.host_header or request.host, self.page,
                ctx.options.geoblock_blocked_by, _now()
            )
        elif name is not None and facts.server_ip is not None and state.resolved.get(name) == facts.server_ip:
            self._target_judged(flow, facts.server_ip, state)

    @staticmethod
    def _target_judged(flow: http.HTTPFlow, addr: IPAddress, state: ConnState) -> None:
        """HTTP (plain, or decrypted inside a tunnel) to a name geoblock resolved: the request goes to the
        address judged, its Host header unchanged; for HTTPS the upstream TLS server name stays the name
        (set in server_connect). mitmproxy then pools upstream connections by that address, as for a
        request target given as an address. (Pinning each connection in server_connect instead leaves
        mitmproxy's pool keyed by the name: each request opened a new upstream connection, and a
        keep-alive client's 6th request by name could wait forever.)"""
        request = flow.request
        if not isinstance(flow.client_conn.proxy_mode, mode_specs.RegularMode):
            return  # other modes choose their server themselves
        dial = str(as_written(addr))  # an IPv4 address carried in IPv6 (DNS64) is dialled as the IPv6 address
        if request.scheme == "https":
            state.server_names[(dial, request.port)] = request.host
        elif request.scheme != "http":
            return
        host_header = request.host_header
        request.host = dial  # mitmproxy rewrites the Host header with it: put the client's back
        if host_header is not None:
            request.host_header = host_header

    @guarded("connect")
    async def server_connect(self, data: Any) -> None:
        state = self.conns.get(data.client.id)
        if state is None:
            return
        if state.blocked is not None and not self.monitor:
            data.server.error = f"blocked by geoblock rule {state.blocked.rule}"
            return
        if state.resolved:
            server = data.server
            name = state.server_names.get(server.address) if server.address else None
            if name is not None and server.sni in (None, server.address[0]):
                server.sni = name  # HTTPS sent to the judged address: the certificate is the name's
            else:
                self._pin(state, server, data.client)

    @staticmethod
    def _pin(state: ConnState, server: Any, client: Any) -> None:
        """Dial the address geoblock judged. When a rule needed a name's location, geoblock resolved
        the name itself; mitmproxy would resolve it again when dialling and could get another answer
        (round-robin DNS, a short TTL, a server that answers differently on purpose). The server is
        dialled at the judged address instead; the TLS server name stays the name."""
        address = server.address
        if not address or server.via is not None or not isinstance(address[0], str):
            return
        try:
            name = normalize_host(address[0])
        except InvalidHost:
            return
        pinned = state.resolved.get(name) if isinstance(name, str) else None
        if pinned is None:
            return
        if server.sni is None:
            server.sni = client.sni or address[0]  # what mitmproxy would have sent
        server.address = (str(as_written(pinned)), address[1])

    @guarded("http")
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
            self._state(flow.client_conn).blocked = verdict
            flow.kill()

    def client_disconnected(self, client: Any) -> None:
        self.conns.pop(client.id, None)

    # ------------------------------------------------------------------ failures

    def _invalid(self, facts: Facts, exc: InvalidHost, field_name: str, target: Any) -> Verdict:
        """A name that cannot be normalised: judged by on_error, with the offending value named, and
        enforced on `target` (a hook's object; None: the caller enforces the verdict returned)."""
        rs = self.ruleset
        action = rs.policy.on_error if rs else "block"
        verdict = Verdict(action, None, f"{field_name} {exc}; on_error is {action}", None, None)
        self._record(facts, verdict, {"error": "invalid-input"})
        self._enforce_stage(facts.stage, target, verdict)
        return verdict

    def _on_error(self, stage: str, obj: Any, exc: Exception) -> None:
        rs = self.ruleset
        action = rs.policy.on_error if rs else "block"
        frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        cause = f"{type(exc).__name__} at {os.path.basename(frame.filename)}:{frame.lineno}" if frame else type(exc).__name__
        seen = self.errors_seen.get(cause, 0)
        self.errors_seen[cause] = seen + 1
        self.counts["error"] += 1
        if seen == 0:
            logger.error(
                f"geoblock: error in the {stage} stage, on_error={action} applies to this flow and to every "
                f"later one with the same cause ({cause}): {exc}",
                exc_info=(type(exc), exc, exc.__traceback__) if not isinstance(exc, Failure) else None,
            )
        verdict = Verdict(action, None, f"geoblock could not judge this flow ({exc}); on_error is {action}", None)
        try:
            facts = Facts(stage, client_ip=client_ip(_client_of(obj)))
            self._record(facts, verdict, {"error": cause})
        except Exception:  # noqa: BLE001 - recording must not stop enforcement
            pass
        self._enforce_stage(stage, obj, verdict)

    def _enforce_stage(self, stage: str, obj: Any, verdict: Verdict) -> None:
        if not self._enforcing(verdict):
            return
        if isinstance(obj, http.HTTPFlow):
            self._state(obj.client_conn).blocked = verdict
            if obj.request.method == "CONNECT":
                obj.response = enforce.connect_refusal(verdict, ctx.options.geoblock_blocked_by)
            else:
                obj.response = enforce.block_page(
                    verdict, obj.request.host, self.page, ctx.options.geoblock_blocked_by, _now()
                )
        elif isinstance(obj, mlayer.NextLayer):
            self._state(obj.context.client).blocked = verdict
            tls = hold.may_be_client_hello(obj.data_client())
            obj.layer = (enforce.DenyTLS if tls else enforce.DenyStream)(obj.context)
        elif isinstance(obj, mtls.ClientHelloData):
            self._state(obj.context.client).blocked = verdict
            obj.ignore_connection = False
        elif hasattr(obj, "server") and hasattr(obj, "client"):  # ServerConnectionHookData
            obj.server.error = f"geoblock: {verdict.reason}"
        elif hasattr(obj, "request") and hasattr(obj.request, "questions"):  # DNSFlow
            self._refuse_dns(obj)
        elif hasattr(obj, "proxy_mode") and hasattr(obj, "sockname"):  # a client connection
            self._state(obj).blocked = verdict
            obj.error = f"geoblock: {verdict.reason}"


def _dns_owner(rr: Any) -> str | None:
    """A DNS record's owner name, normalised, or None when it is not a valid host name."""
    try:
        host = normalize_host(rr.name)
    except InvalidHost:
        return None
    return host if isinstance(host, str) else None


def _client_of(obj: Any) -> Any:
    """The client connection of a hook's object (a flow, a layer choice, hook data, a client), or None."""
    for path in ("client_conn", "client"):
        if (conn := getattr(obj, path, None)) is not None:
            return conn
    context = getattr(obj, "context", None)
    if context is not None:
        return context.client
    return obj if hasattr(obj, "peername") else None


def _sni_name(sni: str | None) -> str | None:
    """The SNI of a TLS layer geoblock already judged, normalised, or None (absent, or an IP literal)."""
    if sni is None:
        return None
    try:
        name = normalize_host(sni)
    except InvalidHost:
        return None  # refused when its ClientHello was judged; never reaches here allowed
    return name if isinstance(name, str) else None


def _target_of(rr: Any) -> str | None:
    """The name a DNS record points to: a CNAME's or DNAME's target, an HTTPS or SVCB record's
    TargetName (RFC 9460 section 2.5; "." means the owner name itself), else None."""
    if rr.type in (dns_types.CNAME, dns_types.DNAME):
        return rr.domain_name
    if rr.type in (dns_types.HTTPS, dns_types.SVCB):
        return https_records.unpack(rr.data).target_name
    return None


def _resolver_would_answer(flow: Any) -> bool:
    """Whether mitmproxy's DNS resolver would answer this flow by itself, keeping only addresses: the
    conditions of DnsResolver.dns_request and _should_resolve (mitmproxy 11.0.2 and 12.3.1)."""
    request = flow.request
    question = request.question
    mode = flow.client_conn.proxy_mode
    return bool(
        (isinstance(mode, mode_specs.DnsMode)
         or isinstance(mode, mode_specs.WireGuardMode) and flow.server_conn.address == ("10.0.0.53", 53))
        and flow.live and request.query and request.op_code == dns.op_codes.QUERY and question is not None
        and question.class_ == dns.classes.IN and question.type in (dns_types.A, dns_types.AAAA)
    )


def _name_servers() -> list[str]:
    """The name servers mitmproxy's resolver uses (`dns_name_servers`, else the system's), or []."""
    try:
        resolver = ctx.master.addons.get("dnsresolver")
        return list(resolver.name_servers()) if resolver is not None else []
    except (AttributeError, RuntimeError):
        return []


def _resolver_after_geoblock(me: Any) -> None:
    """Put mitmproxy's DNS resolver addon behind geoblock in the addon chain.

    The resolver answers a DNS question in its dns_request hook unless a response is already set
    (DnsResolver._should_resolve). mitmproxy 11.0.2 lists it before the script loader
    (mitmproxy/addons/__init__.py), so it resolved a question upstream before geoblock could judge it;
    12.x lists it after. This gives 11.0.2 the order of 12.x: the new chain is assigned whole, so an event
    being dispatched over the old list finishes undisturbed. A no-op where the order is already right."""
    try:
        from mitmproxy.addonmanager import traverse
        from mitmproxy.addons.dns_resolver import DnsResolver

        manager = ctx.master.addons
        chain = list(manager.chain)
    except (AttributeError, ImportError):
        return
    resolvers = [i for i, a in enumerate(chain) if isinstance(a, DnsResolver)]
    mine = [i for i, a in enumerate(chain) if any(x is me for x in traverse([a]))]
    if not resolvers or not mine or resolvers[0] > mine[0]:
        return
    resolver = chain.pop(resolvers[0])
    chain.insert(mine[0], resolver)  # the entry holding geoblock moved up by one: insert behind it
    manager.chain = chain


def _seconds(value: str, option: str, low: float, high: float) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not low <= seconds <= high:  # also refuses nan
        raise exceptions.OptionsError(f"geoblock: {option} must be a number of seconds from {low:g} to {high:g}, not {value!r}")
    return seconds


