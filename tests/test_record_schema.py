"""The decision record's schema (geoblock.record.DecisionRecord): every record make_record produces, and
every line the decision log holds, has its fields and only its fields, with their types.

Records checked: make_record over generated facts and verdicts (every optional field), the real addon's
records for each stage (its hooks, driven as mitmproxy drives them), the replay corpus through the addon
and through `geoblock-replay --json`, and (support.decisions.read) every record any test reads from a
decision log, the in-process addon's and a running mitmdump's alike.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mitmproxy import io as mio
from mitmproxy.net.dns import types as dns_types
from mitmproxy.proxy import context, events, layer, mode_specs
from mitmproxy.proxy.layers import modes
from mitmproxy.test import tflow, tutils

from geoblock.core.model import ACTIONS, STAGES, Facts, Verdict
from geoblock.core.names import normalize_ip
from geoblock.record import DecisionLog, encode_line, make_record
from support.harness import logged
from support.record_schema import OPTIONAL, REQUIRED, check, problems
from support.tls_bytes import client_hello

FLOWS = Path(__file__).resolve().parent / "flows"

# ------------------------------------------------------------------ the check itself


def _a_record() -> dict:
    facts = Facts("http", names=("binance.com",), client_ip=normalize_ip("10.0.0.7"), host="binance.com")
    return make_record(facts, Verdict(action="block", reason="r", rule="x"), True, "abc")


def test_the_check_refuses_what_the_schema_does_not_allow():
    good = _a_record()
    assert problems(good) == []
    assert problems({k: v for k, v in good.items() if k != "reason"}) == ["missing 'reason'"]
    assert problems({**good, "surprise": 1}) == ["unknown field 'surprise'"]
    assert problems({**good, "action": "deny"})[0].startswith("'action' is 'deny'")
    assert problems({**good, "asn": True})[0].startswith("'asn' is True")  # a bool is not a number
    assert problems({**good, "enforced": 1})[0].startswith("'enforced' is 1")
    assert problems({**good, "qtype": ["A", 1]})[0].startswith("'qtype' is ['A', 1]")
    assert problems({"stage": good["stage"], **good})[-1] == "'ts' is not the first field"


def test_the_schema_names_every_field_the_decision_log_documents():
    documented = set()
    for line in (Path(__file__).resolve().parents[1] / "docs" / "decision-log.md").read_text().splitlines():
        if line.startswith("| `"):
            documented |= {part.strip("`") for part in line.split("|")[1].split(", ")}
    documented = {name.strip().strip("`") for name in documented}
    assert documented == REQUIRED | OPTIONAL


# ------------------------------------------------------------------ make_record, every shape

_ADDRESSES = st.sampled_from(["10.0.0.7", "203.0.113.9", "2001:db8::1", "64:ff9b::cb00:7109", "2002:cb00:7109::1",
                              "::ffff:127.0.0.1"]).map(normalize_ip)
_TEXT = st.text(max_size=20)
_OPTIONAL_TEXT = st.none() | _TEXT
_EXTRA = st.fixed_dictionaries({}, optional={
    "error": _TEXT, "qtype": st.lists(st.sampled_from(["A", "AAAA", "HTTPS"]), max_size=3),
    "chain": st.lists(_TEXT, max_size=3), "first_bytes": st.binary(max_size=16).map(bytes.hex),
    "transport": st.sampled_from(["tcp", "udp"]), "upgrade": _TEXT, "blocked_at": st.sampled_from(["connect", "tls"]),
    "file": _TEXT, "flow": st.integers(0, 10**6), "flow_id": _TEXT,
})


@st.composite
def _facts(draw) -> Facts:
    country = draw(st.none() | st.sampled_from(["CN", "SG", "US"]))
    return Facts(
        draw(st.sampled_from(STAGES)),
        names=tuple(draw(st.lists(st.sampled_from(["binance.com", "a.test", "xn--bcher-kva.example"]), max_size=3,
                                  unique=True))),
        client_ip=draw(st.none() | _ADDRESSES), server_ip=draw(st.none() | _ADDRESSES), country=country,
        asn=draw(st.none() | st.integers(1, 2**32 - 1)),
        country_source=None if country is None else draw(st.sampled_from(["geoip", "geoip-registered", "rdap"])),
        geoip_code=draw(st.none() | st.sampled_from(["EU", "AP"])), anycast=draw(st.booleans()),
        sni=draw(_OPTIONAL_TEXT), host=draw(_OPTIONAL_TEXT), ech=draw(st.booleans()), ech_grease=draw(st.booleans()),
        ech_why=draw(_OPTIONAL_TEXT), mismatch=draw(st.none() | st.just("SNI a.test ≠ Host b.test")),
        connection_id=draw(st.none() | st.uuids().map(str)), client_port=draw(st.none() | st.integers(0, 65535)),
        server_port=draw(st.none() | st.integers(0, 65535)),
    )


_VERDICTS = st.builds(Verdict, action=st.sampled_from(ACTIONS), reason=_TEXT, rule=_OPTIONAL_TEXT,
                      offshore=st.none() | st.booleans(), name=_OPTIONAL_TEXT)


@settings(max_examples=300, deadline=None)
@given(_facts(), _VERDICTS, st.booleans(), st.none() | st.just("a126de6f218b"),
       st.none() | st.just("2026-11-24"), _EXTRA)
def test_every_record_make_record_produces_fits_the_schema(facts, verdict, enforced, ruleset, build, extra):
    record = make_record(facts, verdict, enforced, ruleset, build, build, extra or None)
    assert problems(record) == []
    assert problems(json.loads(encode_line(record))) == []  # and as the log line carries it


def test_a_record_after_lost_ones_fits_the_schema(tmp_path):
    log = DecisionLog(str(tmp_path / "d.jsonl"))
    log._gap = 3  # as after three failed writes
    log.write(_a_record())
    log.close()
    (line,) = (tmp_path / "d.jsonl").read_text().splitlines()
    record = json.loads(line)
    assert record["lost_before"] == 3 and problems(record) == []


# ------------------------------------------------------------------ the addon's real records, stage by stage


def _run(coro) -> None:
    if coro is not None:
        asyncio.run(coro)


def _transparent(dest: str) -> object:
    client = tflow.tclient_conn()
    client.proxy_mode = mode_specs.ProxyMode.parse("transparent")
    client.peername = ("2001:db8:1::2", 50000)
    client.sockname = (dest, 443)
    client.error = None
    return client


def _next_layer(gb, data: bytes, server=("127.0.0.2", 443)) -> layer.NextLayer:
    client = tflow.tclient_conn()
    client.peername = ("127.0.0.1", 50000)
    client.alpn = None  # nothing negotiated yet (mitmproxy's test client says http/1.1, which makes any stream HTTP)
    ctx = context.Context(client, gb.tctx.options)
    ctx.server.address = server
    modes.TransparentProxy(ctx)
    nl = layer.NextLayer(ctx)
    nl.events.append(events.DataReceived(client, data))
    return nl


def _http(host_header: str, host: str = "127.0.0.1"):
    f = tflow.tflow(req=tutils.treq(host=host, port=80, headers=((b"host", host_header.encode()),)))
    f.client_conn.peername = ("127.0.0.1", 50000)
    f.client_conn.sni = None
    return f


def test_the_addons_records_at_every_stage_fit_the_schema(gb):
    _run(gb.client_connected(_transparent("127.0.0.5")))  # ip: a blocked network
    _run(gb.client_connected(_transparent("64:ff9b::7f00:5")))  # ip: an IPv4 address carried in IPv6
    for name, qtype in (("binance.com", dns_types.A), ("allowed.test", dns_types.AAAA)):  # dns
        f = tflow.tdnsflow()
        f.response = None
        f.request.questions[0].name, f.request.questions[0].type = name, qtype
        f.client_conn.peername = ("127.0.0.1", 5353)
        _run(gb.dns_request(f))
    for target in ("binance.com", "127.0.0.5", "allowed.test"):  # connect
        f = tflow.tflow(req=tutils.treq(method=b"CONNECT", host=target, port=443, path=b"",
                                        authority=f"{target}:443".encode()))
        _run(gb.http_connect(f))
    for sni in ("binance.com", "allowed.test", None):  # tls
        _run(gb.next_layer(_next_layer(gb, client_hello(sni))))
    _run(gb.next_layer(_next_layer(gb, b"\x00\x01 not a protocol")))  # stream
    for host in ("binance.com", "allowed.test", "bad..name"):  # http, and on_error for an invalid Host
        _run(gb.requestheaders(_http(host)))
    records = logged(gb)
    check(records)
    assert {r["stage"] for r in records} == set(STAGES)
    seen = {key for r in records for key in r}
    assert {"server_ipv6", "server_ipv6_form", "qtype", "first_bytes", "transport", "error"} <= seen
    # where each record was seen: the client connection's id and port, the server's port where the hook knows it
    assert all(isinstance(r["connection_id"], str) and r["observer_hostname"] for r in records)
    ports = {(r["stage"], r["client_port"], r["server_port"]) for r in records}
    assert ports == {("ip", 50000, 443), ("dns", 5353, None), ("connect", 22, 443), ("tls", 50000, 443),
                     ("stream", 50000, 443), ("http", 50000, 80)}, ports


# ------------------------------------------------------------------ the replay corpus


@pytest.mark.parametrize("name", sorted(p.name for p in FLOWS.glob("*.mitm")))
def test_the_corpus_through_the_addon_and_replay_gives_records_that_fit_the_schema(name, gb, rules_dir, geo_dir):
    with open(FLOWS / name, "rb") as fo:
        flows = list(mio.FlowReader(fo).stream())
    for recorded in flows:
        flow = recorded.copy()
        flow.response = None
        _run(gb.requestheaders(flow))
    live = logged(gb)
    assert len(live) == len(flows)
    check(live)
    recorded = [(f.client_conn.id, f.client_conn.peername[1], f.request.port) for f in flows]
    assert [(r["connection_id"], r["client_port"], r["server_port"]) for r in live] == recorded
    done = subprocess.run(
        [sys.executable, "-m", "geoblock.tools.replay", str(FLOWS / name), "--json", "--rules", str(rules_dir),
         "--country-db", str(geo_dir / "GeoLite2-Country.mmdb"), "--asn-db", str(geo_dir / "GeoLite2-ASN.mmdb")],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    replayed = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(replayed) == len(flows)
    check(replayed)
    assert [(r["connection_id"], r["client_port"], r["server_port"]) for r in replayed] == recorded
    assert all(ipaddress.ip_address(r["server_ip"]) for r in replayed if r["server_ip"] is not None)
