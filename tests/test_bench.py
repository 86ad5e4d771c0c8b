"""The benchmarks still run and still check what they measure (one short round each; no figure is
asserted: figures belong to `make bench` and the README, never to a test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ARMS = ("with geoblock", "without geoblock", "no-op script addon", "frozen bare")


def test_proxy_benchmark_runs_both_modes_and_checks_every_record(tmp_path: Path) -> None:
    out = tmp_path / "proxy.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench_proxy.py"), "--rounds", "1", "--duration", "1",
         "--warmup", "0.5", "--server-check", "0.5", "--quiet-wait", "0", "--connections", "4",
         "--noop-baseline", "--frozen-baseline", "--out", str(out)],
        capture_output=True, text=True, timeout=180, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads(out.read_text())
    assert set(results["summary"]) == {"alternate", "concurrent"}
    assert {(r["mode"], r["config"]) for r in results["rounds"]} == {
        (mode, arm) for mode in ("alternate", "concurrent")
        for arm in ARMS}
    for mode, summary in results["summary"].items():
        log = summary["decision_log"]
        assert log["records_all_as_expected"] and log["records_in_geoblock_rounds"] >= log["wrk_completed_requests"] > 0
        for arm in ARMS:
            assert summary[arm]["non_2xx"] == 0 and summary[arm]["socket_errors"] == 0, (mode, arm)
    assert results["mitmdump_errors"] == {arm: [] for arm in ARMS}
    assert "### Concurrent rounds" in proc.stdout and "paired (each round's with/without" in proc.stdout
    assert proc.stdout.count("- frozen bare / without: ") == 2 and proc.stdout.count("- no-op script / without: ") == 2


def test_hook_benchmark_times_both_cases() -> None:
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_hook.py"), "--batch", "300"],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert any("the same request again:" in ln and "µs per request" in ln for ln in lines)
    assert any("a new Host each request:" in ln and "µs per request" in ln for ln in lines)


def test_report_benchmark_times_the_report_on_a_small_log(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench_report.py"), "--sizes", "3000", "--rounds", "1", "--gzip",
         "--out", str(out), "--dir", str(tmp_path / "logs")],
        capture_output=True, text=True, timeout=180, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads(out.read_text())["results"]
    assert [(r["records"], r["gzip"], r["format"]) for r in results] == [
        (3000, False, "html"), (3000, False, "json"), (3000, True, "html"), (3000, True, "json")]
    assert all(run["records"] == 3000 for r in results if r["format"] == "json" for run in r["runs"])
    assert (tmp_path / "logs" / "3000-gz" / "decisions.jsonl.gz").is_file()
    assert "| 3,000 | 1 .gz |" in proc.stdout


def test_squid_benchmark_checks_both_proxies_refuse_a_listed_name_and_pass_an_allowed_one(tmp_path: Path) -> None:
    """scripts/bench_squid.py on a 1,000-name list: Squid (installed by the script when run as root) and
    geoblock each serve the allowed name, refuse the listed ones and, after a reload, a name added to the
    list; the table names both."""
    if not Path("/usr/sbin/squid").is_file() and os.geteuid() != 0:
        pytest.skip("Squid is not installed and this is not root (the benchmark installs squid-openssl as root; "
                    ".ci/run does)")
    out = tmp_path / "squid.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench_squid.py"), "--domains", "1000", "--clients", "4",
         "--duration", "1", "--after", "0.5", "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads(out.read_text())
    assert set(results["sides"]) == {"Squid", "geoblock", "geoblock-gateway"}
    for label, side in results["sides"].items():
        # the allowed name, a listed name, a subdomain of one, the name the reload then adds
        assert list(side["checks"].values()) == ["ok", "refused", "refused", "ok"], (label, side["checks"])
        assert side["added_refused"], label
        assert side["conn_ok"] > 0 and side["reload_attempts"] > 0, label
    assert "| figure | Squid | geoblock | geoblock-gateway | geoblock / Squid | geoblock-gateway / Squid |" in proc.stdout
    assert "| proxy CPU per connection |" in proc.stdout


def test_biglist_and_trie_benchmarks_run_and_check_their_verdicts(tmp_path: Path) -> None:
    out = tmp_path / "biglist.json"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_biglist.py"), "--domains", "20000",
                           "--rounds", "1", "--names", "2000", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr  # it exits non-zero on a wrong verdict
    result = json.loads(out.read_text())
    assert result["domains"] == 20000 and all(r["blocked"] == 1000 and r["domains"] == 20000 for r in result["rounds"])
    assert "| 20,000 |" in proc.stdout and "load, artifact cached" in proc.stdout
    out = tmp_path / "trie.json"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_trie.py"), "--domains", "5000",
                           "--queries", "1000", "--out", str(out)], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads(out.read_text())["results"]
    assert {"set", "marisa", "marisa-1"} <= set(results)
    assert all(r["found"] == 500 and r["queries"] == 1000 for r in results.values())  # half the names are listed


def test_geoip_benchmark_times_both_readers_cold_and_warm(tmp_path: Path) -> None:
    out = tmp_path / "geoip.json"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_geoip.py"), "--networks", "300",
                           "--iterations", "500", "--out", str(out)],
                          capture_output=True, text=True, timeout=180, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr  # it also checks both readers agree
    results = json.loads(out.read_text())["results"]
    assert set(results) == {f"{reader}, {cache}" for reader in ("maxminddb", "geoip2") for cache in ("cold", "warm")}
    assert "| geoip2, cold |" in proc.stdout


def test_patterns_benchmark_times_before_and_after(tmp_path: Path) -> None:
    out = tmp_path / "patterns.json"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_patterns.py"), "--patterns", "50", "300",
                           "--iterations", "300", "--out", str(out)],
                          capture_output=True, text=True, timeout=180, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr  # it also checks both ways match the same rules
    rows = json.loads(out.read_text())["rows"]
    assert [r["patterns"] for r in rows] == [50, 300]
    assert all(f"{kind} {way}" in r for r in rows for kind in ("unlisted", "listed") for way in ("before", "after"))
    assert "| 300 | unlisted |" in proc.stdout


def test_connection_benchmark_measures_every_arm_and_checks_answers_and_records(tmp_path: Path) -> None:
    out = tmp_path / "conn.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench_conn.py"), "--rounds", "1", "--connections", "40",
         "--warmup", "10", "--clients", "4", "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads(out.read_text())
    assert set(results["arms"]) == {"plain", "minimal", "runner"}
    for arm in results["arms"].values():
        for kind in ("refused", "passed"):
            assert len(arm[kind]["cpu_ms_per_conn"]) == 1 and arm[kind]["cpu_ms_per_conn"][0] >= 0
    assert results["decision_log"] == {"plain": {"block": 50, "allow": 100}, "runner": {"block": 50, "allow": 100}}
    assert "runner / plain: refused x" in proc.stdout and "runner / minimal: refused x" in proc.stdout


def test_workers_benchmark_maps_one_compiled_list_in_every_worker(tmp_path: Path) -> None:
    """scripts/bench_workers.py with a list (2,000 names here; 1,000,000 for the figures): the list is
    compiled once, both workers decide with it, and the memory table shows each worker mapping the same
    artifact (its pages shared: each worker's Pss of them below its Rss)."""
    from support import netns

    reason = netns.unavailable()
    if reason:
        pytest.skip(reason)
    out = tmp_path / "workers.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench_workers.py"), "--workers", "1,2", "--rounds", "1",
         "--duration", "1", "--connections", "4", "--workloads", "http", "--list-size", "2000", "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads(out.read_text())
    assert results["list_size"] == 2000
    assert "list of 2000 names compiled in" in proc.stdout
    for r in results["results"]:
        assert r["errors"] == 0 and r["non2xx"] == 0 and r["rps"] > 0, r
    assert all(n > 0 for n in next(r for r in results["results"] if r["workers"] == 2)["decisions"])
    after = results["memory"]["after"]
    assert len(after) == 2
    for worker in after:
        assert worker["rss"] > 0 and worker["pss"] > 0
        assert 0 < worker["list_pss"] < worker["list_rss"], worker  # mapped by both: shared pages halve
    assert "| worker | when | VmRSS | Pss | Pss of files | private | list Rss | list Pss |" in proc.stdout
