"""RDAP country fallback (geoblock.enrich.rdap) against a local RDAP server on 127.0.0.1.

Public test addresses (8.8.8.8, 1.1.1.1, ...) are only the subject of the queries: every request goes
to the local server. The autouse `loopback_only` fixture points ipwhois's module-level URLs at the local
server too and makes any socket connection or name lookup outside loopback fail the test.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time

import ipwhois
import ipwhois.rdap
import pytest

from geoblock.enrich import rdap
from geoblock.enrich.rdap import RdapLocator, lookup_country, make_opener
from support import rdap_server as rs
from support import waiting
from support.rdap_server import RdapServer


def wait_for(predicate):
    """support.waiting.wait_for, polling fast (lookups in threads finish in milliseconds), 5 s at most."""
    return waiting.wait_for(predicate, timeout=5.0, every=0.01)


# -- no traffic beyond loopback ------------------------------------------------------------------------


def _loopback(host: object) -> bool:
    if host in ("localhost", None):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%", 1)[0]).is_loopback
    except ValueError:
        return False


@pytest.fixture
def server():
    srv = RdapServer()
    yield srv
    srv.close()


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch, server: RdapServer):
    """ipwhois's bootstrap and registry URLs on the local server; non-loopback sockets refused."""
    monkeypatch.setattr(ipwhois.rdap, "BOOTSTRAP_URL", server.bootstrap_url)
    monkeypatch.setattr(ipwhois.rdap, "RIR_RDAP", server.rir_rdap())
    violations: list[str] = []
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def check(sock: socket.socket, address: object) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address[0]):  # type: ignore[index]
            violations.append(f"connect {address}")
            raise ConnectionRefusedError(f"test guard: no traffic beyond loopback ({address})")

    def connect(sock: socket.socket, address: object) -> None:
        check(sock, address)
        return real_connect(sock, address)

    def connect_ex(sock: socket.socket, address: object) -> int:
        check(sock, address)
        return real_connect_ex(sock, address)

    def getaddrinfo(host, *args, **kwargs):  # type: ignore[no-untyped-def]
        if not _loopback(host.decode() if isinstance(host, bytes) else host):
            violations.append(f"getaddrinfo {host}")
            raise socket.gaierror(socket.EAI_NONAME, f"test guard: no name lookups ({host})")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield violations
    assert violations == [], f"traffic beyond loopback attempted: {violations}"


@pytest.fixture
def make(server: RdapServer):
    made: list[RdapLocator] = []

    def factory(**kw) -> RdapLocator:
        kw.setdefault("bootstrap_url", server.bootstrap_url)
        kw.setdefault("proxies", {})  # never an environment proxy, even for loopback
        kw.setdefault("timeout", 2.0)
        loc = RdapLocator(**kw)
        made.append(loc)
        return loc

    yield factory
    for loc in made:
        loc.close()


def test_guard_refuses_traffic_beyond_loopback(loopback_only: list[str]) -> None:
    with pytest.raises(OSError):
        socket.create_connection(("192.0.2.1", 80), timeout=0.1)
    with pytest.raises(OSError):
        socket.getaddrinfo("rdap-bootstrap.arin.net", 443)
    assert len(loopback_only) == 2
    loopback_only.clear()


def test_default_bootstrap_is_ipwhois_default_and_constructing_does_no_io(server: RdapServer) -> None:
    assert rdap.DEFAULT_BOOTSTRAP_URL == "https://rdap-bootstrap.arin.net/bootstrap"
    loc = RdapLocator()
    try:
        assert loc.bootstrap_url == "https://rdap-bootstrap.arin.net/bootstrap"
        assert loc.stats()["lookups"] == 0
    finally:
        loc.close()
    assert server.total_requests() == 0


@pytest.mark.parametrize("url", ["ftp://rdap.example/", "file:///etc/passwd", "rdap.example", "http://x/?q=1"])
def test_bootstrap_url_must_be_http(url: str) -> None:
    with pytest.raises(ValueError):
        RdapLocator(bootstrap_url=url)


# -- answers ---------------------------------------------------------------------------------------------


def test_public_ip_is_looked_up_once_then_cached(server: RdapServer, make) -> None:
    server.set_answer("8.8.8.8", rs.country("US", "8.8.8.0/24"))
    loc = make()
    assert loc.country("8.8.8.8") is None  # scheduled, not waited for
    wait_for(lambda: loc.country("8.8.8.8") == "US")
    for _ in range(500):
        assert loc.country("8.8.8.8") == "US"
    assert loc.country(ipaddress.ip_address("8.8.8.8")) == "US"
    assert loc.country("::ffff:8.8.8.8") == "US"  # IPv4-mapped is the IPv4 address
    assert server.hits_for("8.8.8.8") == 1
    assert server.total_requests() == 1
    st = loc.stats()
    assert (st["lookups"], st["answers"], st["negatives"], st["in_flight"], st["running"]) == (1, 1, 0, 0, 0)
    assert st["hits"] >= 502 and st["cache_entries"] == 1 and st["range_entries"] == 1
    assert loc.sizes() == {"rdap": (1, loc.max_entries), "rdap ranges": (1, loc.max_entries),
                           "rdap in flight": (0, loc.workers + loc.max_queued)}


def test_an_ipv6_address_that_carries_a_public_ipv4_address_is_asked_about_that_address(server: RdapServer, make) -> None:
    """64:ff9b::808:808 (NAT64) and 2002:808:808:: (6to4) lead to 8.8.8.8: the registry is asked about
    8.8.8.8, once, and both forms get its answer (names.carried_ipv4)."""
    server.set_answer("8.8.8.8", rs.country("US", "8.8.8.0/24"))
    loc = make()
    assert loc.country("64:ff9b::808:808") is None  # scheduled, not waited for
    wait_for(lambda: loc.country("64:ff9b::808:808") == "US")
    assert loc.country("2002:808:808::1") == "US" and loc.country("8.8.8.8") == "US"
    assert server.hits_for("8.8.8.8") == 1 and server.total_requests() == 1


def test_ipv6_public_address(server: RdapServer, make) -> None:
    server.set_answer("2001:4860:4860::8888", rs.country("US", "2001:4860::/32"))
    loc = make()
    assert loc.country("2001:4860:4860::8888") is None
    wait_for(lambda: loc.country("2001:4860:4860::8888") == "US")
    assert loc.country("2001:4860:4860::8844") == "US"  # same network range, no request
    assert server.total_requests() == 1


def test_lower_case_country_is_normalised(server: RdapServer, make) -> None:
    server.set_answer("1.1.1.1", rs.country(" au "))
    loc = make()
    loc.country("1.1.1.1")
    assert wait_for(lambda: loc.country("1.1.1.1")) == "AU"


def test_bootstrap_redirect_like_arin_is_followed(make) -> None:
    srv = RdapServer(redirect=True)
    try:
        srv.set_answer("185.60.216.35", rs.country("IE", "185.60.216.0/22"))
        loc = make(bootstrap_url=srv.bootstrap_url)
        loc.country("185.60.216.35")
        assert wait_for(lambda: loc.country("185.60.216.35")) == "IE"
        assert srv.hits_for("185.60.216.35") == 1
        assert srv.requests["185.60.216.35"] == 2  # bootstrap 302, then the registry
        assert any(p.startswith("/rir/arin/ip/") for p in srv.paths)
    finally:
        srv.close()


def test_concurrent_calls_before_the_answer_make_one_request(server: RdapServer, make) -> None:
    server.set_answer("1.1.1.1", rs.hang(0.5, rs.country("AU", "1.1.1.0/24")))
    loc = make()
    barrier = threading.Barrier(8)
    results: list[str | None] = []
    lock = threading.Lock()

    def caller() -> None:
        barrier.wait()
        for _ in range(50):
            r = loc.country("1.1.1.1")
            with lock:
                results.append(r)

    threads = [threading.Thread(target=caller) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [None] * 400
    assert wait_for(lambda: loc.country("1.1.1.1")) == "AU"
    assert server.hits_for("1.1.1.1") == 1
    st = loc.stats()
    assert st["lookups"] == 1 and st["coalesced"] >= 399


def test_lookup_country_blocking_function(server: RdapServer) -> None:
    server.set_answer("8.8.4.4", rs.country("US", "8.8.4.0/24", handle="NET-8-8-4-0-1"))
    answer = lookup_country(ipaddress.ip_address("8.8.4.4"), server.bootstrap_url, 2.0, make_opener({}))
    assert answer.country == "US" and answer.cause is None and answer.handle == "NET-8-8-4-0-1"
    assert (answer.start, answer.end) == (int(ipaddress.ip_address("8.8.4.0")), int(ipaddress.ip_address("8.8.4.255")))
    # ipwhois refuses special-purpose addresses itself, before any request
    reserved = lookup_country(ipaddress.ip_address("10.1.2.3"), server.bootstrap_url, 2.0, make_opener({}))
    assert reserved.country is None and "reserved" in (reserved.cause or "")
    assert server.total_requests() == 1


def test_ipwhois_lookup_rdap_with_module_urls_reaches_only_the_local_server(server: RdapServer) -> None:
    """What NOTES.md says about ipwhois holds: bootstrap=True needs inc_nir=False, and the URLs come from
    module attributes (here the local server, set by the autouse fixture)."""
    server.set_answer("8.8.8.8", rs.country("US"))
    who = ipwhois.IPWhois("8.8.8.8", timeout=2, proxy_opener=make_opener({}))
    result = who.lookup_rdap(depth=0, bootstrap=True, inc_nir=False, retry_count=0, rate_limit_timeout=0)
    assert result["network"]["country"] == "US"
    assert server.hits_for("8.8.8.8") == 1


# -- network-range cache --------------------------------------------------------------------------------


def test_neighbours_in_the_rdap_range_hit_the_cache(server: RdapServer, make) -> None:
    server.set_answer("8.8.8.8", rs.country("US", "8.8.8.0/24"))
    server.set_answer("8.8.9.1", rs.country("US", "8.8.9.0/24"))
    loc = make()
    loc.country("8.8.8.8")
    wait_for(lambda: loc.country("8.8.8.8"))
    assert loc.country("8.8.8.200") == "US"
    assert loc.country("8.8.8.0") == "US" and loc.country("8.8.8.255") == "US"
    assert loc.country("8.8.9.1") is None  # outside the range: a lookup
    wait_for(lambda: loc.country("8.8.9.1"))
    assert server.hits_for("8.8.8.200") == 0 and server.hits_for("8.8.8.8") == 1
    assert loc.stats()["range_hits"] == 3


def test_too_broad_or_foreign_ranges_are_not_used(server: RdapServer, make) -> None:
    server.set_answer("4.4.4.4", rs.country("US", "0.0.0.0/4"))  # broader than a /8
    server.set_answer("5.5.5.5", rs.country("DE", "6.6.6.0/24"))  # does not contain the address
    loc = make()
    for ip in ("4.4.4.4", "5.5.5.5"):
        loc.country(ip)
    wait_for(lambda: loc.country("4.4.4.4") and loc.country("5.5.5.5"))
    assert loc.country("4.4.4.5") is None
    assert loc.country("6.6.6.6") is None
    assert loc.stats()["range_entries"] == 0


# -- negative results ------------------------------------------------------------------------------------

NEGATIVES = {
    "404": (rs.status(404), "HTTP 404"),
    "500": (rs.status(500), "HTTP 500"),
    "429": (rs.status(429), "rate limited"),
    "rate-limit-notice": (rs.Answer(extra={"notices": [{"title": "Rate Limit Notice", "description": ["slow"]}]}),
                          "rate limited"),
    "html": (rs.garbage(), "not JSON"),
    "json-list": (rs.garbage(b"[1, 2, 3]"), "not JSON"),
    "not-a-network": (rs.garbage(b'{"objectClassName": "ip network", "country": "US"}'), "not an RDAP IP network"),
    "handle-not-text": (rs.garbage(b'{"handle": 7, "startAddress": "1.0.0.0", "endAddress": "1.0.0.255",'
                                   b' "ipVersion": "v4", "country": "US"}'), "malformed"),
    "no-country": (rs.country(None), rdap.NO_COUNTRY),
    "EU": (rs.country("EU"), rdap.NOT_ISO),
    "ZZ": (rs.country("ZZ"), rdap.NOT_ISO),
    "country-not-text": (rs.Answer(extra={"country": ["US"]}), rdap.NO_COUNTRY),
}


@pytest.mark.parametrize("case", list(NEGATIVES))
def test_negative_result_is_cached(server: RdapServer, make, case: str) -> None:
    answer, cause = NEGATIVES[case]
    server.set_answer("9.9.9.9", answer)
    loc = make(negative_ttl=60)
    started = time.monotonic()
    assert loc.country("9.9.9.9") is None
    wait_for(lambda: loc.stats()["negatives"] == 1)
    assert time.monotonic() - started < 1.5  # no retries, no rate-limit sleep
    for _ in range(100):
        assert loc.country("9.9.9.9") is None
    time.sleep(0.1)
    assert server.hits_for("9.9.9.9") == 1  # no second request within the negative TTL
    st = loc.stats()
    assert (st["lookups"], st["answers"], st["negatives"], st["cache_entries"], st["in_flight"]) == (1, 0, 1, 1, 0)
    causes = loc.negative_causes()
    assert len(causes) == 1 and cause in next(iter(causes)), causes


def test_unreachable_server_is_a_negative_result(make) -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    loc = make(bootstrap_url=f"http://127.0.0.1:{port}/bootstrap")
    loc.country("8.8.8.8")
    wait_for(lambda: loc.stats()["negatives"] == 1)
    assert loc.country("8.8.8.8") is None
    assert "connection failed" in next(iter(loc.negative_causes()))


def test_each_cause_is_logged_once(server: RdapServer, make, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="geoblock")
    ips = {"9.9.9.1": rs.status(500), "9.9.9.2": rs.status(500), "9.9.9.3": rs.status(500),
           "9.9.9.4": rs.status(404), "9.9.9.5": rs.status(404), "9.9.9.6": rs.country("EU"),
           "9.9.9.7": rs.country("EU")}
    for ip, answer in ips.items():
        server.set_answer(ip, answer)
    loc = make()
    for ip in ips:
        loc.country(ip)
    wait_for(lambda: loc.stats()["negatives"] == len(ips))
    records = [r for r in caplog.records if r.name == "geoblock"]
    messages = [r.getMessage() for r in records]
    assert len(records) == 3, messages
    assert sum("HTTP 500" in m for m in messages) == 1
    assert sum("HTTP 404" in m for m in messages) == 1
    assert [r.levelno for r in records if rdap.NOT_ISO in r.getMessage()] == [logging.INFO]
    assert loc.negative_causes() == {"HTTP 500 from the RDAP server": 3, "HTTP 404 from the RDAP server": 2,
                                     rdap.NOT_ISO: 2}


# -- a hanging server --------------------------------------------------------------------------------------


def test_hanging_server_never_blocks_callers_and_ends_by_the_timeout(server: RdapServer, make) -> None:
    server.set_answer("9.9.9.9", rs.hang(20, rs.country("CH")))
    server.default = rs.country("US")  # every other address is answered at once
    loc = make(timeout=1.0, workers=4, max_queued=1000)
    started = time.monotonic()
    assert loc.country("9.9.9.9") is None
    wait_for(lambda: server.hits_for("9.9.9.9") == 1)
    others = [f"8.{i}.{j}.1" for i in range(1, 5) for j in range(25)]  # 100 addresses, distinct /24s
    durations = []
    for _ in range(3):
        for ip in others:
            t0 = time.perf_counter()
            loc.country(ip)
            durations.append(time.perf_counter() - t0)
    assert time.monotonic() - started < 1.0, "the measurement must run while the hang is in progress"
    assert loc.stats()["negatives"] == 0  # the hanging lookup is still running
    assert max(durations) < 0.005, f"slowest call {max(durations) * 1000:.2f} ms"
    # the others are answered by the free workers meanwhile
    wait_for(lambda: all(loc.country(ip) == "US" for ip in others))
    # the hanging lookup ends by the timeout, long before the server would answer
    wait_for(lambda: loc.stats()["negatives"] == 1)
    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 3.0, elapsed
    assert loc.country("9.9.9.9") is None
    assert "no answer within 1 s" in loc.negative_causes()
    assert loc.stats()["in_flight"] == 0


# -- addresses never looked up ----------------------------------------------------------------------------

NON_GLOBAL = [
    "10.0.0.1", "127.0.0.1", "192.0.2.1", "::1", "fe80::1", "172.16.5.4", "192.168.1.1", "100.64.0.1",
    "169.254.169.254", "0.0.0.0", "255.255.255.255", "240.0.0.1", "224.0.0.251", "239.255.255.250",
    "198.18.0.1", "198.51.100.7", "203.0.113.9", "2001:db8::1", "fc00::1", "ff02::1", "::", "::ffff:10.0.0.1",
    "64:ff9b::a00:1", "2002:c0a8:101::1", "fe80::1%eth0",  # NAT64 and 6to4 forms of 10.0.0.1, 192.168.1.1
]


def test_non_global_addresses_are_never_requested(server: RdapServer, make) -> None:
    server.default = rs.country("US")
    loc = make()
    for ip in NON_GLOBAL:
        assert loc.country(ip) is None
        assert loc.country(ipaddress.ip_address(ip.split("%")[0])) is None
    assert loc.country("not an address") is None
    time.sleep(0.2)
    assert server.total_requests() == 0
    st = loc.stats()
    assert st["skipped"] == 2 * len(NON_GLOBAL) + 1
    assert st["lookups"] == 0 and st["cache_entries"] == 0


def test_disabled_locator_never_looks_up(server: RdapServer, make) -> None:
    server.default = rs.country("US")
    loc = make(enabled=False)
    for _ in range(10):
        assert loc.country("8.8.8.8") is None
    time.sleep(0.2)
    assert server.total_requests() == 0
    assert loc.stats()["lookups"] == 0


# -- bounds ----------------------------------------------------------------------------------------------


def test_queue_bound_sheds_lookups(server: RdapServer, make) -> None:
    server.default = rs.hang(30, rs.country("US"))
    loc = make(workers=1, max_queued=2, timeout=10.0)
    ips = [f"8.8.{i}.8" for i in range(10)]
    assert [loc.country(ip) for ip in ips] == [None] * 10
    st = loc.stats()
    assert (st["lookups"], st["shed"], st["in_flight"]) == (3, 7, 3)
    wait_for(lambda: server.total_requests() == 1)  # one worker: one request at a time
    assert loc.country(ips[5]) is None and loc.stats()["shed"] == 8  # shed is not cached: still shed
    server.release()  # the hangs end; the three lookups are answered
    wait_for(lambda: loc.stats()["answers"] == 3)
    assert [loc.country(ip) for ip in ips[:3]] == ["US"] * 3
    assert loc.country(ips[5]) is None  # now there is room: scheduled
    wait_for(lambda: loc.country(ips[5]) == "US")
    assert server.hits_for(ips[5]) == 1 and server.total_requests() == 4


def test_cache_is_bounded_lru(server: RdapServer, make) -> None:
    server.default = rs.country("US")
    loc = make(max_entries=3)
    ips = [f"8.{i}.0.1" for i in range(1, 6)]
    for ip in ips:
        loc.country(ip)
        wait_for(lambda ip=ip: loc.country(ip) == "US")
    st = loc.stats()
    assert st["cache_entries"] == 3 and st["range_entries"] == 3
    assert loc.country(ips[0]) is None  # evicted: looked up again
    wait_for(lambda: loc.country(ips[0]) == "US")
    assert server.hits_for(ips[0]) == 2


# -- expiry ----------------------------------------------------------------------------------------------


def test_answer_ttl_expiry_refreshes_serving_the_old_answer_meanwhile(server: RdapServer, make) -> None:
    server.set_answer("8.8.8.8", rs.country("US"))
    loc = make(ttl=0.3)
    loc.country("8.8.8.8")
    wait_for(lambda: loc.country("8.8.8.8") == "US")
    server.set_answer("8.8.8.8", rs.hang(0.3, rs.country("DE")))
    time.sleep(0.35)
    assert loc.country("8.8.8.8") == "US"  # expired: still served while the refresh runs
    assert loc.stats()["lookups"] == 2
    wait_for(lambda: loc.country("8.8.8.8") == "DE")
    assert server.hits_for("8.8.8.8") == 2
    assert loc.country("8.8.8.9") == "DE"  # the refreshed range


def test_negative_ttl_expiry_causes_a_new_lookup(server: RdapServer, make) -> None:
    server.set_answer("8.8.8.8", rs.status(500))
    loc = make(negative_ttl=0.3)
    loc.country("8.8.8.8")
    wait_for(lambda: loc.stats()["negatives"] == 1)
    assert loc.country("8.8.8.8") is None
    assert server.hits_for("8.8.8.8") == 1
    server.set_answer("8.8.8.8", rs.country("FR"))
    time.sleep(0.35)
    assert loc.country("8.8.8.8") is None  # a negative answer is not served stale; a lookup starts
    wait_for(lambda: loc.country("8.8.8.8") == "FR")
    assert server.hits_for("8.8.8.8") == 2


def test_range_entry_expires_with_its_answer(server: RdapServer, make) -> None:
    server.set_answer("8.8.8.8", rs.country("US", "8.8.8.0/24"))
    loc = make(ttl=0.3)
    loc.country("8.8.8.8")
    wait_for(lambda: loc.country("8.8.8.8") == "US")
    time.sleep(0.35)
    assert loc.country("8.8.8.77") is None  # the range expired: this address is looked up itself
    wait_for(lambda: server.hits_for("8.8.8.77") == 1)


# -- shutdown --------------------------------------------------------------------------------------------


def test_close_does_not_wait_and_stops_scheduling(server: RdapServer, make) -> None:
    server.default = rs.hang(30, rs.country("US"))
    loc = make(workers=1, max_queued=5, timeout=10.0)
    for ip in ("8.8.8.8", "8.8.4.4", "1.1.1.1"):
        loc.country(ip)
    wait_for(lambda: server.total_requests() == 1)
    t0 = time.monotonic()
    loc.close()
    assert time.monotonic() - t0 < 0.2
    assert loc.stats()["in_flight"] == 1  # the two queued lookups were cancelled and released
    assert loc.country("9.9.9.9") is None
    assert loc.stats()["lookups"] == 3
    server.release()
    wait_for(lambda: loc.stats()["in_flight"] == 0)
    assert server.total_requests() == 1


def test_missing_resolver_configuration_is_a_clear_negative(server: RdapServer, make, monkeypatch) -> None:
    """ipwhois's Net builds a dnspython resolver even for RDAP; without /etc/resolv.conf it raises."""
    import dns.resolver
    import ipwhois.net

    def no_config(*args, **kwargs):
        raise dns.resolver.NoResolverConfiguration("cannot open /etc/resolv.conf")

    monkeypatch.setattr(ipwhois.net.dns.resolver, "Resolver", no_config)
    server.default = rs.country("US")
    loc = make()
    loc.country("8.8.8.8")
    wait_for(lambda: loc.stats()["negatives"] == 1)
    assert "DNS resolver configuration" in next(iter(loc.negative_causes()))
    assert server.total_requests() == 0
