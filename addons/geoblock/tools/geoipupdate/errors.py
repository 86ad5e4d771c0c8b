"""What can go wrong in a GeoIP refresh: one root (`UpdateError`), one subclass per exit code.

Every class carries its exit code (`code`) and the one-line summary `--help` lists for it (`summary`);
`EXIT_CODES` is that table, in order, with 0 ("ok") first. How exceptions raised by pygeoipupdate, aiohttp,
urllib and the file system become these classes is `failures.py`'s concern.
"""

from __future__ import annotations

from geoblock.errors import GeoblockError


class UpdateError(GeoblockError):
    """A refresh that failed: the root of the updater's errors.

    Attributes:
        code: the process exit code for this kind of failure (int, 1-11; class attribute).
        summary: the line `--help` prints for `code` (str; class attribute).
        name: the database concerned, e.g. "GeoLite2-ASN" or "dbip-country-lite", or None when the
            failure concerns the run as a whole (configuration, lock, directory).

    The message is normalised to one line (runs of whitespace become one space).
    """

    code = 1
    summary = "failure not listed below (an unexpected server answer, ...)"

    def __init__(self, message: str, name: str | None = None) -> None:
        super().__init__(" ".join(message.split()))
        self.name = name


class ConfigProblem(UpdateError):
    """GeoIP.conf, a GEOIPUPDATE_* variable or an option has a value that cannot be used."""

    code = 2
    summary = "bad command line or configuration (GeoIP.conf, GEOIPUPDATE_* values)"


class NoCredentials(UpdateError):
    """MaxMind's AccountID or LicenseKey is missing (or still the sample pair)."""

    code = 3
    summary = "no credentials: AccountID / LicenseKey missing"


class BadCredentials(UpdateError):
    """The update server refused the account ID / license key (HTTP 401)."""

    code = 4
    summary = "credentials refused by the server (HTTP 401)"


class RateLimited(UpdateError):
    """The update server says too many downloads (HTTP 429)."""

    code = 5
    summary = "rate limited (HTTP 429; GeoLite allows 30 downloads a day)"


class Unreachable(UpdateError):
    """No complete answer from the server: connection refused, DNS failure, reset, timeout."""

    code = 6
    summary = "server unreachable: connection refused, DNS failure, timeout"


class HashMismatch(UpdateError):
    """The downloaded file's MD5 differs from the one the server announced."""

    code = 7
    summary = "hash mismatch: the download differs from the MD5 the server announced"


class NotWritable(UpdateError):
    """The database directory cannot be written (permissions, read-only file system, disk full)."""

    code = 8
    summary = "directory not writable or disk full (ENOSPC, EACCES, EROFS, ...)"


class BadDownload(UpdateError):
    """The download is not a usable database: corrupt archive, not a MaxMind DB, wrong edition, empty."""

    code = 9
    summary = "bad download: corrupt archive, not a MaxMind DB, wrong edition, empty tree"


class Locked(UpdateError):
    """Another update holds the directory's lock."""

    code = 10
    summary = "another update holds the lock"


class Stale(UpdateError):
    """--check: a database is missing, unusable or older than its limit."""

    code = 11
    summary = "--check: a database is missing, unusable or too old"


ERRORS: tuple[type[UpdateError], ...] = (
    UpdateError, ConfigProblem, NoCredentials, BadCredentials, RateLimited, Unreachable,
    HashMismatch, NotWritable, BadDownload, Locked, Stale,
)
"""Every error class, in exit-code order."""

EXIT_CODES: tuple[tuple[int, str], ...] = (
    (0, "ok: every database updated or already current (--check: all present and fresh)"),
    *((cls.code, cls.summary) for cls in ERRORS),
)
"""(exit code, summary) for every exit code of the command, 0 first: what `--help` prints."""
