#!/usr/bin/env bash
# Create (or refresh) a virtual environment for one Python version from the locks in requirements/
# (docs/install.md) and print its path on standard output; progress goes to standard error.
#   scripts/bootstrap.sh 3.11             -> .venv-3.11: runtime + test locks (mitmproxy 11.0.2, pytest,
#                                            ruff, mypy, ...): what scripts/test.sh, lint.sh, bench.sh use
#   scripts/bootstrap.sh 3.12             -> .venv-3.12: the same with mitmproxy 12.x
#   scripts/bootstrap.sh --runtime 3.11   -> .venv-run-3.11: the runtime lock only (no pytest, hypothesis,
#                                            atheris, ruff, mypy): what `make run` and the gateway use
# Every package comes from requirements/run-<ver>.txt (and test-<ver>.txt) through
# `pip install --require-hashes --no-deps`: one version each, each file checked against its sha256; then
# geoblock itself, editable, with --no-deps and the locked build backend (--no-build-isolation).
# Re-running is cheap: nothing is installed again unless pyproject.toml or an installed lock changed
# (the stamp .geoblock-stamp in the environment holds their digest).
# Exit status: 0 ready; 1 no interpreter, a lock missing, a refused install (a file whose hash is not in
# the lock) or a lock that no longer fits pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
runtime=""
if [ "${1:-}" = "--runtime" ]; then runtime=1; shift; fi
ver="${1:-3.11}"
locks=("requirements/run-$ver.txt")
if [ -n "$runtime" ]; then
  venv=".venv-run-$ver"; what="the runtime lock"
else
  venv=".venv-$ver"; what="the runtime and test locks"; locks+=("requirements/test-$ver.txt")
fi
for lock in "${locks[@]}"; do
  [ -e "$lock" ] || { echo "bootstrap: no lock $lock for Python $ver (make it with scripts/lock.sh)" >&2; exit 1; }
done

find_python() {
  local cand
  for cand in "python$ver" "$(command -v pyenv >/dev/null 2>&1 && pyenv root)/versions/$ver".*/bin/"python$ver"; do
    if [ -n "$cand" ] && "$cand" -c 'import sys; sys.exit(0)' >/dev/null 2>&1; then
      echo "$cand"; return 0
    fi
  done
  return 1
}

stamp="$venv/.geoblock-stamp"
want="$(cat pyproject.toml "${locks[@]}" | sha256sum | cut -c1-16)"
if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  echo "$venv"; exit 0
fi
py="$(find_python)" || { echo "bootstrap: no Python $ver interpreter found (tried python$ver and pyenv)" >&2; exit 1; }
if [ -d "$venv" ]; then
  echo "bootstrap: pyproject.toml or a lock changed: rebuilding $venv with $py from $what ..." >&2
else
  echo "bootstrap: creating $venv with $py from $what ..." >&2
fi
rm -rf "$venv"
"$py" -m venv "$venv" >&2
quiet() { "$@" 2> >(grep -v "^WARNING: Location" >&2); }  # pip's notes on this machine's extra indexes
req=()
for lock in "${locks[@]}"; do req+=(-r "$lock"); done
echo "bootstrap: installing $(cat "${locks[@]}" | grep -c '^[A-Za-z0-9]') locked packages, each checked against its hash (about a minute the first time) ..." >&2
quiet "$venv/bin/pip" install -q --disable-pip-version-check --require-hashes --no-deps "${req[@]}" >&2 || {
  echo "bootstrap: refused: pip did not install ${locks[*]} (above); $venv is left unfinished" >&2; exit 1; }
echo "bootstrap: installing geoblock itself (editable, no dependencies) ..." >&2
quiet "$venv/bin/pip" install -q --disable-pip-version-check --no-deps --no-build-isolation -e . >&2
# A lock older than a dependency change in pyproject.toml leaves a requirement unmet: say so now, not at
# the first import. pip check covers the installed packages' requirements (geoblock's runtime ones among
# them); the test extra's pins are compared here as well (pip check does not read extras).
extra=""; [ -n "$runtime" ] || extra=test
broken="$("$venv/bin/pip" check 2>&1)" || true
[ "$broken" = "No broken requirements found." ] && broken=""
pins="$("$venv/bin/python" - "$extra" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, requires, version

from pip._vendor.packaging.requirements import Requirement  # pip's own copy: the venv has no other

for line in requires("geoblock") or []:
    req = Requirement(line)  # only the extra's: pip check has compared the others
    if req.marker is None or "extra" not in str(req.marker) or not req.marker.evaluate({"extra": sys.argv[1]}):
        continue
    try:
        have = version(req.name)
    except PackageNotFoundError:
        print(f"geoblock requires {req}, which is not installed")
        continue
    if not req.specifier.contains(have, prereleases=True):
        print(f"geoblock requires {req}, but {have} is installed")
EOF
)"
if [ -n "$broken$pins" ]; then
  { [ -z "$broken" ] || echo "$broken"; [ -z "$pins" ] || echo "$pins"; } >&2
  echo "bootstrap: the locks (${locks[*]}) do not fit pyproject.toml: refresh them with scripts/lock.sh" >&2
  exit 1
fi
echo "$want" > "$stamp"
echo "bootstrap: $venv ready ($(du -sh "$venv" | cut -f1))" >&2
echo "$venv"
