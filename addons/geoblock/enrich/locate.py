"""Locators: where a server is, from the sources geoblock has, tried in order.

A locator fills in the location facts of a `Facts` whose `server_ip` is known (country, its source, ASN,
the GeoIP code, anycast) when it can, and leaves them as they are when it cannot. The engine runs its
locators in a list chosen when the databases, the RDAP settings or the rules change: the GeoIP databases
first; then, when the rules need a country, the registries' delegation data (`enrich.rir`, offline) for
a public address the databases could not place (or when there are none); then, when RDAP is on, RDAP for
what none of them placed. Every caller (the proxy, `geoblock explain`, replay, the benchmarks) places
servers through the same list, so they give the same verdict for the same facts.
"""

from __future__ import annotations

from typing import Protocol

from geoblock.core.model import Facts
from geoblock.enrich import rdap, rir
from geoblock.enrich.geo import Geo


class Locator(Protocol):
    """Something that may place a server: `place(facts)` fills in what it knows, in place."""

    def place(self, facts: Facts) -> None: ...

    def may_place_later(self, facts: Facts) -> bool:
        """Whether asking again later may place a server this call could not (an answer on its way)."""
        ...


class GeoIPLocator:
    """The GeoIP country and ASN databases (`enrich.geo.Geo.place`): country, source "geoip", ASN,
    the database's code for a region that is not a country (EU, AP), anycast. Local, microseconds."""

    def __init__(self, geo: Geo) -> None:
        self.geo = geo

    def place(self, facts: Facts) -> None:
        self.geo.place(facts)

    def may_place_later(self, facts: Facts) -> bool:
        return False


class RirLocator:
    """The registries' delegation data (`enrich.rir.country`), for a public address no earlier locator
    gave a country: where its block is registered (source "rir"). Local, offline, sub-microsecond."""

    def place(self, facts: Facts) -> None:
        if facts.country is not None or facts.server_ip is None:
            return
        country = rir.country(facts.server_ip)
        if country is not None:
            facts.country, facts.country_source = country, rir.SOURCE

    def may_place_later(self, facts: Facts) -> bool:
        return False


class RdapLocator:
    """The regional Internet registries' RDAP answers (`enrich.rdap.RdapLocator`), for a public address
    no earlier locator (GeoIP, the registries' delegation data) gave a country. Never waits: a cached
    answer places the server now (source "rdap"); otherwise a lookup starts in the background and this
    flow keeps no country (the policy's `unknown_country` applies), while a later flow to the same
    network gets the answer."""

    def __init__(self, lookups: rdap.RdapLocator) -> None:
        self.lookups = lookups

    def place(self, facts: Facts) -> None:
        if facts.country is not None or facts.server_ip is None or not rdap.lookupable(facts.server_ip):
            return
        country = self.lookups.country(facts.server_ip)
        if country is not None:
            facts.country, facts.country_source = country, rdap.SOURCE

    def may_place_later(self, facts: Facts) -> bool:
        return facts.country is None and facts.server_ip is not None and rdap.lookupable(facts.server_ip)


def chain(geo: Geo | None, lookups: rdap.RdapLocator | None, needs_country: bool,
          registries: bool = True) -> tuple[Locator, ...]:
    """The locators to run, in order: GeoIP when there is a `geo`; then, when the rules need a server's
    country (`needs_country`, `Ruleset.needs_country`), the registries' delegation data when `registries`
    (`RirLocator`), then RDAP when there are `lookups`."""
    out: list[Locator] = []
    if geo is not None:
        out.append(GeoIPLocator(geo))
    if registries and needs_country:
        out.append(RirLocator())
    if lookups is not None and needs_country:
        out.append(RdapLocator(lookups))
    return tuple(out)
