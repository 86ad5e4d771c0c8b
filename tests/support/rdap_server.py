"""A local RDAP server on 127.0.0.1 for tests: no test ever talks to a real registry.

It answers the URLs ipwhois requests:
- the bootstrap service, `<url>/bootstrap/ip/<address>` (what `RdapLocator(bootstrap_url=...)` and
  `ipwhois.rdap.BOOTSTRAP_URL` point at). With `redirect=True` it answers like the real ARIN bootstrap,
  with a 302 to the registry's URL on this same server; otherwise it answers itself;
- the registries, `<url>/rir/<name>/ip/<address>` and `<url>/rir/<name>/entity/<handle>` (what
  `rir_rdap()` gives, to stand in for `ipwhois.rdap.RIR_RDAP`).

Answers are configured per address (`set_answer`): a country (with its network range), an HTTP status,
a body that is not JSON, a JSON document that is not a network object, or a hang for N seconds (released
early by `release()` / `close()`). Requests are counted per address.
"""

from __future__ import annotations

import dataclasses
import http.server
import ipaddress
import json
import threading
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import unquote

RIRS = ("arin", "ripencc", "apnic", "lacnic", "afrinic")


@dataclass
class Answer:
    """What the server answers for one address."""

    status: int = 200
    country: str | None = "US"  # None: the network object has no country field
    network: str | None = None  # the CIDR of the network object; default: the address's /24 or /48
    body: bytes | None = None  # raw body instead of an RDAP document (garbage, wrong JSON)
    hang: float = 0.0  # seconds to sleep before answering
    handle: str = "NET-TEST-1"
    extra: dict = field(default_factory=dict)  # fields merged into the RDAP document


def country(code: str | None, network: str | None = None, **kw) -> Answer:
    return Answer(country=code, network=network, **kw)


def status(code: int) -> Answer:
    return Answer(status=code)


def garbage(body: bytes = b"<html><body>Service Unavailable</body></html>") -> Answer:
    return Answer(body=body)


def hang(seconds: float, then: Answer | None = None) -> Answer:
    return dataclasses.replace(then or Answer(), hang=seconds)


def network_document(addr: str, answer: Answer) -> dict:
    """A realistic RDAP IP network object (RFC 9083 section 5.4), as registries publish them."""
    ip = ipaddress.ip_address(addr)
    if answer.network:
        net = ipaddress.ip_network(answer.network, strict=False)
    else:
        net = ipaddress.ip_network(f"{ip}/{24 if ip.version == 4 else 48}", strict=False)
    doc = {
        "rdapConformance": ["nro_rdap_profile_0", "rdap_level_0", "cidr0"],
        "notices": [
            {
                "title": "Terms of Service",
                "description": ["By using the RDAP service, you are agreeing to the Terms of Use"],
                "links": [{"value": "http://127.0.0.1/", "rel": "terms-of-service",
                           "type": "text/html", "href": "http://127.0.0.1/tos.html"}],
            }
        ],
        "objectClassName": "ip network",
        "handle": answer.handle,
        "startAddress": str(net.network_address),
        "endAddress": str(net.broadcast_address),
        "ipVersion": f"v{ip.version}",
        "name": "TEST-NETWORK",
        "type": "DIRECT ALLOCATION",
        "parentHandle": "NET-TEST-0",
        "status": ["active"],
        "cidr0_cidrs": [{f"v{ip.version}prefix": str(net.network_address), "length": net.prefixlen}],
        "events": [
            {"eventAction": "registration", "eventDate": "2014-03-14T16:52:05-04:00"},
            {"eventAction": "last changed", "eventDate": "2023-11-10T07:46:20-05:00"},
        ],
        "links": [{"value": f"http://127.0.0.1/ip/{addr}", "rel": "self",
                   "type": "application/rdap+json", "href": f"http://127.0.0.1/ip/{net}"}],
        "entities": [],
        "port43": "whois.test",
    }
    if answer.country is not None:
        doc["country"] = answer.country
    doc.update(answer.extra)
    return doc


class _Handler(http.server.BaseHTTPRequestHandler):
    disable_nagle_algorithm = True
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        owner = self.server.owner
        parts = [unquote(p) for p in self.path.split("?", 1)[0].split("/") if p]
        owner.record(self.path, parts)
        # /bootstrap/ip/<addr>
        if len(parts) == 3 and parts[0] == "bootstrap" and parts[1] == "ip":
            if owner.redirect:
                self._send(302, b"", extra=[("Location", f"{owner.url}/rir/arin/ip/{parts[2]}")])
                return
            self._answer(parts[2])
            return
        # /rir/<name>/ip/<addr>
        if len(parts) == 4 and parts[0] == "rir" and parts[2] == "ip":
            self._answer(parts[3])
            return
        self._error(404, "not found")

    def _answer(self, addr: str) -> None:
        owner = self.server.owner
        answer = owner.answer_for(addr)
        if answer is None:
            self._error(404, f"no network for {addr}")
            return
        if answer.hang:
            owner.released.wait(answer.hang)
        if answer.status != 200:
            self._error(answer.status, "configured error")
            return
        if answer.body is not None:
            self._send(200, answer.body, ctype="text/html")
            return
        body = json.dumps(network_document(addr, answer)).encode()
        self._send(200, body)

    def _error(self, code: int, text: str) -> None:
        body = json.dumps({"rdapConformance": ["rdap_level_0"], "errorCode": code, "title": text,
                           "description": [text]}).encode()
        self._send(code, body)

    def _send(self, code: int, body: bytes, ctype: str = "application/rdap+json",
              extra: list[tuple[str, str]] = ()) -> None:  # type: ignore[assignment]
        try:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for name, value in extra:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
        except OSError:  # the client gave up (timeout) while we hung
            pass

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    owner: "RdapServer"

    def handle_error(self, request, client_address):  # type: ignore[no-untyped-def]
        pass


class RdapServer:
    """The RDAP server; `url` is its base, `bootstrap_url` what to configure as the bootstrap URL."""

    __test__ = False

    def __init__(self, redirect: bool = False, default: Answer | None = None) -> None:
        self.redirect = redirect
        self.default = default  # the answer for unconfigured addresses; None: 404
        self.answers: dict[str, Answer] = {}
        self.hits: Counter[str] = Counter()  # bootstrap (lookup) requests per address
        self.requests: Counter[str] = Counter()  # all requests per address (bootstrap and registry)
        self.paths: list[str] = []
        self.lock = threading.Lock()
        self.released = threading.Event()
        self.httpd = _Server(("127.0.0.1", 0), _Handler)
        self.httpd.owner = self
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.bootstrap_url = f"{self.url}/bootstrap"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True,
                                       name="rdap-server")
        self.thread.start()

    def rir_rdap(self) -> dict[str, dict[str, str]]:
        """A stand-in for ipwhois.rdap.RIR_RDAP with every registry on this server."""
        return {
            rir: {"ip_url": f"{self.url}/rir/{rir}/ip/{{0}}", "entity_url": f"{self.url}/rir/{rir}/entity/{{0}}"}
            for rir in RIRS
        }

    def set_answer(self, addr: str, answer: Answer) -> None:
        with self.lock:
            self.answers[str(ipaddress.ip_address(addr))] = answer

    def answer_for(self, addr: str) -> Answer | None:
        try:
            key = str(ipaddress.ip_address(addr))
        except ValueError:
            return None
        with self.lock:
            return self.answers.get(key, self.default)

    def record(self, path: str, parts: list[str]) -> None:
        addr = parts[-1] if len(parts) >= 3 and parts[-2] == "ip" else None
        with self.lock:
            self.paths.append(path)
            if addr is not None:
                try:
                    addr = str(ipaddress.ip_address(addr))
                except ValueError:
                    pass
                self.requests[addr] += 1
                if parts[0] == "bootstrap":
                    self.hits[addr] += 1

    def hits_for(self, addr: str) -> int:
        with self.lock:
            return self.hits[str(ipaddress.ip_address(addr))]

    def total_requests(self) -> int:
        with self.lock:
            return len(self.paths)

    def release(self) -> None:
        """End every hang now."""
        self.released.set()

    def close(self) -> None:
        self.release()
        self.httpd.shutdown()
        self.httpd.server_close()
