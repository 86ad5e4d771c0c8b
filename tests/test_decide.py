"""Matching and precedence, on real compiled rule files (shipped rules + tests/rules/extra.yaml) and a
real GeoIP test database (127.0.0.1 = CN home, .2 = SG, .3 = US AS64502, .4 = not placed, .5 = SG)."""

from pathlib import Path

import geoip2.models
import pytest

from geoblock.engine import Engine
from geoblock.core.decide import Facts, decide
from geoblock.enrich.geo import location_of
from geoblock.core.names import normalize_host, normalize_ip
from geoblock.mitm.observe import client_ip
from geoblock.core.rules import RuleError
from geoblock.core.ruleset import Ruleset


def judge(rs, geo, *names, server=None, client="127.0.0.1", stage="tls"):
    facts = Facts(stage, names=tuple(normalize_host(n) for n in names),
                  client_ip=normalize_ip(client) if client else None,
                  server_ip=normalize_ip(server) if server else None)
    return Engine(rs, geo).judge(facts)  # placed and decided as the proxy does


@pytest.mark.parametrize("name, action, rule", [
    ("binance.com", "block", "offshore-crypto-exchanges"),
    ("api.binance.com", "block", "offshore-crypto-exchanges"),
    ("WWW.Binance.COM.", "block", "offshore-crypto-exchanges"),
    ("okx.com:443", "block", "offshore-crypto-exchanges"),
    ("bitfinex.com", "block", "offshore-crypto-exchanges"),
    ("notbinance.com", "allow", None),
    ("binance.com.evil.test", "allow", None),
    ("pay.binance.com", "allow", "exact-allow"),          # exact allow beats the block
    ("www.pay.binance.com", "block", "offshore-crypto-exchanges"),  # "=name" is that name only
    ("bücher.example", "block", "idn-block"),
    ("xn--bcher-kva.example", "block", "idn-block"),
    ("shop.BÜCHER.example", "block", "idn-block"),
    ("wild.test", "allow", None),                          # "*.name" is subdomains only
    ("a.wild.test", "block", "below-only"),
])
def test_names_at_a_home_server(rs, geo, name, action, rule):
    v = judge(rs, geo, name, server="127.0.0.1")
    assert (v.action, v.rule) == (action, rule), v.reason


def test_reason_explains_the_match_and_the_override(rs, geo):
    v = judge(rs, geo, "api.binance.com", server="127.0.0.2")
    assert v.reason.startswith("api.binance.com is under binance.com, listed in rule offshore-crypto-exchanges")
    v = judge(rs, geo, "pay.binance.com", server="127.0.0.2")
    assert "overrides block rule offshore-crypto-exchanges" in v.reason
    v = judge(rs, geo, "example.org", server="127.0.0.1")
    assert v.reason == "no rule matches example.org; the default is allow"


@pytest.mark.parametrize("server, action, rule, offshore", [
    ("127.0.0.2", "block", "offshore-only", True),    # SG: offshore
    ("127.0.0.1", "allow", None, False),               # CN: home
    ("127.0.0.4", "log", "offshore-only", None),       # not placed: unknown_country = log
    (None, "log", "offshore-only", None),              # address unknown (name did not resolve)
])
def test_offshore_rule_depends_on_the_server_country(rs, geo, server, action, rule, offshore):
    v = judge(rs, geo, "offshore-only.test", server=server)
    assert (v.action, v.rule, v.offshore) == (action, rule, offshore), v.reason
    if action == "log":
        assert "unknown_country (log) applies" in v.reason


def test_network_rule_blocks_any_name_and_no_name(rs, geo):
    assert judge(rs, geo, "allowed.test", server="127.0.0.5").rule == "blocked-network"
    assert judge(rs, geo, server="127.0.0.5").action == "block"
    assert judge(rs, geo, server="::ffff:127.0.0.5").action == "block"  # IPv4-mapped
    assert judge(rs, geo, server="2001:db8:5::9").action == "block"
    # 127.0.0.6 is outside the network; it has no ASN either, so the ASN rule gives unknown_country
    v = judge(rs, geo, server="127.0.0.6")
    assert (v.action, v.rule) == ("log", "us-asn-log")


CARRYING_127_0_0_5 = {  # IPv6 addresses that reach 127.0.0.5 through a translator or tunnel
    "nat64": "64:ff9b::7f00:5",
    "nat64-local": "64:ff9b:1::7f00:5",
    "6to4": "2002:7f00:5::1",
    "teredo": "2001:0:4136:e378:8000:63bf:80ff:fffa",
    "ipv4-compatible": "::127.0.0.5",
}


@pytest.mark.parametrize("form", list(CARRYING_127_0_0_5))
def test_an_address_carried_in_ipv6_is_judged_like_the_ipv4_address(rs, geo, form):
    """The network rule, the country and the ASN of 127.0.0.5 apply to every IPv6 form that reaches it."""
    facts = Facts("connect", server_ip=normalize_ip(CARRYING_127_0_0_5[form]))
    geo.place(facts)
    assert (facts.country, facts.asn, facts.country_source) == ("SG", 64501, "geoip")
    v = decide(facts, rs)
    assert (v.action, v.rule) == ("block", "blocked-network"), v.reason
    assert f"server 127.0.0.5 (carried in {CARRYING_127_0_0_5[form].replace('127.0.0.5', '7f00:5')}, {form})" in v.reason


def test_a_name_rule_on_location_sees_the_carried_address(rs, geo):
    """offshore-only.test resolved (DNS64) to 64:ff9b::7f00:2 (SG) is offshore; to 64:ff9b::7f00:1 (CN) not."""
    v = judge(rs, geo, "offshore-only.test", server="64:ff9b::7f00:2")
    assert (v.action, v.rule, v.offshore) == ("block", "offshore-only", True), v.reason
    assert judge(rs, geo, "offshore-only.test", server="2002:7f00:1::").action == "allow"
    v = judge(rs, geo, "allowed.test", server="2001:0:4136:e378:8000:63bf:80ff:fffc")  # Teredo client 127.0.0.3
    assert (v.action, v.rule) == ("log", "us-asn-log") and "AS64502" in v.reason


def test_a_network_rule_on_the_ipv6_form_still_matches(tmp_path, geo):
    (tmp_path / "r.yaml").write_text("""rules:
  - {id: no-6to4, action: block, networks: ["2002::/16"]}
  - {id: no-nat64-site, action: block, networks: ["64:ff9b:1:abcd::/64"]}
""")
    rs6 = Ruleset.load(str(tmp_path))
    for server, rule in (("2002:7f00:1::", "no-6to4"), ("64:ff9b:1:abcd::7f00:1", "no-nat64-site")):
        v = judge(rs6, geo, "allowed.test", server=server)
        assert (v.action, v.rule) == ("block", rule), v.reason
    assert judge(rs6, geo, "allowed.test", server="127.0.0.1").action == "allow"
    assert judge(rs6, geo, "allowed.test", server="64:ff9b:1:abce::7f00:1").action == "allow"


def test_a_client_address_is_matched_as_it_came(rs, geo):
    """A client picks its own IPv6 address: one that spells an IPv4 address is not that IPv4 client
    (clients rules would otherwise be claimed by choosing an address). The record shows it as it came."""
    facts = Facts("connect", names=("allowed.test",), client_ip=client_ip(_Conn(("::127.0.0.9", 5000))),
                  server_ip=normalize_ip("127.0.0.1"))
    assert str(facts.client_ip) == "::7f00:9"
    geo.place(facts)
    assert decide(facts, rs).action == "allow"
    assert judge(rs, geo, "allowed.test", server="127.0.0.1", client="127.0.0.9").rule == "blocked-client"


class _Conn:
    def __init__(self, peername):
        self.peername = peername


# GeoIP answers that are not what they seem (tests/support/geodb.py ODD_PLACES).
@pytest.mark.parametrize("server, country, source, code, anycast", [
    ("127.0.0.20", None, None, "EU", False),                    # legacy continent code: not a country
    ("127.0.0.21", None, None, "AP", False),
    ("127.0.0.22", "US", "geoip-registered", None, False),      # only where the block is registered
    ("127.0.0.23", "SG", "geoip", None, True),                  # anycast
    ("127.0.0.2", "SG", "geoip", None, False),
])
def test_what_the_country_database_says_is_placed_as_it_is(geo, server, country, source, code, anycast):
    facts = Facts("tls", server_ip=normalize_ip(server))
    geo.place(facts)
    assert (facts.country, facts.country_source, facts.geoip_code, facts.anycast) == (country, source, code, anycast)


@pytest.mark.parametrize("record, expected", [
    ({"country": {"iso_code": "EU"}, "registered_country": {"iso_code": "DE"}}, ("DE", "geoip-registered", "EU", False)),
    ({"country": {"iso_code": "sg"}}, ("SG", "geoip", None, False)),
    ({"country": {"iso_code": "XK"}}, ("XK", "geoip", None, False)),  # Kosovo: MaxMind's code, in countries.py
    ({"country": {"iso_code": "ZZ"}, "traits": {"is_anycast": True}}, (None, None, "ZZ", True)),
    ({"traits": {"is_anycast": "yes"}}, (None, None, None, False)),  # only a true boolean says anycast
    ({"continent": {"code": "EU"}}, (None, None, None, False)),
    (None, (None, None, None, False)),  # an address the database does not hold
])
def test_location_of_a_country_record(record, expected):
    """location_of reads geoip2's model of the database record (as Geo builds it from a Country database)."""
    where = location_of(None if record is None else geoip2.models.Country(["en"], **record))
    assert (where.country, where.source, where.code, where.anycast) == expected


@pytest.mark.parametrize("server", ["127.0.0.20", "127.0.0.21"])
def test_a_legacy_continent_code_never_makes_a_server_offshore(rs, geo, server):
    """EU and AP are not countries: the server has no known country, so an offshore rule gives
    unknown_country (log here), never the rule's block as if EU were a foreign country."""
    v = judge_placed(rs, geo, "offshore-only.test", server=server)
    assert (v.action, v.rule, v.offshore) == ("log", "offshore-only", None), v.reason
    code = "EU" if server.endswith("20") else "AP"
    assert f"has no known country (the GeoIP database says {code}, which is not a country)" in v.reason


def test_a_registered_country_is_used_and_said_to_be_one(rs, geo):
    v = judge_placed(rs, geo, "offshore-only.test", server="127.0.0.22")
    assert (v.action, v.rule, v.offshore) == ("block", "offshore-only", True), v.reason
    assert "server 127.0.0.22 is registered in US (offshore" in v.reason


def test_a_home_country_written_as_a_legacy_code_is_refused(tmp_path):
    (tmp_path / "policy.yaml").write_text("home_countries: [EU]\n")
    with pytest.raises(RuleError, match=r"policy.yaml:1: home_countries: 'EU' is not an ISO 3166 alpha-2"):
        Ruleset.load(str(tmp_path))


def judge_placed(rs, geo, *names, server):
    facts = Facts("tls", names=tuple(normalize_host(n) for n in names), server_ip=normalize_ip(server))
    geo.place(facts)
    return decide(facts, rs)


def test_asn_rule_logs(rs, geo):
    v = judge(rs, geo, "allowed.test", server="127.0.0.3")
    assert (v.action, v.rule) == ("log", "us-asn-log")
    assert "AS64502" in v.reason


def test_client_rule(rs, geo):
    assert judge(rs, geo, "allowed.test", server="127.0.0.1", client="127.0.0.9").rule == "blocked-client"
    assert judge(rs, geo, "allowed.test", server="127.0.0.1", client="127.0.0.8").action == "allow"


@pytest.mark.parametrize("server, action", [("127.0.0.2", "log"), ("127.0.0.3", "log"), ("127.0.0.1", "allow")])
def test_review_pattern_rule_logs_offshore_trading_names(rs, geo, server, action):
    v = judge(rs, geo, "coin-exchange.test", server=server)
    assert v.action == action, v.reason
    if server == "127.0.0.2":
        assert v.rule == "review-offshore-trading-names"


def test_strictest_name_wins_across_sni_and_host(rs, geo):
    v = judge(rs, geo, "allowed.test", "binance.com", server="127.0.0.1")
    assert (v.action, v.name) == ("block", "binance.com")
    v = judge(rs, geo, "pay.binance.com", "binance.com", server="127.0.0.1")
    assert v.action == "block"


def test_no_names_and_no_rules_gives_default(rs, geo):
    v = judge(rs, geo, server="127.0.0.1")
    assert v.action == "allow" and v.rule is None


# --- precedence and unknown_country, on small rule directories --------------------------------

def ruleset(tmp_path: Path, policy: str, rules: str) -> Ruleset:
    (tmp_path / "policy.yaml").write_text(policy)
    (tmp_path / "r.yaml").write_text(rules)
    return Ruleset.load(str(tmp_path))


SAME_NAME = """rules:
  - {id: l, action: log, domains: [x.test]}
  - {id: b, action: block, domains: [x.test]}
  - {id: a, action: allow, domains: [x.test], countries: [CN]}
"""


def test_allow_beats_block_beats_log(tmp_path, geo):
    rs = ruleset(tmp_path, "home_countries: [CN]\n", SAME_NAME)
    assert judge(rs, geo, "x.test", server="127.0.0.1").rule == "a"   # CN: allow applies
    assert judge(rs, geo, "x.test", server="127.0.0.2").rule == "b"   # SG: allow does not apply
    assert judge(rs, geo, "x.test", server="127.0.0.4").rule == "b"   # unknown: allow never granted


@pytest.mark.parametrize("unknown, block_rule, log_rule", [
    ("block", "block", "log"),   # never stronger than the rule's own action
    ("log", "log", "log"),
    ("allow", "allow", "allow"),  # the rule does not apply: the default (allow)
])
def test_unknown_country_caps(tmp_path, geo, unknown, block_rule, log_rule):
    rs = ruleset(tmp_path, f"home_countries: [CN]\nunknown_country: {unknown}\n", """rules:
  - {id: b, action: block, domains: [b.test], offshore: true}
  - {id: l, action: log, domains: [l.test], countries: [SG]}
""")
    assert judge(rs, geo, "b.test", server="127.0.0.4").action == block_rule
    assert judge(rs, geo, "l.test", server=None).action == log_rule


def test_default_block(tmp_path, geo):
    rs = ruleset(tmp_path, "default: block\n", "rules:\n  - {id: ok, action: allow, domains: [ok.test]}\n")
    assert judge(rs, geo, "ok.test").action == "allow"
    assert judge(rs, geo, "other.test").action == "block"


def test_needs_server_ip_only_when_a_rule_could_use_it(rs, tmp_path):
    # the network and ASN rules have no name condition, so every name may need the address
    assert rs.nameless_need_server and rs.needs_server_ip(["binance.com"])
    named = ruleset(tmp_path, "home_countries: [CN]\n", """rules:
  - {id: b, action: block, domains: [b.test]}
  - {id: o, action: block, domains: [o.test], offshore: true}
""")
    assert not named.needs_server_ip(["b.test"])
    assert not named.needs_server_ip(["other.test"])
    assert named.needs_server_ip(["www.o.test"])


# --- an allow by name never lifts a block on where the server is or who the client is -----------

def test_allow_by_name_does_not_lift_a_network_block(rs, geo):
    # pay.binance.com has an exact allow; 127.0.0.5 is a blocked network. The Host header is chosen by
    # the client, so it must not open a blocked server.
    v = judge(rs, geo, "pay.binance.com", server="127.0.0.5", stage="http")
    assert (v.action, v.rule) == ("block", "blocked-network"), v.reason
    assert "allow rule exact-allow does not lift it" in v.reason


def test_allow_by_name_does_not_lift_a_client_block(rs, geo):
    v = judge(rs, geo, "pay.binance.com", server="127.0.0.1", client="127.0.0.9")
    assert (v.action, v.rule) == ("block", "blocked-client"), v.reason


def test_allow_that_constrains_the_server_lifts_a_location_block(tmp_path, geo):
    rs = ruleset(tmp_path, "home_countries: [CN]\n", """rules:
  - {id: no-sg, action: block, countries: [SG]}
  - {id: ok-name, action: allow, domains: [ok.test]}
  - {id: ok-name-in-sg, action: allow, domains: [fine.test], countries: [SG]}
""")
    assert judge(rs, geo, "ok.test", server="127.0.0.2").rule == "no-sg"
    v = judge(rs, geo, "fine.test", server="127.0.0.2")
    assert (v.action, v.rule) == ("allow", "ok-name-in-sg")
    assert "(overrides block rule no-sg)" in v.reason


def test_override_reason_names_every_lifted_rule(tmp_path, geo):
    rs = ruleset(tmp_path, "home_countries: [CN]\n", """rules:
  - {id: b1, action: block, domains: [x.test]}
  - {id: b2, action: block, domains: [a.x.test]}
  - {id: ok, action: allow, domains: [=a.x.test]}
""")
    v = judge(rs, geo, "a.x.test", server="127.0.0.1")
    assert v.rule == "ok" and "(overrides block rules b1, b2)" in v.reason
    assert v.reason.startswith("a.x.test is listed exactly (=a.x.test) in rule ok")


@pytest.mark.parametrize("policy, ech_action", [("allow", "allow"), ("log", "log"), ("block", "block")])
def test_ech_policy(tmp_path, geo, policy, ech_action):
    rs = ruleset(tmp_path, f"home_countries: [CN]\nech: {policy}\n", "rules:\n  - {id: b, action: block, domains: [b.test]}\n")
    facts = Facts("tls", names=("public.example",), server_ip=normalize_ip("127.0.0.1"), country="CN", ech=True,
                  sni="public.example")
    v = decide(facts, rs)
    assert v.action == ech_action and (v.rule == "policy:ech") == (policy != "allow")
    blocked = Facts("tls", names=("b.test",), ech=True)
    assert decide(blocked, rs).rule == "b"  # the rules' block stands whatever the ech policy


@pytest.mark.parametrize("policy", ["allow", "log", "block"])
def test_name_mismatch_policy(tmp_path, geo, policy):
    rs = ruleset(tmp_path, f"name_mismatch: {policy}\n", "rules:\n  - {id: b, action: block, domains: [b.test]}\n")
    facts = Facts("http", names=("a.test", "c.test"), mismatch="SNI a.test ≠ Host c.test")
    v = decide(facts, rs)
    assert v.action == policy
    if policy != "allow":
        assert v.rule == "policy:name-mismatch" and v.reason.startswith("SNI a.test ≠ Host c.test")


def test_ech_of_unit():
    """observe.ech_of: which encrypted-SNI extensions count as a hidden name."""
    from geoblock.mitm.observe import ech_of, name_under

    fronts = lambda n: name_under(n, frozenset({"cloudflare-ech.com"}))  # noqa: E731
    assert ech_of([(0, b""), (43, b"")], "a.test", fronts) is None
    grease = ech_of([(0xFE0D, b"")], "a.test", fronts)
    assert grease.extension == 0xFE0D and not grease.hides_name and "placeholder" in grease.why
    assert ech_of([(0xFE0D, b"")], None, fronts).hides_name
    assert ech_of([(0xFE0D, b"")], "x.cloudflare-ech.com", fronts).hides_name
    assert not ech_of([(0xFE0D, b"")], "notcloudflare-ech.com", fronts).hides_name  # a label, not a suffix
    for old in (0xFFCE, 0xFE08, 0xFE0C):
        seen = ech_of([(old, b""), (0xFE0D, b"")], "a.test", fronts)
        assert seen.hides_name and seen.extension == old
    assert ech_of([(0xFE07, b"")], "a.test", fronts) is None  # not an ECH code point


def test_ech_config_public_names_unit():
    from geoblock.mitm.observe import ech_config_public_names
    from support.tls_bytes import ech_config_list

    assert ech_config_public_names(ech_config_list("a.example", "b.example")) == ["a.example", "b.example"]
    other = b"\xfe\x0c\x00\x03abc"  # a configuration of another version: skipped, as clients skip it
    data = other + ech_config_list("a.example")[2:]
    assert ech_config_public_names(len(data).to_bytes(2, "big") + data) == ["a.example"]
    for bad in (b"", b"\x00\x05\xfe\x0d", ech_config_list("a.example")[:-3], b"\x00\x04\xfe\x0d\x00\x09"):
        with pytest.raises(ValueError):
            ech_config_public_names(bad)
