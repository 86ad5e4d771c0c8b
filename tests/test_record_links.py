"""Decision records that join up: every record of one client connection carries the same
`connection_id`, the client's port and the server's port, and the gateway's host name, through a real
mitmdump with geoblock_intercept and a real client (curl) that makes browser-like visits: a CONNECT, a
TLS handshake, then HTTP requests on the same connection."""

from __future__ import annotations

import socket
import subprocess

import pytest

from support.decisions import records
from support.proc import Mitmdump, geoblock_options

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def intercepting(tmp_path_factory, rules_dir, geo_dir, pki):
    d = tmp_path_factory.mktemp("links")
    m = Mitmdump(d / "conf", geoblock_options(rules_dir, geo_dir, d / "decisions.jsonl", geoblock_intercept=True,
                                              ssl_verify_upstream_trusted_ca=pki.ca_pem))
    m.decisions = d / "decisions.jsonl"
    with m:
        yield m


def visit(proxy: Mitmdump, *urls: str, server: tuple[str, int], name: str) -> tuple[str, list[tuple[int, int]]]:
    """curl `urls` (all on `name`) through `proxy` on one connection, `name` reached at `server`, trusting
    mitmproxy's CA. Returns curl's output and, per URL, (the local port of the connection to the proxy,
    the number of new connections curl made for it)."""
    ca = proxy.confdir / "mitmproxy-ca-cert.pem"
    out = subprocess.run(
        ["curl", "-sS", "--max-time", "10", "-x", proxy.url, "--cacert", str(ca), "--http1.1",
         "--connect-to", f"{name}:443:{server[0]}:{server[1]}", "-w", "\n@@ %{local_port} %{num_connects}\n",
         *urls], capture_output=True, text=True, timeout=30)
    marks = [line.split()[1:] for line in out.stdout.splitlines() if line.startswith("@@ ")]
    assert len(marks) == len(urls), out.stdout + out.stderr
    return out.stdout, [(int(port), int(connects)) for port, connects in marks]


def test_a_visit_of_two_requests_on_one_connection_shares_one_connection_id(intercepting, servers):
    s = servers["https1"]
    body, conns = visit(intercepting, "https://allowed.test/a", "https://allowed.test/b", server=(s.host, s.port),
                        name="allowed.test")
    assert body.count("hello from 127.0.0.1") == 2
    (port, first), (port_again, again) = conns
    assert (first, again, port_again) == (1, 0, port)  # the second request went on the same connection
    mine = records(intercepting.decisions, client_port=port)
    # the CONNECT, the ClientHello, and each request (the second from the keep-alive memo's cached line)
    assert [(r["stage"], r["action"]) for r in mine] == [("connect", "allow"), ("tls", "allow"), ("http", "allow"),
                                                         ("http", "allow")], mine
    assert len({r["connection_id"] for r in mine}) == 1 and mine[0]["connection_id"]
    assert all(r["client"] == "127.0.0.1" and r["server_port"] == s.port for r in mine), mine
    assert all(r["observer_hostname"] == socket.gethostname() for r in mine)
    assert mine[0]["host"] == "127.0.0.1" and mine[1]["sni"] == "allowed.test" and mine[2]["host"] == "allowed.test"
    # another visit is another connection: another id, another port
    _, ((other_port, _),) = visit(intercepting, "https://allowed.test/c", server=(s.host, s.port), name="allowed.test")
    other = records(intercepting.decisions, client_port=other_port)
    assert other_port != port and len(other) == 3
    assert len({r["connection_id"] for r in other}) == 1
    assert other[0]["connection_id"] != mine[0]["connection_id"]


def test_a_blocked_visit_is_one_connection_in_the_log(intercepting, servers):
    """A blocked HTTPS site: the CONNECT (to an address) is allowed, the ClientHello's SNI is blocked, and
    the request inside gets the 451 page (geoblock_intercept). Three records, one connection."""
    s = servers["https2"]
    body, ((port, _),) = visit(intercepting, "https://binance.com/", server=(s.host, s.port), name="binance.com")
    assert "451" in body and "<strong>binance.com</strong> is blocked" in body, body
    assert s.connections == 0
    mine = records(intercepting.decisions, client_port=port)
    assert [(r["stage"], r["action"]) for r in mine] == [("connect", "allow"), ("tls", "block"), ("http", "block")]
    assert mine[2]["blocked_at"] == "tls" and mine[2]["rule"] == "offshore-crypto-exchanges"
    assert len({r["connection_id"] for r in mine}) == 1
    assert all(r["server_port"] == s.port and r["client"] == "127.0.0.1" for r in mine), mine
    # the count a report wants: one blocked connection, not two blocked records
    blocked = records(intercepting.decisions, action="block")
    assert len({r["connection_id"] for r in blocked if r["client_port"] == port}) == 1
