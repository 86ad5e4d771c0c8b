"""The transparent gateway, end to end, in real network namespaces (root only).

Topology (documentation address ranges, which exist only inside the namespaces):

    cli 192.0.2.2 / 2001:db8:1::2
     |  eth0 -- gb-in (the inbound interface)
    gw  192.0.2.1 / 2001:db8:1::1   scripts/gateway.sh up --in-iface gb-in   +   mitmdump --mode transparent
                                 (+ for the DNS tests: mitmdump --mode dns@192.0.2.1:53)
     +-- home 198.51.100.10 / 2001:db8:a::10                       (CN in the test GeoIP database)
     +-- off  203.0.113.10, .99 / 2001:db8:b::10, ::99             (SG: offshore; .99 and ::99 blocked by network)
              + a stub DNS resolver on 203.0.113.10:53 (the DNS mitmdump's upstream)

The gateway is set up by the project's own scripts/gateway.sh (--netns); mitmdump runs inside the
gateway namespace with every capability dropped. Clients are curl (--resolve NAME:PORT:IP keeps SNI and
Host = NAME without DNS) and Python ssl in the client namespace; servers count what reached them. Each
case checks the client side, the server side and the decision log.

A test skips only when it is not root or cannot create network namespaces. Teardown removes every
namespace (with the nft tables and processes inside) even when a test fails, and checks it did.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import ssl
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest

from support.decisions import records
from support import netns as ns
from support import sandbox
from support.sandbox import seccomp_prefix
from support.geodb import write_asn_db, write_country_db
from support.shipped import copy_shipped_rules
from support.netns import (BLOCKED4, BLOCKED6, CLIENT4, CLIENT6, GW_IN4, GW_IN_IFACE, HOME4, HOME6, OFFSHORE4,
                           OFFSHORE6, NsDnsStub, NsMitmdump, NsServer, Topology, UdpEcho, curl, gateway_sh,
                           gateway_topology, inside, ip_literal, tcp_connect, udp_exchange, unit_capabilities,
                           unit_command)

pytestmark = pytest.mark.e2e

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent

EXCLUDED4, EXCLUDED6 = "198.51.100.200", "2001:db8:a::200"  # home addresses the gateway lets bypass the proxy
UDP_OTHER = 4433  # a UDP port that is not QUIC's
# how the gateway of the main topology is set up (by the project's own script)
GATEWAY_ARGS = ("up", "--in-iface", GW_IN_IFACE, "--port", "8080",
                "--exclude", f"{EXCLUDED4}/32,{EXCLUDED6}/128", "--masquerade", "gb-home")

_RUN_PREFIXES: list[str] = []


@functools.lru_cache(maxsize=1)
def _unavailable() -> str | None:
    # probes once, at the first gateway test (not at collection); the units' system call filters are
    # applied to what the tests run as the units (support.sandbox)
    return ns.unavailable() or sandbox.unavailable()


def _skip_unless_possible() -> None:
    reason = _unavailable()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module", autouse=True)
def _nothing_left_behind():
    """After the whole module: none of this run's namespaces (nor the processes in them) is left."""
    yield
    left = [n for n in ns.namespaces() if any(n.startswith(p + "-") for p in _RUN_PREFIXES)]
    assert not left, f"namespaces left behind: {left}"


@contextlib.contextmanager
def topology(servers: tuple[str, ...] = ("home", "off")):
    topo = gateway_topology(servers)
    _RUN_PREFIXES.append(topo.prefix)
    with contextlib.ExitStack() as stack:
        try:
            yield topo, stack
        finally:
            stack.close()  # servers and mitmdump first, while the namespaces exist
            problems = topo.close()
            assert not problems, problems


def write_test_data(d: Path) -> tuple[Path, Path, Path]:
    """The shipped rules plus tests/rules/gateway.yaml; a country and an ASN database for the ranges."""
    rules = d / "rules"
    copy_shipped_rules(rules)
    shutil.copy(TESTS / "rules" / "gateway.yaml", rules / "zz-gateway.yaml")
    country = write_country_db(d / "GeoLite2-Country.mmdb", ns.GEO_PLACES)
    asn = write_asn_db(d / "GeoLite2-ASN.mmdb", ns.GEO_PLACES)
    return rules, country, asn


def proxy(topo: Topology, d: Path, unit: str, port: int, **options: object) -> NsMitmdump:
    """mitmdump in the gateway namespace, started with the unit's own command line (paths mapped into
    `d`), plus the test databases and `options` (as --set); its decision log is `.decisions`."""
    if not (d / "rules").exists():
        write_test_data(d)
    instance = str(port) if "@" in unit else ""
    if "@" in unit:  # the template's ExecStartPre: make the shared CA once, under a lock
        ns.sh(*unit_command(unit, d, d / "rules", instance, key="ExecStartPre"))
    argv = unit_command(unit, d, d / "rules", instance)
    m = NsMitmdump(topo, "gw", port, d, argv, {
        "geoblock_country_db": d / "GeoLite2-Country.mmdb", "geoblock_asn_db": d / "GeoLite2-ASN.mmdb",
        "geoblock_rdap": False, **options}, caps=unit_capabilities(unit), seccomp=seccomp_prefix(unit))
    m.decisions = d / "log" / ("decisions-%s.jsonl" % port if "@" in unit else "decisions.jsonl")
    assert str(m.decisions) in " ".join(argv)
    return m




def nft_counter(topo: Topology, chain: str, needle: str) -> int:
    text = topo.run("gw", "nft", "list", "chain", "inet", "geoblock", chain, check=True).stdout
    for line in text.splitlines():
        if needle in line:
            m = re.search(r"counter packets (\d+)", line)
            if m:
                return int(m.group(1))
    raise AssertionError(f"no counter with {needle!r} in chain {chain}:\n{text}")


@dataclass
class Gateway:
    topo: Topology
    proxy: NsMitmdump
    decisions: Path
    state: Path
    servers: dict[str, NsServer] = field(default_factory=dict)
    udp: dict[str, UdpEcho] = field(default_factory=dict)

    def reset(self) -> None:
        for s in (*self.servers.values(), *self.udp.values()):
            s.reset()

    def client_tls(self, host: str, sni: str | None, cafile: Path | None = None) -> ssl.SSLSocket:
        """A TLS connection from the client namespace to host:443 (SNI = `sni`, none when None)."""
        context = ssl.create_default_context(cafile=str(cafile) if cafile else None)
        if cafile is None or sni is None:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        sock = tcp_connect(self.topo.ns("cli"), host, 443)
        try:
            return context.wrap_socket(sock, server_hostname=sni)
        except BaseException:
            sock.close()
            raise


@pytest.fixture(scope="module")
def gw(tmp_path_factory, pki):
    _skip_unless_possible()
    d = tmp_path_factory.mktemp("gateway")
    with topology() as (topo, stack):
        g = Gateway(topo, None, None, d / "gateway.state")  # type: ignore[arg-type]
        topo.addr("home", "eth0", f"{EXCLUDED4}/24", f"{EXCLUDED6}/64")
        for name, role, host, tls in (
            ("home", "home", HOME4, True), ("home6", "home", HOME6, True),
            ("home-http", "home", HOME4, False), ("home6-http", "home", HOME6, False),
            ("off", "off", OFFSHORE4, True), ("off6", "off", OFFSHORE6, True),
            ("blocked", "off", BLOCKED4, True), ("blocked6", "off", BLOCKED6, True),
            ("blocked-http", "off", BLOCKED4, False),
            ("excluded", "home", EXCLUDED4, True), ("excluded6", "home", EXCLUDED6, True),
        ):
            server = NsServer(topo.ns(role), host, 443 if tls else 80, pki if tls else None)
            stack.callback(server.close)
            g.servers[name] = server
        for name, host, port in (("quic", HOME4, 443), ("quic6", HOME6, 443),
                                 ("other", HOME4, UDP_OTHER), ("other6", HOME6, UDP_OTHER)):
            echo = UdpEcho(topo.ns("home"), host, port)
            stack.callback(echo.close)
            g.udp[name] = echo
        gateway_sh(topo, *GATEWAY_ARGS, state=g.state)
        g.proxy = proxy(topo, d, "geoblock.service", 8080)
        g.decisions = g.proxy.decisions
        stack.callback(g.proxy.stop)
        g.proxy.start()
        yield g


@pytest.fixture(autouse=True)
def _reset(request):
    if "gw" in request.fixturenames:
        request.getfixturevalue("gw").reset()


V4_V6 = pytest.mark.parametrize("family", [4, 6])


def addr(family: int, v4: str, v6: str) -> str:
    return v4 if family == 4 else v6


# --- TLS ---------------------------------------------------------------------------------------

@V4_V6
def test_blocked_sni_gets_tls_alert_and_the_server_sees_nothing(gw, pki, family):
    home = addr(family, HOME4, HOME6)
    server = gw.servers["home" if family == 4 else "home6"]
    r = curl(gw.topo, "cli", "https://binance.com/", "--resolve", f"binance.com:443:{ip_literal(home)}",
             "--cacert", str(pki.ca_pem))
    assert r.returncode == 35 and "alert access denied" in r.stderr, r.stderr
    with pytest.raises(ssl.SSLError, match="ACCESS_DENIED"):
        gw.client_tls(home, "api.binance.com", pki.ca_pem)
    assert server.connections == 0
    client = addr(family, CLIENT4, CLIENT6)
    for sni in ("binance.com", "api.binance.com"):
        rec = records(gw.decisions, stage="tls", sni=sni, server_ip=home)[-1]
        assert (rec["action"], rec["rule"], rec["enforced"], rec["country"], rec["client"]) == (
            "block", "offshore-crypto-exchanges", True, "CN", client)
    # the connection itself was judged (and allowed) on its destination first, before any byte
    rec = records(gw.decisions, stage="ip", server_ip=home)[-1]
    assert (rec["action"], rec["client"], rec["country"]) == ("allow", client, "CN")


@V4_V6
def test_allowed_name_passes_through_with_the_servers_own_certificate(gw, pki, family):
    home = addr(family, HOME4, HOME6)
    server = gw.servers["home" if family == 4 else "home6"]
    # curl trusts only the test CA: it succeeds only with the server's own certificate
    r = curl(gw.topo, "cli", "https://allowed.test/", "--resolve", f"allowed.test:443:{ip_literal(home)}",
             "--cacert", str(pki.ca_pem))
    assert r.returncode == 0 and r.stdout.startswith("HTTP/1.1 200"), r.stderr
    assert f"hello from {home}" in r.stdout
    with gw.client_tls(home, "www.allowed.test", pki.ca_pem) as tls:
        assert tls.getpeercert(binary_form=True) == pki.cert_der
    assert server.connections == 2 and server.tls_failures == 0
    assert server.requests == [("allowed.test", "/")]
    rec = records(gw.decisions, stage="tls", sni="www.allowed.test", server_ip=home)[-1]
    assert (rec["action"], rec["rule"], rec["country"], rec["offshore"]) == ("allow", None, "CN", False)


def test_offshore_rule_by_name_home_ip_passes_offshore_ip_is_blocked(gw, pki):
    home, off = gw.servers["home"], gw.servers["off"]
    r = curl(gw.topo, "cli", "https://offshore-only.test/", "--resolve", f"offshore-only.test:443:{HOME4}",
             "--cacert", str(pki.ca_pem))
    assert r.returncode == 0 and f"hello from {HOME4}" in r.stdout, r.stderr
    assert home.connections == 1 and home.requests == [("offshore-only.test", "/")]
    r = curl(gw.topo, "cli", "https://offshore-only.test/", "--resolve", f"offshore-only.test:443:{OFFSHORE4}",
             "--cacert", str(pki.ca_pem))
    assert r.returncode == 35 and "alert access denied" in r.stderr, r.stderr
    with pytest.raises(ssl.SSLError, match="ACCESS_DENIED"):
        gw.client_tls(OFFSHORE6, "offshore-only.test", pki.ca_pem)
    assert off.connections == 0 and gw.servers["off6"].connections == 0
    at_home = records(gw.decisions, stage="tls", sni="offshore-only.test", server_ip=HOME4)[-1]
    assert (at_home["action"], at_home["country"], at_home["offshore"]) == ("allow", "CN", False)
    for server_ip in (OFFSHORE4, OFFSHORE6):
        offshore = records(gw.decisions, stage="tls", sni="offshore-only.test", server_ip=server_ip)[-1]
        assert (offshore["action"], offshore["rule"], offshore["country"], offshore["offshore"]) == (
            "block", "offshore-only", "SG", True)


@V4_V6
def test_offshore_ip_rule_without_sni_closes_before_any_byte(gw, pki, family):
    blocked = addr(family, BLOCKED4, BLOCKED6)
    server = gw.servers["blocked" if family == 4 else "blocked6"]
    r = curl(gw.topo, "cli", "-k", f"https://{ip_literal(blocked)}/")
    assert r.returncode in (35, 56) and r.stdout == "", (r.returncode, r.stderr)  # closed, no TLS answer
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        gw.client_tls(blocked, None)
    if family == 4:
        r = curl(gw.topo, "cli", f"http://{blocked}/", "-H", "Host: allowed.test")
        assert r.returncode in (52, 56) and r.stdout == "", (r.returncode, r.stderr)  # empty reply / reset
        assert gw.servers["blocked-http"].connections == 0
    assert server.connections == 0
    recs = records(gw.decisions, stage="ip", server_ip=blocked)
    assert len(recs) >= 2
    assert {(r["action"], r["rule"], r["country"], r["enforced"]) for r in recs} == {
        ("block", "blocked-offshore-network", "SG", True)}
    # decided at connect, so no later stage ever saw these connections
    assert records(gw.decisions, stage="tls", server_ip=blocked) == []


@V4_V6
def test_no_sni_to_an_allowed_ip_is_decided_on_the_ip_and_passes(gw, pki, family):
    off = addr(family, OFFSHORE4, OFFSHORE6)
    server = gw.servers["off" if family == 4 else "off6"]
    with gw.client_tls(off, None) as tls:
        assert tls.getpeercert(binary_form=True) == pki.cert_der
    assert server.connections == 1
    rec = records(gw.decisions, stage="tls", server_ip=off)[-1]
    assert (rec["action"], rec["sni"], rec["country"], rec["offshore"]) == ("allow", None, "SG", True)


# --- plain HTTP --------------------------------------------------------------------------------

@V4_V6
def test_blocked_host_on_plain_http_gets_451_and_the_server_sees_nothing(gw, family):
    home = addr(family, HOME4, HOME6)
    server = gw.servers["home-http" if family == 4 else "home6-http"]
    r = curl(gw.topo, "cli", "http://www.okx.com/", "--resolve", f"www.okx.com:80:{ip_literal(home)}")
    assert r.stdout.startswith("HTTP/1.1 451"), r.stdout[:200]
    assert "rel=\"blocked-by\"" in r.stdout and "offshore-crypto-exchanges" in r.stdout
    assert server.connections == 0
    rec = records(gw.decisions, stage="http", host="www.okx.com", server_ip=home)[-1]
    assert (rec["action"], rec["rule"], rec["enforced"]) == ("block", "offshore-crypto-exchanges", True)
    r = curl(gw.topo, "cli", "http://allowed.test/x", "--resolve", f"allowed.test:80:{ip_literal(home)}")
    assert r.stdout.startswith("HTTP/1.1 200") and f"hello from {home}" in r.stdout
    assert server.connections == 1 and server.requests == [("allowed.test", "/x")]
    assert records(gw.decisions, stage="http", host="allowed.test", server_ip=home)[-1]["action"] == "allow"


# --- DNS on the gateway ---------------------------------------------------------------------------

@dataclass
class GatewayDns:
    proxy: NsMitmdump
    stub: NsDnsStub
    decisions: Path


@pytest.fixture(scope="module")
def gw_dns(gw, tmp_path_factory):
    """geoblock's DNS layer on the gateway's client-facing address (port 53), beside the transparent
    mitmdump of `gw`: the command line of the shipped geoblock-dns.service with its listen address set
    to the gateway's (GEOBLOCK_DNS_LISTEN=192.0.2.1:53, as its comment says for a box with a local
    resolver), forwarding to a stub resolver in the offshore namespace. Its own decision log."""
    d = tmp_path_factory.mktemp("gateway-dns")
    write_test_data(d)
    argv = unit_command("geoblock-dns.service", d, d / "rules")
    i = argv.index("--mode")
    assert argv[i + 1] == "dns@53", argv
    argv[i + 1] = f"dns@{GW_IN4}:53"
    stub = NsDnsStub(gw.topo.ns("off"), OFFSHORE4, answer=HOME4)
    try:
        m = NsMitmdump(gw.topo, "gw", 53, d, argv, {
            "geoblock_country_db": d / "GeoLite2-Country.mmdb", "geoblock_asn_db": d / "GeoLite2-ASN.mmdb",
            "geoblock_rdap": False, "dns_name_servers": OFFSHORE4, "dns_use_hosts_file": False},
            caps=unit_capabilities("geoblock-dns.service"), seccomp=seccomp_prefix("geoblock-dns.service"))
        try:
            m.start()
            yield GatewayDns(m, stub, d / "log" / "decisions-dns.jsonl")
        finally:
            m.stop()
    finally:
        stub.close()


def ask_gateway(gw, name: str, rdtype: str = "A") -> dns.message.Message:
    """One DNS question over UDP from the client namespace to the gateway's address."""
    with inside(gw.topo.ns("cli")):  # the socket dnspython opens stays in the client namespace
        return dns.query.udp(dns.message.make_query(name, rdtype), GW_IN4, port=53, timeout=5)


def test_dns_through_the_gateway_blocks_by_name_and_answers_the_rest(gw, gw_dns):
    gw_dns.stub.reset()
    blocked = ask_gateway(gw, "www.binance.com")
    assert blocked.rcode() == dns.rcode.NXDOMAIN and not blocked.answer
    allowed = ask_gateway(gw, "allowed.test")
    assert allowed.rcode() == dns.rcode.NOERROR
    assert [r.address for r in allowed.answer[0]] == [HOME4]  # the stub's answer, passed through
    assert "allowed.test" in gw_dns.stub.seen
    rec = records(gw_dns.decisions, stage="dns", name="www.binance.com")[-1]
    assert (rec["action"], rec["rule"], rec["enforced"], rec["client"]) == (
        "block", "offshore-crypto-exchanges", True, CLIENT4)
    rec = records(gw_dns.decisions, stage="dns", name="allowed.test")[-1]
    assert (rec["action"], rec["rule"], rec["client"]) == ("allow", None, CLIENT4)
    # the DNS questions never reach the transparent proxy's log
    assert records(gw.decisions, stage="dns") == []


def test_dns_mitmdump_keeps_only_the_capability_to_bind_port_53(gw_dns):
    caps = ns.capabilities(gw_dns.proxy.pid)
    net_bind_service = 1 << 10
    assert caps["CapEff"] == caps["CapPrm"] == caps["CapBnd"] == net_bind_service, caps
    assert ns.seccomp_mode(gw_dns.proxy.pid) == 2  # under the unit's system call filter


# --- what the gateway script set up --------------------------------------------------------------

@V4_V6
def test_quic_is_dropped_other_udp_passes(gw, family):
    home = addr(family, HOME4, HOME6)
    quic, other = gw.udp["quic" if family == 4 else "quic6"], gw.udp["other" if family == 4 else "other6"]
    before = nft_counter(gw.topo, "forward", "udp dport 443")
    assert udp_exchange(gw.topo.ns("cli"), home, 443, timeout=0.5) is None
    assert udp_exchange(gw.topo.ns("cli"), home, UDP_OTHER) == b"ping"
    assert quic.datagrams == 0 and other.datagrams == 1
    assert nft_counter(gw.topo, "forward", "udp dport 443") == before + 1
    # forwarded (not proxied) traffic to the home network is masqueraded (--masquerade gb-home)
    assert other.peers == [addr(family, "198.51.100.1", "2001:db8:a::1")]


@V4_V6
def test_quic_to_an_excluded_destination_is_not_dropped(gw, family):
    excluded = addr(family, EXCLUDED4, EXCLUDED6)
    echo = UdpEcho(gw.topo.ns("home"), excluded, 443)
    try:
        assert udp_exchange(gw.topo.ns("cli"), excluded, 443) == b"ping"
    finally:
        echo.close()


@V4_V6
def test_excluded_destination_bypasses_the_proxy(gw, pki, family):
    excluded = addr(family, EXCLUDED4, EXCLUDED6)
    server = gw.servers["excluded" if family == 4 else "excluded6"]
    # binance.com would be blocked through the proxy; to an excluded network it goes straight through
    with gw.client_tls(excluded, "binance.com", pki.ca_pem) as tls:
        assert tls.getpeercert(binary_form=True) == pki.cert_der
    assert server.connections == 1
    assert records(gw.decisions, server_ip=excluded) == []


def test_the_proxy_port_dialled_directly_is_refused(gw):
    for host in (GW_IN4, ns.GW_IN6):
        with pytest.raises(ConnectionRefusedError):
            tcp_connect(gw.topo.ns("cli"), host, 8080, timeout=3).close()
    assert nft_counter(gw.topo, "input", "reject with tcp reset") >= 2


def test_mitmdump_runs_without_any_capability(gw):
    caps = ns.capabilities(gw.proxy.pid)
    assert caps["CapEff"] == 0 and caps["CapPrm"] == 0 and caps["CapBnd"] == 0, caps
    assert ns.seccomp_mode(gw.proxy.pid) == 2  # under the unit's system call filter


def test_decision_log_has_a_record_per_stage_with_the_real_client(gw, pki):
    curl(gw.topo, "cli", "https://allowed.test/", "--resolve", f"allowed.test:443:{HOME4}", "--cacert", str(pki.ca_pem))
    recs = records(gw.decisions)
    assert {r["stage"] for r in recs} == {"ip", "tls", "http"}
    # the gateway redirects, it does not masquerade: geoblock sees each client's own address
    assert {r["client"] for r in recs} == {CLIENT4, CLIENT6}
    assert len({r["ruleset"] for r in recs}) == 1 and all(r["geoip_build"] for r in recs)


def test_rerunning_the_script_on_a_live_gateway_changes_nothing(gw, pki):
    before = gw.topo.run("gw", "nft", "-s", "list", "ruleset", check=True).stdout
    sysctls = gw.topo.run("gw", "sysctl", "net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding",
                          f"net.ipv4.conf.{GW_IN_IFACE}.send_redirects", check=True).stdout
    state = gw.state.read_text()
    gateway_sh(gw.topo, *GATEWAY_ARGS, state=gw.state)
    assert gw.topo.run("gw", "nft", "-s", "list", "ruleset", check=True).stdout == before
    assert gw.topo.run("gw", "sysctl", "net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding",
                       f"net.ipv4.conf.{GW_IN_IFACE}.send_redirects", check=True).stdout == sysctls
    assert "= 1\n" in sysctls and sysctls.endswith("= 0\n")
    assert gw.state.read_text() == state  # the values from before the first run are kept
    r = curl(gw.topo, "cli", "https://allowed.test/", "--resolve", f"allowed.test:443:{HOME4}", "--cacert", str(pki.ca_pem))
    assert r.returncode == 0


# --- the script on its own (a scratch namespace) -------------------------------------------------

SYSCTLS = ("net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding", "net.ipv4.conf.all.send_redirects",
           "net.ipv4.conf.eth1.send_redirects")


def test_gateway_script_dry_run_up_twice_down(tmp_path):
    _skip_unless_possible()
    topo = Topology()
    _RUN_PREFIXES.append(topo.prefix)
    try:
        topo.add("gw")
        topo.add("peer")
        topo.link("gw", "eth1", "peer", "eth0")

        def sysctls() -> str:
            return topo.run("gw", "sysctl", *SYSCTLS, check=True).stdout

        def tables() -> str:
            return topo.run("gw", "nft", "list", "tables", check=True).stdout

        original = sysctls()
        state = tmp_path / "state"
        # --dry-run: prints a ruleset nft accepts, changes nothing
        r = gateway_sh(topo, "up", "--in-iface", "eth1", "--workers", "3", "--port", "9000", "--dry-run",
                       "--exclude", "10.0.0.0/8,fc00::/7", state=state)
        assert "redirect to :numgen inc mod 3 map { 0 : 9000, 1 : 9001, 2 : 9002 }" in r.stdout
        assert "elements = { 10.0.0.0/8 }" in r.stdout and "elements = { fc00::/7 }" in r.stdout
        assert "udp dport 443 counter drop" in r.stdout
        assert r.stdout.startswith("# geoblock") and "table inet geoblock\ndelete table inet geoblock\n" in r.stdout
        (tmp_path / "dry.nft").write_text(r.stdout)
        topo.run("gw", "nft", "-c", "-f", str(tmp_path / "dry.nft"), check=True)
        assert tables() == "" and sysctls() == original and not state.exists()
        r = gateway_sh(topo, "up", "--in-iface", "eth1", "--dry-run", "--no-drop-quic", state=state)
        assert "udp dport 443" not in r.stdout and "redirect to :8080 " in r.stdout
        assert "masquerade" not in r.stdout
        r = gateway_sh(topo, "up", "--in-iface", "eth1", "--dry-run", "--masquerade", "eth9", state=state)
        assert 'iifname { "eth1" } oifname { "eth9" } counter masquerade' in r.stdout
        (tmp_path / "dry.nft").write_text(r.stdout)
        topo.run("gw", "nft", "-c", "-f", str(tmp_path / "dry.nft"), check=True)

        # up, twice: one table, the same ruleset, the original values kept in the state file
        gateway_sh(topo, "up", "--in-iface", "eth1", "--exclude", "10.0.0.0/8", state=state)
        first = topo.run("gw", "nft", "-s", "list", "ruleset", check=True).stdout
        saved = state.read_text()
        gateway_sh(topo, "up", "--in-iface", "eth1", "--exclude", "10.0.0.0/8", state=state)
        assert topo.run("gw", "nft", "-s", "list", "ruleset", check=True).stdout == first
        assert tables() == "table inet geoblock\n"
        assert state.read_text() == saved
        assert sysctls().splitlines() == [f"{k} = {v}" for k, v in zip(SYSCTLS, "1100", strict=False)]
        # another table of someone else's is left alone by up and down
        topo.run("gw", "nft", "add", "table", "inet", "other", check=True)
        gateway_sh(topo, "up", "--in-iface", "eth1", "--workers", "2", state=state)
        assert "numgen inc mod 2" in topo.run("gw", "nft", "list", "table", "inet", "geoblock", check=True).stdout

        # down: exactly what up added goes; twice is fine
        gateway_sh(topo, "down", state=state)
        assert tables() == "table inet other\n" and sysctls() == original and not state.exists()
        r = gateway_sh(topo, "down", state=state)
        assert "no table inet geoblock" in r.stdout and tables() == "table inet other\n"

        # refusals change nothing
        r = gateway_sh(topo, "up", "--in-iface", "nosuch0", state=state, check=False)
        assert r.returncode == 1 and "no interface nosuch0" in r.stderr
        r = gateway_sh(topo, "up", "--in-iface", "eth1", "--exclude", "300.1.2.3/8", state=state, check=False)
        assert r.returncode == 2 and "bad network in --exclude: '300.1.2.3/8'" in r.stderr
        for bad in (["--port", "0"], ["--workers", "0"], ["--tcp-ports", "80,x"], ["--bogus"]):
            r = gateway_sh(topo, "up", "--in-iface", "eth1", *bad, state=state, check=False)
            assert r.returncode == 2, (bad, r.stderr)
        r = gateway_sh(topo, "up", state=state, check=False)
        assert r.returncode == 2 and "--in-iface" in r.stderr
        assert tables() == "table inet other\n" and sysctls() == original and not state.exists()
    finally:
        problems = topo.close()
        assert not problems, problems


DRY_RUN_REFUSALS = [  # (arguments of up, exit status, what the message names)
    (["--in-iface", "nosuch0"], 1, "no interface nosuch0"),
    (["--in-iface", "eth1,nosuch1"], 1, "no interface nosuch1"),
    (["--in-iface", "eth1", "--exclude", "10.0.0.0/33"], 2, "bad network in --exclude: '10.0.0.0/33'"),
    (["--in-iface", "eth1", "--exclude", "10.0.0.0/8,300.1.2.3/8"], 2, "bad network in --exclude: '300.1.2.3/8'"),
    (["--in-iface", "eth1", "--exclude", "fd00::/129"], 2, "bad network in --exclude: 'fd00::/129'"),
    # a form the script lets through and nftables refuses (nine groups): named all the same
    (["--in-iface", "eth1", "--exclude", "fd00::/8,1:2:3:4:5:6:7:8:9/64"], 1,
     "bad network in --exclude: '1:2:3:4:5:6:7:8:9/64'"),
]


def test_dry_run_refuses_what_up_refuses(tmp_path):
    """`up --dry-run` checks what `up` would apply (the interfaces, the networks, the ruleset with
    `nft -c`): each bad value gets the same exit status and message from both, names the value, prints
    no ruleset and changes nothing."""
    _skip_unless_possible()
    topo = Topology()
    _RUN_PREFIXES.append(topo.prefix)
    try:
        topo.add("gw")
        topo.add("peer")
        topo.link("gw", "eth1", "peer", "eth0")
        original = topo.run("gw", "sysctl", *SYSCTLS, check=True).stdout
        state = tmp_path / "state"
        for args, status, message in DRY_RUN_REFUSALS:
            dry = gateway_sh(topo, "up", *args, "--dry-run", state=state, check=False)
            up = gateway_sh(topo, "up", *args, state=state, check=False)
            for r in (dry, up):
                assert (r.returncode, r.stdout) == (status, ""), (args, r.returncode, r.stdout, r.stderr)
                assert message in r.stderr, (args, r.stderr)
            assert dry.stderr == up.stderr, args
            assert topo.run("gw", "nft", "list", "tables", check=True).stdout == ""
            assert topo.run("gw", "sysctl", *SYSCTLS, check=True).stdout == original and not state.exists()
        # the good values of the same runs pass the dry run, checked by nftables
        r = gateway_sh(topo, "up", "--in-iface", "eth1", "--exclude", "10.0.0.0/8,fd00::/8", "--dry-run", state=state)
        assert r.returncode == 0 and r.stderr == "" and "elements = { fd00::/8 }" in r.stdout
    finally:
        problems = topo.close()
        assert not problems, problems


def unit_bounding_set(unit: str) -> list[str]:
    """The capabilities of the unit's CapabilityBoundingSet= (every line), in setpriv's spelling."""
    caps: list[str] = []
    for line in (REPO / "deploy" / "systemd" / unit).read_text().splitlines():
        if line.startswith("CapabilityBoundingSet="):
            caps += [c.removeprefix("CAP_").lower() for c in line.split("=", 1)[1].split()]
    return caps


NOBODY = 65534  # the unprivileged user standing in for the unit's DynamicUser=


def test_gateway_unit_needs_no_capability_but_net_admin(tmp_path):
    """scripts/gateway.sh up and down as geoblock-gateway.service runs them: an unprivileged user (its
    DynamicUser=) holding the unit's one capability, CAP_NET_ADMIN (AmbientCapabilities=, and nothing
    else in the bounding set), no new privileges, its system call filter and socket families, a
    read-only file system but for the state directory (ProtectSystem=strict, RuntimeDirectory=, owned by
    that user) and a private /tmp, inside a scratch namespace. Without the capability `up` refuses."""
    _skip_unless_possible()
    text = (REPO / "deploy" / "systemd" / "geoblock-gateway.service").read_text()
    assert "\nDynamicUser=yes\n" in text
    caps = unit_bounding_set("geoblock-gateway.service")
    assert caps == ["net_admin"] == list(unit_capabilities("geoblock-gateway.service")), caps
    topo = Topology()
    _RUN_PREFIXES.append(topo.prefix)
    run_dir = tmp_path / "run"
    (run_dir / "geoblock-gateway").mkdir(parents=True)  # RuntimeDirectory=geoblock-gateway, the user's
    os.chown(run_dir / "geoblock-gateway", NOBODY, NOBODY)
    seccomp = seccomp_prefix("geoblock-gateway.service")  # SystemCallFilter=, RestrictAddressFamilies= ...
    script = REPO / "scripts" / "gateway.sh"

    def as_unit(capabilities: list[str], *args: str) -> subprocess.CompletedProcess[str]:
        keep = "".join(f",+{c}" for c in capabilities)
        # in a mount namespace of its own: `run_dir` as /run (the state directory survives between up
        # and down, as RuntimeDirectoryPreserve= keeps it), the rest read-only, an empty private /tmp.
        # The checkout is mounted again over the empty /tmp where it lies under /tmp (a CI clone may).
        mounts = (f'mount --make-rprivate / && mount --bind {run_dir} /run && mkdir -p /run/.checkout && '
                  f'mount --bind {REPO} /run/.checkout && mount -o remount,bind,ro / && '
                  f'mount -t tmpfs tmpfs /tmp && mkdir -p {REPO} && mount --bind /run/.checkout {REPO} && '
                  'exec "$@"')
        return topo.run("gw", "unshare", "--mount", "sh", "-c", mounts, "sh",
                        "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--no-new-privs",
                        f"--bounding-set=-all{keep}", f"--inh-caps=-all{keep}", f"--ambient-caps=-all{keep}", "--",
                        *seccomp, "bash", str(script), *args, "--state", "/run/geoblock-gateway/host.state")

    try:
        topo.add("gw")
        topo.add("peer")
        topo.link("gw", "eth1", "peer", "eth0")
        original = topo.run("gw", "sysctl", *SYSCTLS, check=True).stdout
        r = as_unit([], "up", "--in-iface", "eth1")
        assert r.returncode == 1 and "up needs root or CAP_NET_ADMIN" in r.stderr, (r.returncode, r.stderr)
        # the filter is in force: an Internet socket (not in RestrictAddressFamilies=) is refused
        r = topo.run("gw", *seccomp, "bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9")
        assert r.returncode != 0 and "Address family not supported" in r.stderr, r.stderr
        r = as_unit(caps, "up", "--in-iface", "eth1", "--exclude", "10.0.0.0/8")
        assert r.returncode == 0, r.stderr
        assert "redirect to :8080" in topo.run("gw", "nft", "list", "table", "inet", "geoblock", check=True).stdout
        assert topo.run("gw", "sysctl", *SYSCTLS, check=True).stdout.splitlines() == [
            f"{k} = {v}" for k, v in zip(SYSCTLS, "1100", strict=True)]
        state = run_dir / "geoblock-gateway" / "host.state"
        assert state.exists() and state.stat().st_uid == NOBODY
        r = as_unit(caps, "up", "--in-iface", "eth1", "--dry-run")  # nft -c works with the capability too
        assert r.returncode == 0 and r.stderr == "", r.stderr
        r = as_unit(caps, "down")
        assert r.returncode == 0, r.stderr
        assert topo.run("gw", "nft", "list", "tables", check=True).stdout == ""
        assert topo.run("gw", "sysctl", *SYSCTLS, check=True).stdout == original and not state.exists()
    finally:
        problems = topo.close()
        assert not problems, problems


# --- workers -------------------------------------------------------------------------------------

def test_workers_share_the_load_and_all_enforce(tmp_path, pki):
    _skip_unless_possible()
    workers, rounds = 2, 12
    with topology(("home",)) as (topo, stack):
        server = NsServer(topo.ns("home"), HOME4, 443, pki)
        stack.callback(server.close)
        gateway_sh(topo, "up", "--in-iface", GW_IN_IFACE, "--port", "8080", "--workers", str(workers),
                   state=tmp_path / "gateway.state")
        logs = []
        for n in range(workers):
            worker = proxy(topo, tmp_path, "geoblock@.service", 8080 + n)
            stack.callback(worker.stop)
            worker.start()
            logs.append(worker.decisions)
        context = ssl.create_default_context(cafile=str(pki.ca_pem))
        # (not interleaved: round robin would then send every allowed one to the same worker)
        for _ in range(rounds):
            with context.wrap_socket(tcp_connect(topo.ns("cli"), HOME4, 443), server_hostname="allowed.test") as tls:
                assert tls.getpeercert(binary_form=True) == pki.cert_der
        for _ in range(rounds):
            with pytest.raises(ssl.SSLError, match="ACCESS_DENIED"):
                sock = tcp_connect(topo.ns("cli"), HOME4, 443)
                with contextlib.closing(sock):
                    context.wrap_socket(sock, server_hostname="binance.com")
        assert server.connections == rounds  # only the allowed ones reached it
        allowed = [len(records(log, stage="tls", sni="allowed.test", action="allow")) for log in logs]
        blocked = [len(records(log, stage="tls", sni="binance.com", action="block")) for log in logs]
        assert sum(allowed) == rounds and sum(blocked) == rounds
        assert all(n > 0 for n in allowed), allowed  # every worker handled some
        assert all(n > 0 for n in blocked), blocked  # and every worker enforces
        print(f"\nper worker: allowed {allowed}, blocked {blocked}")
        # each worker serves its own status and metrics endpoint, at 127.0.0.1:1<port> (the unit's default)
        for n, log in enumerate(logs):
            r = topo.run("gw", "curl", "-sS", "--max-time", "10", f"http://127.0.0.1:1{8080 + n}/status")
            status = json.loads(r.stdout)
            assert status["decision_log"]["path"] == str(log) and status["healthy"] is True
            assert status["decision_log"]["written"] == len(records(log)) > 0

        # a worker that is down: the connections nftables gives it are refused (fail closed), never
        # forwarded around geoblock; the others still work
        worker.stop()
        server.reset()
        outcomes = []
        for _ in range(2 * workers):
            try:
                with context.wrap_socket(tcp_connect(topo.ns("cli"), HOME4, 443), server_hostname="allowed.test"):
                    outcomes.append("ok")
            except ConnectionRefusedError:
                outcomes.append("refused")
        assert outcomes.count("refused") == 2 and outcomes.count("ok") == 2 * workers - 2, outcomes
        assert server.connections == outcomes.count("ok")


# --- interception --------------------------------------------------------------------------------

def test_intercept_blocked_sni_gets_the_451_page_over_tls(tmp_path, pki):
    """geoblock_intercept on the gateway, its CA trusted by the client: a blocked SNI gets the 451 page
    over TLS (mitmproxy's certificate for the name), whatever the Host of the request; the server sees
    nothing."""
    _skip_unless_possible()
    with topology(("home",)) as (topo, stack):
        server = NsServer(topo.ns("home"), HOME4, 443, pki)
        stack.callback(server.close)
        gateway_sh(topo, "up", "--in-iface", GW_IN_IFACE, "--port", "8080", state=tmp_path / "gateway.state")
        m = proxy(topo, tmp_path, "geoblock.service", 8080, geoblock_intercept=True)
        stack.callback(m.stop)
        m.start()
        ca = tmp_path / "state" / "mitmproxy" / "mitmproxy-ca-cert.pem"
        r = curl(topo, "cli", "https://binance.com/", "--resolve", f"binance.com:443:{HOME4}", "--cacert", str(ca),
                 "-H", "Host: allowed.test", "--http1.1")
        assert r.stdout.startswith("HTTP/1.1 451 Unavailable For Legal Reasons"), r.stdout + r.stderr
        assert "<strong>binance.com</strong>" in r.stdout and "<code>offshore-crypto-exchanges</code>" in r.stdout
        assert server.connections == 0
        rec = records(m.decisions, stage="tls", sni="binance.com")[-1]
        assert (rec["action"], rec["enforced"], rec["client"]) == ("block", True, CLIENT4)
        rec = records(m.decisions, stage="http", host="allowed.test")[-1]
        assert (rec["action"], rec["blocked_at"], rec["server_ip"]) == ("block", "tls", HOME4)


# --- teardown ------------------------------------------------------------------------------------

def test_teardown_leaves_no_namespaces_tables_or_processes(tmp_path):
    _skip_unless_possible()
    prefix = None
    pid = None
    with pytest.raises(RuntimeError, match="a failing test"):
        with topology(("home",)) as (topo, stack):
            prefix = topo.prefix
            gateway_sh(topo, "up", "--in-iface", GW_IN_IFACE, state=tmp_path / "gateway.state")
            m = proxy(topo, tmp_path, "geoblock.service", 8080)
            m.start()  # deliberately not registered for stopping: close() must end it anyway
            pid = m.pid
            # a stray process in the namespace, as a crashed test might leave
            topo.run("gw", "sh", "-c", "sleep 300 >/dev/null 2>&1 &", check=True)
            assert len(topo.pids()) >= 2
            raise RuntimeError("a failing test")
    assert prefix and not [n for n in ns.namespaces() if n.startswith(prefix + "-")]
    assert pid is not None
    assert m.proc.wait(5) is not None  # it was ended by the teardown
    m.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
