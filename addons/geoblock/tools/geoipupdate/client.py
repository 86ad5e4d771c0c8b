"""Download the databases from their source, one at a time, through the directory's staging area.

- MaxMind (`update_maxmind`): each edition is fetched by MaxMind's own updater (pygeoipupdate's public
  `Updater`) into the staging directory, so MaxMind's protocol, MD5 check and retry policy apply as they
  are; geoblock validates and installs the result (files.py).
- DB-IP Lite (`update_dbip`): `<base>/dbip-{country,asn}-lite-YYYY-MM.mmdb.gz` over urllib; the previous
  month's file is used while the current month's is not published (HTTP 404); a local file built in
  the month on offer is not downloaded again.

Both stop at the first failure (an UpdateError); databases finished before it stay updated. `report`,
when given, is called with each database's Outcome as soon as it is done.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as _dt
import gzip
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from pygeoipupdate import Config, Updater

from geoblock.tools.geoipupdate.config import (
    DBIP_FILES,
    DEFAULT_DBIP_URL,
    DEFAULT_TIMEOUT,
    GEOLITE_LIMIT,
    LOCK_NAME,
    PROG,
)
from geoblock.tools.geoipupdate.errors import ConfigProblem, UpdateError
from geoblock.tools.geoipupdate.failures import translated
from geoblock.tools.geoipupdate.files import build_of, install, seed, session, validate
from geoblock.tools.geoipupdate.models import Outcome

Report = Callable[[Outcome], None]
"""Called with each database's Outcome as soon as it is done (the command prints it)."""


# --- MaxMind ---------------------------------------------------------------------------------------


async def _run_updater(config: Config, timeout: float) -> bool:
    async with asyncio.timeout(timeout):
        async with Updater(config) as updater:
            (result,) = await updater.run()
    return result.was_updated


def _update_edition(config: Config, edition: str, stage: Path, timeout: float) -> Outcome:
    final = config.database_directory / f"{edition}.mmdb"
    staged = stage / f"{edition}.mmdb"
    seed(final, staged)
    one = dataclasses.replace(
        config, edition_ids=(edition,), database_directory=stage, lock_file=stage / LOCK_NAME
    )
    if not asyncio.run(_run_updater(one, timeout)):
        return Outcome(edition, final, False, build_of(final))
    info = validate(staged, edition, f"the downloaded {edition}.mmdb")
    install(staged, final)
    return Outcome(edition, final, True, info.build)


def update_maxmind(config: Config, *, timeout: float = DEFAULT_TIMEOUT, report: Report | None = None) -> list[Outcome]:
    """Update each configured edition in config.database_directory, one at a time.

    Args:
        config: pygeoipupdate's Config (see config.maxmind_config).
        timeout: seconds one edition may take, MaxMind's RetryFor added.
        report: called with each edition's Outcome as soon as it is done.

    Returns the Outcomes in edition order. Raises UpdateError at the first failure; editions finished
    before it stay updated.
    """
    origin = config.host
    timeout += config.retry_for.total_seconds()
    outcomes: list[Outcome] = []
    with session(config.database_directory, config.lock_file, origin) as stage:
        for edition in config.edition_ids:
            with translated(edition, origin, GEOLITE_LIMIT):
                outcome = _update_edition(config, edition, stage, timeout)
            outcomes.append(outcome)
            if report:
                report(outcome)
    return outcomes


# --- DB-IP -----------------------------------------------------------------------------------------


def dbip_months(today: _dt.date) -> tuple[str, str]:
    """("YYYY-MM" of `today`, "YYYY-MM" of the month before): the DB-IP files tried, in that order."""
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
    build = build_of(final)
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
    """Update the DB-IP Lite country and ASN files in `directory`.

    Args:
        directory: the database directory (created if missing).
        base_url: where the monthly files are (http:// or https://; a trailing / is ignored).
        lock_file: the file to lock (default `<directory>/.geoipupdate.lock`).
        timeout: seconds one file may take to download.
        today: the date that picks the months tried (default: today, UTC).
        report: called with each file's Outcome as soon as it is done.

    Returns the Outcomes, country first. Raises ConfigProblem for a bad `base_url`, UpdateError at the
    first failure; a file finished before it stays updated.
    """
    base_url = base_url.rstrip("/")
    if not base_url.startswith(("http://", "https://")):
        raise ConfigProblem(f"DB-IP URL must be http:// or https://, got {base_url!r}")
    months = dbip_months(today or _dt.datetime.now(_dt.UTC).date())
    outcomes: list[Outcome] = []
    with session(directory, lock_file or directory / LOCK_NAME, base_url) as stage:
        for name, expected in DBIP_FILES:
            with translated(name, base_url):
                outcome = _update_dbip_file(base_url, name, expected, directory, stage, months, timeout)
            outcomes.append(outcome)
            if report:
                report(outcome)
    return outcomes
