#!/usr/bin/env bash
# Lint and type-check geoblock with the tools pinned in pyproject.toml (its test extra):
# - ruff check ([tool.ruff]: pycodestyle, pyflakes, import order, bugbear, pyupgrade), once;
# - mypy ([tool.mypy]: addons/geoblock) under every supported pairing, Python 3.11 + mitmproxy 11.0.2 and
#   3.12 + mitmproxy 12.x, since geoblock's mitmproxy boundaries are typed against both.
# - ruff check of tests/ and scripts/ for the errors that break a harness (pyflakes, syntax, bugbear);
# GEOBLOCK_PYTHONS="3.12" limits the pairings; arguments replace the paths ruff checks (default: addons).
# Exit status: 0 when every check passes, else the last failing check's.
set -euo pipefail
cd "$(dirname "$0")/.."
status=0
linted=""
for ver in ${GEOBLOCK_PYTHONS:-3.11 3.12}; do
  venv="$(scripts/bootstrap.sh "$ver")"
  if [ -z "$linted" ]; then
    linted=1
    echo "=== ruff $("$venv/bin/ruff" --version | cut -d' ' -f2): check ${*:-addons}"
    "$venv/bin/ruff" check "${@:-addons}" || status=$?
    if [ $# -eq 0 ]; then
      echo "=== ruff: check tests scripts (pyflakes, syntax errors, bugbear)"
      "$venv/bin/ruff" check --select F,E9,B tests scripts || status=$?
    fi
  fi
  echo "=== mypy $("$venv/bin/mypy" --version | cut -d' ' -f2), Python $ver," \
    "$("$venv/bin/python" -c 'import mitmproxy.version as v; print("mitmproxy", v.VERSION)')"
  "$venv/bin/mypy" --python-version "$ver" || status=$?
done
exit $status
