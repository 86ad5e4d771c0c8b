"""geoblock.mitm.dnsforward against stand-in name servers on loopback (UDP and TCP, real sockets)."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading

import dns.flags
import dns.message
import dns.rrset
import pytest

from geoblock.mitm import dnsforward


def free_udp_tcp_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            with socket.socket() as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port


class NameServer:
    """Answers over UDP with `udp_answers` (a list of functions of the query, each sent in turn) and over
    TCP with the full answer; counts what each transport got."""

    def __init__(self, port: int, udp_answers) -> None:
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", port))
        self.tcp = socket.socket()
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind(("127.0.0.1", port))
        self.tcp.listen()
        self.udp_answers = udp_answers
        self.tcp_questions = 0
        threading.Thread(target=self._udp, daemon=True).start()
        threading.Thread(target=self._tcp, daemon=True).start()

    def _udp(self) -> None:
        while True:
            try:
                data, addr = self.udp.recvfrom(4096)
            except OSError:
                return
            query = dns.message.from_wire(data)
            for make in self.udp_answers:
                self.udp.sendto(make(query), addr)

    def _tcp(self) -> None:
        while True:
            try:
                conn, _ = self.tcp.accept()
            except OSError:
                return
            with conn:
                (size,) = struct.unpack("!H", conn.recv(2))
                query = dns.message.from_wire(conn.recv(size))
                self.tcp_questions += 1
                wire = full(query)
                conn.sendall(struct.pack("!H", len(wire)) + wire)

    def close(self) -> None:
        self.udp.close()
        self.tcp.close()


def full(query: dns.message.Message) -> bytes:
    answer = dns.message.make_response(query)
    answer.answer.append(dns.rrset.from_text(query.question[0].name, 60, "IN", "CNAME", "target.example."))
    answer.answer.append(dns.rrset.from_text("target.example.", 60, "IN", "A", "127.0.0.9"))
    return answer.to_wire()


def truncated(query: dns.message.Message) -> bytes:
    answer = dns.message.make_response(query)
    answer.flags |= dns.flags.TC
    return answer.to_wire()


def other_id(query: dns.message.Message) -> bytes:
    answer = dns.message.make_response(query)
    answer.id = (query.id + 1) & 0xFFFF
    answer.answer.append(dns.rrset.from_text(query.question[0].name, 60, "IN", "A", "127.0.0.66"))
    return answer.to_wire()


def other_question(query: dns.message.Message) -> bytes:
    spoof = dns.message.make_query("elsewhere.example", "A")
    spoof.id = query.id
    answer = dns.message.make_response(spoof)
    answer.answer.append(dns.rrset.from_text("elsewhere.example.", 60, "IN", "A", "127.0.0.66"))
    return answer.to_wire()


@pytest.fixture
def server_factory():
    made = []

    def make(udp_answers):
        port = free_udp_tcp_port()
        made.append(NameServer(port, udp_answers))
        return made[-1], port

    yield make
    for s in made:
        s.close()


def ask(port: int, name: str = "alias.example") -> dns.message.Message:
    query = dns.message.make_query(name, "A")
    wire = asyncio.run(dnsforward.ask(query.to_wire(), ["127.0.0.1"], 5, port=port))
    return dns.message.from_wire(wire)


def test_the_whole_answer_comes_back_with_its_cname_chain(server_factory):
    server, port = server_factory([full])
    answer = ask(port)
    assert [r.rdtype for r in answer.answer] == [5, 1] and server.tcp_questions == 0


def test_a_truncated_answer_is_asked_again_over_tcp(server_factory):
    server, port = server_factory([truncated])
    answer = ask(port)
    assert server.tcp_questions == 1 and [r.rdtype for r in answer.answer] == [5, 1]


def test_answers_to_another_id_or_question_are_ignored(server_factory):
    server, port = server_factory([other_id, other_question, full])
    answer = ask(port)
    assert "127.0.0.66" not in answer.to_text() and "127.0.0.9" in answer.to_text()


def test_no_name_server_answering_raises_no_answer(server_factory):
    server, port = server_factory([])  # receives, never answers
    query = dns.message.make_query("alias.example", "A")
    with pytest.raises(dnsforward.NoAnswer, match="127.0.0.1: no answer in 0.2 s"):
        asyncio.run(dnsforward.ask(query.to_wire(), ["127.0.0.1"], 0.2, port=port))


def test_what_is_not_a_dns_message_is_refused():
    with pytest.raises(ValueError, match="not a DNS message"):
        asyncio.run(dnsforward.ask(b"\0" * 5, ["127.0.0.1"], 0.2))
