"""A real browser through geoblock: headless Chromium (Debian's `chromium`) through a real mitmdump with
geoblock as its explicit proxy.

Chromium asks for ordinary URLs (`https://allowed.test/`, `https://binance.com/`, `http://www.okx.com/`);
the proxy reaches those names at local test servers (tests/support/name_map.py stands in for DNS) and
nothing off the machine. Each visit is a fresh Chromium with its own profile directory. What the tests
check is what the user sees: the page's text (its DOM after load), its rendered screenshot, and which
certificate Chromium accepted (it trusts only the keys a test names). Servers count their connections,
so every block is also checked on the server side.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from support.decisions import records
from support import browser
from support.proc import Mitmdump, geoblock_options, with_names

pytestmark = [pytest.mark.e2e, pytest.mark.browser]


@pytest.fixture(scope="module", autouse=True)
def _chromium() -> None:
    if browser.CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run and scripts/test.sh do it as root)")


def names(servers) -> dict[str, tuple[str, int]]:
    """Where each name is served: allowed.test at home (127.0.0.1, CN), the exchanges offshore
    (127.0.0.2, SG)."""
    https1, https2, http2 = servers["https1"], servers["https2"], servers["http2"]
    return {
        "allowed.test:443": (https1.host, https1.port),
        "binance.com:443": (https2.host, https2.port),
        "www.okx.com:443": (https2.host, https2.port),
        "www.okx.com:80": (http2.host, http2.port),
    }


def start(directory: Path, servers, rules_dir, geo_dir, pki, **extra) -> Mitmdump:
    m = with_names(directory / "conf", names(servers), geoblock_options(
        rules_dir, geo_dir, directory / "decisions.jsonl", ssl_verify_upstream_trusted_ca=pki.ca_pem, **extra))
    m.decisions = directory / "decisions.jsonl"
    return m.start()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory, servers, rules_dir, geo_dir, pki):
    m = start(tmp_path_factory.mktemp("browser-proxy"), servers, rules_dir, geo_dir, pki)
    yield m
    m.stop()


@pytest.fixture(scope="module")
def intercepting(tmp_path_factory, servers, rules_dir, geo_dir, pki):
    m = start(tmp_path_factory.mktemp("browser-intercept"), servers, rules_dir, geo_dir, pki, geoblock_intercept=True)
    yield m
    m.stop()




def shows_text(visit: browser.Visit) -> None:
    """The screenshot shows a rendered page with text on it, not a blank one."""
    assert visit.png, f"no screenshot of {visit.url}:\n{visit.problems[-2000:]}"
    assert browser.dark_pixels(visit.png) > 100, f"the screenshot of {visit.url} is blank"


def test_allowed_https_site_loads_with_its_own_certificate(proxy, servers, pki, tmp_path):
    """Chromium trusts only the test server's own key: the page loads, so the certificate it got is the
    server's (passed through undecrypted), not one mitmproxy made."""
    v = browser.visit("https://allowed.test/", proxy.url, tmp_path / "profile", trust=[pki.cert_pem])
    assert "hello from 127.0.0.1" in v.dom, v.problems[-3000:]
    shows_text(v)
    s = servers["https1"]
    assert s.connections >= 1 and s.requests and s.requests[-1][0] == "allowed.test"
    tls = records(proxy.decisions, stage="tls", sni="allowed.test")
    assert tls and {r["action"] for r in tls} <= {"allow", "log"}
    assert all(r["server_ip"] == "127.0.0.1" and r["country"] == "CN" for r in tls)


def test_chromium_ordinary_tls_is_not_flagged_as_ech(proxy, servers, pki, tmp_path):
    """Chromium sends an ECH extension on every TLS connection, a placeholder when the site publishes
    no ECH configuration: allowed.test publishes none, so nothing is hidden and no record says `ech`."""
    v = browser.visit("https://allowed.test/", proxy.url, tmp_path / "profile", trust=[pki.cert_pem])
    assert "hello from 127.0.0.1" in v.dom, v.problems[-3000:]
    tls = records(proxy.decisions, stage="tls", sni="allowed.test")
    assert tls
    flagged = [r for r in tls if r.get("ech")]
    assert not flagged, f"ordinary Chromium connections recorded as ECH: {flagged[0]}"


def test_blocked_https_site_is_refused_and_the_server_sees_nothing(proxy, servers, pki, tmp_path):
    v = browser.visit("https://binance.com/", proxy.url, tmp_path / "profile", trust=[pki.cert_pem])
    assert "hello from" not in v.dom
    assert "net::ERR_TUNNEL_CONNECTION_FAILED" in v.log, v.problems[-3000:]  # "This site can't be reached"
    assert servers["https2"].connections == 0
    rec = records(proxy.decisions, stage="connect", host="binance.com")[-1]
    assert (rec["action"], rec["enforced"], rec["rule"]) == ("block", True, "offshore-crypto-exchanges")
    assert rec["reason"] == ("binance.com is listed in rule offshore-crypto-exchanges (list exchanges.txt, "
                             "platform Binance): block")
    assert (rec["platform"], rec["list"]) == ("Binance", "exchanges.txt") and len(rec["list_version"]) == 12


def test_blocked_http_site_shows_the_451_page(proxy, servers, pki, tmp_path):
    """Chromium first tries the site over HTTPS (its HTTPS upgrade: refused at CONNECT), then over HTTP:
    the user sees geoblock's page, rendered, naming the site and the rule."""
    v = browser.visit("http://www.okx.com/", proxy.url, tmp_path / "profile", trust=[pki.cert_pem])
    assert v.title == "Access restricted", v.dom[:2000] + v.problems[-2000:]
    assert "<strong>www.okx.com</strong> is blocked on this network" in v.dom
    assert "<code>offshore-crypto-exchanges</code>" in v.dom
    shows_text(v)
    assert servers["http2"].connections == 0 and servers["https2"].connections == 0
    rec = records(proxy.decisions, stage="http", host="www.okx.com")[-1]
    assert (rec["action"], rec["enforced"], rec["rule"]) == ("block", True, "offshore-crypto-exchanges")


def test_intercept_blocked_https_site_shows_the_451_page_over_tls(intercepting, servers, tmp_path):
    """With geoblock_intercept and mitmproxy's CA trusted, a blocked HTTPS site gets the block page,
    over TLS with mitmproxy's certificate for the name; the server is never dialled."""
    ca = intercepting.confdir / "mitmproxy-ca-cert.pem"
    v = browser.visit("https://binance.com/", intercepting.url, tmp_path / "profile", trust=[ca])
    assert v.title == "Access restricted", v.dom[:2000] + v.problems[-3000:]
    assert "<strong>binance.com</strong> is blocked on this network" in v.dom
    assert "<code>offshore-crypto-exchanges</code>" in v.dom
    shows_text(v)
    assert servers["https2"].connections == 0
    assert records(intercepting.decisions, stage="connect", host="binance.com", action="block")
    page = records(intercepting.decisions, stage="http", sni="binance.com", blocked_at="connect")
    assert page and all(r["action"] == "block" and r["rule"] == "offshore-crypto-exchanges" for r in page)


def test_the_browser_tells_the_servers_certificate_from_mitmproxys(intercepting, servers, pki, tmp_path):
    """The control for the tests above: trusting only the server's key, Chromium refuses mitmproxy's
    certificate (an intercepted allowed site), so a page that loads came with the server's own."""
    v = browser.visit("https://allowed.test/", intercepting.url, tmp_path / "profile", trust=[pki.cert_pem])
    assert "hello from" not in v.dom
    assert "net::ERR_CERT_AUTHORITY_INVALID" in v.log, v.problems[-3000:]
