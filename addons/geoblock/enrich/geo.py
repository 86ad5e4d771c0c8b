"""GeoIP enrichment: the country and ASN of a server address, from MaxMind-format (.mmdb) databases.

Country comes from a GeoIP2/GeoLite2 Country or City database (the `country`, else the
`registered_country`, ISO code; see `location_of` for codes that are not countries and for anycast);
the ASN from a GeoLite2-ASN database. Either may be missing: then lookups answer None and rules that
need it follow `unknown_country`. Results are cached per address.

Databases are read with MaxMind's own API, `geoip2` (its `database.Reader` over the maxminddb C
extension): its readers check the database type, its models (`geoip2.models.Country`/`City`/`ASN`) are
the answers, and an address the database does not hold is its typed `AddressNotFoundError`. A file that
is not a MaxMind database, or a corrupt one, is maxminddb's `InvalidDatabaseError` (or ValueError).
Building a model costs a few microseconds more than the raw record (docs/geoip.md has the figures): the
per-address cache keeps that off the decisions that follow the first one for an address.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import geoip2.database
import geoip2.errors
import geoip2.models
from maxminddb import InvalidDatabaseError

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


PROBE_ADDRESS = "1.1.1.1"
"""The address a database must answer a lookup for when opened (any answer, found or not, but no error)."""
_PROBE = ipaddress.ip_address(PROBE_ADDRESS)

Answer = Callable[[IPAddress | str], geoip2.models.Country | geoip2.models.ASN]
"""One lookup of a geoip2 Reader (its `country`, `city` or `asn`): a model, or AddressNotFoundError."""

WANTED = {"country": "a Country or City database (GeoLite2-Country, GeoLite2-City, GeoIP2-Country, "
                     "GeoIP2-City, DB-IP's Country or City Lite)",
          "asn": "an ASN database (GeoLite2-ASN, or DB-IP's ASN Lite in its GeoLite2-ASN format)"}
"""What open_database's `want` asks for, as its messages say it."""


def answer_of(reader: geoip2.database.Reader, want: str) -> Answer | None:
    """The geoip2 lookup that reads `reader`'s database for `want` ("country" or "asn"), or None when its
    type is not one geoip2 reads that way (geoip2 refuses, with TypeError, a lookup that does not fit the
    database type: `country()` needs "Country" in the type, `city()` "City", `asn()` "GeoLite2-ASN")."""
    edition = reader.metadata().database_type
    if want == "country":
        if "Country" in edition:
            return reader.country
        return reader.city if "City" in edition else None
    return reader.asn if "GeoLite2-ASN" in edition else None


def open_database(path: str, want: str) -> tuple[geoip2.database.Reader, DatabaseInfo]:
    """Open an .mmdb file with geoip2 and check it: want is "country" or "asn" (see WANTED).

    The file is first copied to a private snapshot that is unlinked once opened: the reader never sees
    a file that is later truncated, rewritten or replaced under it (a truncated memory-mapped file
    would crash the process), and a replaced file is picked up only by opening it again.

    Returns the reader and the database's DatabaseInfo. Raises GeoError, its message starting with `path`:
    no such file or unreadable; not a MaxMind database or a corrupt one (maxminddb's
    InvalidDatabaseError: no metadata, a broken search tree or data section, found by a probe lookup);
    a database of another type than `want` (an ASN file given as the country database).
    """
    try:
        snapshot = _snapshot(path)
    except FileNotFoundError:
        raise GeoError(f"{path}: no such file") from None
    except OSError as exc:
        raise GeoError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        reader = geoip2.database.Reader(snapshot)
    except (OSError, ValueError, InvalidDatabaseError) as exc:
        raise GeoError(f"{path}: not a readable MaxMind database, or a corrupt one ({exc})") from None
    finally:
        os.unlink(snapshot)
    meta = reader.metadata()
    edition = str(meta.database_type)
    lookup = answer_of(reader, want)
    if lookup is None:
        reader.close()
        raise GeoError(f"{path}: expected {WANTED[want]}, found a {edition} database")
    try:
        lookup(_PROBE)  # the search tree and data section are usable
    except geoip2.errors.AddressNotFoundError:
        pass  # an answer: the database does not hold that address
    except (ValueError, TypeError, InvalidDatabaseError) as exc:
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


def _code(place: object) -> str | None:
    code = getattr(place, "iso_code", None)
    if isinstance(code, str) and code.strip():
        return code.strip().upper()
    return None


def location_of(model: geoip2.models.Country | None) -> Location:
    """The Location in one country-database answer (geoip2's Country model; a City model is one too),
    None for an address the database does not hold.

    The `country` is used when it is an ISO 3166 country; else the `registered_country`, recorded as
    source "geoip-registered"; a code in either that is not an ISO 3166 country (EU, AP) is not a
    place: it is kept in `code` and never makes a server offshore.
    """
    if model is None:
        return NOWHERE
    anycast = model.traits.is_anycast is True
    odd: str | None = None
    sources: tuple[tuple[object, CountrySource], ...] = (
        (model.country, "geoip"), (model.registered_country, "geoip-registered"))
    for place, source in sources:
        code = _code(place)
        if code is None:
            continue
        if code in ISO_3166_ALPHA2:
            return Location(code, source, odd, anycast)
        odd = odd or code
    return Location(None, None, odd, anycast) if (odd or anycast) else NOWHERE


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
        self._country: geoip2.database.Reader | None = None
        self._asn: geoip2.database.Reader | None = None
        self._country_answer: Answer | None = None  # the reader's country() or city()
        self._asn_answer: Answer | None = None  # the reader's asn()
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
                self._country_answer = answer_of(reader, want)
            else:
                self._asn, self.asn_info = reader, info
                self._asn_answer = answer_of(reader, want)
        self.country_build = self.country_info.build.strftime("%Y-%m-%d") if self.country_info else None
        self.asn_build = self.asn_info.build.strftime("%Y-%m-%d") if self.asn_info else None
        self.locate: Callable[[IPAddress], tuple[Location, int | None]] = lru_cache(maxsize=cache_size)(
            self._locate
        )

    def _take(self, want: str, path: str) -> tuple[geoip2.database.Reader, DatabaseInfo] | None:
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

    def country_answer(self, addr: IPAddress) -> geoip2.models.Country | None:
        """The country database's own answer for an address (geoip2's Country or City model: country,
        registered country, traits with the network it holds the address in), uncached; None without a
        country database, for an address it does not hold, or when the lookup fails."""
        return self._country_lookup(addr)[0]

    def _country_lookup(self, addr: IPAddress) -> tuple[geoip2.models.Country | None, str | None]:
        """(the answer or None, why there is none when the database holds the address but its record
        cannot be read: a malformed record geoip2 refuses, or a corrupt tree)."""
        if self._country_answer is None:
            return None, None
        try:
            found = self._country_answer(addr)
        except geoip2.errors.AddressNotFoundError:
            return None, None
        except (ValueError, TypeError, InvalidDatabaseError) as exc:
            return None, f"{type(exc).__name__}: {exc}"
        if not isinstance(found, geoip2.models.Country):
            return None, f"an answer of type {type(found).__name__}"
        return found, None

    def country_network(self, addr: IPAddress) -> str | None:
        """What the country database says of an address, for `geoblock explain`: the database, the network
        it holds the address in (geoip2's `traits.network`) and that network's country and registered
        country codes as written there, e.g. "GeoLite2-Country built 2026-11-24 (/var/lib/GeoIP/...):
        network 8.8.8.0/24, country US, registered country US". None without a country database."""
        if self.country_info is None:
            return None
        found, unreadable = self._country_lookup(addr)
        if found is None and unreadable is not None:
            return (f"{self.country_info.describe()}: holds a record for {addr} that cannot be read "
                    f"({unreadable[:200]}); the country is taken as unknown there")
        if found is None:
            return f"{self.country_info.describe()}: does not hold {addr}"
        said = f"{self.country_info.describe()}: network {found.traits.network}"
        said += f", country {found.country.iso_code or 'none'}"
        said += f", registered country {found.registered_country.iso_code or 'none'}"
        return said + (", anycast" if found.traits.is_anycast is True else "")

    def _locate(self, addr: IPAddress) -> tuple[Location, int | None]:
        where, asn = location_of(self.country_answer(addr)), None
        if self._asn_answer is not None:
            try:
                found = self._asn_answer(addr)
            except (geoip2.errors.AddressNotFoundError, ValueError, TypeError, InvalidDatabaseError):
                found = None  # not held (the usual case), or an unreadable record: no ASN either way
            if isinstance(found, geoip2.models.ASN) and isinstance(found.autonomous_system_number, int):
                asn = found.autonomous_system_number
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
