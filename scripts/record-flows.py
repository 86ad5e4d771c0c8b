#!/usr/bin/env python3
"""Record the replay corpus: tests/flows/http.mitm, tests/flows/https.mitm and tests/flows/expected.json.

    .venv-3.11/bin/python scripts/record-flows.py          (or .venv-3.12/bin/python ...)

Everything happens on loopback: local HTTP and HTTPS test servers (tests/support/servers.py) on
127.0.0.1, .2, .3 and .5, a real `mitmdump -w FILE` WITHOUT geoblock (so every request reaches its server
and is recorded with its response), and real `curl` clients speaking through it:

- plain HTTP: curl sends an absolute-form request to a server's IP literal and names the site with a
  `Host:` header (the usual explicit-proxy HTTP flow);
- HTTPS: curl sends CONNECT to the server's IP (`--connect-to NAME:443:IP:PORT`) and keeps the name for
  the SNI and the Host header; mitmdump intercepts (clients trust its CA, it does not verify the test
  servers: ssl_insecure).

The test GeoIP database (tests/support/geodb.py) places 127.0.0.1 in CN (home), .2 in SG (AS64501),
.3 in US (AS64502), .5 in SG; the ruleset of tests/test_replay.py is rules/*.yaml + tests/rules/extra.yaml.

The verdicts in expected.json are NOT computed by geoblock: they are the tables below, written by hand
from the rules (each line says why). Change a request, change its expectation with it. The script checks
that each recorded file holds exactly the requests of its table, in order, each answered by its server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mitmproxy import http, io as mio
from mitmproxy import version as mversion

import _paths  # makes tests/support importable as `support`
from support.proc import Mitmdump
from support.servers import TestServer, make_pki

REPO = _paths.REPO

FLOWS = REPO / "tests" / "flows"
SERVERS = ("127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.5")

CRYPTO = "offshore-crypto-exchanges"  # rules/crypto-exchanges.yaml: block listed exchanges wherever they are
REVIEW = "review-offshore-trading-names"  # rules/review.yaml: log offshore servers with trading-like names


@dataclass(frozen=True)
class Req:
    """One request of the corpus and the verdict geoblock must give it (by hand, from the rules)."""

    server: str  # the test server (loopback IP) the request really goes to
    action: str  # expected: allow | log | block
    rule: str | None  # expected rule id (None: no rule, the policy default)
    why: str  # the reasoning, from the rules
    host: str | None = None  # HTTP: the Host header curl sends (None: the URL's own, the IP literal)
    name: str | None = None  # HTTPS: the name in the URL, so the SNI and Host (None: the IP literal)
    host_override: str | None = None  # HTTPS: a Host header different from the SNI
    client: str = "127.0.0.1"  # the client's source address (curl --interface)


# Plain HTTP through the proxy. Names = the Host header (the request target is the server's IP literal,
# which is not a name). The server's address is the IP dialled.
HTTP: list[Req] = [
    Req("127.0.0.2", "block", CRYPTO, "binance.com is listed in the crypto-exchange block list (no location "
        "condition)", host="binance.com"),
    Req("127.0.0.1", "block", CRYPTO, "API.Binance.COM. normalises to api.binance.com, under binance.com; the "
        "rule blocks even at a home (CN) server", host="API.Binance.COM."),
    Req("127.0.0.1", "allow", None, "no rule names allowed.test; CN server: no network, ASN or client rule "
        "applies; default allow", host="allowed.test"),
    Req("127.0.0.3", "log", "us-asn-log", "allowed.test itself matches nothing, but the US server is in "
        "AS64502: us-asn-log (no name condition)", host="allowed.test"),
    Req("127.0.0.2", "allow", "exact-allow", "=pay.binance.com is allowed exactly; allow beats the "
        "crypto-exchange block on the same name", host="pay.binance.com"),
    Req("127.0.0.1", "block", CRYPTO, "www.pay.binance.com is not the exact name of exact-allow, but is under "
        "binance.com", host="www.pay.binance.com"),
    Req("127.0.0.2", "block", "offshore-only", "offshore-only.test on an SG server: offshore (home is CN)",
        host="offshore-only.test"),
    Req("127.0.0.1", "allow", None, "offshore-only.test on a CN server: onshore, offshore-only does not apply",
        host="offshore-only.test"),
    Req("127.0.0.1", "block", "idn-block", "xn--bcher-kva.example is the A-label of bücher.example "
        "(idn-block)", host="xn--bcher-kva.example"),
    Req("127.0.0.1", "block", "idn-block", "a raw UTF-8 Host bücher.example normalises to "
        "xn--bcher-kva.example (idn-block)", host="bücher.example"),
    Req("127.0.0.2", "log", REVIEW, "coin-exchange.test matches *exchange* and the SG server is "
        "offshore: review rule logs", host="coin-exchange.test"),
    Req("127.0.0.1", "allow", None, "coin-exchange.test on a CN server: not offshore, the review rule does "
        "not apply", host="coin-exchange.test"),
    Req("127.0.0.3", "log", REVIEW, "coin-exchange.test on the US server: both the review rule and "
        "us-asn-log log; the first rule in file order (review.yaml before zz-extra.yaml) is reported",
        host="coin-exchange.test"),
    Req("127.0.0.1", "block", "below-only", "a.wild.test is below wild.test (*.wild.test)", host="a.wild.test"),
    Req("127.0.0.1", "allow", None, "wild.test itself is not covered by *.wild.test", host="wild.test"),
    Req("127.0.0.1", "allow", None, "notbinance.com is not under binance.com", host="notbinance.com"),
    Req("127.0.0.5", "block", "blocked-network", "IP literal, no name at all: the server 127.0.0.5 is in "
        "blocked-network"),
    Req("127.0.0.1", "allow", None, "IP literal to a CN server: no name, no rule applies; default allow"),
    Req("127.0.0.1", "block", "blocked-client", "client 127.0.0.9 is in blocked-client, whatever the name",
        host="allowed.test", client="127.0.0.9"),
]

# Intercepted HTTPS through the proxy (CONNECT to the IP). Names = the Host header and the SNI.
HTTPS: list[Req] = [
    Req("127.0.0.2", "block", CRYPTO, "SNI and Host binance.com: crypto-exchange block list", name="binance.com"),
    Req("127.0.0.1", "block", CRYPTO, "okx.com is listed; blocked even at a CN server", name="okx.com"),
    Req("127.0.0.1", "allow", None, "allowed.test on a CN server: nothing applies", name="allowed.test"),
    Req("127.0.0.2", "block", "offshore-only", "offshore-only.test on an SG server", name="offshore-only.test"),
    Req("127.0.0.1", "allow", None, "offshore-only.test on a CN server: onshore", name="offshore-only.test"),
    Req("127.0.0.3", "allow", "exact-allow", "pay.binance.com: exact-allow applies; allow beats both the "
        "crypto block and the US server's us-asn-log", name="pay.binance.com"),
    Req("127.0.0.1", "block", CRYPTO, "SNI allowed.test but Host binance.com: the strictest name wins",
        name="allowed.test", host_override="binance.com"),
    Req("127.0.0.2", "log", REVIEW, "coin-exchange.test on an SG server: review rule logs",
        name="coin-exchange.test"),
    Req("127.0.0.5", "block", "blocked-network", "IP literal (no SNI, Host is the IP): 127.0.0.5 is in "
        "blocked-network"),
]


def curl(proxy: str, url: str, args: list[str], client: str) -> None:
    cmd = ["curl", "-sS", "--max-time", "15", "-o", "/dev/null", "-w", "%{http_code}", "-x", proxy,
           "--noproxy", "", "--interface", client, *args, url]
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=env)
    if done.returncode != 0 or done.stdout != "200":
        raise SystemExit(f"record-flows: {' '.join(cmd)} failed (rc {done.returncode}, HTTP {done.stdout}): "
                         f"{done.stderr.strip()}")


def record(kind: str, reqs: list[Req], work: Path, servers: dict[str, TestServer]) -> list[dict[str, object]]:
    """Run mitmdump -w tests/flows/<kind>.mitm and one curl per request; return the expectations."""
    out = FLOWS / f"{kind}.mitm"
    tmp = work / f"{kind}.mitm"
    confdir = work / f"conf-{kind}"
    proxy = Mitmdump(confdir, with_geoblock=False, extra_args=["-w", str(tmp), "--set", "ssl_insecure=true"])
    expected: list[dict[str, object]] = []
    with proxy:
        ca = confdir / "mitmproxy-ca-cert.pem"
        for index, req in enumerate(reqs):
            server = servers[req.server]
            path = f"/{kind}/{index:02d}"
            args: list[str] = []
            if kind == "http":
                url = f"http://{req.server}:{server.port}{path}"
                host = req.host if req.host is not None else f"{req.server}:{server.port}"
                if req.host is not None:
                    args += ["-H", f"Host: {req.host}"]
                sni = None
            else:
                args += ["--cacert", str(ca)]
                if req.name is not None:
                    url = f"https://{req.name}{path}"
                    args += ["--connect-to", f"{req.name}:443:{req.server}:{server.port}"]
                    host, sni = req.name, req.name
                else:
                    url = f"https://{req.server}:{server.port}{path}"
                    host, sni = f"{req.server}:{server.port}", None
                if req.host_override is not None:
                    args += ["-H", f"Host: {req.host_override}"]
                    host = req.host_override
            before = len(server.requests)
            curl(proxy.url, url, args, req.client)
            # http.server reads header bytes as Latin-1: undo that to compare a UTF-8 Host header.
            got = [(_utf8(h), p) for h, p in server.requests[before:]]
            if got != [(host, path)]:
                raise SystemExit(f"record-flows: {url} did not reach {req.server} as expected: "
                                 f"{server.requests[before:]}")
            expected.append({
                "index": index, "method": "GET", "host": host, "path": path, "sni": sni,
                "server": req.server, "client": req.client,
                "action": req.action, "rule": req.rule, "why": req.why,
            })
    check(tmp, expected)
    out.write_bytes(tmp.read_bytes())
    return expected


def _utf8(text: str | None) -> str | None:
    try:
        return None if text is None else text.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return text


def check(path: Path, expected: list[dict[str, object]]) -> None:
    """The file holds exactly the expected requests, in order, each answered 200 by its server."""
    with open(path, "rb") as fo:
        flows = [f for f in mio.FlowReader(fo).stream()]
    seen = [(f.request.host_header, f.request.path) if isinstance(f, http.HTTPFlow) else repr(f) for f in flows]
    want = [(e["host"], e["path"]) for e in expected]
    if seen != want:
        raise SystemExit(f"record-flows: {path} holds {seen}, expected {want}")
    for flow, exp in zip(flows, expected, strict=False):
        assert isinstance(flow, http.HTTPFlow)
        if flow.response is None or flow.response.status_code != 200:
            raise SystemExit(f"record-flows: {path}: flow {exp['index']} has no 200 response")
        if flow.server_conn.peername is None or flow.server_conn.peername[0] != exp["server"]:
            raise SystemExit(f"record-flows: {path}: flow {exp['index']} went to {flow.server_conn.peername}")


def main() -> int:
    FLOWS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="geoblock-record-") as tmp:
        work = Path(tmp)
        pki = make_pki(work / "pki")
        servers: dict[str, TestServer] = {}
        try:
            for ip in SERVERS:
                servers[ip] = TestServer(ip)
                servers[ip + "/tls"] = TestServer(ip, pki)
            plain = {ip: servers[ip] for ip in SERVERS}
            tls = {ip: servers[ip + "/tls"] for ip in SERVERS}
            files = {
                "http.mitm": record("http", HTTP, work, plain),
                "https.mitm": record("https", HTTPS, work, tls),
            }
        finally:
            for server in servers.values():
                server.close()
    expected = {
        "about": "Expected geoblock verdicts for the recorded flows, by file and flow order, written by hand in "
                 "scripts/record-flows.py (not computed by geoblock). Ruleset: rules/*.yaml + "
                 "tests/rules/extra.yaml; GeoIP: tests/support/geodb.py.",
        "recorded_with": f"mitmproxy {mversion.VERSION}",
        "files": files,
    }
    (FLOWS / "expected.json").write_text(json.dumps(expected, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    for name, exp in files.items():
        size = (FLOWS / name).stat().st_size
        counts = {a: sum(1 for e in exp if e["action"] == a) for a in ("allow", "log", "block")}
        print(f"tests/flows/{name}: {len(exp)} flows, {size} bytes, expected {counts}")
    print("tests/flows/expected.json written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
