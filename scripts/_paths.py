"""The one place where geoblock's scripts reach code that is not installed: tests/support.

The scripts in scripts/ run with a project virtual environment's Python from a checkout
(`.venv-3.11/bin/python scripts/soak.py`). geoblock itself is installed there (`pip install -e`, done by
scripts/bootstrap.sh), so no script edits the import path to find it. The test support package
(tests/support: test GeoIP databases, servers, mitmdump processes, TLS bytes, fuzz targets, the soak
load) is not installed; pytest finds it through `pythonpath` in pyproject.toml, and a script finds it by
importing this module first:

    import _paths  # noqa: F401 - makes tests/support importable as `support`

(Python puts a script's own directory, scripts/, first on the import path, so `_paths` is found.)

`use_checkout(repo)` is for the benchmarks that measure another checkout of geoblock (e.g. a `git
worktree` of an older commit) with this environment: that checkout's package then wins over the
installed one.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"


def _first_on_path(directory: Path) -> None:
    entry = str(directory)
    if entry in sys.path:
        sys.path.remove(entry)
    sys.path.insert(0, entry)


def use_checkout(repo: str | Path) -> Path:
    """Import geoblock from the checkout at `repo` (its addons/ directory) instead of the installed
    package; must run before anything imports geoblock. Returns that addons/ directory.

    Raises FileNotFoundError when `repo` holds no addons/geoblock package."""
    addons = Path(repo).resolve() / "addons"
    if not (addons / "geoblock" / "__init__.py").is_file():
        raise FileNotFoundError(f"{repo}: no geoblock package under addons/")
    _first_on_path(addons)
    return addons


_first_on_path(TESTS)
