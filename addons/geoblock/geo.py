"""GeoIP enrichment: the country and ASN of a server address, from MaxMind-format (.mmdb) databases.

Country comes from a GeoIP2/GeoLite2 Country or City database (the `country`, else the
`registered_country`, ISO code); the ASN from a GeoLite2-ASN database. Either may be missing: then
lookups answer None and rules that need it follow `unknown_country`. Results are cached per address.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import tempfile
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
    build = _dt.datetime.fromtimestamp(meta.build_epoch, _dt.timezone.utc)
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
    """Country and ASN lookups with a per-address cache. Either database may be absent.

    `previous` is the Geo this one replaces: a database that fails to open is kept from it (the last
    good one), and the failure is in `problems`.
    """

    def __init__(self, country_path: str | None, asn_path: str | None, cache_size: int = 65536,
                 previous: "Geo | None" = None) -> None:
        self.country_path, self.asn_path = country_path, asn_path
        self.problems: list[str] = []
        self.country_info: DatabaseInfo | None = None
        self.asn_info: DatabaseInfo | None = None
        self._country: Any = None
        self._asn: Any = None
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
        self.lookup: Callable[[IPAddress], tuple[str | None, int | None]] = lru_cache(maxsize=cache_size)(
            self._lookup
        )

    def _take(self, want: str, path: str) -> tuple[Any, DatabaseInfo] | None:
        """Hand this Geo's reader for `want` over to a successor (same path only)."""
        reader, info = (self._country, self.country_info) if want == "country" else (self._asn, self.asn_info)
        if reader is None or info is None or info.path != path:
            return None
        self._borrowed.add(want)  # the successor owns it now: do not close it with this Geo
        return reader, info

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
        for want, reader in (("country", self._country), ("asn", self._asn)):
            if reader is not None and want not in self._borrowed:
                reader.close()

    def sizes(self) -> dict[str, tuple[int, int | None]]:
        """(entries, bound) of the lookup cache, for geoblock.status."""
        info = self.lookup.cache_info()  # type: ignore[attr-defined]
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
