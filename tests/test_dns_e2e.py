"""The DNS layer through a real mitmdump in DNS mode, with a stub upstream resolver on loopback."""

from __future__ import annotations

import json
import random
import socket
import threading
import time

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rrset
import pytest

from support.proc import Mitmdump, free_port

pytestmark = pytest.mark.e2e

# mitmproxy forwards to port 53 of its name servers: each run picks its own loopback address for the
# stub, so concurrent runs on one machine do not meet
STUB = f"127.{random.randint(64, 250)}.{random.randint(1, 250)}.{random.randint(2, 250)}"
ECH = "AEX+DQBBpQAgACB/RMw4f9J1ECRAOQwTtuk4ijBTrjpwcQEGWTCJbGRNUQAEAAEAAQASY2xvdWRmbGFyZS1lY2guY29tAAA="


class StubResolver:
    """Answers every A question with 127.0.0.1 and counts the questions it saw."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((STUB, 53))
        self.seen: list[str] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                data, addr = self.sock.recvfrom(4096)
            except OSError:
                return
            query = dns.message.from_wire(data)
            self.seen.append(str(query.question[0].name).rstrip("."))
            answer = dns.message.make_response(query)
            if query.question[0].rdtype == 1:
                answer.answer.append(dns.rrset.from_text(query.question[0].name, 60, "IN", "A", "127.0.0.1"))
            elif query.question[0].rdtype in (64, 65):  # SVCB or HTTPS, with an ECH configuration
                rdtype = "HTTPS" if query.question[0].rdtype == 65 else "SVCB"
                answer.answer.append(dns.rrset.from_text(query.question[0].name, 60, "IN", rdtype,
                                                         f'1 . alpn="h2" ech="{ECH}"'))
            self.sock.sendto(answer.to_wire(), addr)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def stub():
    try:
        resolver = StubResolver()
    except PermissionError as exc:
        pytest.skip(f"binding the stub resolver on {STUB}:53 needs root ({exc})")
    yield resolver
    resolver.close()


@pytest.fixture
def dns_proxy(tmp_path, rules_dir, geo_dir, stub):
    port = free_port()
    log = tmp_path / "decisions.jsonl"
    proxy = Mitmdump(tmp_path / "conf", {
        "geoblock_rules": rules_dir,
        "geoblock_country_db": geo_dir / "GeoLite2-Country.mmdb",
        "geoblock_asn_db": geo_dir / "GeoLite2-ASN.mmdb",
        "geoblock_log": log,
        "dns_name_servers": STUB,
        "dns_use_hosts_file": False,
    }, extra_args=["--mode", "regular", "--mode", f"dns@{port}"])
    proxy.dns_port = port
    with proxy:
        yield proxy, stub, log


def ask(proxy, name: str) -> dns.message.Message:
    return dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=proxy.dns_port, timeout=5)


def test_dns_blocks_by_name_and_answers_the_rest(dns_proxy):
    proxy, stub, log = dns_proxy
    blocked = ask(proxy, "api.binance.com")
    assert blocked.rcode() == dns.rcode.NXDOMAIN and not blocked.answer
    allowed = ask(proxy, "allowed.test")
    assert allowed.rcode() == dns.rcode.NOERROR
    assert [r.address for r in allowed.answer[0]] == ["127.0.0.1"]
    assert "allowed.test" in stub.seen
    time.sleep(0.1)
    recs = [json.loads(l) for l in log.read_text().splitlines()]
    dns_recs = [(r["name"], r["action"], r["rule"]) for r in recs if r["stage"] == "dns"]
    assert ("api.binance.com", "block", "offshore-crypto-exchanges") in dns_recs
    assert ("allowed.test", "allow", None) in dns_recs


@pytest.mark.parametrize("rdtype", ["HTTPS", "SVCB"])
def test_ech_is_removed_from_https_and_svcb_answers(dns_proxy, rdtype):
    proxy, stub, log = dns_proxy
    reply = dns.query.udp(dns.message.make_query("allowed.test", rdtype), "127.0.0.1", port=proxy.dns_port,
                          timeout=5)
    assert reply.rcode() == dns.rcode.NOERROR and reply.answer
    text = reply.answer[0].to_text()
    assert 'alpn="h2"' in text and "ech=" not in text  # clients fall back to a plain, visible SNI
