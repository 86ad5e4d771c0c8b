"""GeoIP enrichment: the country and ASN of a server address, from MaxMind-format (.mmdb) databases.

Country comes from a GeoIP2/GeoLite2 Country or City database (the `country`, else the
`registered_country`, ISO code; see `location_of` for codes that are not countries and for anycast);
the ASN from a GeoLite2-ASN database. Either may be missing: then lookups answer None and rules that
need it follow `unknown_country`. Results are cached per address.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import maxminddb

from geoblock.core.countries import ISO_3166_ALPHA2
from geoblock.core.model import CountrySource, Facts
from geoblock.core.names import IPAddress
from geoblock.errors import GeoblockError


class GeoError(GeoblockError):
    """A database that cannot be used. The message names the file."""


@dataclass(frozen=True)
class DatabaseInfo:
    path: str
    edition: str
    build: _dt.datetime

    def describe(self) -> str:
        return f"{self.edition} built {self.build:%Y-%m-%d} ({self.path})"


def open_database(path: str, want: str) -> tuple[maxminddb.Reader, DatabaseInfo]:
    """Open an .mmdb file and check its edition: want is "country" or "asn". Raises GeoError.

    The file is first copied to a private snapshot that is unlinked once opened: the reader never sees
    a file that is later truncated, rewritten or replaced under it (a truncated memory-mapped file
    would crash the process), and a replaced file is picked up only by opening it again.
    """
    try:
        snapshot = _snapshot(path)
    except FileNotFoundError:
        raise GeoError(f"{path}: no such file") from None
    except OSError as exc:
        raise GeoError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        reader = maxminddb.open_database(snapshot, maxminddb.MODE_AUTO)
    except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
        raise GeoError(f"{path}: not a readable MaxMind database ({exc})") from None
    finally:
        os.unlink(snapshot)
    meta = reader.metadata()
    edition = str(meta.database_type)
    ok = ("Country" in edition or "City" in edition) if want == "country" else "ASN" in edition
    if not ok:
        reader.close()
        kind = "a Country or City" if want == "country" else "an ASN"
        raise GeoError(f"{path}: expected {kind} database, found {edition}")
    try:
        reader.get("1.1.1.1")  # the search tree and data section are usable
    except (ValueError, maxminddb.InvalidDatabaseError) as exc:
        reader.close()
        raise GeoError(f"{path}: database is corrupt ({exc})") from None
    build = _dt.datetime.fromtimestamp(meta.build_epoch, _dt.UTC)
    return reader, DatabaseInfo(path, edition, build)


def _snapshot(path: str) -> str:
    """A private copy of `path` in the temporary directory (the caller unlinks it)."""
    fd, tmp = tempfile.mkstemp(prefix="geoblock-", suffix=".mmdb")
    try:
        with open(path, "rb") as src, os.fdopen(fd, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


@dataclass(frozen=True, slots=True)
class Location:
    """What the country database says about one address (see `location_of`).

    - `country`: the ISO 3166-1 alpha-2 code (countries.ISO_3166_ALPHA2) of where the server is, or None;
    - `source`: "geoip" when `country` is the network's `country` (where MaxMind places the addresses),
      "geoip-registered" when it is the network's `registered_country` (where the block is registered,
      the country of the organisation that holds it, as an RIR or RDAP would say), None without a country;
    - `code`: a code the database gave that is not an ISO 3166 country (the legacy continent codes
      "EU" and "AP", any other unlisted code), kept for the record; None otherwise;
    - `anycast`: the database marks the network anycast (`traits.is_anycast`): the same address is
      served from many places, and its country is where the network is registered or announced from,
      not necessarily where this client's server is.
    """

    country: str | None = None
    source: CountrySource | None = None
    code: str | None = None
    anycast: bool = False


NOWHERE = Location()


def _code(part: object) -> str | None:
    if isinstance(part, dict):
        code = part.get("iso_code")
        if isinstance(code, str) and code.strip():
            return code.strip().upper()
    return None


def location_of(record: object) -> Location:
    """The Location in one country-database record (a GeoIP2/GeoLite2 Country or City record: a dict with
    `country`, `registered_country`, `traits`, as MaxMind documents its GeoIP2 databases).

    The `country` is used when it is an ISO 3166 country; else the `registered_country`, recorded as
    source "geoip-registered"; a code in either that is not an ISO 3166 country (EU, AP) is not a
    place: it is kept in `code` and never makes a server offshore.
    """
    if not isinstance(record, dict):
        return NOWHERE
    traits = record.get("traits")
    anycast = isinstance(traits, dict) and traits.get("is_anycast") is True
    odd: str | None = None
    sources: tuple[tuple[str, CountrySource], ...] = (("country", "geoip"), ("registered_country", "geoip-registered"))
    for key, source in sources:
        code = _code(record.get(key))
        if code is None:
            continue
        if code in ISO_3166_ALPHA2:
            return Location(code, source, odd, anycast)
        odd = odd or code
    return Location(None, None, odd, anycast) if (odd or anycast) else NOWHERE


def _asn_of(record: object) -> int | None:
    if isinstance(record, dict):
        value = record.get("autonomous_system_number")
        if isinstance(value, int):
            return value
    return None


class Geo:
    """Country and ASN lookups with a per-address cache. Either database may be absent.

    `previous` is the Geo this one replaces: a database that fails to open is kept from it (the last
    good one), and the failure is in `problems`.
    """

    def __init__(self, country_path: str | None, asn_path: str | None, cache_size: int = 65536,
                 previous: Geo | None = None) -> None:
        self.country_path, self.asn_path = country_path, asn_path
        self.problems: list[str] = []
        self.country_info: DatabaseInfo | None = None
        self.asn_info: DatabaseInfo | None = None
        self._country: maxminddb.Reader | None = None
        self._asn: maxminddb.Reader | None = None
        self._borrowed: set[str] = set()
        for want, path in (("country", country_path), ("asn", asn_path)):
            if not path:
                continue
            try:
                reader, info = open_database(path, want)
            except GeoError as exc:
                kept = previous._take(want, path) if previous is not None else None
                if kept is not None:
                    reader, info = kept  # now owned (and eventually closed) by this Geo
                    self.problems.append(f"{exc}; keeping the last good database ({info.describe()})")
                else:
                    self.problems.append(str(exc))
                    continue
            if want == "country":
                self._country, self.country_info = reader, info
            else:
                self._asn, self.asn_info = reader, info
        self.country_build = self.country_info.build.strftime("%Y-%m-%d") if self.country_info else None
        self.asn_build = self.asn_info.build.strftime("%Y-%m-%d") if self.asn_info else None
        self.locate: Callable[[IPAddress], tuple[Location, int | None]] = lru_cache(maxsize=cache_size)(
            self._locate
        )

    def _take(self, want: str, path: str) -> tuple[maxminddb.Reader, DatabaseInfo] | None:
        """Hand this Geo's reader for `want` over to a successor (same path only)."""
        reader, info = (self._country, self.country_info) if want == "country" else (self._asn, self.asn_info)
        if reader is None or info is None or info.path != path:
            return None
        self._borrowed.add(want)  # the successor owns it now: do not close it with this Geo
        return reader, info

    def lookup(self, addr: IPAddress) -> tuple[str | None, int | None]:
        """(ISO 3166 country or None, ASN or None) of an address (cached; see `locate`)."""
        where, asn = self.locate(addr)
        return where.country, asn

    def place(self, facts: Facts) -> None:
        """Fill in the location facts of `facts`: country, country_source, asn, geoip_code, anycast (Facts
        without a `server_ip` are left as they are). The one way the proxy, `geoblock explain` and replay
        place a server, so all three give the same records."""
        if facts.server_ip is None:
            return
        where, facts.asn = self.locate(facts.server_ip)
        facts.country, facts.country_source = where.country, where.source
        facts.geoip_code, facts.anycast = where.code, where.anycast

    def _locate(self, addr: IPAddress) -> tuple[Location, int | None]:
        where, asn = NOWHERE, None
        if self._country is not None:
            try:
                where = location_of(self._country.get(addr))
            except (ValueError, maxminddb.InvalidDatabaseError):
                where = NOWHERE
        if self._asn is not None:
            try:
                asn = _asn_of(self._asn.get(addr))
            except (ValueError, maxminddb.InvalidDatabaseError):
                asn = None
        return where, asn

    def close(self) -> None:
        for want, reader in (("country", self._country), ("asn", self._asn)):
            if reader is not None and want not in self._borrowed:
                reader.close()

    def sizes(self) -> dict[str, tuple[int, int | None]]:
        """(entries, bound) of the lookup cache, for geoblock.status."""
        info = self.locate.cache_info()  # type: ignore[attr-defined]
        return {"geoip": (info.currsize, info.maxsize)}

    def describe(self) -> list[str]:
        out = []
        for what, info in (("country", self.country_info), ("ASN", self.asn_info)):
            out.append(f"{what} database: {info.describe()}" if info else f"{what} database: none")
        return out


def file_stamp(path: str | None) -> tuple[int, int] | None:
    """(inode, mtime_ns) of a file, to notice replacement; None when absent."""
    if not path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns
