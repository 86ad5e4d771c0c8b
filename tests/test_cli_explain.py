"""`geoblock explain` and `geoblock check --json` as an operator's script runs them: the real command as a
subprocess, its exit code, its output.

explain's exit code says the verdict: 0 allow, 3 log, 4 block; 1 rules refused, 2 input error.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def geoblock(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "geoblock.tools.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=60)


@pytest.fixture(scope="module")
def rules(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("explain-rules")
    (d / "policy.yaml").write_text("home_countries: [CN]\ndefault: allow\n")
    (d / "rules.yaml").write_text(
        "rules:\n"
        "  - id: watch-swaps\n"
        "    action: log\n"
        "    patterns: ['*swap*']\n"
        "  - id: exchanges\n"
        "    action: block\n"
        "    domains:\n"
        "      - okx.com\n"
        "    domains_from: [lists/exchanges.txt]\n")
    (d / "lists").mkdir()
    (d / "lists" / "exchanges.txt").write_text("# format: plain\nbybit.com  Bybit\nbinance.com  Binance\n")
    return d


def explain(rules: Path, geo_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return geoblock("explain", *args, "--rules", rules, "--country-db", geo_dir / "GeoLite2-Country.mmdb",
                    "--asn-db", geo_dir / "GeoLite2-ASN.mmdb")


@pytest.mark.parametrize("name, code, action", [
    ("allowed.test", 0, "allow"),
    ("coinswap.example", 3, "log"),
    ("api.binance.com", 4, "block"),
])
def test_explain_exit_code_says_the_verdict(rules, geo_dir, name, code, action):
    r = explain(rules, geo_dir, name)
    assert r.returncode == code, r.stdout + r.stderr
    assert r.stdout.startswith(f"{action}: "), r.stdout
    j = explain(rules, geo_dir, name, "--json")
    assert j.returncode == code, j.stdout + j.stderr
    out = json.loads(j.stdout)
    assert out["action"] == action
    assert "entry" in out and "platform" in out


def test_explain_names_the_list_file_and_line_of_the_matching_entry(rules, geo_dir):
    r = explain(rules, geo_dir, "api.binance.com")
    assert r.returncode == 4, r.stdout + r.stderr
    assert r.stdout.splitlines()[1:] == [
        f"rule exchanges is defined at {rules / 'rules.yaml'}:5",
        f"matching entry at {rules / 'lists' / 'exchanges.txt'}:3",
        "platform: Binance",
    ]
    out = json.loads(explain(rules, geo_dir, "api.binance.com", "--json").stdout)
    assert (out["rule"], out["entry"], out["platform"]) == ("exchanges", f"{rules / 'lists' / 'exchanges.txt'}:3",
                                                            "Binance")
    assert out["list"] == "exchanges.txt" and len(out["list_version"]) == 12


def test_explain_names_the_yaml_line_of_a_domain_entry(rules, geo_dir):
    r = explain(rules, geo_dir, "www.okx.com")
    assert r.returncode == 4
    assert r.stdout.splitlines()[1:] == [f"rule exchanges is defined at {rules / 'rules.yaml'}:5",
                                         f"matching entry at {rules / 'rules.yaml'}:8"]
    out = json.loads(explain(rules, geo_dir, "www.okx.com", "--json").stdout)
    assert (out["entry"], out["platform"]) == (f"{rules / 'rules.yaml'}:8", None)


def test_a_pattern_match_has_no_entry(rules, geo_dir):
    out = json.loads(explain(rules, geo_dir, "coinswap.example", "--json").stdout)
    assert (out["action"], out["rule"], out["entry"]) == ("log", "watch-swaps", None)


@pytest.mark.parametrize("args", [["bad..name"], ["allowed.test", "--server", "300.1.2.3"],
                                  ["allowed.test", "--client", "no-address"]])
def test_explain_input_error_is_2(rules, geo_dir, args):
    r = explain(rules, geo_dir, *args)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stdout == "" and r.stderr.startswith("geoblock: ")


def test_explain_on_broken_rules_is_1(tmp_path, geo_dir):
    (tmp_path / "broken.yaml").write_text("rules:\n  - id: a\n    action: block\n    countries: [UK]\n")
    r = explain(tmp_path, geo_dir, "allowed.test")
    assert r.returncode == 1 and f"geoblock: rules refused: {tmp_path / 'broken.yaml'}:4: " in r.stderr


def test_check_json_on_a_broken_file_is_a_json_error(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("rules:\n  - id: a\n    action: block\n    countries: [UK]\n")
    r = geoblock("check", tmp_path, "--json")
    assert r.returncode == 1, r.stdout + r.stderr
    assert json.loads(r.stdout) == {
        "ok": False, "file": str(broken), "line": 4,
        "error": "rule 'a': countries: 'UK' is not an ISO 3166 alpha-2 country code (did you mean GB?)"}


def test_check_json_on_a_missing_file_has_no_line(tmp_path):
    r = geoblock("check", tmp_path / "nothing.yaml", "--json")
    assert r.returncode == 1, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert out["ok"] is False and out["file"] == str(tmp_path / "nothing.yaml") and out["line"] is None
    assert out["error"]


def test_check_json_on_good_rules_says_ok(rules):
    r = geoblock("check", rules, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["ok"] is True and out["rules"] == 2 and out["domains"] == 3
