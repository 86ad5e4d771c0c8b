"""A shipped systemd unit's system call filter, applied to a test's process without systemd.

`seccomp_prefix(unit)` returns the command prefix that runs a program under the unit's
SystemCallFilter= (with systemd's always-allowed @default set), SystemCallErrorNumber=,
RestrictAddressFamilies= and MemoryDenyWriteExecute=, through tests/support/seccomp_exec.py and libseccomp (Debian's
python3-seccomp, in the system's python3). The groups (@system-service ...) are expanded by the
installed `systemd-analyze syscall-filter`, so the lists are systemd's own. `unavailable()` says why
this cannot run here (None when it can).
"""

from __future__ import annotations

import errno
import functools
import json
import shutil
import socket
import subprocess
from pathlib import Path

SUPPORT = Path(__file__).resolve().parent
UNITS = SUPPORT.parents[1] / "deploy" / "systemd"
SYSTEM_PYTHON = "/usr/bin/python3"


@functools.lru_cache(maxsize=1)
def unavailable() -> str | None:
    """Why a unit's filter cannot be applied here (no systemd-analyze, no python3-seccomp), or None."""
    if shutil.which("systemd-analyze") is None:
        return "systemd-analyze is not installed (Debian: apt-get install systemd)"
    r = subprocess.run([SYSTEM_PYTHON, "-c", "import seccomp"], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        return "python3-seccomp is not installed for /usr/bin/python3 (apt-get install python3-seccomp)"
    return None


@functools.lru_cache(maxsize=1)
def _groups() -> dict[str, list[str]]:
    """systemd's system call groups: "@name" -> its members (names and nested "@groups")."""
    out = subprocess.run(["systemd-analyze", "syscall-filter", "--no-pager"], capture_output=True, text=True,
                         check=True).stdout
    groups: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in out.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif line.startswith("    ") and not line.strip().startswith("#") and current is not None:
            current.append(line.strip())
        elif not line.strip():
            current = None
    return groups


def _expand(names: list[str]) -> set[str]:
    out: set[str] = set()
    for name in names:
        if name.startswith("@"):
            out |= _expand(_groups()[name])
        else:
            out.add(name)
    return out


def _values(unit: str, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in (UNITS / unit).read_text().splitlines() if line.startswith(f"{key}=")]


def unit_filter(unit: str) -> dict[str, object]:
    """The unit's filter as seccomp_exec.py reads it: {"allow": sorted names, "errno": n, "families":
    socket family numbers or None, "mdwe": MemoryDenyWriteExecute=}. Raises AssertionError for a unit without an allow list."""
    lines = _values(unit, "SystemCallFilter")
    assert lines and not lines[0].startswith("~"), f"{unit}: no SystemCallFilter= allow list"
    allow = _expand(["@default"])
    for line in lines:  # systemd: the first line sets the allow list, each ~ line takes from it
        if line.startswith("~"):
            allow -= _expand(line[1:].split())
        else:
            allow |= _expand(line.split())
    number = (_values(unit, "SystemCallErrorNumber") or ["EPERM"])[-1]
    families = None
    restrict = _values(unit, "RestrictAddressFamilies")
    if restrict:
        families = sorted(int(getattr(socket, name)) for name in " ".join(restrict).split())
    mdwe = (_values(unit, "MemoryDenyWriteExecute") or ["no"])[-1] in ("yes", "true", "1", "on")
    return {"allow": sorted(allow), "errno": int(getattr(errno, number)), "families": families, "mdwe": mdwe}


def seccomp_prefix(unit: str) -> list[str]:
    """The command prefix that runs a program under `unit`'s filter (append the program's argv)."""
    return [SYSTEM_PYTHON, str(SUPPORT / "seccomp_exec.py"), json.dumps(unit_filter(unit)), "--"]
