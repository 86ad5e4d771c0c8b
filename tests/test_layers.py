"""Transparent-mode (stage "ip") and DNS-layer decisions, through the addon's hooks."""

from __future__ import annotations

import asyncio

import pytest
from mitmproxy.net.dns import response_codes, types as dns_types
from mitmproxy.proxy import mode_specs
from mitmproxy.test import tflow

from geoblock.core.decide import Facts, decide
from geoblock.core.names import normalize_ip
from geoblock.core.ruleset import Ruleset
from support.harness import logged


def last(gb) -> dict:
    return logged(gb)[-1]


def transparent_client(dest: str, src: str = "127.0.0.1"):
    client = tflow.tclient_conn()
    client.proxy_mode = mode_specs.ProxyMode.parse("transparent")
    client.peername = (src, 50000)
    client.sockname = (dest, 443)
    client.error = None
    return client


# --- stage "ip" ----------------------------------------------------------------------------------

def test_transparent_connection_to_a_blocked_network_is_closed_before_any_byte(gb):
    client = transparent_client("127.0.0.5")
    asyncio.run(gb.client_connected(client))
    assert client.error and "blocked-network" in client.error
    rec = last(gb)
    assert (rec["stage"], rec["action"], rec["rule"], rec["server_ip"]) == ("ip", "block", "blocked-network", "127.0.0.5")


@pytest.mark.parametrize("dest, form", [("64:ff9b::7f00:5", "nat64"), ("2002:7f00:5::1", "6to4"),
                                        ("::7f00:5", "ipv4-compatible")])
def test_transparent_connection_to_an_ipv6_address_carrying_a_blocked_one_is_closed(gb, dest, form):
    """The original destination is an IPv6 address a NAT64 gateway or tunnel takes to 127.0.0.5."""
    client = transparent_client(dest, src="2001:db8:1::2")
    asyncio.run(gb.client_connected(client))
    assert client.error and "blocked-network" in client.error
    rec = last(gb)
    assert (rec["stage"], rec["action"], rec["server_ip"], rec["server_ipv6"], rec["server_ipv6_form"]) == (
        "ip", "block", "127.0.0.5", dest, form)
    assert rec["client"] == "2001:db8:1::2"


def test_transparent_connection_elsewhere_waits_for_the_name(gb):
    client = transparent_client("127.0.0.2")  # SG: offshore, but no rule on the address alone blocks it
    asyncio.run(gb.client_connected(client))
    assert not client.error
    rec = last(gb)
    assert rec["action"] == "allow" and "the name will decide" in rec["reason"]


def test_explicit_proxy_connections_are_not_judged_on_the_proxy_address(gb):
    client = tflow.tclient_conn()
    client.proxy_mode = mode_specs.ProxyMode.parse("regular")
    client.sockname = ("127.0.0.5", 8080)
    client.error = None
    asyncio.run(gb.client_connected(client))
    assert not client.error and gb.log_path.read_text() == ""


def test_default_block_does_not_apply_before_the_name(tmp_path, geo_dir):
    (tmp_path / "policy.yaml").write_text("default: block\n")
    (tmp_path / "r.yaml").write_text("""rules:
  - {id: ok, action: allow, domains: [ok.test]}
  - {id: no-sg, action: block, countries: [SG]}
  - {id: sg-exception, action: allow, domains: [fine.test], countries: [SG]}
""")
    rs = Ruleset.load(str(tmp_path))
    ip = Facts("ip", server_ip=normalize_ip("127.0.0.1"), country="CN")
    assert decide(ip, rs).action == "allow"  # default block waits for the name
    sg = Facts("ip", server_ip=normalize_ip("127.0.0.2"), country="SG")
    v = decide(sg, rs)
    assert v.action == "allow" and "sg-exception could exempt" in v.reason  # the name may lift it
    tls = Facts("tls", names=("other.test",), server_ip=normalize_ip("127.0.0.2"), country="SG")
    assert decide(tls, rs).rule == "no-sg"


# --- stage "dns" ---------------------------------------------------------------------------------

def dns_flow(name: str, qtype: int = dns_types.A):
    f = tflow.tdnsflow()
    f.response = None
    f.request.questions[0].name = name
    f.request.questions[0].type = qtype
    f.client_conn.peername = ("127.0.0.1", 5353)
    return f


@pytest.mark.parametrize("name", ["binance.com", "API.BINANCE.COM.", "xn--bcher-kva.example"])
def test_blocked_name_gets_nxdomain(gb, name):
    f = dns_flow(name)
    asyncio.run(gb.dns_request(f))
    assert f.response is not None and f.response.response_code == response_codes.NXDOMAIN
    rec = last(gb)
    assert (rec["stage"], rec["action"], rec["qtype"]) == ("dns", "block", ["A"])


def test_allowed_name_is_left_to_the_resolver(gb):
    f = dns_flow("allowed.test")
    asyncio.run(gb.dns_request(f))
    assert f.response is None and last(gb)["action"] == "allow"


def test_location_rules_wait_for_the_connection(gb):
    # offshore-only.test is blocked only when its server is offshore: unknown at the DNS stage
    f = dns_flow("offshore-only.test")
    asyncio.run(gb.dns_request(f))
    assert f.response is None
    rec = last(gb)
    assert rec["action"] == "allow" and rec["rule"] is None


def test_a_resolved_answer_for_a_blocked_name_is_replaced(gb):
    f = dns_flow("okx.com")
    f.response = f.request.succeed([])  # as mitmproxy 11's resolver does before script hooks
    asyncio.run(gb.dns_request(f))
    assert f.response.response_code == response_codes.NXDOMAIN


def test_sinkhole_answers_blocked_names(gb):
    gb.tctx.configure(gb, geoblock_dns_sinkhole="192.0.2.53")
    f = dns_flow("www.binance.com")
    asyncio.run(gb.dns_request(f))
    (answer,) = f.response.answers
    assert str(answer.ipv4_address) == "192.0.2.53"
    f = dns_flow("www.binance.com", dns_types.AAAA)  # no v6 sinkhole: NXDOMAIN
    asyncio.run(gb.dns_request(f))
    assert f.response.response_code == response_codes.NXDOMAIN


def test_monitor_mode_answers_normally(gb):
    gb.tctx.configure(gb, geoblock_monitor=True)
    f = dns_flow("binance.com")
    asyncio.run(gb.dns_request(f))
    assert f.response is None and last(gb)["enforced"] is False


def test_a_failure_while_stripping_ech_applies_on_error(gb):
    class Unreadable:
        @property
        def answers(self):
            raise RuntimeError("answer section cannot be read")

    f = dns_flow("allowed.test", dns_types.HTTPS)
    f.response = Unreadable()
    asyncio.run(gb.dns_response(f))  # on_error: block (shipped policy): NXDOMAIN, not the answer
    assert f.response.response_code == response_codes.NXDOMAIN
    rec = last(gb)
    assert (rec["stage"], rec["action"]) == ("dns", "block") and rec["error"].startswith("RuntimeError")
