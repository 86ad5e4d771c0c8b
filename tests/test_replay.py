"""The replay corpus (tests/flows/*.mitm, recorded by scripts/record-flows.py with a real mitmdump, real
curl clients and loopback test servers) judged offline by geoblock.tools.replay, by the real addon's
requestheaders hook, and by the `python -m geoblock.tools.replay` command line.

The expected verdicts (tests/flows/expected.json) are written by hand in scripts/record-flows.py, not
computed by geoblock. Ruleset: rules/*.yaml + tests/rules/extra.yaml (`rules_dir`); GeoIP: the test
databases (`geo_dir`: 127.0.0.1 = CN home, .2 = SG, .3 = US AS64502, .5 = SG).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mitmproxy import http
from mitmproxy import io as mio
from mitmproxy.test import tflow, tutils

from geoblock.tools import replay as rp
from geoblock.core.decide import Facts
from geoblock.enrich.resolve import Resolver
from geoblock.engine import Engine
from support.harness import geoblock_in_context, logged

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
FLOWS = TESTS / "flows"
EXPECTED = json.loads((FLOWS / "expected.json").read_text(encoding="utf-8"))["files"]
FILES = sorted(p.name for p in FLOWS.glob("*.mitm"))


def read(name: str) -> list[http.HTTPFlow]:
    with open(FLOWS / name, "rb") as fo:
        return list(mio.FlowReader(fo).stream())


@pytest.fixture(scope="module")
def engine(rs, geo) -> Engine:
    """The engine the proxy judges with, over the same rules and databases (no RDAP, as offline)."""
    return Engine(rs, geo, resolver=Resolver(lookup=_no_dns))


# --------------------------------------------------------------------------------------------
# The corpus itself


def test_every_flow_file_has_expectations_and_back():
    assert FILES, "no recorded flows in tests/flows (run scripts/record-flows.py)"
    assert set(FILES) == set(EXPECTED)


@pytest.mark.parametrize("name", FILES)
def test_flow_file_holds_exactly_the_expected_requests(name):
    flows = read(name)
    expected = EXPECTED[name]
    assert len(flows) == len(expected), f"{name}: {len(flows)} flows, {len(expected)} expectations"
    for flow, exp in zip(flows, expected, strict=True):
        assert isinstance(flow, http.HTTPFlow)
        assert (flow.request.host_header, flow.request.path) == (exp["host"], exp["path"]), exp["index"]
        assert flow.response is not None and flow.response.status_code == 200  # it was really served


# --------------------------------------------------------------------------------------------
# Offline replay through the decision core


@pytest.mark.parametrize("name", FILES)
def test_replay_gives_the_expected_verdicts(name, engine):
    results = list(rp.replay(FLOWS / name, engine))
    expected = EXPECTED[name]
    assert len(results) == len(expected), f"{name}: {len(results)} flows replayed, {len(expected)} expected"
    wrong = []
    for (flow, facts, verdict), exp in zip(results, expected, strict=True):
        assert flow.request.path == exp["path"]
        assert facts.stage == "http"
        assert facts.server_ip == ipaddress.ip_address(exp["server"])
        assert facts.client_ip == ipaddress.ip_address(exp["client"])
        assert facts.sni == exp["sni"]
        if (verdict.action, verdict.rule) != (exp["action"], exp["rule"]):
            wrong.append(f"#{exp['index']} {exp['host']}: got {verdict.action}/{verdict.rule} "
                         f"({verdict.reason}); expected {exp['action']}/{exp['rule']} ({exp['why']})")
    assert not wrong, "\n".join(wrong)


def by_host(name: str, host: str, **match) -> http.HTTPFlow:
    for flow, exp in zip(read(name), EXPECTED[name], strict=True):
        if exp["host"] == host and all(exp[k] == v for k, v in match.items()):
            return flow
    raise LookupError(host)


def test_facts_normalise_host_and_use_the_dialled_address(engine):
    facts = rp.facts_from_flow(by_host("http.mitm", "API.Binance.COM."))
    engine.judge(facts)  # the engine places the server
    assert facts.names == ("api.binance.com",)  # the request target is an IP literal, not a name
    assert facts.host == "API.Binance.COM."  # as sent, for the record
    assert (str(facts.server_ip), facts.country, facts.asn) == ("127.0.0.1", "CN", 64500)
    facts = rp.facts_from_flow(by_host("http.mitm", "bücher.example"))
    assert facts.names == ("xn--bcher-kva.example",)
    assert facts.country is None  # observed only: the server is not placed yet


def test_facts_take_every_name_of_an_https_flow():
    facts = rp.facts_from_flow(by_host("https.mitm", "binance.com", sni="allowed.test"))
    assert facts.names == ("binance.com", "allowed.test")  # Host, then the SNI (the target is an IP)
    assert facts.sni == "allowed.test"
    ip_only = [f for f, e in zip(read("https.mitm"), EXPECTED["https.mitm"], strict=True) if e["sni"] is None]
    assert ip_only and all(rp.facts_from_flow(f).names == () for f in ip_only)


def test_server_address_without_a_recorded_connection():
    # Never dialled (e.g. a flow built by hand): an IP-literal target is the address, a name is not resolved.
    flow = tflow.tflow(req=tutils.treq(host="127.0.0.3", port=80, headers=[(b"Host", b"allowed.test")]))
    flow.server_conn.peername = None
    assert str(rp.facts_from_flow(flow).server_ip) == "127.0.0.3"
    flow = tflow.tflow(req=tutils.treq(host="allowed.test", port=80, headers=[(b"Host", b"allowed.test")]))
    flow.server_conn.peername = None
    assert rp.facts_from_flow(flow).server_ip is None
    flow.server_conn.peername = ("::ffff:127.0.0.5", 80, 0, 0)
    assert str(rp.facts_from_flow(flow).server_ip) == "127.0.0.5"  # IPv4-mapped is compared as IPv4


def test_an_invalid_name_gets_on_error_as_in_the_addon(rs, engine):
    flow = tflow.tflow(req=tutils.treq(host="127.0.0.1", port=80, headers=[(b"Host", b"bad..name")]))
    with pytest.raises(rp.InvalidFlow) as err:
        rp.facts_from_flow(flow)
    assert err.value.field_name == "Host"
    facts, verdict = rp.judge(flow, engine)
    assert isinstance(facts, Facts) and facts.host == "bad..name"
    assert (verdict.action, verdict.rule) == (rs.policy.on_error, None)
    assert "'bad..name'" in verdict.reason


def test_replay_of_a_corrupt_file_names_it(tmp_path, engine):
    bad = tmp_path / "corrupt.mitm"
    bad.write_bytes(b"this is not a flow file\n")
    with pytest.raises(rp.ReplayError) as err:
        list(rp.replay(bad, engine))
    assert str(bad) in str(err.value)


# --------------------------------------------------------------------------------------------
# The same flows through the real addon's requestheaders hook


def _no_dns(name: str) -> list[str]:
    raise AssertionError(f"the addon tried to resolve {name!r} during the replay test")


@pytest.fixture
def live(tmp_path, rules_dir, geo_dir):
    """The real addon, configured as under mitmdump, with a resolver that must not be used."""
    with geoblock_in_context(rules_dir, geo_dir, tmp_path / "decisions.jsonl", with_proxyserver=False) as addon:
        addon.engine.resolver.close()
        addon.engine.resolver = Resolver(lookup=_no_dns)
        yield addon
        addon.done()


def comparable(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in ("ts", "enforced")}


@pytest.mark.parametrize("name", FILES)
def test_addon_requestheaders_enforces_the_expected_verdicts(name, live, rs, geo, engine):
    flows = read(name)
    expected = EXPECTED[name]
    assert len(flows) == len(expected)
    for recorded, exp in zip(flows, expected, strict=True):
        flow = recorded.copy()
        flow.response = None  # as the hook sees it: the request headers, nothing answered yet
        asyncio.run(live.requestheaders(flow))
        if exp["action"] == "block":
            assert flow.response is not None, exp
            assert flow.response.status_code == 451, exp
            assert flow.response.headers.get("x-geoblock-rule") == exp["rule"]
        else:
            assert flow.response is None, (exp, flow.response and flow.response.text)
    records = logged(live)
    assert [(r["action"], r["rule"]) for r in records] == [(e["action"], e["rule"]) for e in expected]
    assert all(r["enforced"] is True and r["stage"] == "http" and "error" not in r for r in records)
    assert live.engine.resolver.stats["lookups"] == 0  # every server here is an IP literal: nothing resolved
    # The offline replay builds the same facts and reaches the same verdict, for the same reason.
    replayed = [engine.record_of(facts, verdict, False) for _, facts, verdict in rp.replay(FLOWS / name, engine)]
    assert [comparable(r) for r in replayed] == [comparable(r) for r in records]


@pytest.mark.parametrize("name", FILES)
def test_explain_replay_and_the_proxy_agree_on_a_corpus_of_flows(name, live, engine, rules_dir, geo_dir, capsys):
    """Every flow of the corpus, judged three ways: by the proxy (the addon's requestheaders hook and its
    decision record), by `geoblock-replay` (the flow file) and by `geoblock explain` (the names and the
    server address the proxy recorded). One engine behind all three: the same action, rule and reason,
    and the same place for the server."""
    from geoblock.tools import cli as geoblock_cli

    for recorded in read(name):
        flow = recorded.copy()
        flow.response = None
        asyncio.run(live.requestheaders(flow))
    proxy = logged(live)
    replayed = [engine.record_of(facts, verdict, False) for _, facts, verdict in rp.replay(FLOWS / name, engine)]
    assert len(proxy) == len(replayed) == len(EXPECTED[name])
    for live_record, replay_record, exp in zip(proxy, replayed, EXPECTED[name], strict=True):
        assert comparable(replay_record) == comparable(live_record), exp
        names = [n for n in (live_record.get("host"), live_record.get("sni")) if n]
        argv = ["explain", *(names or [live_record["server_ip"]]), "--stage", "http", "--rules", str(rules_dir),
                "--country-db", str(geo_dir / "GeoLite2-Country.mmdb"), "--asn-db", str(geo_dir / "GeoLite2-ASN.mmdb"),
                "--json"]
        if live_record.get("server_ip"):
            argv += ["--server", live_record["server_ip"]]
        if live_record.get("client"):
            argv += ["--client", live_record["client"]]
        assert geoblock_cli.main(argv) == geoblock_cli.EXPLAIN_EXIT[live_record["action"]]
        explained = json.loads(capsys.readouterr().out)
        for key in ("action", "rule", "reason", "country", "country_source", "asn"):
            assert explained.get(key) == live_record.get(key), (key, exp, explained, live_record)


def test_replay_takes_names_in_the_addons_order(live, rs, geo, engine):
    # Request target binance.com and Host a.wild.test: both names are blocked, by different rules; the
    # verdict names the first name of the flow, so the order of the names must be the addon's.
    # (The request target is a name: give the addon's resolver the address the replay reads from the
    # recorded connection.)
    live.engine.resolver = Resolver(lookup=lambda name: ["127.0.0.2"])
    flow = tflow.tflow(req=tutils.treq(host="binance.com", port=80, headers=[(b"Host", b"a.wild.test")]))
    flow.client_conn.peername = ("127.0.0.1", 50000)
    flow.client_conn.sni = None  # tflow's default client has SNI "address"
    flow.server_conn.peername = ("127.0.0.2", 80)
    facts, verdict = rp.judge(flow, engine)
    assert facts.names == ("binance.com", "a.wild.test")
    live_flow = flow.copy()
    live_flow.response = None
    asyncio.run(live.requestheaders(live_flow))
    (record,) = logged(live)
    assert comparable(engine.record_of(facts, verdict, False)) == comparable(record)
    assert live_flow.response is not None and live_flow.response.status_code == 451


@pytest.mark.parametrize("server", ["127.0.0.20", "127.0.0.21", "127.0.0.22", "127.0.0.23", "64:ff9b::7f00:5"])
def test_replay_and_explain_place_a_server_as_the_proxy_does(live, rs, geo, engine, rules_dir, geo_dir, capsys, server):
    """Servers whose GeoIP answer is not a plain country (EU, AP, registered only, anycast) and an
    address carried in IPv6: the proxy's record, the replay's record and `geoblock explain` agree."""
    from geoblock.tools import cli as geoblock_cli

    target = f"[{server}]" if ":" in server else server
    flow = tflow.tflow(req=tutils.treq(host=server, port=80, headers=[(b"Host", b"offshore-only.test")]))
    flow.client_conn.peername = ("127.0.0.1", 50000)
    flow.client_conn.sni = None
    flow.server_conn.peername = None  # judged on the request target, as the proxy judges it before dialling
    live_flow = flow.copy()
    live_flow.response = None
    asyncio.run(live.requestheaders(live_flow))
    (record,) = logged(live)
    facts, verdict = rp.judge(flow, engine)
    assert comparable(engine.record_of(facts, verdict, False)) == comparable(record)
    code = geoblock_cli.EXPLAIN_EXIT[record["action"]]  # explain's exit code says the verdict
    assert geoblock_cli.main(["explain", "offshore-only.test", "--server", target.strip("[]"), "--stage", "http",
                              "--rules", str(rules_dir), "--country-db", str(geo_dir / "GeoLite2-Country.mmdb"),
                              "--asn-db", str(geo_dir / "GeoLite2-ASN.mmdb"), "--json"]) == code
    explained = json.loads(capsys.readouterr().out)
    for key in ("action", "rule", "reason", "offshore", "country", "country_source", "asn", "server_ip",
                "server_ipv6", "server_ipv6_form", "geoip_code", "anycast"):
        assert explained.get(key) == record.get(key), key
    # the text form says the same about the server
    assert geoblock_cli.main(["explain", "offshore-only.test", "--server", target.strip("[]"), "--stage", "http",
                              "--rules", str(rules_dir), "--country-db", str(geo_dir / "GeoLite2-Country.mmdb"),
                              "--asn-db", str(geo_dir / "GeoLite2-ASN.mmdb")]) == code
    text = capsys.readouterr().out
    assert f"{record['action']}: {record['reason']}" in text
    server_line = next(line for line in text.splitlines() if line.startswith("server "))
    if record.get("geoip_code"):
        assert f"the GeoIP database says {record['geoip_code']}" in server_line
    if record["country"]:
        assert f"{record['country']} ({record['country_source']})" in server_line
    assert ("anycast" in server_line) == bool(record.get("anycast"))
    if record.get("server_ipv6"):
        assert f"carried in {record['server_ipv6']}, {record['server_ipv6_form']}" in server_line


# --------------------------------------------------------------------------------------------
# The command line


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "addons"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "geoblock.tools.replay", *args], capture_output=True, text=True,
                          encoding="utf-8", env=env, cwd=REPO, timeout=60)


def db_args(rules_dir, geo_dir) -> list[str]:
    return ["--rules", str(rules_dir), "--country-db", str(geo_dir / "GeoLite2-Country.mmdb"),
            "--asn-db", str(geo_dir / "GeoLite2-ASN.mmdb")]


def counts(name: str) -> str:
    exp = EXPECTED[name]
    c = {a: sum(1 for e in exp if e["action"] == a) for a in ("allow", "log", "block")}
    return f"{len(exp)} flows: allow={c['allow']} log={c['log']} block={c['block']}"


@pytest.mark.parametrize("name", FILES)
def test_cli_prints_one_line_per_flow_and_a_summary(name, rules_dir, geo_dir):
    path = str(FLOWS / name)
    done = cli(path, *db_args(rules_dir, geo_dir))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    expected = EXPECTED[name]
    assert len(lines) == len(expected) + 1
    for line, exp in zip(lines[:-1], expected, strict=True):
        assert line.startswith(f"#{exp['index']} {exp['action'].upper():5} {exp['rule'] or '-'} GET "), line
    assert lines[-1] == f"{path}: {counts(name)}"


def test_cli_json_prints_decision_records(rules_dir, geo_dir):
    path = str(FLOWS / "https.mitm")
    done = cli(path, "--json", *db_args(rules_dir, geo_dir))
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    expected = EXPECTED["https.mitm"]
    assert [(r["action"], r["rule"]) for r in records] == [(e["action"], e["rule"]) for e in expected]
    assert [r["flow"] for r in records] == list(range(len(expected)))
    assert all(r["enforced"] is False and r["stage"] == "http" and r["file"] == path for r in records)
    assert {"ts", "client", "sni", "host", "name", "server_ip", "country", "asn", "offshore", "reason",
            "ruleset"} <= set(records[0])
    assert f"{path}: {counts('https.mitm')}" in done.stderr  # the summary keeps stdout pure JSON lines


def test_cli_several_files(rules_dir, geo_dir):
    done = cli(*(str(FLOWS / n) for n in FILES), *db_args(rules_dir, geo_dir))
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == sum(len(EXPECTED[n]) + 1 for n in FILES)


def test_cli_corrupt_file_exits_2_naming_it(tmp_path, rules_dir, geo_dir):
    bad = tmp_path / "corrupt.mitm"
    bad.write_bytes(b"\x00\x01garbage, not a flow dump\n")
    done = cli(str(bad), *db_args(rules_dir, geo_dir))
    assert done.returncode == 2
    assert str(bad) in done.stderr and "not a valid mitmproxy flow file" in done.stderr
    assert "Traceback" not in done.stderr


def test_cli_truncated_file_exits_2_after_the_readable_flows(tmp_path, rules_dir, geo_dir):
    data = (FLOWS / "http.mitm").read_bytes()
    cut = tmp_path / "truncated.mitm"
    cut.write_bytes(data[: len(data) // 2])  # a cut in the middle of a flow
    done = cli(str(cut), *db_args(rules_dir, geo_dir))
    assert done.returncode == 2
    assert str(cut) in done.stderr and "Traceback" not in done.stderr
    assert done.stdout.startswith("#0 BLOCK offshore-crypto-exchanges GET binance.com")


def test_cli_missing_file_and_bad_rules_exit_2(tmp_path, rules_dir, geo_dir):
    missing = tmp_path / "nope.mitm"
    done = cli(str(missing), *db_args(rules_dir, geo_dir))
    assert done.returncode == 2 and str(missing) in done.stderr and "Traceback" not in done.stderr
    bad_rules = tmp_path / "rules.yaml"
    bad_rules.write_text("rules: [\n")
    done = cli(str(FLOWS / FILES[0]), "--rules", str(bad_rules))
    assert done.returncode == 2 and str(bad_rules) in done.stderr and "Traceback" not in done.stderr
