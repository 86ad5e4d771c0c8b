"""`--check`: is each database present, usable and fresh? Downloads nothing, changes nothing.

Looked at: the configured MaxMind editions and any DB-IP files present (`--source maxmind`), or the DB-IP
files (`--source dbip`). A file is fresh when its build date is at most `max_age` days old (DB-IP's
monthly files get DBIP_EXTRA_DAYS more).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from pathlib import Path

from geoblock.tools.geoipupdate.config import DBIP_EXTRA_DAYS, DBIP_FILES, Settings
from geoblock.tools.geoipupdate.errors import UpdateError
from geoblock.tools.geoipupdate.files import validate
from geoblock.tools.geoipupdate.models import Freshness

Target = tuple[Path, str, int]
"""(file, the edition it must be, its age limit in days)."""


def check_file(path: Path, expected: str, max_age: int, now: _dt.datetime | None = None) -> Freshness:
    """One file's Freshness at `now` (default: the current time, UTC; must be timezone-aware).
    Never raises for a bad file: a missing or unusable one is reported in `problem`."""
    now = now or _dt.datetime.now(_dt.UTC)
    if not path.exists():
        return Freshness(path, None, None, None, max_age, f"missing ({path})")
    try:
        info = validate(path, expected)
    except UpdateError as exc:
        return Freshness(path, None, None, None, max_age, f"unusable: {exc}")
    age = (now - info.build).days
    problem = f"older than {max_age} days" if age > max_age else None
    return Freshness(path, info.edition, info.build, age, max_age, problem)


def check_targets(settings: Settings, source: str, max_age: int) -> list[Target]:
    """(file, expected edition, limit in days) for each database --check looks at: the configured
    editions (`source` "maxmind") and any DB-IP files present, or the DB-IP files (`source` "dbip")."""
    dbip = [(settings.directory / f"{name}.mmdb", expected, max_age + DBIP_EXTRA_DAYS) for name, expected in DBIP_FILES]
    if source == "dbip":
        return dbip
    editions = [(settings.directory / f"{e}.mmdb", e, max_age) for e in settings.editions]
    return editions + [t for t in dbip if t[0].exists()]


def check(targets: Sequence[Target], now: _dt.datetime | None = None) -> list[Freshness]:
    """The Freshness of each target, in order (see check_file)."""
    return [check_file(path, expected, limit, now) for path, expected, limit in targets]
