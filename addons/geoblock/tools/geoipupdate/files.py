"""The database directory: lock it, stage downloads in it, prove a new file good, install it atomically.

A run locks the directory (`flock` on the lock file MaxMind's updaters take), downloads into a staging
directory inside it (`staging`, seeded with links to the current files by `seed`, so a current database
is recognised by its MD5 and not downloaded), checks each new file (`validate`: it opens as a MaxMind DB
of the expected edition, its search tree is not empty and a lookup answers) and only then moves it over
the old one (`install`: `rename`, atomic on one file system, then the directory is synced). The staging
directory is removed in every case; on any failure the installed database stays as it was.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import geoip2.database
import geoip2.errors
import maxminddb
from maxminddb import InvalidDatabaseError

from geoblock.enrich.geo import PROBE_ADDRESS, DatabaseInfo, GeoError, answer_of, open_database
from geoblock.tools.geoipupdate.errors import BadDownload, Locked
from geoblock.tools.geoipupdate.failures import translated

STAGING_PREFIX = ".geoblock-staging-"
"""Name prefix of the staging directories; any left by a killed run is removed by the next one."""
__all__ = ["PROBE_ADDRESS", "build_of", "directory_lock", "install", "seed", "session", "staging", "validate"]


def _kind(expected: str) -> str | None:
    """What geoblock uses a database for, named as geo.open_database does: "country" (a Country or
    City edition), "asn", or None (another edition: checked as a MaxMind DB only)."""
    if "Country" in expected or "City" in expected:
        return "country"
    return "asn" if "ASN" in expected else None


def _open(path: Path, kind: str | None) -> tuple[geoip2.database.Reader | maxminddb.Reader, DatabaseInfo]:
    """geoip2's reader, checked by geo.open_database, for an edition geoblock reads (`kind`); else the raw
    maxminddb reader (geoip2 has no lookup for an edition in general). Raises GeoError."""
    if kind is not None:
        return open_database(str(path), kind)
    try:
        reader = maxminddb.open_database(str(path), maxminddb.MODE_AUTO)
    except (OSError, ValueError, InvalidDatabaseError) as exc:
        raise GeoError(f"{path}: not a readable MaxMind database, or a corrupt one ({exc})") from None
    meta = reader.metadata()
    build = _dt.datetime.fromtimestamp(meta.build_epoch, _dt.UTC)
    return reader, DatabaseInfo(str(path), str(meta.database_type), build)


def validate(path: Path, expected: str, label: str | None = None) -> DatabaseInfo:
    """Check a database file with geoip2: it opens, is of the `expected` edition (its type contains that
    name), has a non-empty search tree and answers a lookup (geoip2's own for what geoblock reads it for:
    `country`/`city`/`asn`; an address not in it, AddressNotFoundError, is an answer).

    Args:
        path: the file.
        expected: the edition or type name it must be, e.g. "GeoLite2-ASN", "DBIP-Country-Lite".
        label: how messages name the file (default: its file name).

    Returns its DatabaseInfo (path, edition, build time). Raises BadDownload.
    """
    label = label or path.name
    kind = _kind(expected)
    try:
        reader, info = _open(path, kind)
    except GeoError as exc:
        raise BadDownload(f"{label} is not a usable database: {str(exc).removeprefix(f'{path}: ')}") from None
    try:
        meta = reader.metadata()
        if expected.lower() not in info.edition.lower():
            raise BadDownload(f"{label} is a {info.edition} database, not {expected}")
        if meta.node_count < 1:
            raise BadDownload(f"{label} has an empty search tree")
        if isinstance(reader, geoip2.database.Reader):  # an edition geoblock reads (kind is not None)
            lookup = answer_of(reader, kind or "")
            if lookup is not None:
                lookup(PROBE_ADDRESS)  # a model, or AddressNotFoundError
        else:
            reader.get(PROBE_ADDRESS)  # an edition geoblock does not read: its raw record
    except geoip2.errors.AddressNotFoundError:
        pass
    except (ValueError, TypeError, InvalidDatabaseError) as exc:
        raise BadDownload(f"{label} fails a lookup: {exc}") from None
    finally:
        reader.close()
    return info


def build_of(path: Path) -> _dt.datetime | None:
    """The build time (UTC) in a database's metadata; None when it is missing or cannot be read."""
    try:
        with geoip2.database.Reader(str(path)) as reader:
            return _dt.datetime.fromtimestamp(reader.metadata().build_epoch, _dt.UTC)
    except (OSError, ValueError, InvalidDatabaseError):
        return None


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def install(staged: Path, final: Path) -> None:
    """Move a checked file over the installed one (atomic on one filesystem) and persist the rename.
    Raises OSError."""
    os.replace(staged, final)
    _fsync_dir(final.parent)


def seed(current: Path, staged: Path) -> None:
    """Put the installed file in the staging directory (a hard link, else a copy), so its MD5 is what
    the server compares; nothing when there is no installed file."""
    if not current.is_file():
        return
    try:
        os.link(current, staged)
    except OSError:
        shutil.copy2(current, staged)


@contextmanager
def directory_lock(lock_file: Path) -> Iterator[None]:
    """An exclusive flock on `lock_file` (MaxMind's updaters take the same) for the duration of the block;
    raises Locked at once when another process holds it."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Locked(f"another update is running ({lock_file} is locked)") from None
        yield
    finally:
        os.close(fd)


@contextmanager
def staging(directory: Path) -> Iterator[Path]:
    """A fresh staging directory inside `directory`, removed afterwards (with any a killed run left)."""
    for leftover in directory.glob(f"{STAGING_PREFIX}*"):
        shutil.rmtree(leftover, ignore_errors=True)
    path = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=directory))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def session(directory: Path, lock_file: Path, origin: str) -> Iterator[Path]:
    """Directory created, lock held, staging directory ready (yielded); any failure becomes an
    UpdateError (see failures.classify), `origin` naming the server in messages."""
    with translated(None, origin):
        directory.mkdir(parents=True, exist_ok=True)
        with directory_lock(lock_file), staging(directory) as stage:
            yield stage
