"""The registries' delegation data (enrich/rir.py) as the country source of last resort.

The public addresses here are ones the pinned data really holds (iptocc 3.3.170, data of 2026-10-27):
- 193.0.6.139: RIPE NCC's own web server, in RIPE NCC's block 193.0.0.0/21, delegated to NL;
- 2001:67c:2e8::1: in RIPE NCC's own 2001:67c:2e8::/48, delegated to NL;
- 1.0.16.1: in APNIC's 1.0.16.0/20, delegated to JP (the example iptocc's documentation uses);
- 8.8.8.8: in ARIN's 8.8.8.0/24 (Google), delegated to US.
No packet is sent to them: they are judged through `geoblock explain` (no network) or named in CONNECTs
that geoblock refuses, with mitmdump in upstream mode towards a closed loopback port.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from pathlib import Path
from urllib.request import ProxyHandler, build_opener

import pytest

from geoblock.enrich import rir
from support.decisions import read
from support.geodb import write_asn_db, write_country_db
from support.proc import Mitmdump, free_port

HELD = {"193.0.6.139": "NL", "2001:67c:2e8::1": "NL", "1.0.16.1": "JP", "8.8.8.8": "US"}
DIRECT = build_opener(ProxyHandler({}))  # the endpoint on loopback, never through a proxy of the environment


@pytest.fixture(scope="module")
def rules(tmp_path_factory) -> Path:
    """Home CN, unknown_country log, one offshore rule: exchange.example is blocked when offshore."""
    d = tmp_path_factory.mktemp("rir-rules")
    (d / "policy.yaml").write_text("home_countries: [CN]\ndefault: allow\nunknown_country: log\n")
    (d / "rules.yaml").write_text("rules:\n  - {id: offshore-exchange, action: block, offshore: true, "
                                  "domains: [exchange.example]}\n")
    return d


def explain(rules: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "geoblock.tools.cli", "explain", *map(str, args),
                           "--rules", str(rules)], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("addr, country", HELD.items())
def test_the_data_places_the_addresses_it_holds(addr, country):
    assert rir.country(ipaddress.ip_address(addr)) == country


@pytest.mark.parametrize("addr", ["127.0.0.1", "10.1.2.3", "192.168.0.1", "203.0.113.9", "::1", "fe80::1",
                                  "2001:db8::1", "224.0.0.1", "0.0.0.0"])
def test_addresses_that_are_not_public_are_never_placed(addr):
    assert rir.country(ipaddress.ip_address(addr)) is None


def test_the_build_names_the_release_and_the_date_of_its_data():
    assert rir.BUILD == "iptocc 3.3.170, data of 2026-10-27"


@pytest.mark.parametrize("addr, country", HELD.items())
def test_without_databases_explain_places_the_server_by_the_registries_and_the_offshore_rule_blocks(
        rules, addr, country):
    r = explain(rules, "exchange.example", "--server", addr, "--country-db", "", "--asn-db", "")
    assert r.returncode == 4, r.stdout + r.stderr  # block (before: unknown_country, log)
    assert r.stdout.startswith("block: "), r.stdout
    assert f"server {addr}: {country} (rir)" in r.stdout
    j = explain(rules, "exchange.example", "--server", addr, "--country-db", "", "--asn-db", "", "--json")
    out = json.loads(j.stdout)
    assert (out["action"], out["rule"], out["country"], out["country_source"], out["offshore"]) == \
        ("block", "offshore-exchange", country, "rir", True)
    assert out["rir_build"] == rir.BUILD


def test_with_registries_off_the_server_stays_unplaced(rules, tmp_path):
    from geoblock.engine import Engine
    from geoblock.core.model import Facts
    from geoblock.core.names import normalize_ip

    engine = Engine.open(str(rules), None, None, registries=False)
    facts = Facts("connect", names=("exchange.example",), server_ip=normalize_ip("193.0.6.139"))
    verdict = engine.judge(facts)
    assert (facts.country, verdict.action) == (None, "log")  # unknown_country
    engine.set_registries(True)
    facts = Facts("connect", names=("exchange.example",), server_ip=normalize_ip("193.0.6.139"))
    assert (engine.judge(facts).action, facts.country, facts.country_source) == ("block", "NL", "rir")


def test_the_start_up_warning_says_the_registries_place_public_servers(rules):
    """Found in review: without a country database the start-up warning said country rules "cannot place
    servers", while the registries' data placed every public server."""
    from geoblock.engine import Engine

    engine = Engine.open(str(rules), None, None)
    [said] = [w for w in engine.warnings() if "without a country database" in w]
    assert "place public servers by the registries' delegation data (iptocc " in said
    assert "for addresses it does not hold they cannot place servers and give unknown_country=" in said
    engine.set_registries(False)
    [said] = [w for w in engine.warnings() if "without a country database" in w]
    assert "registries" not in said and ") cannot place servers and give unknown_country=" in said


def test_a_geoip_answer_wins_over_the_registries(rules, tmp_path):
    """A test country database that places 193.0.6.139 in SG (the registries say NL): SG, from geoip."""
    country_db = write_country_db(tmp_path / "c.mmdb", {"193.0.6.139/32": ("SG", 64501)}, odd={})
    asn_db = write_asn_db(tmp_path / "a.mmdb", {"193.0.6.139/32": ("SG", 64501)})
    j = explain(rules, "exchange.example", "--server", "193.0.6.139", "--country-db", country_db,
                "--asn-db", asn_db, "--json")
    out = json.loads(j.stdout)
    assert (out["action"], out["country"], out["country_source"], out["asn"]) == ("block", "SG", "geoip", 64501)
    assert "rir_build" not in out
    # an address that database does not hold still gets the registries' country
    j = explain(rules, "exchange.example", "--server", "1.0.16.1", "--country-db", country_db,
                "--asn-db", asn_db, "--json")
    out = json.loads(j.stdout)
    assert (out["country"], out["country_source"], out["rir_build"]) == ("JP", "rir", rir.BUILD)


@pytest.mark.e2e
def test_a_real_mitmdump_without_databases_records_country_source_rir(tmp_path):
    """A CONNECT to 193.0.6.139 under an offshore rule: the registries place it in NL, it is blocked
    (451) and recorded with country_source rir; the status says what placed it."""
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "policy.yaml").write_text("home_countries: [CN]\ndefault: allow\nunknown_country: allow\n")
    (rules / "r.yaml").write_text("rules:\n  - {id: offshore-servers, action: block, offshore: true}\n")
    log = tmp_path / "decisions.jsonl"
    metrics_port = free_port()
    proxy = Mitmdump(tmp_path / "conf", {
        "geoblock_rules": rules, "geoblock_country_db": "", "geoblock_asn_db": "", "geoblock_log": log,
        "geoblock_rdap": False, "geoblock_metrics": f"127.0.0.1:{metrics_port}",
    }, extra_args=["--mode", f"upstream:http://127.0.0.1:{free_port()}"])  # nothing would leave loopback
    with proxy:
        r = subprocess.run(["curl", "-sS", "--max-time", "5", "-x", proxy.url, "https://193.0.6.139/"],
                           capture_output=True, text=True, timeout=20)
        with DIRECT.open(f"http://127.0.0.1:{metrics_port}/status", timeout=10) as answer:
            status = json.loads(answer.read())
    assert "response 451" in r.stderr, r.stderr  # before: no country, unknown_country (allow)
    rec = read(log)[-1]
    assert (rec["server_ip"], rec["country"], rec["country_source"], rec["offshore"], rec["action"]) == \
        ("193.0.6.139", "NL", "rir", True, "block")
    assert rec["rir_build"] == rir.BUILD
    assert any(line.startswith(f"registries' delegation data ({rir.BUILD})") for line in status["summary"])


def test_what_if_judges_a_record_without_a_country_as_recorded_and_relocate_places_it(rules, tmp_path):
    """A record written before the registries' data (193.0.6.139 without a country, unknown_country: log),
    re-judged under the same rules: unchanged, since no locator adds a country to a recorded location;
    with --relocate (and an empty country database) the registries place it in NL and the offshore rule
    now blocks it."""
    from geoblock.core.model import Facts
    from geoblock.core.names import normalize_ip
    from geoblock.engine import Engine

    engine = Engine.open(str(rules), None, None, registries=False)
    facts = Facts("connect", names=("exchange.example",), server_ip=normalize_ip("193.0.6.139"))
    verdict = engine.judge(facts)
    log = tmp_path / "old.jsonl"
    log.write_text(json.dumps(engine.record_of(facts, verdict, True)) + "\n")
    same = subprocess.run([sys.executable, "-m", "geoblock.tools.replay", str(log), "--rules", str(rules),
                           "--json"], capture_output=True, text=True, timeout=60)
    summary = json.loads(same.stdout.splitlines()[-1])
    assert (summary["records"], summary["unchanged"]) == (1, 1), same.stdout + same.stderr
    empty_db = write_country_db(tmp_path / "c.mmdb", {}, odd={})
    moved = subprocess.run([sys.executable, "-m", "geoblock.tools.replay", str(log), "--rules", str(rules),
                            "--json", "--relocate", "--country-db", str(empty_db), "--asn-db", ""],
                           capture_output=True, text=True, timeout=60)
    changed = json.loads(moved.stdout.splitlines()[0])
    assert (changed["country"], changed["before"]["action"], changed["after"]["action"]) == ("NL", "log", "block"), \
        moved.stdout + moved.stderr
