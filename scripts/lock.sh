#!/usr/bin/env bash
# Refresh the locks that scripts/bootstrap.sh installs (docs/install.md): for each supported Python,
#   requirements/run-<ver>.txt   the runtime: geoblock's dependencies from pyproject.toml, and the build
#                                backend (requirements/build.in) that installs geoblock itself
#   requirements/test-<ver>.txt  what the test extra adds (pytest, hypothesis, atheris, ruff, mypy, ...),
#                                resolved together with the runtime lock so the two never disagree
# every package pinned to one version with the sha256 of each of its files on the package index, so that
# `pip install --require-hashes` refuses anything else. Resolved for Linux (the gateway's platform).
#   scripts/lock.sh              re-resolve from pyproject.toml, keeping the locked versions that still fit
#   scripts/lock.sh --upgrade    take the newest versions pyproject.toml allows (its pins stay pins)
#   GEOBLOCK_PYTHONS="3.12" scripts/lock.sh    one Python only
# The resolver is uv (requirements/lock-tool.txt, itself installed by hash into .venv-lock): it resolves
# for a Python version other than the one it runs under, so one run writes every lock.
# Exit status: 0 when every lock was written, else uv's (nothing is half-written: each lock is resolved
# into a temporary file first).
set -euo pipefail
cd "$(dirname "$0")/.."
upgrade=()
case "${1:-}" in
  --upgrade) upgrade=(--upgrade) ;;
  "") ;;
  *) echo "usage: scripts/lock.sh [--upgrade]" >&2; exit 2 ;;
esac

tool=".venv-lock"
want="$(sha256sum requirements/lock-tool.txt | cut -c1-16)"
if [ ! -x "$tool/bin/uv" ] || [ "$(cat "$tool/.geoblock-stamp" 2>/dev/null)" != "$want" ]; then
  echo "lock: installing uv from requirements/lock-tool.txt into $tool ..." >&2
  rm -rf "$tool"
  python3 -m venv "$tool"
  "$tool/bin/pip" install -q --disable-pip-version-check --require-hashes --no-deps \
    -r requirements/lock-tool.txt 2> >(grep -v "^WARNING: Location" >&2)
  echo "$want" > "$tool/.geoblock-stamp"
fi
uv="$tool/bin/uv"

compile() {  # compile OUT ARGS...: resolve into a temporary file, then replace OUT whole
  local out="$1"; shift
  local tmp="$out.tmp"
  # keep the versions already locked unless --upgrade: uv reads the existing output file for that
  [ -e "$out" ] && cp "$out" "$tmp"
  "$uv" pip compile --quiet --generate-hashes --python-platform linux \
    --custom-compile-command "scripts/lock.sh" "${upgrade[@]}" "$@" -o "$tmp"
  mv "$tmp" "$out"
}

for ver in ${GEOBLOCK_PYTHONS:-3.11 3.12}; do
  run="requirements/run-$ver.txt"
  test="requirements/test-$ver.txt"
  echo "lock: resolving $run (Python $ver) ..." >&2
  compile "$run" --python-version "$ver" pyproject.toml requirements/build.in
  # the test lock holds only what the runtime lock does not: pip installs the two together with
  # --no-deps, and a package in both would be named twice
  no_emit=()
  while read -r name; do no_emit+=(--no-emit-package "$name"); done \
    < <(sed -n 's/^\([A-Za-z0-9._-]*\)==.*/\1/p' "$run")
  echo "lock: resolving $test (Python $ver) ..." >&2
  compile "$test" --python-version "$ver" --extra test -c "$run" "${no_emit[@]}" pyproject.toml requirements/build.in
done
echo "lock: done; scripts/bootstrap.sh rebuilds each environment whose lock changed" >&2
