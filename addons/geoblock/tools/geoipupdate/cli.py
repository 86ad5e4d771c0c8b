"""`geoblock-geoip-update`: a thin command line over the updater's API (config, client, freshness).

It parses the options, reads the configuration, runs an update (`--source maxmind|dbip`) or a check
(`--check`), prints one line per database, and turns an UpdateError into its exit code (the class
attribute `code`, listed in `--help` and in this package's docstring) and one line on stderr saying
which database stayed unchanged.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from geoblock.paths import DEFAULT_GEOIP_DIR
from geoblock.tools.geoipupdate.client import update_dbip, update_maxmind
from geoblock.tools.geoipupdate.config import (
    DBIP_EXTRA_DAYS,
    DEFAULT_DBIP_URL,
    DEFAULT_MAX_AGE,
    DEFAULT_TIMEOUT,
    PROG,
    Settings,
    find_config_file,
    load_settings,
    maxmind_config,
)
from geoblock.tools.geoipupdate.errors import EXIT_CODES, Stale, UpdateError
from geoblock.tools.geoipupdate.freshness import check, check_targets
from geoblock.tools.geoipupdate.models import Outcome

OK = 0
"""Exit code: every database updated or already current (--check: all present and fresh)."""
INTERRUPTED = 130
"""Exit code after Ctrl-C (128 + SIGINT), as shells report it; the databases are unchanged."""


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
    return Stale.code if any(r.problem for r in results) else OK


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
    return OK


def _error_line(exc: UpdateError) -> str:
    subject = f"{exc.name}: " if exc.name else ""
    kept = f"{exc.name} unchanged" if exc.name else "databases unchanged"
    return f"{PROG}: {subject}{exc} ({kept})"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command with `argv` (default: sys.argv[1:]); returns the exit code (see EXIT_CODES).
    Bad options exit 2 through argparse (SystemExit)."""
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
        return INTERRUPTED
