"""GeoIP enrichment: the country and ASN of a server address, from MaxMind-format (.mmdb) databases.

Country comes from a GeoIP2/GeoLite2 Country or City database (the `country`, else the
`registered_country`, ISO code); the ASN from a GeoLite2-ASN database. Either may be missing: then
lookups answer None and rules that need it follow `unknown_country`. Results are cached per address.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

import maxminddb

from .names import IPAddress


class GeoError(Exception):
    """A database that cannot be used. The message names the file."""


@dataclass(frozen=True)
class DatabaseInfo:
    path: str
    edition: str
    build: _dt.datetime

    def describe(self) -> str:
        return f"{self.edition} built {self.build:%Y-%m-%d} ({self.path})"


def open_database(path: str, want: str) -> tuple[Any, DatabaseInfo]:
    """Open an .mmdb file and check its edition: want is "country" or "asn". Raises GeoError."""
    try:
        reader = maxminddb.open_database(path, maxminddb.MODE_AUTO)
    except FileNotFoundError:
        raise GeoError(f"{path}: no such file") from None
    except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
        raise GeoError(f"{path}: not a readable MaxMind database ({exc})") from None
    meta = reader.metadata()
    edition = str(meta.database_type)
    ok = ("Country" in edition or "City" in edition) if want == "country" else "ASN" in edition
    if not ok:
        reader.close()
        kind = "a Country or City" if want == "country" else "an ASN"
        raise GeoError(f"{path}: expected {kind} database, found {edition}")
    build = _dt.datetime.fromtimestamp(meta.build_epoch, _dt.timezone.utc)
    return reader, DatabaseInfo(path, edition, build)


def _country_of(record: Any) -> str | None:
    if not isinstance(record, dict):
        return None
    for key in ("country", "registered_country"):
        part = record.get(key)
        if isinstance(part, dict):
            code = part.get("iso_code")
            if isinstance(code, str) and len(code) == 2:
                return code.upper()
    return None


def _asn_of(record: Any) -> int | None:
    if isinstance(record, dict):
        value = record.get("autonomous_system_number")
        if isinstance(value, int):
            return value
    return None


class Geo:
    """Country and ASN lookups with a per-address cache. Either database may be absent."""

    def __init__(self, country_path: str | None, asn_path: str | None, cache_size: int = 65536) -> None:
        self.country_info: DatabaseInfo | None = None
        self.asn_info: DatabaseInfo | None = None
        self.problems: list[str] = []
        self._country = self._asn = None
        if country_path:
            try:
                self._country, self.country_info = open_database(country_path, "country")
            except GeoError as exc:
                self.problems.append(str(exc))
        if asn_path:
            try:
                self._asn, self.asn_info = open_database(asn_path, "asn")
            except GeoError as exc:
                self.problems.append(str(exc))
        self.lookup: Callable[[IPAddress], tuple[str | None, int | None]] = lru_cache(maxsize=cache_size)(
            self._lookup
        )

    def _lookup(self, addr: IPAddress) -> tuple[str | None, int | None]:
        country = asn = None
        if self._country is not None:
            try:
                country = _country_of(self._country.get(addr))
            except (ValueError, maxminddb.InvalidDatabaseError):
                country = None
        if self._asn is not None:
            try:
                asn = _asn_of(self._asn.get(addr))
            except (ValueError, maxminddb.InvalidDatabaseError):
                asn = None
        return country, asn

    def close(self) -> None:
        for reader in (self._country, self._asn):
            if reader is not None:
                reader.close()

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
