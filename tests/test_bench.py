"""The benchmarks still run and still check what they measure (one short round each; no figure is
asserted: figures belong to `make bench` and the README, never to a test)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
