"""Noticing that rule files or databases changed on disk, cheaply (stat only), for hot reload."""

from __future__ import annotations

import os
from pathlib import Path

FileStamp = tuple[str, int, int, int, int]
"""(path, inode, mtime in ns, size in bytes, ctime in ns): any write, rename over, or `touch` back to an
old mtime changes one of them (ctime moves on every change of content or metadata, POSIX stat(2))."""
Stamp = tuple[FileStamp, ...]


def stamp_of(path: str, st: os.stat_result) -> FileStamp:
    """The stamp of `path` from its stat result."""
    return (path, st.st_ino, st.st_mtime_ns, st.st_size, st.st_ctime_ns)


def _stat(path: str) -> FileStamp | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return stamp_of(path, st)


def rules_stamp(source: str) -> Stamp:
    """Names, inodes, mtimes, sizes and ctimes of the rule files (a directory's *.yaml, or one file).

    Any edit, addition, removal or replacement of a rule file changes the stamp.
    """
    path = Path(source)
    if path.is_dir():
        try:
            names = sorted(p.name for p in path.iterdir() if p.suffix.lower() in (".yaml", ".yml"))
        except OSError:
            return (("<unreadable>", 0, 0, 0, 0),)
        stamps = (_stat(str(path / n)) for n in names)
        return tuple(s for s in stamps if s is not None)
    found = _stat(source)
    return (found,) if found else ()


def ruleset_stamp(source: str, lists: tuple[FileStamp | None, ...]) -> Stamp:
    """The rule files' stamp (rules_stamp) followed by the stamps of the list files the rules name:
    `lists` as they were when read (core.lists.ListFile.stamp), or their current stamps (files_stamp)."""
    return rules_stamp(source) + tuple(s or ("<unstamped>", 0, 0, -1, 0) for s in lists)


def files_stamp(*paths: str | None) -> Stamp:
    """Stamps of single files (databases); a missing file stamps as absent."""
    return tuple(_stat(p) or (p, 0, 0, -1, 0) for p in paths if p)
