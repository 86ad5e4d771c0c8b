"""End to end: real mitmdump processes with geoblock, local HTTP/HTTPS servers on 127.0.0.x placed in
different countries by a real test GeoIP database, and real clients (curl, Python ssl).

Every blocked path is also checked on the server side: the server saw no connection at all.
"""

from __future__ import annotations

import contextlib
import ssl
import subprocess
from pathlib import Path

import pytest

from support.decisions import records
from support.geodb import write_asn_db, write_country_db
from support.proc import Mitmdump, curl, geoblock_options, tunnel, with_names
from support.servers import TestServer

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def proxy(tmp_path_factory, rules_dir, geo_dir, pki):
    d = tmp_path_factory.mktemp("proxy")
    m = Mitmdump(d / "conf", geoblock_options(rules_dir, geo_dir, d / "decisions.jsonl",
                                     ssl_verify_upstream_trusted_ca=pki.ca_pem))
    m.decisions = d / "decisions.jsonl"
    with m:
        yield m


@pytest.fixture(scope="module")
def intercepting(tmp_path_factory, rules_dir, geo_dir, pki):
    d = tmp_path_factory.mktemp("intercept")
    m = Mitmdump(d / "conf", geoblock_options(rules_dir, geo_dir, d / "decisions.jsonl", geoblock_intercept=True,
                                     ssl_verify_upstream_trusted_ca=pki.ca_pem))
    m.decisions = d / "decisions.jsonl"
    with m:
        yield m




# --- CONNECT ---------------------------------------------------------------------------------

def test_connect_to_blocked_name_gets_451(proxy):
    r = curl(proxy, "https://binance.com/")
    assert r.returncode == 56 and "CONNECT tunnel failed, response 451" in r.stderr
    rec = records(proxy.decisions, stage="connect", host="binance.com")[-1]
    assert rec["action"] == "block" and rec["rule"] == "offshore-crypto-exchanges" and rec["enforced"] is True


def test_connect_to_blocked_ip_gets_451_and_the_server_sees_nothing(proxy, servers, pki):
    s = servers["https5"]
    r = curl(proxy, f"https://127.0.0.5:{s.port}/", "--cacert", str(pki.ca_pem))
    assert "CONNECT tunnel failed, response 451" in r.stderr
    assert s.connections == 0
    assert records(proxy.decisions, stage="connect", server_ip="127.0.0.5")[-1]["rule"] == "blocked-network"


def test_client_rule_applies_to_the_client_address(proxy, servers):
    s = servers["http1"]
    r = curl(proxy, f"http://127.0.0.1:{s.port}/", "--interface", "127.0.0.9", "-H", "Host: allowed.test")
    assert r.stdout.startswith("HTTP/1.1 451")
    assert s.connections == 0
    assert records(proxy.decisions, client="127.0.0.9")[-1]["rule"] == "blocked-client"


# --- TLS -------------------------------------------------------------------------------------

@pytest.mark.parametrize("sni", ["binance.com", "API.BINANCE.COM", "www.okx.com."])
def test_blocked_sni_gets_tls_alert_and_the_server_sees_nothing(proxy, servers, pki, sni):
    s = servers["https2"]
    r = curl(proxy, f"https://{sni}/", "--connect-to", f"{sni}:443:127.0.0.2:{s.port}", "--cacert", str(pki.ca_pem))
    assert r.returncode == 35 and "alert access denied" in r.stderr, r.stderr
    assert s.connections == 0
    # curl sends the SNI in lower case without the trailing dot
    rec = records(proxy.decisions, stage="tls", sni=sni.lower().rstrip("."))[-1]
    assert (rec["action"], rec["rule"], rec["country"], rec["offshore"]) == (
        "block", "offshore-crypto-exchanges", "SG", True)


def test_blocked_sni_with_python_ssl(proxy, servers):
    s = servers["https2"]
    sock = tunnel(proxy, f"127.0.0.2:{s.port}")
    ctx = ssl.create_default_context()
    with pytest.raises(ssl.SSLError, match="ACCESS_DENIED"):
        ctx.wrap_socket(sock, server_hostname="api.binance.com")
    sock.close()
    assert s.connections == 0


def test_idn_sni_is_blocked(proxy, servers, pki):
    s = servers["https2"]
    sock = tunnel(proxy, f"127.0.0.2:{s.port}")
    ctx = ssl.create_default_context()
    with pytest.raises(ssl.SSLError, match="ACCESS_DENIED"):
        ctx.wrap_socket(sock, server_hostname="shop.bücher.example")  # sent as xn--bcher-kva
    assert s.connections == 0
    assert records(proxy.decisions, stage="tls", rule="idn-block")


def test_allowed_tls_passes_through_with_the_real_certificate(proxy, servers, pki):
    s = servers["https1"]
    r = curl(proxy, "https://allowed.test/", "--connect-to", f"allowed.test:443:127.0.0.1:{s.port}",
             "--cacert", str(pki.ca_pem))
    assert r.returncode == 0, r.stderr
    assert "hello from 127.0.0.1" in r.stdout
    sock = tunnel(proxy, f"127.0.0.1:{s.port}")
    ctx = ssl.create_default_context(cafile=str(pki.ca_pem))
    with ctx.wrap_socket(sock, server_hostname="allowed.test") as tls:
        assert tls.getpeercert(binary_form=True) == pki.cert_der  # not a mitmproxy certificate
    assert s.connections == 2
    rec = records(proxy.decisions, stage="tls", sni="allowed.test")[-1]
    assert (rec["action"], rec["country"], rec["offshore"], rec["asn"]) == ("allow", "CN", False, 64500)


def test_missing_sni_is_judged_on_the_destination(proxy, servers, pki):
    s = servers["https1"]
    sock = tunnel(proxy, f"127.0.0.1:{s.port}")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(str(pki.ca_pem))
    ctx.check_hostname = False
    with ctx.wrap_socket(sock, server_hostname=None) as tls:
        assert tls.getpeercert(binary_form=True) == pki.cert_der
    rec = records(proxy.decisions, stage="tls", server_ip="127.0.0.1", sni=None)[-1]
    assert rec["action"] == "allow"


@pytest.mark.parametrize("server, blocked", [("https2", True), ("https1", False)])
def test_offshore_rule_by_name_depends_on_the_server_country(proxy, servers, pki, server, blocked):
    s = servers[server]
    r = curl(proxy, "https://offshore-only.test/", "--connect-to",
             f"offshore-only.test:443:{s.host}:{s.port}", "--cacert", str(pki.ca_pem))
    if blocked:
        assert "alert access denied" in r.stderr and s.connections == 0
    else:
        assert r.returncode == 0 and f"hello from {s.host}" in r.stdout
    rec = records(proxy.decisions, stage="tls", sni="offshore-only.test")[-1]
    assert rec["action"] == ("block" if blocked else "allow")
    assert rec["offshore"] is blocked


# --- HTTP ------------------------------------------------------------------------------------

@pytest.mark.parametrize("host", ["binance.com", "BINANCE.COM.", "api.binance.com:8080", "bücher.example",
                                  "xn--bcher-kva.example"])
def test_blocked_host_gets_451_page_and_the_server_sees_nothing(proxy, servers, host):
    s = servers["http2"]
    r = curl(proxy, f"http://127.0.0.2:{s.port}/path", "-H", f"Host: {host}")
    head, _, body = r.stdout.partition("\n\n")  # text mode: CRLF arrives as LF
    assert head.startswith("HTTP/1.1 451 Unavailable For Legal Reasons"), head
    assert 'link: <https://geoblock.invalid/>; rel="blocked-by"' in head.lower()
    assert "<code>offshore-crypto-exchanges</code>" in body or "<code>idn-block</code>" in body
    assert s.connections == 0


def test_blocked_absolute_url_gets_451(proxy):
    r = curl(proxy, "http://www.binance.com/x")
    assert r.stdout.startswith("HTTP/1.1 451")


@pytest.mark.parametrize("server, host", [("http1", "allowed.test"), ("http6", None), ("http2", "127.0.0.2")])
def test_allowed_http_reaches_the_server(proxy, servers, server, host):
    s = servers[server]
    netloc = f"[{s.host}]:{s.port}" if ":" in s.host else f"{s.host}:{s.port}"
    args = ["-H", f"Host: {host}"] if host else []
    r = curl(proxy, f"http://{netloc}/", *args)
    assert r.stdout.startswith("HTTP/1.1 200"), r.stdout + r.stderr
    assert s.connections == 1


# --- intercept mode: Host checks inside TLS --------------------------------------------------

def test_intercept_blocks_by_host_inside_tls(intercepting, servers):
    s = servers["https1"]
    ca = intercepting.confdir / "mitmproxy-ca-cert.pem"
    r = curl(intercepting, "https://allowed.test/", "--connect-to", f"allowed.test:443:127.0.0.1:{s.port}",
             "--cacert", str(ca), "-H", "Host: binance.com", "--http1.1")
    assert "HTTP/1.1 451 Unavailable For Legal Reasons" in r.stdout, r.stdout + r.stderr
    assert "<code>offshore-crypto-exchanges</code>" in r.stdout
    assert s.connections == 0
    rec = records(intercepting.decisions, stage="http", host="binance.com")[-1]
    assert rec["sni"] == "allowed.test" and rec["action"] == "block"


def test_intercept_allows_and_decrypts(intercepting, servers):
    s = servers["https1"]
    ca = intercepting.confdir / "mitmproxy-ca-cert.pem"
    r = curl(intercepting, "https://allowed.test/", "--connect-to", f"allowed.test:443:127.0.0.1:{s.port}",
             "--cacert", str(ca))
    assert r.returncode == 0 and "hello from 127.0.0.1" in r.stdout, r.stderr
    assert s.requests and s.requests[-1][0] == "allowed.test"


# --- intercept mode: a blocked HTTPS name gets the page over TLS ------------------------------

@pytest.fixture(scope="module")
def intercepting_named(tmp_path_factory, rules_dir, geo_dir, pki, servers):
    """geoblock_intercept=true; binance.com is served at 127.0.0.2 (tests/support/name_map.py)."""
    d = tmp_path_factory.mktemp("intercept-named")
    s, h = servers["https2"], servers["http2"]
    m = with_names(d / "conf", {"binance.com:443": (s.host, s.port), "binance.com:80": (h.host, h.port)},
                   geoblock_options(rules_dir, geo_dir, d / "decisions.jsonl", geoblock_intercept=True,
                           ssl_verify_upstream_trusted_ca=pki.ca_pem))
    m.decisions = d / "decisions.jsonl"
    with m:
        yield m


def page_answers(stdout: str) -> list[str]:
    """The status lines of the answers curl printed (-D -), after the CONNECT's own."""
    return [line for line in stdout.splitlines() if line.startswith("HTTP/") and "Connection established" not in line]


def test_intercept_blocked_connect_target_gets_the_451_page_over_tls(intercepting_named, servers):
    """The CONNECT is accepted (and recorded as blocked), the client's TLS ends at mitmproxy with its
    certificate for the name, and the request gets the page; the server is never dialled."""
    m = intercepting_named
    ca = m.confdir / "mitmproxy-ca-cert.pem"
    r = curl(m, "https://binance.com/", "--cacert", str(ca))
    assert r.returncode == 0, r.stderr
    assert "HTTP/1.1 200" in r.stdout  # the CONNECT's answer: the tunnel ends at geoblock
    assert page_answers(r.stdout)[-1].startswith(("HTTP/2 451", "HTTP/1.1 451")), r.stdout
    assert "<strong>binance.com</strong> is blocked" in r.stdout and "<code>offshore-crypto-exchanges</code>" in r.stdout
    assert servers["https2"].connections == 0
    rec = records(m.decisions, stage="connect", host="binance.com")[-1]
    assert (rec["action"], rec["enforced"], rec["rule"]) == ("block", True, "offshore-crypto-exchanges")
    rec = records(m.decisions, stage="http", host="binance.com")[-1]
    assert (rec["action"], rec["rule"], rec["blocked_at"], rec["sni"]) == (
        "block", "offshore-crypto-exchanges", "connect", "binance.com")


def test_intercept_blocked_tunnel_relays_nothing_that_is_not_tls_or_http(intercepting_named, servers):
    """The accepted CONNECT of a blocked tunnel carries no other protocol: bytes that are neither TLS nor
    HTTP are never relayed (the server is never dialled) and the connection is closed."""
    sock = tunnel(intercepting_named, "binance.com:443")
    with sock:
        sock.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")
        sock.settimeout(10)
        answer = b""
        while True:
            try:
                chunk = sock.recv(4096)
            except ConnectionResetError:
                break
            if not chunk:
                break
            answer += chunk
    assert b"SSH" not in answer
    assert servers["https2"].connections == 0


def test_intercept_plain_http_in_a_blocked_tunnel_gets_the_page(intercepting_named, servers):
    """Plain HTTP through the accepted CONNECT of a blocked tunnel (curl --proxytunnel) gets the page too."""
    r = curl(intercepting_named, "http://binance.com/", "--proxytunnel", "-H", "Host: allowed.test")
    assert page_answers(r.stdout)[-1].startswith("HTTP/1.1 451"), r.stdout + r.stderr
    assert "<strong>binance.com</strong> is blocked" in r.stdout
    assert servers["http2"].connections == 0
    rec = records(intercepting_named.decisions, stage="http", host="allowed.test", sni=None)[-1]
    assert (rec["action"], rec["blocked_at"]) == ("block", "connect")


def test_intercept_blocked_ip_gets_the_451_page_over_tls(intercepting, servers):
    s = servers["https5"]
    ca = intercepting.confdir / "mitmproxy-ca-cert.pem"
    r = curl(intercepting, f"https://127.0.0.5:{s.port}/", "--cacert", str(ca))
    assert page_answers(r.stdout)[-1].startswith(("HTTP/2 451", "HTTP/1.1 451")), r.stdout + r.stderr
    assert "<code>blocked-network</code>" in r.stdout
    assert s.connections == 0


def test_intercept_blocked_sni_gets_the_451_page_over_tls(intercepting, servers):
    """An allowed CONNECT (an address), then a ClientHello for a blocked name: the handshake is completed
    with mitmproxy's certificate for that name, and the request gets the page."""
    s = servers["https2"]
    ca = intercepting.confdir / "mitmproxy-ca-cert.pem"
    r = curl(intercepting, "https://binance.com/", "--connect-to", f"binance.com:443:127.0.0.2:{s.port}",
             "--cacert", str(ca))
    assert r.returncode == 0, r.stderr
    assert page_answers(r.stdout)[-1].startswith(("HTTP/2 451", "HTTP/1.1 451")), r.stdout
    assert "<code>offshore-crypto-exchanges</code>" in r.stdout
    assert s.connections == 0
    rec = records(intercepting.decisions, stage="tls", sni="binance.com")[-1]
    assert (rec["action"], rec["enforced"]) == ("block", True)
    assert records(intercepting.decisions, stage="http", sni="binance.com", blocked_at="tls")


@pytest.mark.parametrize("http", ["--http1.1", "--http2"])
def test_intercept_every_request_in_a_blocked_tunnel_gets_the_page(intercepting, servers, http):
    """A blocked tunnel never forwards, whatever a request in it shows: three requests on one connection,
    with the Host of an allowed site and an absolute-form target, all get the page."""
    s = servers["https2"]
    ca = intercepting.confdir / "mitmproxy-ca-cert.pem"
    r = curl(intercepting, "https://binance.com/", "--connect-to", f"binance.com:443:127.0.0.2:{s.port}",
             "--cacert", str(ca), http, "-H", "Host: allowed.test", "-w", "connects=%{num_connects}\n",
             "https://binance.com/second", "https://binance.com/third")
    answers = page_answers(r.stdout)
    assert len(answers) == 3 and all(" 451" in a for a in answers), r.stdout + r.stderr
    assert r.stdout.count("connects=1") == 1 and r.stdout.count("connects=0") == 2  # one tunnel, reused
    assert s.connections == 0
    recs = records(intercepting.decisions, stage="http", host="allowed.test", blocked_at="tls")
    assert len(recs) >= 3 and all(r["action"] == "block" for r in recs)


def test_intercept_in_monitor_mode_blocks_nothing(tmp_path, rules_dir, geo_dir, pki, servers):
    s = servers["https2"]
    log = tmp_path / "decisions.jsonl"
    with with_names(tmp_path / "conf", {"binance.com:443": (s.host, s.port)},
                    geoblock_options(rules_dir, geo_dir, log, geoblock_intercept=True, geoblock_monitor=True,
                            ssl_verify_upstream_trusted_ca=pki.ca_pem)) as m:
        ca = m.confdir / "mitmproxy-ca-cert.pem"
        r = curl(m, "https://binance.com/", "--cacert", str(ca))
        assert r.returncode == 0 and "hello from 127.0.0.2" in r.stdout, r.stdout + r.stderr
        r = curl(m, "https://binance.com/", "--connect-to", f"binance.com:443:127.0.0.2:{s.port}", "--cacert", str(ca))
        assert r.returncode == 0 and "hello from 127.0.0.2" in r.stdout, r.stdout + r.stderr
    assert s.connections == 2
    blocks = records(log, action="block")
    assert {r["stage"] for r in blocks} >= {"connect", "tls"}
    assert all(r["enforced"] is False for r in records(log)) and not records(log, blocked_at="connect")


# --- monitor mode ----------------------------------------------------------------------------

def test_monitor_mode_blocks_nothing_and_records_everything(tmp_path, rules_dir, geo_dir, servers, pki):
    log = tmp_path / "decisions.jsonl"
    s = servers["https2"]
    with Mitmdump(tmp_path / "conf", geoblock_options(rules_dir, geo_dir, log, geoblock_monitor=True)) as m:
        r = curl(m, "https://binance.com/", "--connect-to", f"binance.com:443:127.0.0.2:{s.port}",
                 "--cacert", str(pki.ca_pem))
        assert r.returncode == 0 and "hello from 127.0.0.2" in r.stdout
        h = servers["http2"]
        r = curl(m, f"http://127.0.0.2:{h.port}/", "-H", "Host: okx.com")
        assert r.stdout.startswith("HTTP/1.1 200")
        # the console says so once at start-up (it said nothing: a gateway blocking nothing looked enforcing)
        assert m.output().count("geoblock: MONITOR MODE (geoblock_monitor=true): every flow is decided and "
                                "recorded with enforced: false; nothing is blocked") == 1, m.output()
    blocks = records(log, action="block")
    assert {r["stage"] for r in blocks} == {"tls", "http"}
    assert all(r["enforced"] is False for r in records(log))


# --- name resolution when a rule needs the country --------------------------------------------

@pytest.mark.parametrize("country, blocked", [("SG", True), ("CN", False)])
def test_a_name_is_resolved_when_a_rule_needs_its_country(tmp_path, servers, country, blocked):
    """CONNECT localhost:PORT: the rule needs the server's country, geoblock resolves the name
    (127.0.0.1 / ::1, placed in `country` here) and never connects to learn it."""
    geo = tmp_path / "geo"
    geo.mkdir()
    places = {"127.0.0.1/32": (country, 64500), "::1/128": (country, 64500)}
    write_country_db(geo / "GeoLite2-Country.mmdb", places)
    write_asn_db(geo / "GeoLite2-ASN.mmdb", places)
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "policy.yaml").write_text("home_countries: [CN]\n")
    (rules / "r.yaml").write_text("rules:\n  - {id: local-offshore, action: block, domains: [localhost], offshore: true}\n")
    log = tmp_path / "decisions.jsonl"
    s = servers["http1"]
    with Mitmdump(tmp_path / "conf", geoblock_options(rules, geo, log)) as m:
        r = curl(m, f"http://localhost:{s.port}/")
    if blocked:
        assert r.stdout.startswith("HTTP/1.1 451") and s.connections == 0
    else:
        assert r.stdout.startswith("HTTP/1.1 200")
    rec = records(log, stage="http")[-1]
    assert rec["server_ip"] in ("127.0.0.1", "::1") and rec["country"] == country


@contextlib.contextmanager
def judged_elsewhere(tmp_path, tls, **extra):
    """DNS that answers differently from one query to the next: geoblock learns 127.0.0.3 (home, CN) for
    `localhost` (tests/support/pin_resolver.py), the system would answer 127.0.0.1 (offshore, SG), and a
    rule blocks `localhost` when offshore. Yields (judged server, other server, running mitmdump)."""
    judged = TestServer("127.0.0.3", tls)
    other = TestServer("127.0.0.1", tls, port=judged.port)
    try:
        geo = tmp_path / "geo"
        geo.mkdir()
        places = {"127.0.0.3/32": ("CN", 64500), "127.0.0.1/32": ("SG", 64501), "::1/128": ("SG", 64501)}
        write_country_db(geo / "GeoLite2-Country.mmdb", places)
        write_asn_db(geo / "GeoLite2-ASN.mmdb", places)
        rules = tmp_path / "rules"
        rules.mkdir()
        (rules / "policy.yaml").write_text("home_countries: [CN]\n")
        (rules / "r.yaml").write_text(
            "rules:\n  - {id: local-offshore, action: block, domains: [localhost], offshore: true}\n")
        pin = Path(__file__).parent / "support" / "pin_resolver.py"
        m = Mitmdump(tmp_path / "conf", geoblock_options(rules, geo, tmp_path / "decisions.jsonl", **extra),
                     extra_args=["-s", str(pin)])
        m.decisions = tmp_path / "decisions.jsonl"
        with m:
            yield judged, other, m
    finally:
        judged.close()
        other.close()


@pytest.mark.parametrize("way", ["absolute-form", "connect", "connect-tls"])
def test_the_server_is_dialled_at_the_address_geoblock_judged(tmp_path, pki, way):
    """The connection goes to the address that was judged; the offshore server never sees one."""
    with judged_elsewhere(tmp_path, pki if way == "connect-tls" else None) as (judged, other, m):
        if way == "connect-tls":  # passed through: the server's own certificate for localhost
            r = curl(m, f"https://localhost:{judged.port}/", "--cacert", str(pki.ca_pem))
        else:
            r = curl(m, f"http://localhost:{judged.port}/", *(["--proxytunnel"] if way == "connect" else []))
        assert "HTTP/1.1 200" in r.stdout, r.stdout + r.stderr
        assert judged.connections == 1 and other.connections == 0
        assert judged.requests and judged.requests[0][0] == f"localhost:{judged.port}"  # Host unchanged
        rec = records(m.decisions, stage="http" if way == "absolute-form" else "connect")[-1]
        assert (rec["server_ip"], rec["country"], rec["action"]) == ("127.0.0.3", "CN", "allow")


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_keepalive_requests_by_name_in_an_intercepted_tunnel_are_all_answered(tmp_path, pki, scheme):
    """Decrypted (or plain) HTTP inside one CONNECT tunnel, 8 requests by a name whose location a rule
    needs: every one is answered, at the judged address, with the certificate checked for the name."""
    tls = pki if scheme == "https" else None
    with judged_elsewhere(tmp_path, tls, geoblock_intercept=True,
                          ssl_verify_upstream_trusted_ca=pki.ca_pem) as (judged, other, m):
        url = f"{scheme}://localhost:{judged.port}/"
        extra = ["--cacert", str(m.confdir / "mitmproxy-ca-cert.pem")] if tls else ["--proxytunnel"]
        cmd = ["curl", "-sS", "--max-time", "20", "-x", m.url, "-w", "%{http_code}\n", *extra,
               *[arg for _ in range(8) for arg in (url, "-o", "/dev/null")]]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=40)
        assert r.stdout.split() == ["200"] * 8, r.stdout + r.stderr
        assert judged.connections >= 1 and other.connections == 0
        assert [h for h, _ in judged.requests] == [f"localhost:{judged.port}"] * 8


# --- the decision log ------------------------------------------------------------------------

def test_every_record_has_the_documented_fields(proxy):
    recs = records(proxy.decisions)
    assert len(recs) >= 10
    fields = {"ts", "stage", "client", "sni", "host", "server_ip", "country", "asn", "offshore", "action",
              "enforced", "rule", "reason", "ruleset"}
    for rec in recs:
        assert fields <= rec.keys()
        assert rec["ts"].endswith("Z") and rec["stage"] in ("connect", "tls", "http", "dns", "ip")
        assert rec["action"] in ("allow", "log", "block") and rec["reason"]
    assert {r["action"] for r in recs} >= {"allow", "block"}


def test_intercept_blocks_by_http2_authority(intercepting, servers):
    s = servers["https1"]
    ca = intercepting.confdir / "mitmproxy-ca-cert.pem"
    r = curl(intercepting, "https://allowed.test/", "--connect-to", f"allowed.test:443:127.0.0.1:{s.port}",
             "--cacert", str(ca), "-H", "Host: www.okx.com", "--http2")
    _, _, answer = r.stdout.partition("\n\n")  # after the CONNECT's answer
    assert answer.startswith("HTTP/2 451"), r.stdout + r.stderr  # curl sends Host as :authority
    assert 'rel="blocked-by"' in answer and "\nconnection:" not in answer.lower()
    assert s.connections == 0
