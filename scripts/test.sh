#!/usr/bin/env bash
# Set up and run the whole test suite under every supported pairing:
# Python 3.11 + mitmproxy 11.0.2 and Python 3.12 + mitmproxy 12.x.
# GEOBLOCK_PYTHONS="3.12" limits the run; extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v curl >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq curl >/dev/null; else echo "test: curl is needed" >&2; exit 1; fi
fi
status=0
for ver in ${GEOBLOCK_PYTHONS:-3.11 3.12}; do
  venv="$(scripts/bootstrap.sh "$ver")"
  echo "=== Python $ver: $("$venv/bin/python" -c 'import mitmproxy.version as v; print("mitmproxy", v.VERSION)')"
  "$venv/bin/python" -m pytest "$@" || status=$?
done
exit $status
