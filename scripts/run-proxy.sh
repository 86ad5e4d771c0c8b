#!/usr/bin/env bash
# Set up (first run only) the runtime environment .venv-run-3.11 (scripts/bootstrap.sh --runtime: the
# runtime lock, no test tools) and start geoblock as an explicit proxy on 127.0.0.1:8080 with the shipped
# rules. Extra arguments go to mitmdump, e.g. --set geoblock_monitor=true.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="$(scripts/bootstrap.sh --runtime "${GEOBLOCK_PYTHON:-3.11}")"
exec "$venv/bin/mitmdump" -s addons/block.py --listen-host "${GEOBLOCK_HOST:-127.0.0.1}" -p "${GEOBLOCK_PORT:-8080}" "$@"
