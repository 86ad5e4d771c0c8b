"""The evasion table (docs/evasion.md), one test or parametrised case per row, end to end.

Each case runs a real mitmdump with geoblock and a real client: curl, raw sockets sending exact bytes
(request lines and headers, hand-made ClientHellos from tests/support/tls_bytes.py), Python ssl, an
HTTP/2 client (h2). Servers on 127.0.0.x are placed in countries by a test GeoIP database
(tests/support/geodb.py): 127.0.0.1 CN (home), 127.0.0.2 SG (offshore), 127.0.0.5 SG and blocked by
the network rule `blocked-network`, 127.0.0.20-23 GeoIP answers that are not a plain country. Each
case checks what the client sees, that a blocked server saw no connection, and the decision record.

Three proxies: `proxy` (the shipped policy: ech and name_mismatch are log), `strict` (ech: block,
name_mismatch: block, and geoblock_intercept so Host checks apply inside TLS), `intercepting` (the
shipped policy with geoblock_intercept). The transparent-gateway rows run in network namespaces (root).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path

import h2.config
import h2.connection
import h2.errors
import h2.events
import pytest

from support import tls_bytes as et
from support.proc import Mitmdump, connect, curl, geoblock_options, tunnel
from support.servers import TestServer
from support.shipped import copy_shipped_rules

pytestmark = pytest.mark.e2e

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent

BLOCKED_IP = "127.0.0.5"  # SG, rule blocked-network
# spellings of 127.0.0.5 that the system resolver (inet_aton) and mitmproxy accept
BLOCKED_IP_FORMS = {
    "decimal": "2130706437",
    "octal": "0177.0.0.05",
    "hex": "0x7f000005",
    "shortened": "127.5",
    "ipv4-mapped IPv6": "[::ffff:127.0.0.5]",
    "ipv4-mapped IPv6 with zone id": "[::ffff:127.0.0.5%25lo]",
}
HOMOGRAPH = "bіnance.com"  # Cyrillic "і" (U+0456): IDNA xn--bnance-pvf.com, another name than binance.com
LISTED_HOMOGRAPH = "okх.com"  # Cyrillic "х" (U+0445): listed in the test rule known-lookalikes

EVASION_RULES = f"""\
# Test rules for tests/test_evasion.py: a lookalike spelling listed on purpose; a network written in
# its IPv6 (6to4) form.
rules:
  - id: known-lookalikes
    action: block
    domains: [{LISTED_HOMOGRAPH}]
  - id: blocked-6to4-site
    action: block
    networks: ["2002:7f00:7::/48"]
"""


# --------------------------------------------------------------------------------------- fixtures

def make_rules(d: Path, **policy: str) -> Path:
    """The shipped rules + tests/rules/extra.yaml + the lookalike rule; `policy` overrides policy keys."""
    copy_shipped_rules(d)
    shutil.copy(TESTS / "rules" / "extra.yaml", d / "zz-extra.yaml")
    (d / "zz-evasion.yaml").write_text(EVASION_RULES, encoding="utf-8")
    text = (d / "policy.yaml").read_text()
    for key, value in policy.items():
        lines = [line for line in text.splitlines() if line.startswith(f"{key}:")]
        assert len(lines) == 1, key
        text = text.replace(lines[0], f"{key}: {value}")
    (d / "policy.yaml").write_text(text)
    return d


def start_proxy(d: Path, geo_dir: Path, pki, **extra) -> Mitmdump:
    rules = make_rules(d / "rules", **extra.pop("policy", {}))
    m = Mitmdump(d / "conf", geoblock_options(rules, geo_dir, d / "decisions.jsonl", geoblock_rdap=False,
                                              ssl_verify_upstream_trusted_ca=pki.ca_pem, **extra))
    m.decisions = d / "decisions.jsonl"
    return m


@pytest.fixture(scope="module")
def proxy(tmp_path_factory, geo_dir, pki):
    with start_proxy(tmp_path_factory.mktemp("evasion-proxy"), geo_dir, pki) as m:
        yield m


@pytest.fixture(scope="module")
def strict(tmp_path_factory, geo_dir, pki):
    with start_proxy(tmp_path_factory.mktemp("evasion-strict"), geo_dir, pki, geoblock_intercept=True,
                     policy={"ech": "block", "name_mismatch": "block", "unreadable": "block"}) as m:
        yield m


@pytest.fixture(scope="module")
def intercepting(tmp_path_factory, geo_dir, pki):
    with start_proxy(tmp_path_factory.mktemp("evasion-intercept"), geo_dir, pki, geoblock_intercept=True) as m:
        yield m


# ---------------------------------------------------------------------------------------- clients

class Log:
    """The decision records a proxy wrote since the test started."""

    def __init__(self, proxy: Mitmdump) -> None:
        self.path: Path = proxy.decisions
        self.start = len(self._lines())

    def _lines(self) -> list[str]:
        try:
            return self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []

    def all(self) -> list[dict]:
        return [json.loads(line) for line in self._lines()[self.start:]]

    def wait(self, timeout: float = 10.0, **match) -> dict:
        """The last new record with these fields, waiting for it to be written."""
        deadline = time.monotonic() + timeout
        while True:
            found = [r for r in self.all() if all(r.get(k) == v for k, v in match.items())]
            if found:
                return found[-1]
            if time.monotonic() > deadline:
                raise AssertionError(f"no record with {match}; new records: {self.all()}")
            time.sleep(0.05)

    def none(self, settle: float = 0.3, **match) -> None:
        time.sleep(settle)
        found = [r for r in self.all() if all(r.get(k) == v for k, v in match.items())]
        assert not found, found


@pytest.fixture(scope="module")
def impatient(tmp_path_factory, geo_dir, pki):
    """The shipped policy, and first bytes held at most 1 s."""
    with start_proxy(tmp_path_factory.mktemp("evasion-impatient"), geo_dir, pki, geoblock_hold_timeout="1") as m:
        yield m


@pytest.fixture
def log(request):
    for name in ("proxy", "strict", "intercepting", "impatient"):
        if name in request.fixturenames:
            return Log(request.getfixturevalue(name))
    return None


def read_all(sock: socket.socket, timeout: float = 5.0) -> tuple[bytes, bool]:
    """Everything until the peer closes (True) or `timeout` passes without it (False)."""
    sock.settimeout(timeout)
    out = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return out, True
            out += chunk
    except socket.timeout:
        return out, False
    except ConnectionResetError:
        return out, True


def send_raw(proxy: Mitmdump, data: bytes | list[bytes], timeout: float = 5.0) -> bytes:
    """Send exact bytes to the proxy (a list: separate TCP segments), return everything until close."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i, part in enumerate(data if isinstance(data, list) else [data]):
            if i:
                time.sleep(0.05)
            sock.sendall(part)
        return read_all(sock, timeout)[0]


def http_get(proxy: Mitmdump, target: str, *headers: bytes) -> bytes:
    """An HTTP/1.1 request with request target `target` and exactly these header lines."""
    head = b"GET " + target.encode() + b" HTTP/1.1\r\n" + b"".join(h + b"\r\n" for h in headers)
    return send_raw(proxy, head + b"Connection: close\r\n\r\n")


def status(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer[9:12])


def tls_first_record(sock: socket.socket, chunks: list[bytes], timeout: float = 5.0) -> tuple[bytes, bool]:
    """Send `chunks` (separate TCP segments) and read the first TLS record that comes back.

    Returns (record, closed): the bytes of that record (b"" when none came) and whether the
    connection was closed right after it."""
    for i, part in enumerate(chunks):
        if i:
            time.sleep(0.05)
        sock.sendall(part)
    sock.settimeout(timeout)
    out = b""
    try:
        while len(out) < 5 or len(out) < 5 + int.from_bytes(out[3:5], "big"):
            chunk = sock.recv(65536)
            if not chunk:
                return out, True
            out += chunk
    except socket.timeout:
        return out, False
    except ConnectionResetError:
        return out, True
    record = out[:5 + int.from_bytes(out[3:5], "big")]
    if record == et.ACCESS_DENIED_ALERT:
        rest, closed = read_all(sock, 2.0)
        return record + rest, closed
    return record, False


def hello(sni: bytes | None = b"allowed.test", *names: bytes) -> et.Hello:
    """A real ClientHello whose server_name extension lists exactly `sni` (and `names`)."""
    base = et.Hello.parse(et.client_hello("allowed.test"))
    return base.with_server_name(None if sni is None else et.server_name_body(sni, *names))


def assert_denied(answer: tuple[bytes, bool]) -> None:
    """geoblock's TLS access_denied alert, then the connection closed."""
    record, closed = answer
    assert record == et.ACCESS_DENIED_ALERT and closed, answer


def assert_server_hello(answer: tuple[bytes, bool]) -> None:
    """The real server's ServerHello (a handshake record, type 2), passed through."""
    record, _ = answer
    assert record[:1] == b"\x16" and record[5:6] == b"\x02", answer


# ============================================================== 1. spellings of one name

@pytest.mark.parametrize("sni", [b"binance.com.", b"BiNaNcE.CoM", b"xn--bcher-kva.example",
                                 "ｂｉｎａｎｃｅ.com".encode("utf-8")],
                         ids=["trailing-dot", "mixed-case", "punycode", "fullwidth-utf8"])
def test_sni_spellings_of_a_blocked_name(proxy, servers, log, sni):
    """Exact SNI bytes; the fullwidth spelling is not a valid SNI at all (invalid input)."""
    s = servers["https2"]
    sock = tunnel(proxy, f"127.0.0.2:{s.port}")
    with sock:
        assert_denied(tls_first_record(sock, [hello(sni).records()]))
    assert s.connections == 0
    rec = log.wait(stage="tls")
    assert rec["action"] == "block" and rec["enforced"] is True
    if sni.isascii():
        assert rec["sni"] == sni.decode() and rec["rule"] in ("offshore-crypto-exchanges", "idn-block")
    else:
        assert rec["error"] == "invalid-input" and "not hold a valid host name" in rec["reason"]


def test_sni_unicode_from_python_ssl(proxy, servers, log):
    """Python ssl sends a Unicode server_hostname as its A-label (punycode)."""
    s = servers["https2"]
    sock = tunnel(proxy, f"127.0.0.2:{s.port}")
    with pytest.raises(ssl.SSLError, match="ACCESS_DENIED"):
        ssl.create_default_context().wrap_socket(sock, server_hostname="Shop.Bücher.example")
    sock.close()
    assert s.connections == 0
    rec = log.wait(stage="tls", action="block")
    assert rec["rule"] == "idn-block" and rec["name"] == "shop.xn--bcher-kva.example"


@pytest.mark.parametrize("host", [b"binance.com.", b"BINANCE.com", "bücher.example".encode(), b"XN--BCHER-KVA.example",
                                  "ｂｉｎａｎｃｅ。com".encode(), b"www.okx.com:8080"],
                         ids=["trailing-dot", "mixed-case", "unicode-utf8", "punycode-upper", "fullwidth",
                              "port"])
def test_host_spellings_of_a_blocked_name(proxy, servers, log, host):
    s = servers["http2"]
    answer = http_get(proxy, f"http://127.0.0.2:{s.port}/", b"Host: " + host)
    assert status(answer) == 451 and b'rel="blocked-by"' in answer
    assert s.connections == 0
    rec = log.wait(stage="http")
    assert rec["action"] == "block" and rec["rule"] in ("offshore-crypto-exchanges", "idn-block")
    assert rec["name"] in ("binance.com", "xn--bcher-kva.example", "www.okx.com")


@pytest.mark.parametrize("authority", ["binance.com.:443", "BINANCE.COM:443", "xn--bcher-kva.example:443"],
                         ids=["trailing-dot", "mixed-case", "punycode"])
def test_connect_spellings_of_a_blocked_name(proxy, log, authority):
    sock, head = connect(proxy, authority)
    sock.close()
    assert head.startswith(b"HTTP/1.1 451 Unavailable For Legal Reasons"), head
    rec = log.wait(stage="connect")
    assert rec["action"] == "block" and rec["rule"] in ("offshore-crypto-exchanges", "idn-block")


def test_connect_unicode_name(proxy, log):
    """A raw UTF-8 name in the CONNECT line: mitmproxy refuses the request line itself (400)."""
    sock, head = connect(proxy, "bücher.example:443".encode())
    sock.close()
    code = int(head[9:12])
    assert code in (400, 451), head
    if code == 451:
        assert log.wait(stage="connect")["rule"] == "idn-block"
    else:
        log.none(stage="connect", action="allow")


def test_homograph_is_another_name(proxy, servers, log):
    """Cyrillic "і" in bіnance.com: IDNA makes it xn--bnance-pvf.com, which no rule lists. It reaches
    the server like any unlisted name, and the record names it in both forms."""
    s = servers["http2"]
    answer = http_get(proxy, f"http://127.0.0.2:{s.port}/", b"Host: " + HOMOGRAPH.encode())
    assert status(answer) == 200 and s.connections == 1
    rec = log.wait(stage="http")
    assert (rec["action"], rec["rule"], rec["name"]) == ("allow", None, "xn--bnance-pvf.com")
    assert HOMOGRAPH in rec["reason"]  # the reason shows the Unicode form a person reads


@pytest.mark.parametrize("spelling", [LISTED_HOMOGRAPH, "xn--ok-1mc.com"], ids=["unicode", "punycode"])
def test_a_listed_homograph_is_blocked_in_both_spellings(proxy, servers, log, spelling):
    s = servers["https2"]
    sock = tunnel(proxy, f"127.0.0.2:{s.port}")
    with sock:
        assert_denied(tls_first_record(sock, [hello(b"xn--ok-1mc.com").records()]))  # SNI: always the A-label
    answer = http_get(proxy, f"http://127.0.0.2:{servers['http2'].port}/", b"Host: " + spelling.encode())
    assert status(answer) == 451
    assert s.connections == 0 and servers["http2"].connections == 0
    assert log.wait(stage="tls")["rule"] == "known-lookalikes"
    assert log.wait(stage="http")["rule"] == "known-lookalikes"


# ============================================================== 2. names that differ in one flow

def test_sni_allowed_host_blocked_is_blocked_and_the_mismatch_recorded(intercepting, servers, log):
    s = servers["https1"]
    ca = intercepting.confdir / "mitmproxy-ca-cert.pem"
    r = curl(intercepting, "https://allowed.test/", "--connect-to", f"allowed.test:443:127.0.0.1:{s.port}",
             "--cacert", str(ca), "-H", "Host: binance.com", "--http1.1")
    assert "HTTP/1.1 451 Unavailable For Legal Reasons" in r.stdout, r.stdout + r.stderr
    assert s.connections == 0
    rec = log.wait(stage="http")
    assert (rec["action"], rec["rule"], rec["sni"]) == ("block", "offshore-crypto-exchanges", "allowed.test")
    assert rec["mismatch"] == "Host binance.com ≠ SNI allowed.test"


@pytest.mark.parametrize("which", ["proxy", "intercepting"])
def test_sni_blocked_host_allowed_is_blocked_at_the_handshake(request, servers, which):
    """Without interception: the alert, before any HTTP. With geoblock_intercept: the handshake is
    completed with mitmproxy's certificate for binance.com, and the request, whatever its Host, gets the
    451 page for binance.com. The server sees nothing either way."""
    proxy = request.getfixturevalue(which)
    log = Log(proxy)
    s = servers["https1"]
    ca = proxy.confdir / "mitmproxy-ca-cert.pem"
    r = curl(proxy, "https://binance.com/", "--connect-to", f"binance.com:443:127.0.0.1:{s.port}",
             "--cacert", str(ca), "-H", "Host: allowed.test", "--http1.1")
    assert s.connections == 0
    log.wait(stage="tls", sni="binance.com", action="block")
    if which == "proxy":
        assert r.returncode == 35 and "alert access denied" in r.stderr, r.stderr
        log.none(stage="http")
    else:
        assert "HTTP/1.1 451 Unavailable For Legal Reasons" in r.stdout, r.stdout + r.stderr
        assert "<strong>binance.com</strong>" in r.stdout and "<code>offshore-crypto-exchanges</code>" in r.stdout
        rec = log.wait(stage="http", host="allowed.test")
        assert (rec["action"], rec["rule"], rec["blocked_at"]) == ("block", "offshore-crypto-exchanges", "tls")


@pytest.mark.parametrize("which", ["intercepting", "strict"])
def test_sni_and_host_both_allowed_but_different(request, servers, which):
    """Default policy: logged with the mismatch; name_mismatch: block refuses it."""
    proxy = request.getfixturevalue(which)
    log = Log(proxy)
    s = servers["https1"]
    ca = proxy.confdir / "mitmproxy-ca-cert.pem"
    r = curl(proxy, "https://allowed.test/", "--connect-to", f"allowed.test:443:127.0.0.1:{s.port}",
             "--cacert", str(ca), "-H", "Host: www.allowed.test", "--http1.1")
    rec = log.wait(stage="http")
    assert rec["mismatch"] == "Host www.allowed.test ≠ SNI allowed.test"
    if which == "strict":
        assert "HTTP/1.1 451" in r.stdout and s.connections == 0
        assert (rec["action"], rec["rule"]) == ("block", "policy:name-mismatch")
    else:
        assert "hello from 127.0.0.1" in r.stdout, r.stdout + r.stderr
        assert (rec["action"], rec["rule"]) == ("log", "policy:name-mismatch")


def test_connect_target_allowed_sni_blocked(proxy, log):
    """CONNECT to an allowed name, SNI of a blocked one: blocked at the handshake, both recorded."""
    sock = tunnel(proxy, "allowed.test:443")
    with sock:
        assert_denied(tls_first_record(sock, [hello(b"binance.com").records()]))
    rec = log.wait(stage="tls")
    assert (rec["action"], rec["rule"], rec["host"]) == ("block", "offshore-crypto-exchanges", "allowed.test")
    assert rec["mismatch"] == "SNI binance.com ≠ CONNECT target allowed.test"


def test_connect_target_blocked_sni_allowed(proxy, servers, log):
    sock, head = connect(proxy, "binance.com:443")
    sock.close()
    assert head.startswith(b"HTTP/1.1 451")  # refused before any ClientHello
    assert log.wait(stage="connect")["rule"] == "offshore-crypto-exchanges"


@pytest.mark.parametrize("which", ["proxy", "strict"])
def test_connect_target_and_sni_both_allowed_but_different(request, servers, which):
    proxy = request.getfixturevalue(which)
    log = Log(proxy)
    s = servers["https1"]
    sock = tunnel(proxy, f"localhost:{s.port}")
    if which == "strict":  # geoblock_intercept: the handshake ends at mitmproxy, requests get the page
        context = ssl.create_default_context(cafile=str(proxy.confdir / "mitmproxy-ca-cert.pem"))
        with context.wrap_socket(sock, server_hostname="allowed.test") as tls:
            tls.sendall(b"GET / HTTP/1.1\r\nHost: allowed.test\r\nConnection: close\r\n\r\n")
            answer = read_all(tls)[0]
        rec = log.wait(stage="tls")
        assert status(answer) == 451 and b"<code>policy:name-mismatch</code>" in answer, answer[:300]
        assert rec["mismatch"] == "SNI allowed.test ≠ CONNECT target localhost"
        assert s.connections == 0 and (rec["action"], rec["rule"]) == ("block", "policy:name-mismatch")
        return
    with sock:
        answer = tls_first_record(sock, [hello(b"allowed.test").records()])
    rec = log.wait(stage="tls")
    assert rec["mismatch"] == "SNI allowed.test ≠ CONNECT target localhost"
    assert_server_hello(answer)
    assert s.connections == 1 and (rec["action"], rec["rule"]) == ("log", "policy:name-mismatch")


# ============================================================== 3. ECH

ECH_BODY = et.ech_outer_body()


def ech_hello_to(proxy: Mitmdump, server, sni: bytes) -> tuple[tuple[bytes, bool], dict]:
    """A ClientHello with SNI `sni` and an ECH extension, through a CONNECT to `server`; the first TLS
    record back (and whether the connection closed) and the tls record geoblock wrote."""
    log = Log(proxy)
    sock = tunnel(proxy, f"127.0.0.2:{server.port}")
    with sock:
        answer = tls_first_record(sock, [hello(sni).with_extension(et.EXT_ECH, ECH_BODY).records()])
    return answer, log.wait(stage="tls")


@pytest.mark.parametrize("which", ["proxy", "strict"])
def test_ech_placeholder_beside_an_ordinary_sni(request, servers, which):
    """GREASE ECH: 0xfe0d beside the real name as SNI, what Chromium sends to every site that publishes no
    ECH configuration. It hides nothing: recorded as ech_grease, passes even under ech: block."""
    s = servers["https2"]
    answer, rec = ech_hello_to(request.getfixturevalue(which), s, b"allowed.test")
    assert_server_hello(answer)  # strict decrypts (geoblock_intercept): the ServerHello is mitmproxy's
    assert rec["action"] == "allow" and rec["ech_grease"] is True and "ech" not in rec
    assert s.connections == (1 if which == "proxy" else 0)  # strict dials only when a request comes


@pytest.mark.parametrize("which", ["proxy", "strict"])
def test_ech_with_an_allowed_public_name(request, servers, which):
    """ECH whose outer SNI is a public name that fronts ECH (cloudflare-ech.com, the shipped
    ech_public_names): the real name is hidden. Log (default) or block."""
    s = servers["https2"]
    answer, rec = ech_hello_to(request.getfixturevalue(which), s, b"cloudflare-ech.com")
    assert rec["ech"] is True and rec["rule"] == "policy:ech"
    if which == "strict":
        assert_denied(answer)
        assert s.connections == 0 and rec["action"] == "block"
    else:
        assert_server_hello(answer)
        assert s.connections == 1 and rec["action"] == "log"


@pytest.mark.parametrize("ext, sni", [
    (et.EXT_ECH, None),
    (et.EXT_ESNI, None),
    (et.EXT_ESNI, b"allowed.test"),
    (et.EXT_ECH_DRAFT_10, None),
    (et.EXT_ECH_DRAFT_10, b"allowed.test"),
], ids=["ech-no-sni", "esni-no-sni", "esni-cover-sni", "ech-draft-no-sni", "ech-draft-cover-sni"])
def test_encrypted_sni_without_sni_or_with_a_cover_name_is_refused_under_ech_block(strict, servers, ext, sni):
    """ECH without an outer SNI; Encrypted SNI (0xffce) and an ECH draft code point (0xfe0a) with a cover
    SNI or none. (0xfe0d beside an ordinary SNI is a placeholder: test_ech_placeholder_beside_an_ordinary_sni.)"""
    log = Log(strict)
    s = servers["https2"]
    body = et.esni_body() if ext == et.EXT_ESNI else ECH_BODY
    sock = tunnel(strict, f"127.0.0.2:{s.port}")
    with sock:
        assert_denied(tls_first_record(sock, [hello(sni).with_extension(ext, body).records()]))
    assert s.connections == 0
    rec = log.wait(stage="tls")
    assert (rec["action"], rec["rule"], rec["ech"]) == ("block", "policy:ech", True)
    assert f"0x{ext:04x}" in rec["reason"]


def test_ech_with_a_blocked_public_name(proxy, servers, log):
    s = servers["https2"]
    sock = tunnel(proxy, f"127.0.0.2:{s.port}")
    with sock:
        assert_denied(tls_first_record(sock, [hello(b"binance.com").with_extension(et.EXT_ECH, ECH_BODY).records()]))
    assert s.connections == 0
    rec = log.wait(stage="tls")
    assert (rec["action"], rec["rule"], rec["ech_grease"]) == ("block", "offshore-crypto-exchanges", True)


# ============================================================== 4. no SNI, IP literals

def test_no_sni_is_judged_on_the_destination(proxy, servers, log):
    allowed, blocked = servers["https2"], servers["https5"]
    sock = tunnel(proxy, f"127.0.0.2:{allowed.port}")
    with sock:
        assert_server_hello(tls_first_record(sock, [hello(None).records()]))
    rec = log.wait(stage="tls")
    assert (rec["action"], rec["sni"], rec["server_ip"], rec["country"]) == ("allow", None, "127.0.0.2", "SG")
    sock, head = connect(proxy, f"127.0.0.5:{blocked.port}")
    sock.close()
    assert head.startswith(b"HTTP/1.1 451") and blocked.connections == 0


def test_ip_literal_in_sni_is_not_a_name(proxy, servers, log):
    """SNI "127.0.0.5" (a blocked address) toward 127.0.0.2: the dialled address is judged, not the SNI."""
    s = servers["https2"]
    sock = tunnel(proxy, f"127.0.0.2:{s.port}")
    with sock:
        assert_server_hello(tls_first_record(sock, [hello(b"127.0.0.5").records()]))
    rec = log.wait(stage="tls")
    assert (rec["action"], rec["sni"], rec["name"], rec["server_ip"]) == ("allow", "127.0.0.5", None, "127.0.0.2")


@pytest.mark.parametrize("form", list(BLOCKED_IP_FORMS), ids=list(BLOCKED_IP_FORMS))
def test_ip_forms_in_connect(proxy, servers, log, form):
    s = servers["https5"]
    sock, head = connect(proxy, f"{BLOCKED_IP_FORMS[form]}:{s.port}")
    sock.close()
    assert head.startswith(b"HTTP/1.1 451 Unavailable For Legal Reasons"), head
    assert s.connections == 0
    rec = log.wait(stage="connect")
    assert (rec["action"], rec["rule"], rec["server_ip"]) == ("block", "blocked-network", BLOCKED_IP)
    assert rec["host"] == BLOCKED_IP_FORMS[form].strip("[]")  # the spelling the client used, kept


@pytest.mark.parametrize("form", list(BLOCKED_IP_FORMS), ids=list(BLOCKED_IP_FORMS))
def test_ip_forms_in_the_request_target(proxy, servers, log, form):
    """Absolute-form URI with the address spelt otherwise; Host is an allowed name."""
    s = servers["http5"]
    answer = http_get(proxy, f"http://{BLOCKED_IP_FORMS[form]}:{s.port}/", b"Host: allowed.test")
    assert s.connections == 0
    if status(answer) == 400:  # mitmproxy refuses the request line itself: nothing reaches geoblock
        log.none(stage="http", action="allow")
        return
    assert status(answer) == 451
    rec = log.wait(stage="http")
    assert (rec["action"], rec["rule"], rec["server_ip"]) == ("block", "blocked-network", BLOCKED_IP)


@pytest.mark.parametrize("form", list(BLOCKED_IP_FORMS), ids=list(BLOCKED_IP_FORMS))
def test_ip_forms_in_host_are_not_where_the_request_goes(proxy, servers, log, form):
    """Host spells the blocked address, the request goes to 127.0.0.2: judged on the dialled address."""
    s = servers["http2"]
    answer = http_get(proxy, f"http://127.0.0.2:{s.port}/", b"Host: " + BLOCKED_IP_FORMS[form].encode())
    assert status(answer) == 200 and s.connections == 1
    rec = log.wait(stage="http")
    assert (rec["action"], rec["name"], rec["server_ip"]) == ("allow", None, "127.0.0.2")
    assert rec["host"] == BLOCKED_IP_FORMS[form]


def test_bracketed_ipv6_in_connect_and_request_target(proxy, servers, log):
    s = servers["http6"]
    answer = http_get(proxy, f"http://[::1]:{s.port}/", b"Host: allowed.test")
    assert status(answer) == 200 and s.connections == 1
    rec = log.wait(stage="http")
    assert (rec["action"], rec["server_ip"], rec["country"]) == ("allow", "::1", "CN")
    tunnel(proxy, f"[::1]:{s.port}").close()
    assert log.wait(stage="connect")["server_ip"] == "::1"


def test_zone_id_on_an_unknown_link_local_address(proxy, log):
    """[fe80::1%25eth0]: judged as fe80::1 (no country: unknown_country), then the dial fails."""
    sock, head = connect(proxy, "[fe80::1%25eth0]:443")
    sock.close()
    rec = log.wait(stage="connect")
    assert rec["server_ip"] == "fe80::1" and rec["country"] is None
    assert rec["action"] in ("allow", "log")


# ============================================================== 4b. addresses that carry an IPv4 address
# IPv6 addresses a NAT64 gateway or a tunnel takes to 127.0.0.5. Loopback is not reachable at them:
# the point is the verdict, 451 before any dial, and the record naming both forms.

CARRYING_BLOCKED_IP = {  # form: (authority host as written, IPv6 as recorded)
    "nat64": ("[64:ff9b::7f00:5]", "64:ff9b::7f00:5"),
    "nat64 dotted": ("[64:ff9b::127.0.0.5]", "64:ff9b::7f00:5"),
    "nat64-local": ("[64:ff9b:1::7f00:5]", "64:ff9b:1::7f00:5"),
    "6to4": ("[2002:7f00:5::]", "2002:7f00:5::"),
    "teredo": ("[2001:0:4136:e378:8000:63bf:80ff:fffa]", "2001:0:4136:e378:8000:63bf:80ff:fffa"),
    "ipv4-compatible": ("[::7f00:5]", "::7f00:5"),
    "ipv4-compatible dotted": ("[::127.0.0.5]", "::7f00:5"),
    "ipv4-translated": ("[::ffff:0:7f00:5]", "::ffff:0:7f00:5"),
    "ipv4-translated dotted": ("[::ffff:0:127.0.0.5]", "::ffff:0:7f00:5"),
}


@pytest.mark.parametrize("form", list(CARRYING_BLOCKED_IP), ids=list(CARRYING_BLOCKED_IP))
def test_ipv6_carrying_a_blocked_address_in_connect(proxy, servers, log, form):
    s = servers["https5"]
    written, ipv6 = CARRYING_BLOCKED_IP[form]
    sock, head = connect(proxy, f"{written}:{s.port}")
    sock.close()
    assert head.startswith(b"HTTP/1.1 451 Unavailable For Legal Reasons"), head
    assert s.connections == 0
    rec = log.wait(stage="connect")
    assert (rec["action"], rec["rule"], rec["server_ip"], rec["server_ipv6"]) == (
        "block", "blocked-network", BLOCKED_IP, ipv6)
    assert rec["server_ipv6_form"] == form.split()[0]
    assert (rec["country"], rec["asn"]) == ("SG", 64501)


@pytest.mark.parametrize("form", ["nat64", "6to4", "teredo", "ipv4-compatible"])
def test_ipv6_carrying_a_blocked_address_in_the_request_target(proxy, servers, log, form):
    """GET http://[64:ff9b::7f00:5]:PORT/ with an allowed Host: the dialled address decides."""
    s = servers["http5"]
    written, ipv6 = CARRYING_BLOCKED_IP[form]
    answer = http_get(proxy, f"http://{written}:{s.port}/", b"Host: allowed.test")
    assert status(answer) == 451 and s.connections == 0
    rec = log.wait(stage="http")
    assert (rec["action"], rec["rule"], rec["server_ip"], rec["server_ipv6"]) == (
        "block", "blocked-network", BLOCKED_IP, ipv6)


def test_a_network_rule_on_the_ipv6_form_still_applies(proxy, log):
    """blocked-6to4-site lists 2002:7f00:7::/48, the 6to4 site of 127.0.0.7 (no rule on 127.0.0.7)."""
    sock, head = connect(proxy, "[2002:7f00:7::1]:443")
    sock.close()
    assert head.startswith(b"HTTP/1.1 451"), head
    rec = log.wait(stage="connect")
    assert (rec["rule"], rec["server_ip"], rec["server_ipv6"]) == ("blocked-6to4-site", "127.0.0.7", "2002:7f00:7::1")


# ============================================================== 4c. GeoIP answers that are not a country
# tests/support/geodb.py ODD_PLACES: 127.0.0.20 EU and 127.0.0.21 AP (legacy codes, no country),
# 127.0.0.22 registered_country US only, 127.0.0.23 SG and anycast. offshore-only.test is blocked
# where the server is offshore (home: CN).

@pytest.fixture(scope="module")
def odd_servers():
    made = {host: TestServer(host) for host in ("127.0.0.20", "127.0.0.21", "127.0.0.22", "127.0.0.23")}
    yield made
    for s in made.values():
        s.close()


@pytest.mark.parametrize("host, answer, expect", [
    ("127.0.0.20", 200, {"action": "log", "country": None, "geoip_code": "EU", "offshore": None}),
    ("127.0.0.21", 200, {"action": "log", "country": None, "geoip_code": "AP", "offshore": None}),
    ("127.0.0.22", 451, {"action": "block", "country": "US", "country_source": "geoip-registered", "offshore": True}),
    ("127.0.0.23", 451, {"action": "block", "country": "SG", "country_source": "geoip", "anycast": True}),
], ids=["legacy EU", "legacy AP", "registered country only", "anycast"])
def test_geoip_answers_that_are_not_a_country(proxy, odd_servers, log, host, answer, expect):
    """A legacy code is no country (the offshore rule gives unknown_country: log, the request is
    served); a registered country is used and recorded as such; anycast is recorded."""
    s = odd_servers[host]
    s.reset()
    got = http_get(proxy, f"http://{host}:{s.port}/", b"Host: offshore-only.test")
    assert status(got) == answer and s.connections == (1 if answer == 200 else 0)
    rec = log.wait(stage="http", server_ip=host)
    assert {k: rec.get(k) for k in expect} == expect, rec
    assert rec["rule"] == "offshore-only"


# ============================================================== 5. HTTP fields

def h2_exchange(tls: ssl.SSLSocket, headers: list[tuple[str, str]], validate: bool = True) -> list:
    """One HTTP/2 request with exactly these headers on `tls` (ALPN h2); the h2 events until the stream
    ends or the connection is terminated (or closes, or 5 s pass)."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, validate_outbound_headers=validate, normalize_outbound_headers=validate))
    conn.initiate_connection()
    conn.send_headers(1, headers, end_stream=True)
    tls.sendall(conn.data_to_send())
    tls.settimeout(5)
    events: list = []
    with contextlib.suppress(socket.timeout, ConnectionError, ssl.SSLError):
        while not any(isinstance(e, (h2.events.ConnectionTerminated, h2.events.StreamEnded)) for e in events):
            data = tls.recv(65536)
            if not data:
                break
            events += conn.receive_data(data)
    return events


def test_http2_authority_and_a_different_host_header(intercepting, servers, log):
    """:authority allowed.test plus Host: binance.com: the HTTP/2 layer refuses the request as
    malformed (GOAWAY PROTOCOL_ERROR); nothing reaches the server."""
    s = servers["https1"]
    sock = tunnel(intercepting, f"127.0.0.1:{s.port}")
    context = ssl.create_default_context(cafile=str(intercepting.confdir / "mitmproxy-ca-cert.pem"))
    context.set_alpn_protocols(["h2"])
    with context.wrap_socket(sock, server_hostname="allowed.test") as tls:
        assert tls.selected_alpn_protocol() == "h2"
        events = h2_exchange(tls, [(":method", "GET"), (":authority", "allowed.test"), (":scheme", "https"),
                                   (":path", "/"), ("host", "binance.com")], validate=False)
    terminated = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
    assert terminated and terminated[0].error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR, events
    assert not [e for e in events if isinstance(e, h2.events.ResponseReceived)]
    assert s.connections == 0 and s.requests == []
    log.none(stage="http", action="allow")


def test_http2_authority_blocked(intercepting, servers, log):
    s = servers["https1"]
    ca = intercepting.confdir / "mitmproxy-ca-cert.pem"
    r = curl(intercepting, "https://allowed.test/", "--connect-to", f"allowed.test:443:127.0.0.1:{s.port}",
             "--cacert", str(ca), "-H", "Host: www.okx.com", "--http2")
    assert "HTTP/2 451" in r.stdout, r.stdout + r.stderr
    assert s.connections == 0
    rec = log.wait(stage="http")
    assert (rec["host"], rec["rule"], rec["mismatch"]) == ("www.okx.com", "offshore-crypto-exchanges",
                                                          "Host www.okx.com ≠ SNI allowed.test")


@pytest.mark.parametrize("target, host, name", [
    ("http://binance.com/", b"allowed.test", "binance.com"),
    ("http://127.0.0.2:{port}/", b"binance.com", "binance.com"),
], ids=["uri-blocked", "host-blocked"])
def test_absolute_uri_vs_host(proxy, servers, log, target, host, name):
    s = servers["http2"]
    answer = http_get(proxy, target.format(port=s.port), b"Host: " + host)
    assert status(answer) == 451 and s.connections == 0
    rec = log.wait(stage="http")
    assert (rec["action"], rec["name"]) == ("block", name)
    if b"binance" not in host:
        assert rec["mismatch"] == "request target binance.com ≠ Host allowed.test"


@pytest.mark.parametrize("which", ["proxy", "strict"])
def test_absolute_uri_and_host_both_allowed_but_different(request, servers, which):
    proxy = request.getfixturevalue(which)
    log = Log(proxy)
    s = servers["http1"]
    answer = http_get(proxy, f"http://localhost:{s.port}/", b"Host: allowed.test")
    rec = log.wait(stage="http")
    assert rec["mismatch"] == "request target localhost ≠ Host allowed.test"
    if which == "strict":
        assert status(answer) == 451 and s.connections == 0 and rec["rule"] == "policy:name-mismatch"
    else:
        assert status(answer) == 200 and (rec["action"], rec["rule"]) == ("log", "policy:name-mismatch")


def test_absolute_uri_inside_a_decrypted_tunnel(intercepting, servers, log):
    """Inside TLS with SNI allowed.test: GET http://binance.com/ with Host: allowed.test. mitmproxy
    dials the tunnel's server and forwards the absolute URI, which a server must route on (RFC 9112,
    3.2.2): its authority is judged like the Host."""
    s = servers["https1"]
    sock = tunnel(intercepting, f"127.0.0.1:{s.port}")
    context = ssl.create_default_context(cafile=str(intercepting.confdir / "mitmproxy-ca-cert.pem"))
    with context.wrap_socket(sock, server_hostname="allowed.test") as tls:
        tls.sendall(b"GET http://binance.com/ HTTP/1.1\r\nHost: allowed.test\r\nConnection: close\r\n\r\n")
        answer, _ = read_all(tls)
    assert status(answer) == 451 and s.connections == 0
    rec = log.wait(stage="http")
    assert (rec["name"], rec["rule"]) == ("binance.com", "offshore-crypto-exchanges")
    assert rec["mismatch"] == "URI authority binance.com ≠ Host allowed.test"


@pytest.mark.parametrize("first, second", [(b"allowed.test", b"binance.com"), (b"binance.com", b"allowed.test"),
                                           (b"allowed.test", b"allowed.test")],
                         ids=["allowed-then-blocked", "blocked-then-allowed", "same-twice"])
def test_duplicate_host_headers_are_refused(proxy, servers, log, first, second):
    """Two Host headers (RFC 9112: a server must refuse them): mitmproxy joins them ("a, b"), which is
    not a host: invalid input, on_error (block) applies, whatever the values."""
    s = servers["http2"]
    answer = http_get(proxy, f"http://127.0.0.2:{s.port}/", b"Host: " + first, b"Host: " + second)
    assert status(answer) == 451 and s.connections == 0
    rec = log.wait(stage="http")
    assert (rec["action"], rec["error"]) == ("block", "invalid-input")
    assert rec["host"] == (first + b", " + second).decode()


def test_userinfo_in_host(proxy, servers, log):
    s = servers["http2"]
    answer = http_get(proxy, f"http://127.0.0.2:{s.port}/", b"Host: user@binance.com")
    assert status(answer) == 451 and s.connections == 0
    rec = log.wait(stage="http")
    assert (rec["error"], rec["host"]) == ("invalid-input", "user@binance.com")


def test_userinfo_in_the_request_target(proxy, servers, log):
    """http://binance.com@127.0.0.2/: mitmproxy refuses userinfo in the request line (400)."""
    s = servers["http2"]
    answer = http_get(proxy, f"http://binance.com@127.0.0.2:{s.port}/", b"Host: 127.0.0.2")
    assert status(answer) == 400 and s.connections == 0
    log.none(stage="http", action="allow")


def test_port_that_is_not_a_number_in_host(proxy, servers, log):
    s = servers["http2"]
    answer = http_get(proxy, f"http://127.0.0.2:{s.port}/", b"Host: allowed.test:x443")
    assert status(answer) == 451 and s.connections == 0
    assert log.wait(stage="http")["error"] == "invalid-input"


# ============================================================== 6. malformed names in every field

MALFORMED = {
    "label-over-63": b"a" * 64 + b".binance.com",
    "name-over-253": b"a." * 125 + b"binance.com",
    "empty-label": b"a..binance.com",
    "nul": b"binance.com\x00.allowed.test",
    "control": b"binance.com\x01",
    "non-utf8": b"bin\xffance.com",
}


@pytest.mark.parametrize("kind", list(MALFORMED), ids=list(MALFORMED))
def test_malformed_sni(proxy, servers, log, kind):
    s = servers["https2"]
    sock = tunnel(proxy, f"127.0.0.2:{s.port}")
    with sock:
        assert_denied(tls_first_record(sock, [hello(MALFORMED[kind]).records()]))
    assert s.connections == 0
    rec = log.wait(stage="tls")
    assert (rec["action"], rec["error"]) == ("block", "invalid-input")
    assert rec["sni"] == MALFORMED[kind].decode("utf-8", "backslashreplace")


@pytest.mark.parametrize("kind", list(MALFORMED), ids=list(MALFORMED))
def test_malformed_host(proxy, servers, log, kind):
    s = servers["http2"]
    answer = http_get(proxy, f"http://127.0.0.2:{s.port}/", b"Host: " + MALFORMED[kind])
    assert s.connections == 0
    if status(answer) == 400:  # refused by mitmproxy's HTTP parser
        log.none(stage="http", action="allow")
        return
    assert status(answer) == 451
    rec = log.wait(stage="http")
    assert (rec["action"], rec["error"]) == ("block", "invalid-input")


@pytest.mark.parametrize("kind", list(MALFORMED), ids=list(MALFORMED))
def test_malformed_connect_target(proxy, log, kind):
    sock, head = connect(proxy, MALFORMED[kind] + b":443")
    sock.close()
    code = int(head[9:12])
    assert code in (400, 451), head  # mitmproxy's parser (400) or geoblock (451): never a tunnel
    if code == 451:
        rec = log.wait(stage="connect")
        assert (rec["action"], rec["error"]) == ("block", "invalid-input")
    else:
        log.none(stage="connect")


@pytest.mark.parametrize("kind", list(MALFORMED), ids=list(MALFORMED))
def test_malformed_request_target(proxy, log, kind):
    answer = http_get(proxy, "http://" + MALFORMED[kind].decode("latin-1") + "/", b"Host: allowed.test")
    assert status(answer) in (400, 451), answer[:200]
    if status(answer) == 451:
        assert log.wait(stage="http")["error"] == "invalid-input"
    else:
        log.none(stage="http", action="allow")


def test_several_names_in_one_sni(proxy, servers, log):
    s = servers["https2"]
    sock = tunnel(proxy, f"127.0.0.2:{s.port}")
    with sock:
        assert_denied(tls_first_record(sock, [hello(b"allowed.test", b"binance.com").records()]))
    assert s.connections == 0
    rec = log.wait(stage="tls")
    assert rec["error"] == "invalid-input" and "several names" in rec["reason"]


def test_two_server_name_extensions(proxy, servers, log):
    s = servers["https2"]
    two = hello(b"allowed.test").with_extension(et.EXT_SERVER_NAME, et.server_name_body(b"binance.com"))
    sock = tunnel(proxy, f"127.0.0.2:{s.port}")
    with sock:
        assert_denied(tls_first_record(sock, [two.records()]))
    assert s.connections == 0
    rec = log.wait(stage="tls")
    assert rec["error"] == "invalid-input" and "more than one server_name" in rec["reason"]


def test_empty_server_name_extension(proxy, servers, log):
    s = servers["https2"]
    sock = tunnel(proxy, f"127.0.0.2:{s.port}")
    with sock:
        assert_denied(tls_first_record(sock, [hello(b"").records()]))
    assert s.connections == 0
    assert log.wait(stage="tls")["error"] == "invalid-input"


# ============================================================== 7. how the ClientHello arrives

def _split(data: bytes, sizes: list[int]) -> list[bytes]:
    out, p = [], 0
    for n in sizes:
        out.append(data[p:p + n])
        p += n
    return out + [data[p:]]


@pytest.mark.parametrize("how", ["1-byte-first", "2-bytes-first", "7-byte-segments", "two-records",
                                 "records-and-segments"])
def test_split_client_hello_with_a_blocked_sni(proxy, servers, log, how):
    s = servers["https2"]
    h = hello(b"binance.com")
    chunks = {
        "1-byte-first": _split(h.records(), [1]),
        "2-bytes-first": _split(h.records(), [2]),
        "7-byte-segments": [h.records()[i:i + 7] for i in range(0, len(h.records()), 7)],
        "two-records": [h.records(fragment=len(h.message()) // 2 + 1)],
        "records-and-segments": _split(h.records(fragment=40), [3, 50, 100]),
    }[how]
    if how == "two-records":
        assert chunks[0].count(b"\x16\x03\x01") >= 2
    sock = tunnel(proxy, f"127.0.0.2:{s.port}")
    with sock:
        assert_denied(tls_first_record(sock, chunks))
    assert s.connections == 0
    rec = log.wait(stage="tls")
    assert (rec["action"], rec["sni"], rec["rule"]) == ("block", "binance.com", "offshore-crypto-exchanges")


@pytest.mark.parametrize("how", ["1-byte-first", "7-byte-segments", "two-records"])
def test_split_client_hello_with_an_allowed_sni_passes(proxy, servers, log, how):
    s = servers["https2"]
    h = hello(b"allowed.test")
    chunks = {
        "1-byte-first": _split(h.records(), [1]),
        "7-byte-segments": [h.records()[i:i + 7] for i in range(0, len(h.records()), 7)],
        "two-records": [h.records(fragment=len(h.message()) // 2 + 1)],
    }[how]
    sock = tunnel(proxy, f"127.0.0.2:{s.port}")
    with sock:
        assert_server_hello(tls_first_record(sock, chunks))
    assert s.connections == 1
    assert log.wait(stage="tls")["action"] == "allow"


@pytest.mark.parametrize("first", [
    et.record(et.ALERT, b"\x01\x5a"),  # warning, user_canceled: a server may skip it (Go's crypto/tls does)
    et.record(et.APPLICATION_DATA, b"x" * 20),
    et.record(0x14, b"\x01"),  # change_cipher_spec
    et.record(0x18, b"\x01\x00\x10" + b"h" * 32),  # heartbeat
], ids=["warning-alert", "application-data", "change-cipher-spec", "heartbeat"])
def test_a_tls_record_before_the_client_hello_is_refused_and_nothing_dialled(proxy, servers, log, first):
    """A TLS record that is not a handshake, then a ClientHello for a listed name, through an allowed
    CONNECT: no client sends such a record first, and a server may skip it and serve the name. Before,
    geoblock relayed the stream as one that shows no name (`unreadable`: log) and the listed SNI went
    to the server unjudged. Now it is TLS to geoblock, and refused as a malformed ClientHello."""
    s = servers["https2"]
    sock = tunnel(proxy, f"127.0.0.2:{s.port}")
    with sock:
        assert_denied(tls_first_record(sock, [first + hello(b"binance.com").records()]))
    assert s.connections == 0
    rec = log.wait(stage="tls")
    assert rec["action"] == "block" and rec["error"].startswith("MalformedClientHello"), rec
    assert "malformed TLS ClientHello" in rec["reason"]
    log.none(stage="stream")


@pytest.mark.parametrize("payload", [
    et.record(et.HANDSHAKE, b"\x02\x00\x00\x04\x03\x03\x00\x00"),  # a handshake record, not a ClientHello
    hello(b"binance.com").records(fragment=40)[:45] + et.record(et.APPLICATION_DATA, b"x" * 20),
], ids=["server-hello-type", "handshake-then-application-data"])
def test_malformed_handshake_fails_closed(proxy, servers, log, payload):
    s = servers["https2"]
    sock = tunnel(proxy, f"127.0.0.2:{s.port}")
    with sock:
        assert_denied(tls_first_record(sock, [payload]))
    assert s.connections == 0
    rec = log.wait(stage="tls")
    assert rec["action"] == "block" and rec["error"].startswith("MalformedClientHello")
    assert "malformed TLS ClientHello" in rec["reason"]


def test_garbage_after_16_03_is_held_and_nothing_is_dialled(proxy, servers, log):
    """0x16 0x03 and a length never delivered: geoblock waits for a ClientHello, nothing is dialled."""
    s = servers["https2"]
    sock = tunnel(proxy, f"127.0.0.2:{s.port}")
    with sock:
        record, closed = tls_first_record(sock, [b"\x16\x03\x01\xff\xff" + b"\xff" * 10], timeout=1.5)
        assert record == b"" and not closed
    time.sleep(0.3)
    assert s.connections == 0
    log.none(stage="tls")


# ============================================================== 10. streams geoblock cannot read at once

BLOCKED_REQUEST = b"GET / HTTP/1.1\r\nHost: binance.com\r\nConnection: close\r\n\r\n"


def accepting_any_certificate() -> ssl.SSLContext:
    """A client TLS context that takes any certificate (mitmproxy's, when geoblock decrypts)."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    return context


def send_segments(sock: socket.socket, chunks: list[bytes], pause: float = 0.5) -> None:
    """Send `chunks` as separate TCP segments, `pause` seconds apart."""
    for i, part in enumerate(chunks):
        if i:
            time.sleep(pause)
        sock.sendall(part)


STREAM_TRICKS = {
    "empty-line": [b"\r\n" + BLOCKED_REQUEST],
    "three-empty-lines": [b"\r\n\r\n\n" + BLOCKED_REQUEST],
    "empty-line-alone-first": [b"\r\n", BLOCKED_REQUEST],
    "1-byte-first": [BLOCKED_REQUEST[:1], BLOCKED_REQUEST[1:]],
    "method-first": [BLOCKED_REQUEST[:3], BLOCKED_REQUEST[3:]],
    "one-letter-method": [b"X" + BLOCKED_REQUEST[3:]],
}


@pytest.mark.parametrize("trick", list(STREAM_TRICKS))
def test_a_request_behind_empty_lines_or_split_is_judged(proxy, servers, log, trick):
    """RFC 9112 2.2 lets servers ignore empty lines before the request line (the test server does); a
    first segment of 1-3 bytes made mitmproxy relay the stream as raw TCP (fixed: held, then judged)."""
    s = servers["http2"]
    sock = tunnel(proxy, f"127.0.0.2:{s.port}")
    with sock:
        send_segments(sock, STREAM_TRICKS[trick])
        answer, _ = read_all(sock)
    assert status(answer) == 451 and b"offshore-crypto-exchanges" in answer, answer[:300]
    assert s.connections == 0 and s.requests == []
    rec = log.wait(stage="http", action="block")
    assert (rec["rule"], rec["name"]) == ("offshore-crypto-exchanges", "binance.com")


@pytest.mark.parametrize("trick", ["empty-line", "1-byte-first"])
def test_a_request_behind_an_empty_line_inside_decrypted_tls_is_judged(intercepting, servers, trick):
    log = Log(intercepting)
    s = servers["https2"]
    sock = tunnel(intercepting, f"127.0.0.2:{s.port}")
    context = accepting_any_certificate()  # mitmproxy's certificate
    with context.wrap_socket(sock, server_hostname="allowed.test") as tls:
        send_segments(tls, STREAM_TRICKS[trick])
        answer, _ = read_all(tls)
    assert status(answer) == 451 and b"offshore-crypto-exchanges" in answer, answer[:300]
    assert s.requests == []
    rec = log.wait(stage="http", action="block")
    assert (rec["rule"], rec["name"]) == ("offshore-crypto-exchanges", "binance.com")


ODD_REQUEST_LINES = {
    "one-letter-method": b"X / HTTP/1.1",
    "two-letter-method": b"GO / HTTP/1.1",
    "method-with-a-dash": b"M-SEARCH / HTTP/1.1",
    "method-starting-ssh": b"SSHGET / HTTP/1.1",
    "leading-space": b" GET / HTTP/1.1",
    "leading-tab": b"\tGET / HTTP/1.1",
    "tabs-between": b"GET\t/\tHTTP/1.1",
    "leading-form-feed": b"\x0cGET / HTTP/1.1",
}


@pytest.mark.parametrize("line", list(ODD_REQUEST_LINES))
def test_a_request_line_mitmproxy_takes_for_raw_tcp_is_read_as_http(proxy, servers, log, line):
    """Request lines that lenient servers accept (the test server does) but mitmproxy's guess does not
    take for HTTP (a method of fewer than 3 letters, a dash, a leading space or tab, tabs): relayed as
    raw TCP with their Host unread (fixed: a first line with an HTTP version is read as HTTP, so it is
    judged or refused by mitmproxy's parser)."""
    s = servers["http2"]
    sock = tunnel(proxy, f"127.0.0.2:{s.port}")
    with sock:
        sock.sendall(ODD_REQUEST_LINES[line] + b"\r\nHost: binance.com\r\nConnection: close\r\n\r\n")
        answer, _ = read_all(sock)
    assert not answer.startswith(b"HTTP/1.1 200"), answer[:300]
    assert [r for r in s.requests if r[0] == "binance.com"] == []
    log.none(stage="stream")


def test_a_blocked_request_after_an_odd_first_request_is_judged(proxy, servers, log):
    """An allowed request with a one-letter method first, then an ordinary request for a blocked name on
    the same connection: the first made mitmproxy relay the whole connection as raw TCP."""
    s = servers["http2"]
    sock = tunnel(proxy, f"127.0.0.2:{s.port}")
    with sock:
        sock.sendall(b"X / HTTP/1.1\r\nHost: allowed.test\r\n\r\n")
        time.sleep(0.5)
        sock.sendall(BLOCKED_REQUEST)
        answer, _ = read_all(sock)
    assert b"451" in answer and b"offshore-crypto-exchanges" in answer, answer[:600]
    assert s.requests == [("allowed.test", "/")]
    assert log.wait(stage="http", action="block")["name"] == "binance.com"


def test_an_absolute_url_in_the_http2_path_is_judged(intercepting, servers):
    """HTTP/2 inside decrypted TLS: `:authority allowed.test` and `:path https://binance.com/`. mitmproxy
    forwards the URL as the request target, on which an HTTP/1 server must route (RFC 9112 3.2.2); it
    was not judged (fixed: judged like an absolute-form URI)."""
    log = Log(intercepting)
    s = servers["https1"]
    sock = tunnel(intercepting, f"127.0.0.1:{s.port}")
    context = ssl.create_default_context(cafile=str(intercepting.confdir / "mitmproxy-ca-cert.pem"))
    context.set_alpn_protocols(["h2"])
    with context.wrap_socket(sock, server_hostname="allowed.test") as tls:
        events = h2_exchange(tls, [(":method", "GET"), (":authority", "allowed.test"), (":scheme", "https"),
                                   (":path", "https://binance.com/")])
    responses = [e for e in events if isinstance(e, h2.events.ResponseReceived)]
    assert responses and dict(responses[0].headers)[b":status"] == b"451", events
    assert s.requests == []
    rec = log.wait(stage="http", action="block")
    assert (rec["name"], rec["rule"]) == ("binance.com", "offshore-crypto-exchanges")


@pytest.fixture(scope="module")
def dns_port_server():
    """A TCP server on 127.0.0.3:5353, a port mitmproxy reads as DNS; it counts connections."""
    from support.servers import TestServer

    server = TestServer("127.0.0.3", port=5353)
    yield server
    server.close()


def _dns_over_tcp_without_a_question() -> bytes:
    import dns.message
    import dns.rdatatype
    import dns.rrset

    message = dns.message.Message(id=7)
    message.additional.append(dns.rrset.from_text("x.test.", 60, "IN", "TXT", '"GET / HTTP/1.1 Host: binance.com"'))
    wire = message.to_wire()
    return len(wire).to_bytes(2, "big") + wire


def test_dns_framing_to_port_5353_is_judged_as_a_stream(strict, dns_port_server):
    """A DNS message with no question to judge, to a port mitmproxy reads as DNS: geoblock left DNS to
    its DNS hook, which judges questions only, so the message crossed with no record, even under
    `unreadable: block` (fixed: DNS relayed to the connection's server is judged as a stream first)."""
    log = Log(strict)
    dns_port_server.reset()
    sock = tunnel(strict, "127.0.0.3:5353")
    with sock:
        sock.sendall(_dns_over_tcp_without_a_question())
        answer, closed = read_all(sock)
    assert answer == b"" and closed
    assert dns_port_server.connections == 0
    rec = log.wait(stage="stream")
    assert (rec["action"], rec["server_ip"], rec["rule"]) == ("block", "127.0.0.3", "policy:unreadable")


def test_the_sni_of_a_handshake_with_the_proxy_is_not_a_destination(strict, servers):
    """A secure web proxy: the SNI the client sends to the proxy names the proxy. It was judged as the
    request's server name: under name_mismatch: block every request was refused."""
    log = Log(strict)
    s = servers["http2"]
    r = subprocess.run(["curl", "-sS", "--max-time", "10", "--proxy", f"https://localhost:{strict.port}",
                        "--proxy-insecure", "-H", "Host: allowed.test", f"http://127.0.0.2:{s.port}/"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout == "hello from 127.0.0.2\n", (r.returncode, r.stdout, r.stderr)
    rec = log.wait(stage="http")
    assert (rec["action"], rec["sni"], rec["name"]) == ("allow", None, "allowed.test") and "mismatch" not in rec


def test_a_stream_inside_a_tunnel_blocked_by_policy_is_refused_for_that_reason(strict, servers):
    """Under interception a tunnel blocked at its ClientHello (here by name_mismatch: block) is ended by
    geoblock; a stream that is no HTTP inside it is refused for the reason the tunnel was blocked (its
    record said `log`, judged anew on the allowed names, although the connection was refused)."""
    log = Log(strict)
    s = servers["https1"]
    sock = tunnel(strict, f"localhost:{s.port}")
    context = accepting_any_certificate()  # mitmproxy's certificate
    with context.wrap_socket(sock, server_hostname="www.allowed.test") as tls:
        tls.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")
        answer, _ = read_all(tls)
    assert b"SSH" not in answer and s.connections == 0
    assert log.wait(stage="tls")["rule"] == "policy:name-mismatch"
    rec = log.wait(stage="stream")
    assert (rec["action"], rec["rule"]) == ("block", "policy:name-mismatch")
    assert rec["reason"].startswith("the connection is blocked")


def test_http2_preface_split_after_two_bytes_is_not_relayed(proxy, servers, log):
    """`PR`, then the rest of the HTTP/2 prior-knowledge preface and a request for a blocked name:
    mitmproxy relayed it as raw TCP (fixed: held, read as HTTP, which refuses prior knowledge)."""
    s = servers["http2"]
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "GET"), (":path", "/"), (":scheme", "http"),
                          (":authority", "binance.com")], end_stream=True)
    data = conn.data_to_send()
    sock = tunnel(proxy, f"127.0.0.2:{s.port}")
    with sock:
        send_segments(sock, [data[:2], data[2:]])
        answer, closed = read_all(sock)
    assert closed and b"200" not in answer
    assert s.connections == 0


def test_an_unreadable_stream_is_judged_on_its_address(proxy, servers, log):
    """Bytes that are neither HTTP nor TLS (an SSH banner) to an allowed address: relayed, and recorded
    with the policy's `unreadable` verdict (log)."""
    s = servers["http2"]
    sock = tunnel(proxy, f"127.0.0.2:{s.port}")
    with sock:
        sock.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")
        read_all(sock, timeout=2)
    assert s.connections == 1
    rec = log.wait(stage="stream")
    assert (rec["action"], rec["rule"], rec["server_ip"], rec["country"]) == (
        "log", "policy:unreadable", "127.0.0.2", "SG")
    assert bytes.fromhex(rec["first_bytes"]).startswith(b"SSH-2.0-")


@pytest.mark.parametrize("payload", [b"SSH-2.0-OpenSSH_9.2\r\n", bytes(range(256)), b"\x00" * 5],
                         ids=["ssh-banner", "all-bytes", "nul"])
def test_unreadable_block_refuses_streams_that_show_no_name(strict, servers, payload):
    log = Log(strict)
    s = servers["http2"]
    sock = tunnel(strict, f"127.0.0.2:{s.port}")
    with sock:
        sock.sendall(payload)
        answer, closed = read_all(sock)
    assert answer == b"" and closed
    assert s.connections == 0
    rec = log.wait(stage="stream")
    assert (rec["action"], rec["rule"], rec["enforced"]) == ("block", "policy:unreadable", True)


def test_first_bytes_that_stay_incomplete_are_refused_in_time(impatient, servers, log):
    """Part of a request line, and nothing more: held for geoblock_hold_timeout (1 s here), then refused
    (on_error), never relayed."""
    s = servers["http2"]
    sock = tunnel(impatient, f"127.0.0.2:{s.port}")
    with sock:
        sock.sendall(b"GET / HT")
        answer, closed = read_all(sock, timeout=8)
    assert answer == b"" and closed
    assert s.connections == 0
    rec = log.wait(stage="stream")
    assert (rec["action"], rec["error"], rec["server_ip"], rec["client"]) == (
        "block", "incomplete-first-bytes", "127.0.0.2", "127.0.0.1")
    assert "within 1 s" in rec["reason"] and bytes.fromhex(rec["first_bytes"]) == b"GET / HT"


def test_a_first_line_past_the_hold_limit_is_refused(proxy, servers, log):
    """64 KiB without a line end: refused through on_error. (Exactly 64 KiB: a client that goes on
    sending while mitmproxy closes may find its connection left open by mitmproxy, though nothing more
    is read from it or relayed.)"""
    s = servers["http2"]
    sock = tunnel(proxy, f"127.0.0.2:{s.port}")
    with sock:
        sock.sendall(b"GET /" + b"a" * (64 * 1024 - 5))
        answer, closed = read_all(sock)
    assert answer == b"" and closed
    assert s.connections == 0
    rec = log.wait(stage="stream")
    assert rec["action"] == "block" and "no complete request line or TLS ClientHello" in rec["reason"]


# ============================================================== 11. protocol switches

def _upgrade_request(port: int, protocol: str) -> bytes:
    return (f"GET http://127.0.0.2:{port}/ HTTP/1.1\r\nHost: allowed.test\r\nConnection: Upgrade\r\n"
            f"Upgrade: {protocol}\r\n\r\n").encode()


@pytest.mark.parametrize("protocol", ["h2c, websocket2", "H2C", "foo/1.0"], ids=["h2c-in-a-list", "h2c-upper",
                                                                                 "other"])
def test_a_switch_to_a_protocol_geoblock_cannot_read_is_refused(proxy, servers, log, protocol):
    """A 101 to anything but WebSocket: mitmproxy relayed the rest as raw TCP, so a later request on the
    connection (for a blocked name) reached the server unjudged (fixed: the flow is killed, the client
    gets no 101 and nothing the server sends after it)."""
    s = servers["http2"]
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(_upgrade_request(s.port, protocol))
        with contextlib.suppress(OSError):
            time.sleep(0.3)
            sock.sendall(BLOCKED_REQUEST)
        answer, closed = read_all(sock)
    assert answer == b"" and closed, answer[:300]
    assert s.switched == []
    rec = log.wait(stage="http", action="block")
    assert rec["upgrade"] and "switched the connection" in rec["reason"]
    assert "crashed" not in proxy.output()


def test_websocket_keeps_working(proxy, servers, log):
    s = servers["http2"]
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(_upgrade_request(s.port, "websocket").replace(
            b"\r\n\r\n", f"\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()))
        sock.settimeout(5)
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(4096)
        assert head.startswith(b"HTTP/1.1 101"), head
        mask = b"\x01\x02\x03\x04"
        sock.sendall(b"\x81\x85" + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(b"hello")))
        frame = b""
        while len(frame) < 7:  # the echoed text frame; a close frame may follow in the same read
            chunk = sock.recv(4096)
            assert chunk, frame
            frame += chunk
    assert frame[:7] == b"\x81\x05hello"
    assert s.switched == [b"hello"]
    log.none(action="block")


def test_tls_inside_a_tunnel_inside_tls_is_judged(proxy, servers, pki, log):
    """A secure web proxy: the client speaks TLS to the proxy itself, then CONNECTs to an address and
    sends a ClientHello for a blocked name. Its TLS to the proxy made geoblock count the connection's TLS
    as judged, and the inner ClientHello passed (fixed: judged per layer)."""
    s = servers["https2"]

    def through_secure_proxy(name: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["curl", "-sS", "--max-time", "10", "--proxy", f"https://127.0.0.1:{proxy.port}",
                               "--proxy-insecure", "--cacert", str(pki.ca_pem), "--connect-to",
                               f"{name}:{s.port}:127.0.0.2:{s.port}", f"https://{name}:{s.port}/"],
                              capture_output=True, text=True, timeout=30)

    r = through_secure_proxy("binance.com")
    assert r.returncode == 35 and "alert access denied" in r.stderr, (r.returncode, r.stderr)
    assert s.connections == 0
    rec = log.wait(stage="tls", sni="binance.com")
    assert (rec["action"], rec["rule"]) == ("block", "offshore-crypto-exchanges")
    # an allowed name through the same kind of proxy: the server's own certificate, its own answer
    r = through_secure_proxy("allowed.test")
    assert r.returncode == 0 and r.stdout == "hello from 127.0.0.2\n", (r.returncode, r.stderr)
    assert s.connections == 1


# ============================================================== 8. the helpers behind the fixes (unit)

def test_sni_problem_unit():
    from geoblock.mitm.observe import sni_problem

    assert sni_problem([(10, b"x")], None) is None  # no server_name extension: no SNI
    assert sni_problem([(0, et.server_name_body(b"a.test"))], "a.test") is None
    problem = sni_problem([(0, et.server_name_body(b"a\x00.test"))], None)
    assert problem is not None and problem.value == "a\x00.test"
    assert "several names" in sni_problem([(0, et.server_name_body(b"a.test", b"b.test"))], None).why
    assert "more than one" in sni_problem([(0, et.server_name_body(b"a.test"))] * 2, "a.test").why


def test_may_be_client_hello_unit():
    from geoblock.mitm import hold

    assert hold.may_be_client_hello(b"\x16") and hold.may_be_client_hello(b"\x16\x03")
    assert not hold.may_be_client_hello(b"") and not hold.may_be_client_hello(b"\x16\x01")
    assert not hold.may_be_client_hello(b"GET / HTTP/1.1\r\n")


def test_request_line_state_unit():
    from geoblock.mitm.observe import LINE, MORE, OTHER, request_line_state, strip_empty_lines

    for data in (b"", b"\r\n", b"\n\r\n", b"G", b"GET / HT", b"PR", b"\r\nGET", b" ", b" G", b"\tGET /"):
        assert request_line_state(data) == MORE, data
    for data in (b"GET / HTTP/1.1\r\n", b"\r\n\nGET / HTTP/1.1\r\nHost: x", b"SSH-2.0-x\r\n", b"PRI * HTTP/2.0\r\n"):
        assert request_line_state(data) == LINE, data
    for data in (b"\x16\x03", b"\x00GET", b"GET /\x00", b"1GET", b" 1GET", b"GET\x7f", b"\r\n\x16\x03\x01"):
        assert request_line_state(data) == OTHER, data
    assert strip_empty_lines(b"\r\n\n\r\nGET / HTTP/1.1\r\n") == b"GET / HTTP/1.1\r\n"


def test_shows_http_version_unit():
    from geoblock.mitm.observe import shows_http_version

    for line in (*ODD_REQUEST_LINES.values(), b"GET / HTTP/1.1", b"\r\nget / http/1.0", b"PRI * HTTP/2.0"):
        assert shows_http_version(line + b"\r\nHost: x\r\n\r\n"), line
    for data in (b"SSH-2.0-OpenSSH_9.2\r\n", b"GET /\r\n", b"\x00\x3a GET / HTTP/1.1", b"GET / HTTP/x",
                 b"x\r\nGET / HTTP/1.1\r\n", _dns_over_tcp_without_a_question()):
        assert not shows_http_version(data), data


def test_stream_state_unit():
    from geoblock.mitm import hold

    whole = et.client_hello("binance.com")
    assert hold.stream_state(whole) == hold.TLS
    for cut in (1, 2, 3, 10, len(whole) - 1):
        assert hold.stream_state(whole[:cut]) == hold.MORE, cut
    assert hold.stream_state(et.record(et.HANDSHAKE, b"\x02\x00\x00\x04\x03\x03\x00\x00")) == hold.TLS
    assert hold.stream_state(b"GET / HTTP/1.1\r\n") == hold.LINE
    # a TLS record of another type where a ClientHello should be: TLS to geoblock (refused there, on_error)
    assert hold.stream_state(b"\x17\x03\x03\x00\x01x") == hold.TLS
    assert hold.stream_state(b"\x15") == hold.MORE and hold.stream_state(b"\x15\x03") == hold.TLS
    assert hold.stream_state(b"\x17\x04\x03") == hold.OTHER  # not TLS framing: a stream with no name
    assert hold.stream_state(b"\x00\x01\x02\x03") == hold.OTHER


# ============================================================== 9. transparent gateway: Host vs destination

@contextlib.contextmanager
def gateway_with(d: Path, policy: dict[str, str] | None = None, extra_rules: str = ""):
    """The transparent gateway of tests/test_gateway.py (namespaces, scripts/gateway.sh, mitmdump as the
    systemd unit runs it) with plain HTTP servers on port 80 at home (CN), offshore (SG) and on a blocked
    address; `policy` overrides policy keys, `extra_rules` is one more rules file. Yields (topology,
    mitmdump, servers)."""
    from support import netns as ns

    reason = ns.unavailable()
    if reason:
        pytest.skip(reason)
    from test_gateway import proxy as gateway_proxy, topology, write_test_data

    write_test_data(d)
    text = (d / "rules" / "policy.yaml").read_text()
    for key, value in (policy or {}).items():
        line = next(line for line in text.splitlines() if line.startswith(f"{key}:"))
        text = text.replace(line, f"{key}: {value}")
    (d / "rules" / "policy.yaml").write_text(text)
    if extra_rules:
        (d / "rules" / "zz-more.yaml").write_text(extra_rules)
    with topology() as (topo, stack):
        servers = {}
        for name, role, host in (("home", "home", ns.HOME4), ("off", "off", ns.OFFSHORE4),
                                 ("blocked", "off", ns.BLOCKED4)):
            servers[name] = ns.NsServer(topo.ns(role), host, 80)
            stack.callback(servers[name].close)
        ns.gateway_sh(topo, "up", "--in-iface", ns.GW_IN_IFACE, "--port", "8080", state=d / "gateway.state")
        m = gateway_proxy(topo, d, "geoblock.service", 8080)
        stack.callback(m.stop)
        m.start()
        yield topo, m, servers


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    with gateway_with(tmp_path_factory.mktemp("evasion-gateway")) as g:
        yield g


@pytest.mark.parametrize("host, dest, seen", [
    ("allowed.test", "off", 200),         # an allowed name to an offshore address: judged on both, allowed
    ("offshore-only.test", "off", 451),   # a rule on the name's location: the real destination decides
    ("offshore-only.test", "home", 200),
    ("binance.com", "home", 451),         # a listed name is blocked wherever the address is
    ("allowed.test", "blocked", None),    # an allowed name cannot lift a block on the address
])
def test_transparent_host_is_judged_with_the_real_destination(gateway, host, dest, seen):
    from support import netns as ns

    topo, m, servers = gateway
    for s in servers.values():
        s.reset()
    log = Log(m)
    ip = {"home": ns.HOME4, "off": ns.OFFSHORE4, "blocked": ns.BLOCKED4}[dest]
    r = ns.curl(topo, "cli", f"http://{ip}/", "-H", f"Host: {host}")
    if seen is None:  # closed at the "ip" stage, before any byte
        assert r.returncode in (52, 56) and r.stdout == "", (r.returncode, r.stderr)
        rec = log.wait(stage="ip", server_ip=ip)
        assert (rec["action"], rec["rule"]) == ("block", "blocked-offshore-network")
        log.none(stage="http")
    else:
        assert r.stdout.startswith(f"HTTP/1.1 {seen}"), r.stdout[:200] + r.stderr
        rec = log.wait(stage="http", server_ip=ip)
        assert rec["host"] == host and rec["country"] == ("SG" if dest == "off" else "CN")
        assert rec["action"] == ("block" if seen == 451 else "allow")
        # geoblock does not resolve the Host to compare it with the destination: no mismatch field
        assert "mismatch" not in rec
    assert servers[dest].connections == (1 if seen == 200 else 0)


def raw_exchange(topo, ip: str, chunks: list[bytes], pause: float = 0.5) -> tuple[bytes, bool]:
    """From the client namespace to ip:80 (redirected to mitmproxy by the gateway): send `chunks` as
    separate TCP segments; everything that came back, and whether the connection was closed."""
    from support import netns as ns

    with ns.tcp_connect(topo.ns("cli"), ip, 80) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with contextlib.suppress(OSError):
            send_segments(sock, chunks, pause)
        return read_all(sock)


@pytest.mark.parametrize("trick", ["empty-line", "1-byte-first", "one-letter-method"])
def test_transparent_request_behind_an_empty_line_or_split_is_judged(gateway, trick):
    """The README's own check (`http://www.okx.com/` through the gateway) with an empty line before the
    request line, or a first segment of one byte: mitmproxy relayed both as raw TCP, recorded only as
    stage `ip`, "the name will decide" (fixed: held, then judged)."""
    from support import netns as ns

    topo, m, servers = gateway
    for s in servers.values():
        s.reset()
    log = Log(m)
    request = BLOCKED_REQUEST.replace(b"binance.com", b"www.okx.com")
    chunks = {"empty-line": [b"\r\n" + request], "1-byte-first": [request[:1], request[1:]],
              "one-letter-method": [b"X" + request[3:]]}[trick]
    answer, _ = raw_exchange(topo, ns.HOME4, chunks)
    assert status(answer) == 451 and b"offshore-crypto-exchanges" in answer, answer[:300]
    assert servers["home"].connections == 0
    rec = log.wait(stage="http", server_ip=ns.HOME4)
    assert (rec["action"], rec["name"]) == ("block", "www.okx.com")


ALLOW_ON_NAME_AND_LOCATION = """\
rules:
  - id: allowed-offshore
    action: allow
    description: an allow rule on name and location, which a block on an address waits for
    domains: [allowed.test]
    offshore: true
"""


def test_transparent_raw_bytes_to_a_blocked_address_are_refused(tmp_path):
    """A network block waits at the `ip` stage when an allow rule on name and location could lift it;
    a stream that never shows a name was then relayed (fixed: judged as a stream, on its address)."""
    from support import netns as ns

    with gateway_with(tmp_path, extra_rules=ALLOW_ON_NAME_AND_LOCATION) as (topo, m, servers):
        log = Log(m)
        answer, closed = raw_exchange(topo, ns.BLOCKED4, [b"\x00\x01 no protocol at all\r\n"])
        assert answer == b"" and closed
        assert servers["blocked"].connections == 0
        ip = log.wait(stage="ip", server_ip=ns.BLOCKED4)
        assert ip["action"] == "allow" and "waiting for the name" in ip["reason"]
        rec = log.wait(stage="stream", server_ip=ns.BLOCKED4)
        assert (rec["action"], rec["rule"], rec["enforced"]) == ("block", "blocked-offshore-network", True)


ALLOW_LIST = """\
rules:
  - id: the-allow-list
    action: allow
    domains: [allowed.test]
"""


def test_transparent_allow_list_refuses_every_stream_that_shows_no_name(tmp_path):
    """`default: block` (an allow list): an SSH banner, or any bytes that are no protocol, to an unlisted
    server were relayed (fixed). Random byte streams (a fixed seed, so a failure can be rerun) all end
    closed, with no connection at the server and one `stream` record each; an allowed name still passes."""
    import random

    from support import netns as ns

    rng = random.Random(20261130)
    streams = [b"SSH-2.0-OpenSSH_9.2\r\n"] + [rng.randbytes(rng.randint(1, 300)) for _ in range(24)]
    with gateway_with(tmp_path, policy={"default": "block"}, extra_rules=ALLOW_LIST) as (topo, m, servers):
        log = Log(m)
        for payload in streams:
            answer, closed = raw_exchange(topo, ns.HOME4, [payload])
            assert answer == b"" and closed, (payload, answer)
        assert servers["home"].connections == 0
        recs = [r for r in log.all() if r["stage"] == "stream"]
        assert len(recs) == len(streams) and {r["action"] for r in recs} == {"block"}
        answer, _ = raw_exchange(topo, ns.HOME4, [b"GET / HTTP/1.1\r\nHost: allowed.test\r\nConnection: close\r\n\r\n"])
        assert status(answer) == 200 and servers["home"].connections == 1


# ==================================================== a second ClientHello after a HelloRetryRequest

class SniServer:
    """A TLS server (Python ssl, OpenSSL, TLS 1.3 allowed) on `host` that records every server name its
    handshakes show (`names`, from OpenSSL's servername callback, which runs for each ClientHello) and
    answers one read with `ok`. OpenSSL answers a ClientHello whose key_share is empty with a
    HelloRetryRequest, and then reads the server_name of the second ClientHello again."""

    def __init__(self, host: str, pki, port: int = 0, netns: str | None = None) -> None:
        self.names: list[str | None] = []
        self.connections = 0
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(pki.cert_pem, pki.key_pem)
        self.ctx.sni_callback = lambda _sock, name, _ctx: self.names.append(name)
        if netns is None:
            self.listener = socket.create_server((host, port))
        else:  # bound inside a network namespace (support/netns.py)
            from support import netns as ns

            with ns.inside(netns):
                self.listener = socket.create_server((host, port))
        self.port = self.listener.getsockname()[1]
        import threading

        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import threading

        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError, ssl.SSLError):
            conn.settimeout(10)
            tls = self.ctx.wrap_socket(conn, server_side=True)
            tls.recv(4096)
            tls.sendall(b"ok")
            tls.close()
        conn.close()

    def reset(self) -> None:
        self.names.clear()
        self.connections = 0

    def close(self) -> None:
        self.listener.close()


@pytest.fixture(scope="module")
def sni_server(pki):
    s = SniServer("127.0.0.2", pki)
    yield s
    s.close()


def retry_hello(sni: str | None, key_share: bool, ech: bool = False) -> bytes:
    """A TLS 1.3-only ClientHello (one record) for `sni` (None: no server_name) offering x25519 only, with
    an empty key_share (`key_share` False: the server must ask again, a HelloRetryRequest) or a real
    x25519 share; `ech`: with an Encrypted Client Hello extension."""
    import struct

    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    exts = [et.tls_ext(0x2B, b"\x02\x03\x04"), et.tls_ext(0x0A, b"\x00\x02\x00\x1d"),
            et.tls_ext(0x0D, b"\x00\x06\x08\x04\x04\x03\x04\x01")]
    if sni is not None:
        exts.insert(0, et.sni_ext([sni.encode()]))
    share = b""
    if key_share:
        pub = X25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        share = b"\x00\x1d\x00\x20" + pub
    exts.append(et.tls_ext(0x33, struct.pack("!H", len(share)) + share))
    if ech:
        exts.append(et.tls_ext(et.EXT_ECH, et.ech_outer_body()))
    body = et.client_hello_body(exts, session_id=b"\x01" * 32, ciphers=b"\x13\x01")
    return et.record(22, et.handshake_message(body), b"\x03\x01")


HRR_RANDOM = bytes.fromhex("cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c")
CHANGE_CIPHER_SPEC = et.record(20, b"\x01")


def hello_retry(sock: socket.socket, first: bytes, second: bytes) -> tuple[bytes, bool]:
    """Send `first`, check that the server asked again (a HelloRetryRequest, passed through), then send
    a ChangeCipherSpec record and `second` in one segment; returns the first record that came back and
    whether the connection was closed after it (tls_first_record)."""
    reply, _ = tls_first_record(sock, [first])
    assert reply[:1] == b"\x16" and reply[5:6] == b"\x02" and reply[11:43] == HRR_RANDOM, reply[:64]
    return tls_first_record(sock, [CHANGE_CIPHER_SPEC + second])


@pytest.mark.parametrize("second_sni,ech", [("binance.com", False), (None, False), ("allowed.test", True)],
                         ids=["other-name", "name-removed", "ech-added"])
def test_second_client_hello_after_hello_retry_cannot_change_the_name(proxy, sni_server, log, second_sni, ech):
    """ClientHello #1 for allowed.test with an empty key_share: the server answers with a
    HelloRetryRequest; ClientHello #2 names binance.com (or none, or adds ECH). OpenSSL's server accepted
    the new name and geoblock had judged only the first (fixed: refused with the TLS alert when the
    second ClientHello comes, the server never reads it, the refusal is recorded)."""
    sni_server.reset()
    with tunnel(proxy, f"127.0.0.2:{sni_server.port}") as sock:
        answer = hello_retry(sock, retry_hello("allowed.test", False), retry_hello(second_sni, True, ech=ech))
    assert_denied(answer)
    assert sni_server.names == ["allowed.test"]
    rec = log.wait(stage="tls", rule="policy:hello-retry")
    assert rec["action"] == "block" and rec["enforced"] is True and rec["sni"] == second_sni
    assert "second ClientHello after a HelloRetryRequest" in rec["reason"]
    if second_sni == "binance.com":
        assert "from allowed.test to binance.com" in rec["reason"] and rec["name"] == "binance.com"


def split_records(records: bytes, size: int) -> bytes:
    """One handshake record (`records`) split into records of at most `size` bytes of payload."""
    return et.handshake_records(records[5:], cuts=range(size, len(records) - 5, size), version=records[1:3])


@pytest.mark.parametrize("second_sni,split", [("allowed.test", False), ("ALLOWED.test.", False),
                                              ("allowed.test", True)],
                         ids=["same", "same-name-other-spelling", "in-40-byte-records"])
def test_hello_retry_with_the_same_name_completes(proxy, sni_server, log, second_sni, split):
    """A legitimate retry (the client offered no key share the server takes): the second ClientHello
    shows the same name (compared normalised; also split across records), and the handshake goes on
    to the server's ServerHello."""
    sni_server.reset()
    second = retry_hello(second_sni, True)
    with tunnel(proxy, f"127.0.0.2:{sni_server.port}") as sock:
        record, _ = hello_retry(sock, retry_hello("allowed.test", False), split_records(second, 40) if split else second)
    assert record[:1] == b"\x16" and record[5:6] == b"\x02" and record[11:43] != HRR_RANDOM, record[:64]
    assert sni_server.names == ["allowed.test", second_sni]
    log.none(rule="policy:hello-retry")


def test_a_switched_name_split_across_records_is_refused(proxy, sni_server, log):
    """The second ClientHello naming binance.com in 40-byte records: held until whole, then refused."""
    sni_server.reset()
    with tunnel(proxy, f"127.0.0.2:{sni_server.port}") as sock:
        answer = hello_retry(sock, retry_hello("allowed.test", False),
                             split_records(retry_hello("binance.com", True), 40))
    assert_denied(answer)
    assert sni_server.names == ["allowed.test"]
    assert log.wait(stage="tls", rule="policy:hello-retry")["sni"] == "binance.com"


def test_a_second_client_hello_sent_before_the_server_answers_is_refused(proxy, sni_server, log):
    """Both ClientHellos at once (the second before any HelloRetryRequest): a server that asks again
    would read the second from its buffer, so it never reaches the server."""
    sni_server.reset()
    with tunnel(proxy, f"127.0.0.2:{sni_server.port}") as sock:
        answer = tls_first_record(sock, [retry_hello("allowed.test", False) + retry_hello("binance.com", True)])
    assert_denied(answer)
    assert "binance.com" not in sni_server.names
    rec = log.wait(stage="tls", rule="policy:hello-retry")
    assert rec["action"] == "block" and "before the server answered" in rec["reason"]


def test_hello_retry_through_python_ssl_client_is_unchanged(proxy, sni_server, pki):
    """An ordinary TLS 1.3 client (Python ssl) through the watched relay: the whole exchange works."""
    sni_server.reset()
    ctx = ssl.create_default_context(cafile=str(pki.ca_pem))
    with tunnel(proxy, f"127.0.0.2:{sni_server.port}") as sock:
        with ctx.wrap_socket(sock, server_hostname="allowed.test") as tls:
            tls.sendall(b"hi")
            assert tls.recv(10) == b"ok"
            assert tls.version() == "TLSv1.3"
    assert sni_server.names == ["allowed.test"]


@pytest.mark.parametrize("second", [et.record(0x99, b"\x00" * 8),
                                    et.record(22, et.handshake_message(b"\x00" * 40, msg_type=2)),
                                    et.record(22, et.handshake_message(b"\x03\x03" + b"\x00" * 10))],
                         ids=["not-a-record", "not-a-client-hello", "cut-client-hello"])
def test_unreadable_bytes_where_the_second_client_hello_must_come_are_refused(proxy, sni_server, log, second):
    """After a HelloRetryRequest, bytes that cannot be read as the second ClientHello: fail closed."""
    sni_server.reset()
    with tunnel(proxy, f"127.0.0.2:{sni_server.port}") as sock:
        answer = hello_retry(sock, retry_hello("allowed.test", False), second)
    assert_denied(answer)
    rec = log.wait(stage="tls", rule="policy:hello-retry")
    assert rec["action"] == "block" and rec["sni"] is None


def test_transparent_second_client_hello_after_hello_retry_cannot_change_the_name(gateway, pki):
    """The same switch through the transparent gateway (namespaces), to a TLS server on port 443 of an
    offshore address: refused at the second ClientHello and recorded; a retry with the same name completes."""
    from support import netns as ns

    topo, m, _servers = gateway
    server = SniServer(ns.OFFSHORE4, pki, port=443, netns=topo.ns("off"))
    try:
        log = Log(m)
        with ns.tcp_connect(topo.ns("cli"), ns.OFFSHORE4, 443) as sock:
            answer = hello_retry(sock, retry_hello("allowed.test", False), retry_hello("binance.com", True))
        assert_denied(answer)
        assert server.names == ["allowed.test"]
        rec = log.wait(stage="tls", rule="policy:hello-retry")
        assert rec["action"] == "block" and rec["sni"] == "binance.com" and rec["server_ip"] == ns.OFFSHORE4
        with ns.tcp_connect(topo.ns("cli"), ns.OFFSHORE4, 443) as sock:
            record, _ = hello_retry(sock, retry_hello("allowed.test", False), retry_hello("allowed.test", True))
        assert record[5:6] == b"\x02" and record[11:43] != HRR_RANDOM, record[:64]
        assert server.names == ["allowed.test", "allowed.test", "allowed.test"]
    finally:
        server.close()


def test_a_second_client_hello_larger_than_geoblock_holds_is_refused(proxy, sni_server, log):
    """A second ClientHello declaring 16 MiB (more than the 64 KiB geoblock holds): refused at once,
    nothing of it held or passed on."""
    sni_server.reset()
    huge = bytes([1]) + (2**24 - 1).to_bytes(3, "big") + b"\x03\x03" + b"\x00" * 100
    with tunnel(proxy, f"127.0.0.2:{sni_server.port}") as sock:
        answer = hello_retry(sock, retry_hello("allowed.test", False), et.record(22, huge))
    assert_denied(answer)
    assert "larger" in log.wait(stage="tls", rule="policy:hello-retry")["reason"]
