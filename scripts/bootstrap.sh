#!/usr/bin/env bash
# Create (or refresh) the virtual environment for one Python version and print its path.
#   scripts/bootstrap.sh 3.11   -> .venv-3.11 with mitmproxy 11.0.2
#   scripts/bootstrap.sh 3.12   -> .venv-3.12 with mitmproxy 12.x
# Re-running is cheap: nothing is installed again unless pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."
ver="${1:-3.11}"
venv=".venv-$ver"

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
want="$(sha256sum pyproject.toml | cut -c1-16)"
if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  echo "$venv"; exit 0
fi
py="$(find_python)" || { echo "bootstrap: no Python $ver interpreter found (tried python$ver and pyenv)" >&2; exit 1; }
if [ -d "$venv" ]; then
  echo "bootstrap: pyproject.toml changed: rebuilding $venv with $py (about a minute) ..." >&2
else
  echo "bootstrap: creating $venv with $py and installing geoblock and its dependencies (about a minute) ..." >&2
fi
rm -rf "$venv"
"$py" -m venv "$venv" >&2
"$venv/bin/pip" install -q --disable-pip-version-check -e ".[test]" >&2 2> >(grep -v "^WARNING: Location" >&2)
echo "$want" > "$stamp"
echo "bootstrap: $venv ready" >&2
echo "$venv"
