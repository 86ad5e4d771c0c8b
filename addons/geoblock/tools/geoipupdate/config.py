"""What to update and where: the updater's defaults, and its configuration read from GeoIP.conf and the
GEOIPUPDATE_* environment variables exactly as MaxMind's updaters read them (the environment wins over
the file, an option over both).

`find_config_file` picks the file, `load_settings` reads it into `Settings` (no credentials needed:
`--check` and `--source dbip` use it too), `maxmind_config` turns Settings into pygeoipupdate's `Config`
(credentials required).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pygeoipupdate import Config, ConfigError

from geoblock.paths import DEFAULT_GEOIP_DIR
from geoblock.tools.geoipupdate import pygeoipupdate_internals as internals
from geoblock.tools.geoipupdate.errors import ConfigProblem, NoCredentials

PROG = "geoblock-geoip-update"
"""The command's name: in its messages, and as the User-Agent of DB-IP downloads."""
DEFAULT_EDITIONS: tuple[str, ...] = ("GeoLite2-Country", "GeoLite2-ASN")
"""MaxMind editions updated when neither EditionIDs nor GEOIPUPDATE_EDITION_IDS names any."""
DEFAULT_DBIP_URL = "https://download.db-ip.com/free"
"""Where DB-IP publishes its monthly Lite files (`<base>/dbip-country-lite-YYYY-MM.mmdb.gz`)."""
DBIP_FILES: tuple[tuple[str, str], ...] = (
    ("dbip-country-lite", "DBIP-Country-Lite"),
    ("dbip-asn-lite", "DBIP-ASN-Lite"),
)
"""(file name without .mmdb, the database type its metadata must name) for each DB-IP file."""
DEFAULT_TIMEOUT = 300.0
"""Seconds one database may take to fetch (`--timeout`); MaxMind's RetryFor is added to it."""
DEFAULT_MAX_AGE = 14
"""Days a database may be old before `--check` fails it (`--max-age`)."""
DBIP_EXTRA_DAYS = 31
"""Days added to the age limit for DB-IP's files, which are published monthly."""
GEOLITE_LIMIT = "GeoLite allows 30 downloads a day"
"""The hint added to a MaxMind rate-limit message."""
SAMPLE_CREDENTIALS = (999999, "000000000000")
"""The AccountID and LicenseKey of the sample GeoIP.conf MaxMind ships: not credentials."""
LOCK_NAME = ".geoipupdate.lock"
"""The lock file in the database directory, the one MaxMind's updaters take."""


@dataclass(frozen=True)
class Settings:
    """Where and what to update: GeoIP.conf and GEOIPUPDATE_* as pygeoipupdate reads them, with
    geoblock's defaults.

    Attributes:
        config_file: the GeoIP.conf read, or None when there was none.
        editions: the MaxMind edition IDs to update, e.g. ("GeoLite2-Country", "GeoLite2-ASN").
        directory: the database directory (the option, else DatabaseDirectory / GEOIPUPDATE_DB_DIR,
            else the directory the addon reads, geoblock.paths.DEFAULT_GEOIP_DIR).
        lock_file: the file locked during a run (LockFile / GEOIPUPDATE_LOCK_FILE, else
            `<directory>/.geoipupdate.lock`).
        raw: every value given, keyed by pygeoipupdate.Config's field names, the environment's over
            the file's (credentials included: do not print it).
    """

    config_file: Path | None
    editions: tuple[str, ...]
    directory: Path
    lock_file: Path
    raw: Mapping[str, Any]


def find_config_file(given: str | os.PathLike[str] | None) -> Path | None:
    """The GeoIP.conf to read: `given` (--config), else $GEOIPUPDATE_CONF_FILE, else /etc/GeoIP.conf or
    pygeoipupdate's default (/usr/local/etc/GeoIP.conf) if present, else None. Not checked to exist when
    given or named by the variable (reading it reports that)."""
    if given:
        return Path(given)
    if env := os.environ.get("GEOIPUPDATE_CONF_FILE"):
        return Path(env)
    for candidate in (Path("/etc/GeoIP.conf"), internals.default_config_file()):
        if candidate.is_file():
            return candidate
    return None


def _read_raw(config_file: Path | None) -> dict[str, Any]:
    raw: dict[str, Any] = {}
    if config_file is not None:
        try:
            raw.update(internals.parse_config_file(config_file))
        except ConfigError as exc:
            raise ConfigProblem(f"{config_file}: {exc}") from None
    try:
        raw.update(internals.parse_environment())
    except ConfigError as exc:
        raise ConfigProblem(f"environment: {exc}") from None
    return raw


def load_settings(config_file: Path | None, directory: str | os.PathLike[str] | None = None) -> Settings:
    """Read the configuration (`config_file`, then the environment); `directory` (--directory) overrides
    the database directory. Needs no credentials. Raises ConfigProblem for a value that cannot be parsed
    or a file that cannot be read."""
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
    """pygeoipupdate's Config for these settings. Raises NoCredentials (AccountID or LicenseKey missing,
    the file GEOIPUPDATE_LICENSE_KEY_FILE names empty, or the sample pair) or ConfigProblem (that file
    unreadable, a value that cannot be parsed).

    geoblock's defaults (editions, no retries) reach pygeoipupdate as GEOIPUPDATE_* variables set for the
    duration of the call, only where neither the file nor the environment has a value."""
    raw = settings.raw
    account, key = raw.get("account_id"), raw.get("license_key")
    key_file = os.environ.get("GEOIPUPDATE_LICENSE_KEY_FILE")
    if key_file and not key:  # the file was read (an unreadable one is a ConfigProblem) and held nothing
        raise NoCredentials(f"no MaxMind licence key: {key_file} (GEOIPUPDATE_LICENSE_KEY_FILE) is empty")
    if not account or not key:
        missing = " and ".join(n for n, v in (("AccountID", account), ("LicenseKey", key)) if not v)
        raise NoCredentials(
            f"no MaxMind credentials: {missing} not set (GeoIP.conf via --config, or GEOIPUPDATE_ACCOUNT_ID "
            f"and GEOIPUPDATE_LICENSE_KEY or GEOIPUPDATE_LICENSE_KEY_FILE); --source dbip needs no account"
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
