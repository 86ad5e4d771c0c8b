"""Refresh the GeoIP databases geoblock reads; a new file replaces the old one only once it is proven good.

Two sources:

- ``maxmind`` (default): MaxMind GeoLite2/GeoIP2 editions, fetched by MaxMind's own updater library
  (pygeoipupdate). Configuration is the standard ``GeoIP.conf`` (``--config FILE``, else
  ``$GEOIPUPDATE_CONF_FILE``, else ``/etc/GeoIP.conf`` or ``/usr/local/etc/GeoIP.conf`` when present)
  and the ``GEOIPUPDATE_*`` environment variables (account ID, license key, edition IDs, database
  directory, host, proxy, lock file, retry time), read exactly as pygeoipupdate reads them; the
  environment wins over the file. Editions default to GeoLite2-Country and GeoLite2-ASN (a City
  edition works too), the directory to the one the addon reads (``geoblock.paths.DEFAULT_GEOIP_DIR``),
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

The package is split the way pygeoipupdate splits itself; this module is its API (``__all__``):

- ``errors``    UpdateError, the root (a GeoblockError), and one subclass per exit code
- ``failures``  how failures from pygeoipupdate, aiohttp, urllib and the file system map onto them
- ``config``    the defaults; GeoIP.conf and GEOIPUPDATE_* read into ``Settings``; pygeoipupdate's Config
- ``pygeoipupdate_internals``  the one adapter over pygeoipupdate's private names (written for 0.1.0)
- ``models``    ``Outcome`` (one database after an update) and ``Freshness`` (one database under --check)
- ``files``     lock, staging directory, validation, atomic install
- ``client``    the MaxMind and DB-IP downloads
- ``freshness`` --check
- ``cli``       the command line (``geoblock-geoip-update``, ``python -m geoblock.tools.geoipupdate``)

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

from geoblock.tools.geoipupdate.cli import main
from geoblock.tools.geoipupdate.client import dbip_months, update_dbip, update_maxmind
from geoblock.tools.geoipupdate.config import (
    DBIP_EXTRA_DAYS,
    DBIP_FILES,
    DEFAULT_DBIP_URL,
    DEFAULT_EDITIONS,
    DEFAULT_MAX_AGE,
    DEFAULT_TIMEOUT,
    LOCK_NAME,
    PROG,
    Settings,
    find_config_file,
    load_settings,
    maxmind_config,
)
from geoblock.tools.geoipupdate.errors import (
    ERRORS,
    EXIT_CODES,
    BadCredentials,
    BadDownload,
    ConfigProblem,
    HashMismatch,
    Locked,
    NoCredentials,
    NotWritable,
    RateLimited,
    Stale,
    Unreachable,
    UpdateError,
)
from geoblock.tools.geoipupdate.failures import classify
from geoblock.tools.geoipupdate.files import STAGING_PREFIX, directory_lock, install, staging, validate
from geoblock.tools.geoipupdate.freshness import check, check_file, check_targets
from geoblock.tools.geoipupdate.models import Freshness, Outcome

__all__ = [
    "DBIP_EXTRA_DAYS",
    "DBIP_FILES",
    "DEFAULT_DBIP_URL",
    "DEFAULT_EDITIONS",
    "DEFAULT_MAX_AGE",
    "DEFAULT_TIMEOUT",
    "ERRORS",
    "EXIT_CODES",
    "LOCK_NAME",
    "PROG",
    "STAGING_PREFIX",
    "BadCredentials",
    "BadDownload",
    "ConfigProblem",
    "Freshness",
    "HashMismatch",
    "Locked",
    "NoCredentials",
    "NotWritable",
    "Outcome",
    "RateLimited",
    "Settings",
    "Stale",
    "Unreachable",
    "UpdateError",
    "check",
    "check_file",
    "check_targets",
    "classify",
    "dbip_months",
    "directory_lock",
    "find_config_file",
    "install",
    "load_settings",
    "main",
    "maxmind_config",
    "staging",
    "update_dbip",
    "update_maxmind",
    "validate",
]
