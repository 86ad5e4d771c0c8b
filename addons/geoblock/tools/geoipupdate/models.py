"""The results the updater reports: `Outcome` (one database after an update run) and `Freshness` (one
database as `--check` sees it). Both are immutable; `line()` is the text the command prints."""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Outcome:
    """One database after an update run.

    Attributes:
        name: the edition or file name without .mmdb, e.g. "GeoLite2-ASN", "dbip-country-lite".
        path: the installed file, `<directory>/<name>.mmdb`.
        updated: True when a new file was installed, False when the installed one was already current.
        build: the installed file's build time (UTC, from its metadata), None if it cannot be read.
    """

    name: str
    path: Path
    updated: bool
    build: _dt.datetime | None

    def line(self) -> str:
        """"<name>: updated to build YYYY-MM-DD" or "<name>: already current (build YYYY-MM-DD)"."""
        date = f"build {self.build:%Y-%m-%d}" if self.build else "build unknown"
        return f"{self.name}: updated to {date}" if self.updated else f"{self.name}: already current ({date})"


@dataclass(frozen=True)
class Freshness:
    """One database as `--check` sees it.

    Attributes:
        path: the file looked at.
        edition: its database type (from its metadata), None when missing or unusable.
        build: its build time (UTC), None when missing or unusable.
        age_days: whole days since `build` at the time of the check, None when missing or unusable.
        max_age: the limit in days this file was held to.
        problem: None when it is present, usable and no older than `max_age`; else what is wrong
            ("missing (...)", "unusable: ...", "older than N days").
    """

    path: Path
    edition: str | None
    build: _dt.datetime | None
    age_days: int | None
    max_age: int
    problem: str | None

    def line(self) -> str:
        """The file's name, edition, build date and age, then ": ok" or the problem."""
        if self.build is None:
            return f"{self.path.name}: {self.problem}"
        text = f"{self.path.name}: {self.edition} built {self.build:%Y-%m-%d}, {self.age_days} days old"
        return f"{text}: {self.problem}" if self.problem else f"{text} (limit {self.max_age}): ok"
