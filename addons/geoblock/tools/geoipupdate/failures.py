"""How a failure raised by pygeoipupdate, aiohttp, urllib, gzip/tarfile or the file system becomes an
`UpdateError` of the right kind (and so the right exit code), with a message an operator can act on.

`classify(exc, origin)` is the mapping; `translated(name, origin)` applies it to whatever a block raises.
"""

from __future__ import annotations

import errno
import gzip
import http.client
import os
import socket
import tarfile
import urllib.error
import zlib
from collections.abc import Iterator
from contextlib import contextmanager

import aiohttp
from pygeoipupdate import (
    AuthenticationError,
    ConfigError,
    DownloadError,
    HashMismatchError,
    HTTPError,
    LockError,
)

from geoblock.tools.geoipupdate.errors import (
    BadCredentials,
    BadDownload,
    ConfigProblem,
    HashMismatch,
    Locked,
    NotWritable,
    RateLimited,
    Unreachable,
    UpdateError,
)

DISK_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EIO}
)
"""errno values that mean the directory cannot take the file (NotWritable, exit 8)."""

_CORRUPT = (gzip.BadGzipFile, tarfile.TarError, EOFError, zlib.error)
_NETWORK = (
    aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError, ConnectionError,
    socket.gaierror, http.client.IncompleteRead,
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
    """The UpdateError for anything a download, a check or a file operation raised.

    Args:
        exc: the exception (an UpdateError is returned as it is).
        origin: the server concerned, as it appears in messages (a URL).
        rate_hint: added to a rate-limit (HTTP 429) message, e.g. the source's daily allowance.

    Returns the error (not raised); its `name` is not set here.
    """
    status = _http_status(exc)
    if isinstance(exc, UpdateError):
        return exc
    if isinstance(exc, HashMismatchError):
        return HashMismatch(
            f"the download from {origin} does not match the MD5 the server announced "
            f"(expected {exc.expected}, got {exc.actual})"
        )
    if isinstance(exc, AuthenticationError) or status == 401:
        return BadCredentials(
            f"{origin} refused the account ID / license key (HTTP 401): check AccountID and LicenseKey"
        )
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
def translated(name: str | None, origin: str, rate_hint: str = "") -> Iterator[None]:
    """Turn whatever the body raises (Exception, not KeyboardInterrupt) into an UpdateError about the
    database `name` (kept if the error already names one), chained to the original; see `classify`."""
    try:
        yield
    except UpdateError as exc:
        exc.name = exc.name or name
        raise
    except Exception as exc:
        error = classify(exc, origin, rate_hint)
        error.name = error.name or name
        raise error from exc
