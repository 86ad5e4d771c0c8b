"""Refresh the GeoIP databases geoblock reads; a new file replaces the old one only once it is proven good.

Two sources:

- ``maxmind`` (default): MaxMind GeoLite2/GeoIP2 editions, fetched by MaxMind's own updater library
  (pygeoipupdate). Configuration is the standard ``GeoIP.conf`` (``--config FILE``, else
  ``$GEOIPUPDATE_CONF_FILE``, else ``/etc/GeoIP.conf`` or ``/usr/local/etc/GeoIP.conf`` when present)
  and the ``GEOIPUPDATE_*`` environment variables (account ID, license key, edition IDs, database
  directory, host, proxy, lock file, retry time), read exactly as pygeoipupdate reads them; the
  environment wins over the file. Editions default to GeoLite2-Country and GeoLite2-ASN (a City
  edition works too), the directory to the one the addon reads (``data/geoip/`` of this repository),
  and failed downloads are not retried unless ``RetryFor`` / ``GEOIPUPDATE_RETRY_FOR`` says so.
- ``dbip``: DB-IP Lite country and ASN databases (monthly MMDB files, no account, CC BY 4.0) from
  ``<base>/dbip-{country,asn}-lite-YYYY-MM.mmdb.gz`` (``--dbip-url`` or ``$GEOBLOCK_DBIP_URL``); the
  previous month's file is used while the current month's is not published (HTTP 404). They are saved
  as ``dbip-country-lite.mmdb`` and ``dbip-asn-lite.mmdb``; a local file built in the month on offer is
  not downloaded again.

Every run locks the directory (``flock`` on ``.geoipupdate.lock``, or ``LockFile``, the lock MaxMind's
updaters take), downloads into a staging directory inside it (seeded with links to the current files,
so a current database is recognised by its MD5 and not downloaded), and checks each new file: it opens
as a MaxMind DB of the expected edition, its search tree is not empty and a lookup answers. Only then
is it moved over the old file (``rename``, atomic) and the directory synced. The staging directory is
removed in every case; on any failure the installed database stays as it was.

``--check`` reports each database's edition, build date and age, and fails when one is missing,
unusable or older than ``--max-age`` days (default 14; DB-IP's monthly files get 31 days more).

Exit codes:

   0  ok: every database updated or already current (--check: all present and fresh)
   1  failure not listed below (an unexpected server answer, ...)
   2  bad command line or configuration (GeoIP.conf, GEOIPUPDATE_* values)
   3  no credentials: AccountID / LicenseKey missing
   4  credentials refused by the server (HTTP 401)
   5  rate limited (HTTP 429; GeoLite allows 30 downloads a day)
   6  server unreachable: connection refused, DNS failure, timeout
   7  hash mismatch: the download differs from the MD5 the server announced
   8  directory not writable or disk full (ENOSPC, EACCES, EROFS, ...)
   9  bad download: corrupt archive, not a MaxMind DB, wrong edition, empty tree
  10  another update holds the lock
  11  --check: a database is missing, unusable or too old
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as _dt
import errno
import fcntl
import gzip
import http.client
import logging
import os
import shutil
import socket
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import maxminddb
from pygeoipupdate import (
    AuthenticationError,
    Config,
    ConfigError,
    DownloadError,
    HashMismatchError,
    HTTPError,
    LockError,
    Updater,
)
from pygeoipupdate._defaults import get_default_config_file
from pygeoipupdate.config import _parse_config_file, _parse_environment

from geoblock.enrich.geo import DatabaseInfo, GeoError, open_database
from geoblock.paths import DEFAULT_GEOIP_DIR

PROG = "geoblock-geoip-update"
DEFAULT_EDITIONS: tuple[str, ...] = ("GeoLite2-Country", "GeoLite2-ASN")
DEFAULT_DBIP_URL = "https://download.db-ip.com/free"
DBIP_FILES: tuple[tuple[str, str], ...] = (
    ("dbip-country-lite", "DBIP-Country-Lite"),
    ("dbip-asn-lite", "DBIP-ASN-Lite"),
)
DEFAULT_TIMEOUT = 300.0
DEFAULT_MAX_AGE = 14
DBIP_EXTRA_DAYS = 31
GEOLITE_LIMIT = "GeoLite allows 30 downloads a day"
LOCK_NAME = ".geoipupdate.lock"
STAGING_PREFIX = ".geoblock-staging-"
PROBE_ADDRESS = "1.1.1.1"
SAMPLE_CREDENTIALS = (999999, "000000000000")
DISK_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EIO}
)


# --- errors ----------------------------------------------------------------------------------------


class UpdateError(Exception):
    """A refresh that failed; `code` is the exit code, `name` the database concerned (if any)."""

    code = 1
    summary = "failure not listed below (an unexpected server answer, ...)"

    def __init__(self, message: str, name: str | None = None) -> None:
        super().__init__(" ".join(message.split()))
        self.name = name


class ConfigProblem(UpdateError):
    code = 2
    summary = "bad command line or configuration (GeoIP.conf, GEOIPUPDATE_* values)"


class NoCredentials(UpdateError):
    code = 3
    summary = "no credentials: AccountID / LicenseKey missing"


class BadCredentials(UpdateError):
    code = 4
    summary = "credentials refused by the server (HTTP 401)"


class RateLimited(UpdateError):
    code = 5
    summary = "rate limited (HTTP 429; GeoLite allows 30 downloads a day)"


class Unreachable(UpdateError):
    code = 6
    summary = "server unreachable: connection refused, DNS failure, timeout"


class HashMismatch(UpdateError):
    code = 7
    summary = "hash mismatch: the download differs from the MD5 the server announced"


class NotWritable(UpdateError):
    code = 8
    summary = "directory not writable or disk full (ENOSPC, EACCES, EROFS, ...)"


class BadDownload(UpdateError):
    code = 9
    summary = "bad download: corrupt archive, not a MaxMind DB, wrong edition, empty tree"


class Locked(UpdateError):
    code = 10
    summary = "another update holds the lock"


class Stale(UpdateError):
    code = 11
    summary = "--check: a database is missing, unusable or too old"


ERRORS: tuple[type[UpdateError], ...] = (
    UpdateError, ConfigProblem, NoCredentials, BadCredentials, RateLimited, Unreachable,
    HashMismatch, NotWritable, BadDownload, Locked, Stale,
)
EXIT_CODES: tuple[tuple[int, str], ...] = (
    (0, "ok: every database updated or already current (--check: all present and fresh)"),
    *((cls.code, cls.summary) for cls in ERRORS),
)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception, what caused it, and (for urllib) the socket error it wraps."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        reason = getattr(current, "reason", None) if isinstance(current, urllib.error.URLError) else None
        current = current.__cause__ or (reason if isinstance(reason, BaseException) else None)


def _has(exc: BaseException, *types: type[BaseException]) -> BaseException | None:
    return next((e for e in _chain(exc) if isinstance(e, types)), None)


def _http_status(exc: BaseException) -> int | None:
    if isinstance(exc, HTTPError):
        return exc.status_code
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code
    return None


_CORRUPT = (gzip.BadGzipFile, tarfile.TarError, EOFError, zlib.error)
_NETWORK = (
    aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError, ConnectionError,
    socket.gaierror, http.client.IncompleteRead,
)


def _is_network(exc: BaseException) -> bool:
    if _has(exc, *_NETWORK):
        return True
    return isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError) and isinstance(
        exc.reason, OSError
    )


def _is_bad_archive(exc: BaseException) -> bool:
    # pygeoipupdate reports an archive without a regular .mmdb member as a DownloadError naming the
    # archive, with no cause to tell it by.
    return isinstance(exc, DownloadError) and "archive" in str(exc).lower()


def _reason(exc: BaseException) -> str:
    """The innermost cause, in words ("Connection refused" rather than "[Errno 111] Connect call ...")."""
    inner = list(_chain(exc))[-1]
    if isinstance(inner, OSError) and isinstance(inner.errno, int) and inner.errno > 0:
        return os.strerror(inner.errno)
    return str(inner) or type(inner).__name__


def _network_message(exc: BaseException, origin: str) -> str:
    if _has(exc, TimeoutError):
        return f"cannot reach {origin}: no complete answer in time (--timeout)"
    return f"cannot reach {origin}: {_reason(exc)}"


def classify(exc: BaseException, origin: str, rate_hint: str = "") -> UpdateError:
    """The UpdateError for anything a download, a check or a file operation raised; `origin` names the
    server, `rate_hint` is added to a rate-limit message."""
    status = _http_status(exc)
    if isinstance(exc, UpdateError):
        return exc
    if isinstance(exc, HashMismatchError):
        return HashMismatch(
            f"the download from {origin} does not match the MD5 the server announced "
            f"(expected {exc.expected}, got {exc.actual})"
        )
    if isinstance(exc, AuthenticationError) or status == 401:
        return BadCredentials(f"{origin} refused the account ID / license key (HTTP 401): check AccountID and LicenseKey")
    if status == 429:
        hint = f" {rate_hint};" if rate_hint else ""
        return RateLimited(f"{origin} says too many downloads (HTTP 429):{hint} try again later")
    if status is not None:
        return UpdateError(f"{origin} answered HTTP {status}")
    if isinstance(exc, LockError):
        return Locked(str(exc))
    if isinstance(exc, ConfigError):
        return ConfigProblem(str(exc))
    if _has(exc, *_CORRUPT):
        return BadDownload(f"corrupt download from {origin}: {list(_chain(exc))[-1]}")
    if _is_network(exc):
        return Unreachable(_network_message(exc, origin))
    if _is_bad_archive(exc):
        return BadDownload(f"corrupt download from {origin}: {exc}")
    if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:
        where = exc.filename or "the database directory"
        return NotWritable(f"cannot write {where}: {exc.strerror} (directory not writable or disk full)")
    if isinstance(exc, DownloadError):
        return UpdateError(f"{origin}: {exc}")
    return UpdateError(f"unexpected {type(exc).__name__}: {exc}")


@contextmanager
def _translated(name: str | None, origin: str, rate_hint: str = "") -> Iterator[None]:
    """Turn whatever the body raises into an UpdateError about `name`."""
    try:
        yield
    except UpdateError as exc:
        exc.name = exc.name or name
        raise
    except Exception as exc:
        error = classify(exc, origin, rate_hint)
        error.name = error.name or name
        raise error from exc


# --- configuration ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """Where and what to update: GeoIP.conf and GEOIPUPDATE_* as pygeoipupdate reads them, with
    geoblock's defaults. `raw` holds the parsed values (the environment over the file)."""

    config_file: Path | None
    editions: tuple[str, ...]
    directory: Path
    lock_file: Path
    raw: Mapping[str, Any]


def find_config_file(given: str | os.PathLike[str] | None) -> Path | None:
    """--config, else $GEOIPUPDATE_CONF_FILE, else /etc/GeoIP.conf or pygeoipupdate's default if present."""
    if given:
        return Path(given)
    if env := os.environ.get("GEOIPUPDATE_CONF_FILE"):
        return Path(env)
    for candidate in (Path("/etc/GeoIP.conf"), get_default_config_file()):
        if candidate.is_file():
            return candidate
    return None


def _read_raw(config_file: Path | None) -> dict[str, Any]:
    raw: dict[str, Any] = {}
    if config_file is not None:
        try:
            raw.update(_parse_config_file(config_file))
        except ConfigError as exc:
            raise ConfigProblem(f"{config_file}: {exc}") from None
    try:
        raw.update(_parse_environment())
    except ConfigError as exc:
        raise ConfigProblem(f"environment: {exc}") from None
    return raw


def load_settings(config_file: Path | None, directory: str | os.PathLike[str] | None = None) -> Settings:
    """Read the configuration; needs no credentials (--check and --source dbip use it too)."""
    raw = _read_raw(config_file)
    target = Path(directory or raw.get("database_directory") or DEFAULT_GEOIP_DIR)
    return Settings(
        config_file=config_file,
        editions=tuple(raw.get("edition_ids") or DEFAULT_EDITIONS),
        directory=target,
        lock_file=Path(raw.get("lock_file") or target / LOCK_NAME),
        raw=raw,
    )


@contextmanager
def _environ(values: Mapping[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def maxmind_config(settings: Settings) -> Config:
    """pygeoipupdate's Config for these settings. Raises NoCredentials or ConfigProblem.

    geoblock's defaults (editions, no retries) reach pygeoipupdate as GEOIPUPDATE_* variables set for the
    duration of the call, only where neither the file nor the environment has a value."""
    raw = settings.raw
    account, key = raw.get("account_id"), raw.get("license_key")
    if not account or not key:
        missing = " and ".join(n for n, v in (("AccountID", account), ("LicenseKey", key)) if not v)
        raise NoCredentials(
            f"no MaxMind credentials: {missing} not set (GeoIP.conf via --config, or GEOIPUPDATE_ACCOUNT_ID "
            f"and GEOIPUPDATE_LICENSE_KEY); --source dbip needs no account"
        )
    if (account, key) == SAMPLE_CREDENTIALS:
        where = settings.config_file or "the environment"
        raise NoCredentials(f"{where} still holds the sample AccountID and LicenseKey")
    defaults = {"GEOIPUPDATE_EDITION_IDS": " ".join(DEFAULT_EDITIONS)} if "edition_ids" not in raw else {}
    if "retry_for" not in raw:
        defaults["GEOIPUPDATE_RETRY_FOR"] = "0"
    with _environ(defaults):
        try:
            return Config.from_file(settings.config_file, database_directory=settings.directory)
        except ConfigError as exc:
            raise ConfigProblem(str(exc)) from None


# --- files -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """One database after a run: `updated`, or already current."""

    name: str
    path: Path
    updated: bool
    build: _dt.datetime | None

    def line(self) -> str:
        date = f"build {self.build:%Y-%m-%d}" if self.build else "build unknown"
        return f"{self.name}: updated to {date}" if self.updated else f"{self.name}: already current ({date})"


def _kind(expected: str) -> str | None:
    """What geoblock uses a database for, named as geo.open_database does: "country" (a Country or
    City edition), "asn", or None (another edition: checked as a MaxMind DB only)."""
    if "Country" in expected or "City" in expected:
        return "country"
    return "asn" if "ASN" in expected else None


def _open(path: Path, kind: str | None) -> tuple[Any, DatabaseInfo]:
    if kind is not None:
        return open_database(str(path), kind)
    try:
        reader = maxminddb.open_database(str(path), maxminddb.MODE_AUTO)
    except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
        raise GeoError(f"{path}: not a readable MaxMind database ({exc})") from None
    meta = reader.metadata()
    build = _dt.datetime.fromtimestamp(meta.build_epoch, _dt.timezone.utc)
    return reader, DatabaseInfo(str(path), str(meta.database_type), build)


def validate(path: Path, expected: str, label: str | None = None) -> DatabaseInfo:
    """Check a database file: it opens, is of the `expected` edition (its type contains that name), has a
    non-empty search tree and answers a lookup. Returns its DatabaseInfo; raises BadDownload."""
    label = label or path.name
    try:
        reader, info = _open(path, _kind(expected))
    except GeoError as exc:
        raise BadDownload(f"{label} is not a usable database: {str(exc).removeprefix(f'{path}: ')}") from None
    try:
        meta = reader.metadata()
        if expected.lower() not in info.edition.lower():
            raise BadDownload(f"{label} is a {info.edition} database, not {expected}")
        if meta.node_count < 1:
            raise BadDownload(f"{label} has an empty search tree")
        reader.get(PROBE_ADDRESS)
    except (ValueError, maxminddb.InvalidDatabaseError) as exc:
        raise BadDownload(f"{label} fails a lookup: {exc}") from None
    finally:
        reader.close()
    return info


def _build_of(path: Path) -> _dt.datetime | None:
    try:
        with maxminddb.open_database(str(path), maxminddb.MODE_AUTO) as reader:
            return _dt.datetime.fromtimestamp(reader.metadata().build_epoch, _dt.timezone.utc)
    except (OSError, ValueError, maxminddb.InvalidDatabaseError):
        return None


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def install(staged: Path, final: Path) -> None:
    """Move a checked file over the installed one (atomic on one filesystem) and persist the rename."""
    os.replace(staged, final)
    _fsync_dir(final.parent)


def _seed(current: Path, staged: Path) -> None:
    """Put the installed file in the staging directory, so its MD5 is what the server compares."""
    if not current.is_file():
        return
    try:
        os.link(current, staged)
    except OSError:
        shutil.copy2(current, staged)


@contextmanager
def directory_lock(lock_file: Path) -> Iterator[None]:
    """An exclusive flock on `lock_file` (MaxMind's updaters take the same); Locked when held."""
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
def _session(directory: Path, lock_file: Path, origin: str) -> Iterator[Path]:
    """Directory created, lock held, staging directory ready; failures translated."""
    with _translated(None, origin):
        directory.mkdir(parents=True, exist_ok=True)
        with directory_lock(lock_file), staging(directory) as stage:
            yield stage


Report = Callable[[Outcome], None]


# --- MaxMind ---------------------------------------------------------------------------------------


async def _run_updater(config: Config, timeout: float) -> bool:
    async with asyncio.timeout(timeout):
        async with Updater(config) as updater:
            (result,) = await updater.run()
    return result.was_updated


def _update_edition(config: Config, edition: str, stage: Path, timeout: float) -> Outcome:
    final = config.database_directory / f"{edition}.mmdb"
    staged = stage / f"{edition}.mmdb"
    _seed(final, staged)
    one = dataclasses.replace(
        config, edition_ids=(edition,), database_directory=stage, lock_file=stage / LOCK_NAME
    )
    if not asyncio.run(_run_updater(one, timeout)):
        return Outcome(edition, final, False, _build_of(final))
    info = validate(staged, edition, f"the downloaded {edition}.mmdb")
    install(staged, final)
    return Outcome(edition, final, True, info.build)


def update_maxmind(config: Config, *, timeout: float = DEFAULT_TIMEOUT, report: Report | None = None) -> list[Outcome]:
    """Update each configured edition in config.database_directory, one at a time; stops at the first
    failure (UpdateError). Editions finished before it stay updated."""
    origin = config.host
    timeout += config.retry_for.total_seconds()
    outcomes: list[Outcome] = []
    with _session(config.database_directory, config.lock_file, origin) as stage:
        for edition in config.edition_ids:
            with _translated(edition, origin, GEOLITE_LIMIT):
                outcome = _update_edition(config, edition, stage, timeout)
            outcomes.append(outcome)
            if report:
                report(outcome)
    return outcomes


# --- DB-IP -----------------------------------------------------------------------------------------


def _months(today: _dt.date) -> tuple[str, str]:
    previous = today.replace(day=1) - _dt.timedelta(days=1)
    return f"{today:%Y-%m}", f"{previous:%Y-%m}"


def _download_gz(url: str, dest: Path, timeout: float) -> bool:
    """Fetch a .gz file and write it decompressed to `dest`; False when the server says 404."""
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(url, headers={"User-Agent": PROG})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 404:
            return False
        raise
    with response, gzip.GzipFile(fileobj=response) as unpacked, open(dest, "wb") as out:
        while chunk := unpacked.read(1 << 16):
            out.write(chunk)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url}: download not finished in {timeout:.0f} s")
        out.flush()
        os.fsync(out.fileno())
    return True


def _update_dbip_file(base_url: str, name: str, expected: str, directory: Path, stage: Path,
                      months: tuple[str, str], timeout: float) -> Outcome:
    final, staged = directory / f"{name}.mmdb", stage / f"{name}.mmdb"
    build = _build_of(final)
    local_month = f"{build:%Y-%m}" if build else None
    for month in months:
        if local_month is not None and local_month >= month:
            return Outcome(name, final, False, build)
        if _download_gz(f"{base_url}/{name}-{month}.mmdb.gz", staged, timeout):
            info = validate(staged, expected, f"the downloaded {name}-{month}.mmdb")
            install(staged, final)
            return Outcome(name, final, True, info.build)
    raise UpdateError(f"{base_url} has no {name} file for {months[0]} or {months[1]} (HTTP 404)")


def update_dbip(directory: Path, *, base_url: str = DEFAULT_DBIP_URL, lock_file: Path | None = None,
                timeout: float = DEFAULT_TIMEOUT, today: _dt.date | None = None,
                report: Report | None = None) -> list[Outcome]:
    """Update the DB-IP Lite country and ASN files in `directory`; stops at the first failure."""
    base_url = base_url.rstrip("/")
    if not base_url.startswith(("http://", "https://")):
        raise ConfigProblem(f"DB-IP URL must be http:// or https://, got {base_url!r}")
    months = _months(today or _dt.datetime.now(_dt.timezone.utc).date())
    outcomes: list[Outcome] = []
    with _session(directory, lock_file or directory / LOCK_NAME, base_url) as stage:
        for name, expected in DBIP_FILES:
            with _translated(name, base_url):
                outcome = _update_dbip_file(base_url, name, expected, directory, stage, months, timeout)
            outcomes.append(outcome)
            if report:
                report(outcome)
    return outcomes


# --- freshness check -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Freshness:
    """One database as --check sees it; `problem` is None when it is present, usable and fresh."""

    path: Path
    edition: str | None
    build: _dt.datetime | None
    age_days: int | None
    max_age: int
    problem: str | None

    def line(self) -> str:
        if self.build is None:
            return f"{self.path.name}: {self.problem}"
        text = f"{self.path.name}: {self.edition} built {self.build:%Y-%m-%d}, {self.age_days} days old"
        return f"{text}: {self.problem}" if self.problem else f"{text} (limit {self.max_age}): ok"


def check_file(path: Path, expected: str, max_age: int, now: _dt.datetime | None = None) -> Freshness:
    now = now or _dt.datetime.now(_dt.timezone.utc)
    if not path.exists():
        return Freshness(path, None, None, None, max_age, f"missing ({path})")
    try:
        info = validate(path, expected)
    except UpdateError as exc:
        return Freshness(path, None, None, None, max_age, f"unusable: {exc}")
    age = (now - info.build).days
    problem = f"older than {max_age} days" if age > max_age else None
    return Freshness(path, info.edition, info.build, age, max_age, problem)


def check_targets(settings: Settings, source: str, max_age: int) -> list[tuple[Path, str, int]]:
    """(file, expected edition, limit in days) for each database --check looks at: the configured
    editions (maxmind) and any DB-IP files present, or the DB-IP files (dbip)."""
    dbip = [(settings.directory / f"{name}.mmdb", expected, max_age + DBIP_EXTRA_DAYS) for name, expected in DBIP_FILES]
    if source == "dbip":
        return dbip
    editions = [(settings.directory / f"{e}.mmdb", e, max_age) for e in settings.editions]
    return editions + [t for t in dbip if t[0].exists()]


def check(targets: Sequence[tuple[Path, str, int]], now: _dt.datetime | None = None) -> list[Freshness]:
    return [check_file(path, expected, limit, now) for path, expected, limit in targets]


# --- command line ----------------------------------------------------------------------------------


def _codes_text() -> str:
    return "exit codes:\n" + "\n".join(f"  {code:>2}  {text}" for code, text in EXIT_CODES)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Refresh the GeoIP databases geoblock reads: download, check, then replace atomically.",
        epilog=_codes_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--source", choices=("maxmind", "dbip"), default="maxmind",
                        help="maxmind (GeoIP.conf / GEOIPUPDATE_*, needs an account) or dbip (DB-IP Lite, "
                             "no account); default maxmind")
    parser.add_argument("--config", "-f", metavar="FILE",
                        help="GeoIP.conf (default: $GEOIPUPDATE_CONF_FILE, else /etc/GeoIP.conf or "
                             "/usr/local/etc/GeoIP.conf if present); GEOIPUPDATE_* variables override it")
    parser.add_argument("--directory", "-d", metavar="DIR",
                        help=f"database directory (default: DatabaseDirectory / GEOIPUPDATE_DB_DIR, else "
                             f"{DEFAULT_GEOIP_DIR})")
    parser.add_argument("--dbip-url", metavar="URL", default=os.environ.get("GEOBLOCK_DBIP_URL", DEFAULT_DBIP_URL),
                        help=f"DB-IP download base (default: $GEOBLOCK_DBIP_URL, else {DEFAULT_DBIP_URL})")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                        help=f"give up on a database not fetched within SECONDS (default {DEFAULT_TIMEOUT:.0f})")
    parser.add_argument("--quiet", "-q", action="store_true",
                        help="print only errors (with --check: only the databases that fail it)")
    parser.add_argument("--check", action="store_true",
                        help="download nothing: print each database's edition, build date and age; exit 11 "
                             "when one is missing, unusable or too old")
    parser.add_argument("--max-age", type=int, metavar="DAYS",
                        help=f"with --check: the age limit (default {DEFAULT_MAX_AGE}; DB-IP files get "
                             f"{DBIP_EXTRA_DAYS} days more, being monthly)")
    return parser


class _OneLine(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{PROG}: {record.levelname.lower()}: {' '.join(record.getMessage().split())}"


def _setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine())
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.WARNING)


def _print(outcome: Outcome) -> None:
    print(outcome.line(), flush=True)


def _run_check(settings: Settings, args: argparse.Namespace) -> int:
    max_age = DEFAULT_MAX_AGE if args.max_age is None else args.max_age
    results = check(check_targets(settings, args.source, max_age))
    for result in results:
        if result.problem or not args.quiet:
            print(result.line(), flush=True)
    return Stale.code if any(r.problem for r in results) else 0


def _run(args: argparse.Namespace) -> int:
    settings = load_settings(find_config_file(args.config), args.directory)
    if args.check:
        return _run_check(settings, args)
    report = None if args.quiet else _print
    if args.source == "dbip":
        update_dbip(settings.directory, base_url=args.dbip_url, lock_file=settings.lock_file,
                    timeout=args.timeout, report=report)
    else:
        update_maxmind(maxmind_config(settings), timeout=args.timeout, report=report)
    return 0


def _error_line(exc: UpdateError) -> str:
    subject = f"{exc.name}: " if exc.name else ""
    kept = f"{exc.name} unchanged" if exc.name else "databases unchanged"
    return f"{PROG}: {subject}{exc} ({kept})"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.max_age is not None and not args.check:
        _parser().error("--max-age goes with --check")
    _setup_logging()
    try:
        return _run(args)
    except UpdateError as exc:
        print(_error_line(exc), file=sys.stderr, flush=True)
        return exc.code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted (databases unchanged)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
