"""The engine: one object that judges facts, the same way for the proxy and for every offline tool.

It owns what a verdict depends on besides the facts themselves: the compiled ruleset, the GeoIP
databases, the locators that place a server (GeoIP, then the registries' delegation data, then RDAP:
`enrich.locate.chain`), the resolver
for names whose server must be placed, and their reload. Its callers:
- the mitmproxy adapter (`geoblock.mitm.addon`): every hook observes facts, awaits
  `engine.resolve(...)` where a rule needs the server's address, then calls `engine.judge(facts)`;
- `geoblock explain` and `geoblock-replay` (`geoblock.tools`), the benchmarks and the fuzz targets call
  the same `judge`, so the same facts give the same verdict everywhere
  (tests/test_replay.py::test_explain_replay_and_the_proxy_agree_on_a_corpus_of_flows).

Reload ("build aside, swap whole, keep the last good one"): `reload()` loads a changed rule set or
database in a worker thread and swaps the new one in with one assignment; one that does not load keeps
the one in force, and says why (file and line). `generation` changes with every swap, so a caller that
caches a verdict (the adapter's per-connection memo) knows when it no longer holds.

Imports nothing from mitmproxy.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from geoblock import record as _record
from geoblock.core import names as _names
from geoblock.core.decide import Facts, Verdict, decide
from geoblock.core.names import IPAddress
from geoblock.core.rules import RuleError
from geoblock.core.ruleset import Ruleset
from geoblock.enrich import locate, rdap, rir
from geoblock.enrich.geo import Geo
from geoblock.enrich.resolve import Resolver
from geoblock.errors import GeoblockError
from geoblock.record import DecisionRecord, RecordExtra
from geoblock.watch import files_stamp, rules_stamp, ruleset_stamp

logger = logging.getLogger("geoblock")


class CannotJudge(GeoblockError):
    """A flow the engine cannot judge (no ruleset loaded, input that shows nothing to judge): its verdict
    is the policy's on_error."""


@dataclass(slots=True)
class Session:
    """What the engine learnt for one connection and reuses for its later judgements.

    `resolved`: each name the engine resolved for it (a rule needed the server's address), to the
    address judged (None: no address). Fixed for the connection's life, so every request on it is judged
    on, and dialled at, the same address."""

    resolved: dict[str, IPAddress | None] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Reloaded:
    """What a reload did: `messages` for a person (one line each), whether the ruleset was swapped
    (`rules_swapped`) and whether anything was refused (`refused`, the reason is in the messages)."""

    messages: tuple[str, ...]
    rules_swapped: bool
    refused: bool


class Engine:
    """The ruleset, databases, locators and resolver, and `judge(facts) -> Verdict` over them.

    Build with `Engine.open(rules, country_db, asn_db)` (raises `core.rules.RuleError`, with file and
    line, for rules that do not load) or `Engine(ruleset, geo)`. Database problems do not raise: a
    database that does not open is left out and said in `geo.problems` (rules that need it follow the
    policy's unknown_country)."""

    def __init__(self, ruleset: Ruleset, geo: Geo | None = None, *, rules_path: str | None = None,
                 country_db: str | None = None, asn_db: str | None = None,
                 lookups: rdap.RdapLocator | None = None, resolver: Resolver | None = None,
                 registries: bool = True) -> None:
        self.ruleset = ruleset
        self.geo = geo
        self.rules_path = rules_path
        self.country_db = country_db or None
        self.asn_db = asn_db or None
        self.lookups = lookups  # RDAP, None when off
        self.registries = registries  # whether the registries' delegation data (enrich.rir) places servers
        self.resolver = resolver if resolver is not None else Resolver()
        self.locators = locate.chain(geo, lookups, ruleset.needs_country, registries)
        self.generation = 0  # +1 with every swap of the ruleset, the databases or the locators
        self.reloads = 0  # rulesets swapped in by reload()
        self.database_reloads = 0  # database sets swapped in by reload()
        self.reload_failures = {"rules": 0, "databases": 0}  # changes reload() refused, by what
        self.last_reload_ok = True  # whether the last reload() loaded everything it tried
        self.last_good_load = time.time()  # when (Unix time, seconds) everything last loaded: start-up or reload
        self.last_problem: str | None = None
        self._rules_stamp: object = _as_read(rules_path, ruleset) if rules_path else None
        self._geo_stamp: object = files_stamp(self.country_db or "", self.asn_db or "")

    @classmethod
    def open(cls, rules: str, country_db: str | None = None, asn_db: str | None = None, *,
             lookups: rdap.RdapLocator | None = None, resolver: Resolver | None = None,
             registries: bool = True) -> Engine:
        """Load the rules at `rules` (a file or a directory of *.yaml) and open the databases;
        `registries`: whether the registries' delegation data places what they do not.
        Raises core.rules.RuleError for rules that do not load."""
        ruleset = Ruleset.load(rules)
        geo = Geo(country_db or None, asn_db or None)
        return cls(ruleset, geo, rules_path=rules, country_db=country_db, asn_db=asn_db, lookups=lookups,
                   resolver=resolver, registries=registries)

    # ------------------------------------------------------------------ judging

    def judge(self, facts: Facts) -> Verdict:
        """Place the server of `facts` (its `server_ip`, when known) with the locators, in place, and
        decide: the verdict of `core.decide.decide` under the ruleset in force."""
        self.place(facts)
        return decide(facts, self.ruleset)

    def place(self, facts: Facts) -> None:
        """Fill in where the server of `facts` is, with the locators in order (GeoIP, then the registries'
        delegation data, then RDAP), in place."""
        for locator in self.locators:
            locator.place(facts)

    def may_place_later(self, facts: Facts) -> bool:
        """Whether a locator may place this server later (an RDAP answer on its way): a verdict reached
        without its country must not be reused for a later flow."""
        return any(locator.may_place_later(facts) for locator in self.locators)

    async def resolve(self, session: Session | None, name: str | None, ip: IPAddress | None,
                      names: tuple[str, ...]) -> IPAddress | None:
        """The server's address for judging: `ip` (the address dialled) when known; else, when a rule
        for `names` needs the server's address (`Ruleset.needs_server_ip`), `name` resolved
        (`enrich.resolve.Resolver`, bounded by its timeout, None on failure), once per `session`."""
        if ip is not None:
            return ip
        if name is None or not self.ruleset.needs_server_ip(names):
            return None
        if session is not None and name in session.resolved:
            return session.resolved[name]
        addr = await self.resolver.resolve(name)
        if session is not None:
            session.resolved[name] = addr
        return addr

    def record_of(self, facts: Facts, verdict: Verdict, enforced: bool,
                  extra: RecordExtra | None = None) -> DecisionRecord:
        """The decision record of a verdict (`record.make_record`), with the ruleset version and the
        databases' builds in force."""
        geo = self.geo
        return _record.make_record(facts, verdict, enforced, self.ruleset.version,
                                   geo.country_build if geo else None, geo.asn_build if geo else None, extra)

    def on_error(self, why: str) -> Verdict:
        """The verdict for a flow that cannot be judged: the policy's `on_error` action, with `why`."""
        action = self.ruleset.policy.on_error
        return Verdict(action=action, rule=None, reason=f"{why}; on_error is {action}", offshore=None, name=None)

    # ------------------------------------------------------------------ configuration and reload

    def set_ruleset(self, ruleset: Ruleset, rules_path: str | None = None) -> None:
        """Swap in a ruleset (and where it was loaded from, for reloads)."""
        self.ruleset = ruleset
        if rules_path is not None:
            self.rules_path = rules_path
            self._rules_stamp = _as_read(rules_path, ruleset)
        self._swapped()

    def set_databases(self, country_db: str | None, asn_db: str | None) -> None:
        """Open the databases at these paths (None or "": none) and swap them in; the old ones close."""
        old = self.geo
        self.country_db, self.asn_db = country_db or None, asn_db or None
        self.geo = Geo(self.country_db, self.asn_db)
        self._geo_stamp = files_stamp(self.country_db or "", self.asn_db or "")
        if old is not None:
            old.close()
        self._swapped()

    def set_rdap(self, lookups: rdap.RdapLocator | None) -> None:
        """Use these RDAP lookups (None: RDAP off); the old ones stop."""
        old, self.lookups = self.lookups, lookups
        if old is not None and old is not lookups:
            old.close()
        self._swapped()

    def set_registries(self, on: bool) -> None:
        """Whether the registries' delegation data (`enrich.rir`) places what the databases do not."""
        if on != self.registries:
            self.registries = on
            self._swapped()

    def _swapped(self) -> None:
        self.locators = locate.chain(self.geo, self.lookups, self.ruleset.needs_country, self.registries)
        self.generation += 1

    async def reload(self, force: bool = False) -> Reloaded:
        """Reload what changed on disk (everything when `force`): each rule set or database is built
        aside in a worker thread and swapped in whole; one that does not load keeps the one in force."""
        said: list[str] = []
        swapped = refused = False
        rules_now = yaml_now = None
        if self.rules_path:  # the rule files, and the list files the rules in force name
            yaml_now = rules_stamp(self.rules_path)
            rules_now = yaml_now + files_stamp(*(lf.path for lf in self.ruleset.source.lists))
        if self.rules_path and (force or rules_now != self._rules_stamp):
            self._rules_stamp = rules_now  # a broken edit is reported once, not at every check
            started = time.perf_counter()
            old = self.ruleset.version
            try:
                ruleset = await asyncio.to_thread(Ruleset.load, self.rules_path)
            except RuleError as exc:
                self.last_problem = f"rules change refused, keeping ruleset {old}: {exc}"
                logger.error(f"geoblock: {self.last_problem}")
                said.append(self.last_problem)
                refused = True
                self.reload_failures["rules"] += 1
            else:
                self.ruleset = ruleset
                # the rule files as before the load, its lists as they were read: a change during it shows
                self._rules_stamp = (yaml_now or ()) + tuple(
                    lf.stamp or ("", 0, 0, -1, 0) for lf in ruleset.source.lists)
                self._swapped()
                self.reloads += 1
                self.last_problem = None
                swapped = True
                s = ruleset.summary()
                msg = (f"rules reloaded: ruleset {old} -> {ruleset.version}, {s['rules']} rules, "
                       f"{s['domains']} domains, in {(time.perf_counter() - started) * 1000:.0f} ms")
                logger.info(f"geoblock: {msg}")
                said.append(msg)
        geo_now = files_stamp(self.country_db or "", self.asn_db or "")
        if force or geo_now != self._geo_stamp:
            self._geo_stamp = geo_now
            old_geo = self.geo
            geo = await asyncio.to_thread(Geo, self.country_db, self.asn_db, 65536, old_geo)
            self.geo = geo
            self._swapped()
            self.database_reloads += 1
            if old_geo is not None:
                old_geo.close()  # readers handed over to the new Geo stay open
            for problem in geo.problems:
                logger.error(f"geoblock: database change refused: {problem}")
                said.append(problem)
                refused = True
            if geo.problems:
                self.reload_failures["databases"] += 1
            msg = "databases reloaded: " + "; ".join(geo.describe())
            logger.info(f"geoblock: {msg}")
            said.append(msg)
        if said:
            self.last_reload_ok = not refused
            if not refused:
                self.last_good_load = time.time()
        return Reloaded(tuple(said), swapped, refused)

    # ------------------------------------------------------------------ what a person or a monitor reads

    def warnings(self) -> list[str]:
        """What the databases in force cannot do for the rules in force, one sentence each: rules that need
        a server's country without a country database, rules on ASNs without an ASN database."""
        geo, rs = self.geo, self.ruleset
        out: list[str] = []
        if geo is None:
            return out
        out.extend(geo.problems)
        needy = [r.id for r in rs.rules if r.spec.offshore is not None or r.spec.countries]
        if geo.country_info is None and needy:
            rules = f"the {len(needy)} rule(s) that need a server's country ({', '.join(needy[:5])}" \
                    f"{', ...' if len(needy) > 5 else ''})"
            fallback = (f"place public servers by the registries' delegation data ({rir.BUILD}; where an "
                        f"address block is registered, country_source rir); for addresses it does not hold "
                        f"they ") if self.registries else ""
            out.append(
                f"without a country database, {rules} {fallback}cannot place servers and give "
                f"unknown_country={rs.policy.unknown_country}; domain rules are enforced as usual. "
                f"Install one with geoblock-geoip-update (scripts/geoip-update in a source checkout) or set "
                f"geoblock_country_db.")
        asn_rules = [r.id for r in rs.rules if r.spec.asns]
        if geo.asn_info is None and asn_rules:
            out.append(f"without an ASN database, the {len(asn_rules)} rule(s) on ASNs give "
                       f"unknown_country={rs.policy.unknown_country}.")
        return out

    def describe(self) -> list[str]:
        """The ruleset in force and the databases, one line each, for a person."""
        rs = self.ruleset
        s = rs.summary()
        by = ", ".join(f"{n} {a}" for a, n in s["by_action"].items())  # type: ignore[attr-defined]
        lines = [f"ruleset {rs.version}: {s['rules']} rules ({by}), {s['domains']} domains, "
                 f"{len(rs.source.files)} files, from {self.rules_path}"]
        if self.geo is not None:
            lines.extend(self.geo.describe())
        if self.registries and self.ruleset.needs_country:
            lines.append(f"registries' delegation data ({rir.BUILD}): places public servers the GeoIP "
                         "databases do not (country source rir)")
        return lines

    def describe_rdap(self) -> str | None:
        """RDAP's answers, negatives, lookups in flight, cache entries and shed lookups; None when off."""
        if self.lookups is None:
            return None
        st = self.lookups.stats()
        return (f"rdap: {st['answers']} answers, {st['negatives']} negatives, {st['in_flight']} in flight, "
                f"{st['cache_entries']} cached, {st['shed']} shed")

    def caches(self) -> dict[str, tuple[int, int | None]]:
        """(entries, bound) of each cache the engine's parts keep: names, record addresses, RDAP, the
        ruleset's, the databases', the resolver's."""
        out: dict[str, tuple[int, int | None]] = {**_names.cache_sizes(), **_record.cache_sizes(),
                                                  **rdap.cache_sizes()}
        out.update(self.ruleset.sizes())
        if self.geo is not None:
            out.update(self.geo.sizes())
        out.update(self.resolver.sizes())
        if self.lookups is not None:
            out.update(self.lookups.sizes())
        return out

    def close(self) -> None:
        """Stop the resolver and RDAP lookups and close the databases."""
        self.resolver.close()
        if self.lookups is not None:
            self.lookups.close()
        if self.geo is not None:
            self.geo.close()


def _as_read(rules_path: str, ruleset: Ruleset) -> object:
    """The stamp of `ruleset`'s files: its rule files now, its list files as they were read (so that a
    list replaced while the ruleset was compiling is noticed at the next check)."""
    return ruleset_stamp(rules_path, tuple(lf.stamp for lf in ruleset.source.lists))
