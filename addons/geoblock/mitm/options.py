"""geoblock's mitmproxy options: the table, the check before mitmproxy applies them, and the settings
they parse into.

`OPTIONS` declares every `geoblock_*` option (name, type, default, help). `preflight()` refuses, at
start-up, a `--set` mitmproxy would otherwise drop the addon over. `Settings.parse(options)` turns the
options into one frozen object in `configure`; a value out of range raises `ValueError` naming the option,
which `configure` wraps into mitmproxy's `OptionsError` (as mitmproxy's own blocklist addon does).
Hooks read the settings, never `ctx.options`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from mitmproxy import ctx

from geoblock.core.names import InvalidHost, IPAddress, as_written, normalize_ip
from geoblock.enrich import rdap
from geoblock.enrich.rdap import RdapLocator
from geoblock.errors import GeoblockError
from geoblock.mitm import metrics
from geoblock.paths import DEFAULT_ASN_DB, DEFAULT_COUNTRY_DB, DEFAULT_LOG, DEFAULT_RULES

logger = logging.getLogger("geoblock")

DEFAULT_BLOCKED_BY = "https://geoblock.invalid/"

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
     "geoblock: an HTML template for the 451 page, used for every reader whose languages have no template "
     "(placeholders: docs/block-page.md). Empty = the shipped English page."),
    ("geoblock_block_pages", str, "",
     "geoblock: a directory of 451 page templates named by language tag (fr.html, zh-TW.html, ...), added "
     "to the shipped en.html and zh-CN.html (a same-named one replaces it); the page follows the "
     "reader's Accept-Language. Empty = the shipped ones only."),
    ("geoblock_operator", str, "",
     "geoblock: who restricts access, as the 451 page names them (e.g. \"Example Corp IT\"). Empty = the page "
     "says \"the network's operator\"."),
    ("geoblock_contact", str, "",
     "geoblock: whom a blocked person may ask, on the 451 page: an email address or an http(s) URL (made a "
     "link), or text. Empty = the page says to ask the network's administrator."),
    ("geoblock_notice", str, "",
     "geoblock: the basis of the restriction on the 451 page for a rule without its own `notice`: text or "
     "an http(s) URL (made a link). Empty = none shown."),
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
    ("geoblock_rir", bool, True,
     "geoblock: when the GeoIP database has no country for a public address (or there is none), take the "
     "country its block is registered in from the regional Internet registries' delegation data shipped "
     "with geoblock (offline; country source rir). false = leave such addresses to RDAP."),
    ("geoblock_rdap", bool, True,
     "geoblock: when neither the GeoIP database nor the registries' delegation data has a country for a "
     "public address, look it up over RDAP in the background (the flow in hand follows unknown_country; "
     "later flows use the answer)."),
    ("geoblock_rdap_url", str, rdap.DEFAULT_BOOTSTRAP_URL,
     "geoblock: the RDAP bootstrap service (<url>/ip/<address>), e.g. an internal mirror."),
    ("geoblock_rdap_timeout", str, "5",
     "geoblock: seconds an RDAP lookup may take."),
    ("geoblock_gc_freeze", bool, True,
     "geoblock: after start-up and after each rules reload, move the objects then alive (loaded code, the "
     "compiled rules, the databases' readers) out of the garbage collector's full scans (gc.freeze): "
     "shorter collection pauses and less CPU per request. false = leave the collector as it is."),
    ("geoblock_metrics", str, "127.0.0.1:9464",
     "geoblock: host:port of the status and metrics endpoint (/metrics for Prometheus, /status, /healthz); "
     "one port per worker. Empty = off."),
)


class OptionProblem(GeoblockError):
    """A geoblock option given on the command line that mitmproxy would drop the addon over."""


def preflight() -> None:
    """Check geoblock's --set values before mitmproxy applies them.

    mitmproxy applies a script's --set values when the script registers; a malformed one (a bool that
    is not true/false, an option given twice) makes it drop the whole script silently and serve
    without geoblock, and a misspelt option name is ignored. Refusing here makes mitmdump stop at
    start-up with a message instead. Raises OptionProblem.
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
        if values is None:  # already typed: from mitmproxy's config.yaml (YAML types) or an API
            _typed(name, value, known[name], ctx.options.deferred)
            continue
        if len(values) > 1:
            raise OptionProblem(f"geoblock: option {name} is given more than once: {values}")
        if known[name] is bool and values and values[0] not in ("true", "false"):
            # mitmproxy reads "" and "toggle" as the opposite of the current value: an unset variable in
            # `--set geoblock_monitor=$X` would turn enforcement off
            raise OptionProblem(f"geoblock: option {name} must be true or false, not {values[0]!r}")
        if known[name] is str and not values:
            raise OptionProblem(f"geoblock: option {name} needs a value ({name}=...)")


def _typed(name: str, value: object, typespec: type, deferred: dict[str, Any]) -> None:
    """Check a geoblock option's value as a config file gave it (YAML-typed), before mitmproxy applies it:
    a number for a text option (`geoblock_dns_timeout: 2`, as YAML reads it) becomes that text in
    `deferred`; a value of another type raises OptionProblem naming the option and the value (mitmproxy
    would print a Python traceback and drop geoblock)."""
    if typespec is str and isinstance(value, int | float) and not isinstance(value, bool):
        deferred[name] = str(value)
    elif not isinstance(value, typespec) or (typespec is int and isinstance(value, bool)):
        kind = "true or false" if typespec is bool else "text (quote it in YAML)"
        raise OptionProblem(f"geoblock: option {name} in mitmproxy's config file must be {kind}, not {value!r}")


def seconds(value: str, option: str, low: float, high: float) -> float:
    """`value` as a number of seconds within [low, high]. Raises ValueError naming `option`."""
    try:
        parsed = float(value)
    except ValueError:
        parsed = math.nan
    if not low <= parsed <= high:  # also refuses nan
        raise ValueError(f"{option} must be a number of seconds from {low:g} to {high:g}, not {value!r}")
    return parsed


@dataclass(frozen=True, slots=True)
class Settings:
    """geoblock's options, parsed once in `configure` (times in seconds).

    The paths (rules, databases, decision log, page template) and the RDAP settings are applied by
    `configure` to the engine, the log and the page; the rest is read by the hooks."""

    rules: str
    country_db: str | None
    asn_db: str | None
    log: str | None
    monitor: bool
    intercept: bool
    block_page: str | None
    blocked_by: str
    reload_interval: float
    dns_timeout: float
    hold_timeout: float
    sinkhole: IPAddress | None
    rdap: bool
    rdap_url: str
    rdap_timeout: float
    gc_freeze: bool
    metrics: tuple[str, int] | None  # (host, port) of the endpoint (mitm/metrics.py), None: off
    block_pages: str | None = None  # the directory of per-language page templates (mitm/pages.py)
    operator: str = ""  # who restricts access, for the page
    contact: str = ""  # whom to ask: an email address, a URL or text, for the page
    notice: str = ""  # the basis of rules without their own notice: text or a URL, for the page
    rir: bool = True  # whether the registries' delegation data places what GeoIP does not (enrich/rir.py)

    @classmethod
    def parse(cls, options: Any) -> Settings:
        """The settings of mitmproxy's `options` (its `geoblock_*` attributes). Raises ValueError
        naming the option for a value out of range or malformed."""
        sinkhole = None
        if options.geoblock_dns_sinkhole:
            try:
                sinkhole = as_written(normalize_ip(options.geoblock_dns_sinkhole))
            except InvalidHost as exc:
                raise ValueError(f"geoblock_dns_sinkhole: {exc}") from exc
        try:
            rdap_url = rdap.check_bootstrap_url(options.geoblock_rdap_url)
        except ValueError as exc:
            raise ValueError(f"geoblock_rdap_url: {exc}") from exc
        return cls(
            rules=options.geoblock_rules,
            country_db=options.geoblock_country_db or None,
            asn_db=options.geoblock_asn_db or None,
            log=options.geoblock_log or None,
            monitor=bool(options.geoblock_monitor),
            intercept=bool(options.geoblock_intercept),
            block_page=options.geoblock_block_page or None,
            blocked_by=options.geoblock_blocked_by,
            reload_interval=seconds(options.geoblock_reload_interval, "geoblock_reload_interval", 0, 3600),
            dns_timeout=seconds(options.geoblock_dns_timeout, "geoblock_dns_timeout", 0.01, 30),
            hold_timeout=seconds(options.geoblock_hold_timeout, "geoblock_hold_timeout", 0.1, 300),
            sinkhole=sinkhole,
            rdap=bool(options.geoblock_rdap),
            rdap_url=rdap_url,
            rdap_timeout=seconds(options.geoblock_rdap_timeout, "geoblock_rdap_timeout", 0.1, 60),
            gc_freeze=bool(options.geoblock_gc_freeze),
            metrics=metrics.parse_address(options.geoblock_metrics),
            block_pages=options.geoblock_block_pages or None,
            operator=options.geoblock_operator.strip(),
            contact=options.geoblock_contact.strip(),
            notice=options.geoblock_notice.strip(),
            rir=bool(options.geoblock_rir),
        )

    def rdap_lookups(self) -> RdapLocator | None:
        """RDAP lookups as these settings ask (None: RDAP off)."""
        if not self.rdap:
            return None
        return RdapLocator(enabled=True, timeout=self.rdap_timeout, bootstrap_url=self.rdap_url)


def keep_mitmproxy_options_geoblock_needs(opts: Any, updated: set[str]) -> None:
    """Set back mitmproxy options geoblock cannot work with, saying so."""
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
