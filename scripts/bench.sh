#!/usr/bin/env bash
# Set up and run the benchmarks (figures in docs/performance.md):
#   1. scripts/bench_decide.py: one decision, observe to verdict, GeoIP cached (shipped rules; 100k domains)
#   2. scripts/bench_proxy.py: keep-alive HTTP req/s through mitmdump with vs without geoblock (wrk)
#   3. scripts/bench_report.py: `geoblock report` over 1M and 10M generated records (HTML and JSON)
#   4. scripts/bench_biglist.py: a block rule taking 1,000,000 domains from a list file (load, memory, decide)
#   4b. scripts/bench_trie.py: the lookup structure for a 1,000,000-name list (a set, marisa-trie, DAWG2 when
#      installed): build time, size, memory, one lookup
#   5. scripts/bench_squid.py: geoblock beside Squid (Debian's squid-openssl, installed when missing and run
#      as root, never as the system service) with the same 1,000,000-name list: ready time, memory,
#      reload, new TLS connections per second
#   6. scripts/bench_geoip.py: one GeoIP lookup, geoip2's reader and models vs the raw maxminddb reader,
#      cache cold and warm (docs/geoip.md)
#   7. scripts/bench_patterns.py: one name against 100 to 10,000 pattern rules, per-rule regexes vs
#      PatternSet (core/patterns.py)
#   8. scripts/bench_conn.py: CPU per refused and per passed-through connection: mitmdump with geoblock, a
#      minimal blocker addon and the gateway runner geoblock-gateway (16 parallel clients)
# Results: the tables on stdout, and bench-results/{decide,proxy,report,...}.{json,md} (git-ignored).
#   GEOBLOCK_PYTHON=3.12 scripts/bench.sh      other Python/mitmproxy pairing (results get a -3.12 suffix)
#   scripts/bench.sh decide | proxy | report | biglist | trie | squid | geoip | patterns | conn   one benchmark only
#   BENCH_DECIDE_ARGS="--iterations 50000" BENCH_PROXY_ARGS="--rounds 3 --duration 10" scripts/bench.sh
#   BENCH_REPORT_ARGS="--sizes 1000000 --rounds 1" scripts/bench.sh report
#   BENCH_SQUID_ARGS="--clients 32 --duration 20" scripts/bench.sh squid
#   BENCH_CONN_ARGS="--rounds 5 --connections 3000" scripts/bench.sh conn
set -euo pipefail
cd "$(dirname "$0")/.."
ver="${GEOBLOCK_PYTHON:-3.11}"
which="${1:-all}"
case "$which" in all|decide|proxy|report|biglist|trie|squid|geoip|patterns|conn) ;;
  *) echo "usage: scripts/bench.sh [all|decide|proxy|report|biglist|trie|squid|geoip|patterns|conn]" >&2; exit 2;; esac
venv="$(scripts/bootstrap.sh "$ver")"
py="$venv/bin/python"
suffix=""; [ "$ver" = "3.11" ] || suffix="-$ver"
if { [ "$which" = all ] || [ "$which" = proxy ]; } && ! command -v wrk >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "bench: installing wrk" >&2
    apt-get install -y -qq wrk >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
  else
    echo "bench: wrk is needed for the proxy benchmark (sudo apt-get install -y wrk)" >&2; exit 1
  fi
fi
mkdir -p bench-results
echo "=== Python $ver, $("$py" -c 'import mitmproxy.version as v; print("mitmproxy", v.VERSION)'), $(nproc) CPUs"
# run_bench NAME: scripts/bench_NAME.py with $BENCH_NAME_ARGS, its table teed to bench-results/NAME.md
run_bench() {
  local name="$1" var args
  var="BENCH_$(echo "$1" | tr '[:lower:]' '[:upper:]')_ARGS"
  args="${!var:-}"
  if [ "$which" = all ] || [ "$which" = "$name" ]; then
    echo "=== $name: $py scripts/bench_$name.py $args"
    # shellcheck disable=SC2086
    "$py" "scripts/bench_$name.py" --out "bench-results/$name$suffix.json" $args | tee "bench-results/$name$suffix.md"
  fi
}
for name in decide proxy report biglist trie geoip patterns conn squid; do run_bench "$name"; done
echo "=== results in bench-results/ (JSON and markdown)"
