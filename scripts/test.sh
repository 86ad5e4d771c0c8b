#!/usr/bin/env bash
# Set up (scripts/bootstrap.sh: .venv-3.X from the runtime and test locks, docs/install.md), lint (ruff,
# mypy: scripts/lint.sh) and run the whole test suite under every supported pairing:
# Python 3.11 + mitmproxy 11.0.2 and Python 3.12 + mitmproxy 12.x.
# GEOBLOCK_PYTHONS="3.12" limits the run; extra arguments go to pytest. GEOBLOCK_RUNNER=1 runs the tests'
# proxies with geoblock as the production runner geoblock-gateway (tests/support/proc.py).
set -euo pipefail
cd "$(dirname "$0")/.."
# curl: the tests' HTTP and TLS client; wrk: the benchmarks' load generator (tests/test_bench.py);
# chromium: the browser tests (tests/test_browser.py); logrotate: the rotation test with the shipped file
# (tests/test_rotation.py); prometheus (with promtool): the metrics tests (tests/test_metrics.py). Without
# root, a missing chromium, logrotate or prometheus only skips those tests (and says so).
for tool in curl wrk chromium logrotate prometheus; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
      apt-get install -y -qq --no-install-recommends "$tool" >/dev/null 2>&1 ||
        { apt-get update -qq && apt-get install -y -qq --no-install-recommends "$tool" >/dev/null; }
    elif [ "$tool" != chromium ] && [ "$tool" != logrotate ] && [ "$tool" != prometheus ]; then
      echo "test: $tool is needed (sudo apt-get install -y $tool)" >&2; exit 1
    fi
  fi
done
# wamerican: the word list tests/test_lint.py remakes the lint's sample of ordinary names from
if [ ! -e /usr/share/dict/american-english ] && [ "$(id -u)" = 0 ]; then
  apt-get install -y -qq --no-install-recommends wamerican >/dev/null 2>&1 ||
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends wamerican >/dev/null; }
fi
# As root nothing is missing that a test needs: a skipped test then fails the run (tests/conftest.py).
if [ "$(id -u)" = 0 ]; then export GEOBLOCK_REQUIRE_ALL="${GEOBLOCK_REQUIRE_ALL:-1}"; fi
status=0
# ruff and mypy first (scripts/lint.sh, configured in pyproject.toml): a finding fails the run.
scripts/lint.sh || status=$?
for ver in ${GEOBLOCK_PYTHONS:-3.11 3.12}; do
  venv="$(scripts/bootstrap.sh "$ver")"
  echo "=== Python $ver: $("$venv/bin/python" -c 'import mitmproxy.version as v; print("mitmproxy", v.VERSION)')"
  "$venv/bin/python" -m pytest "$@" || status=$?
done
exit $status
