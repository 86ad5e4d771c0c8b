"""ClientHello bytes for the probe (and geoblock's tests): real ones from Python's ssl, and changed ones.

- `client_hello(sni)` takes a real ClientHello from Python's ssl module (memory BIOs, no network), so a
  real server answers it (RFC 8446 section 4.1.2).
- `Hello` splits a ClientHello into its fields and extensions, lets a caller change the server_name
  extension (RFC 6066 section 3) byte for byte or add extensions (ECH), and puts it back together, in one
  TLS record or fragmented across several (RFC 8446 section 5.1 allows a handshake message over records).
- `ech_outer_body`, `esni_body`: the bodies of the encrypted-name extensions (GREASE-shaped).

Every function returns wire bytes (`bytes`). No mitmproxy import: the probe runs without it.
"""

from __future__ import annotations

import ssl
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

EXT_SERVER_NAME = 0x0000
EXT_ECH = 0xFE0D  # encrypted_client_hello, RFC 9849
EXT_ESNI = 0xFFCE  # encrypted_server_name, draft-ietf-tls-esni-00 to -06
EXT_ECH_DRAFT_10 = 0xFE0A  # one of the ECH draft code points (drafts 8 to 12: 0xfe08..0xfe0c)
HANDSHAKE = 0x16
ALERT = 0x15
APPLICATION_DATA = 0x17
ACCESS_DENIED_ALERT = bytes.fromhex("15030300020231")  # what geoblock answers a blocked ClientHello with


def client_hello(sni: str | None = "allowed.test", alpn: Sequence[str] = ()) -> bytes:
    """A real ClientHello (TLS records, as a Python/OpenSSL client sends them first) from Python's ssl;
    `sni` None sends no server_name extension; `alpn` the ALPN protocol names offered. The one maker of
    real ClientHello bytes for the tests and the fuzzers."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if alpn:
        context.set_alpn_protocols(list(alpn))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=sni)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def client_hello_with(sni: str | None, *extensions: tuple[int, bytes]) -> bytes:
    """A real ClientHello for `sni` (see `client_hello`) with more extensions, each `(type, body)`, added
    in order (before pre_shared_key, which TLS 1.3 keeps last), in one record with every length fixed."""
    hello = Hello.parse(client_hello(sni))
    for ext_type, body in extensions:
        hello = hello.with_extension(ext_type, body)
    return hello.records()


def server_name_body(*names: bytes, name_type: int = 0) -> bytes:
    """The body of a server_name extension listing `names` (raw bytes, unchecked)."""
    entries = b"".join(struct.pack("!BH", name_type, len(n)) + n for n in names)
    return struct.pack("!H", len(entries)) + entries


@dataclass
class Hello:
    """A ClientHello message: the fields before the extensions, and the extensions in order."""

    head: bytes  # version, random, session id, cipher suites, compression methods
    extensions: list[tuple[int, bytes]] = field(default_factory=list)
    record_version: bytes = b"\x03\x01"

    @classmethod
    def parse(cls, records: bytes) -> Hello:
        handshake = b""
        rest = records
        record_version = records[1:3]
        while rest:
            assert rest[0] == HANDSHAKE, rest[:5]
            (length,) = struct.unpack("!H", rest[3:5])
            handshake += rest[5:5 + length]
            rest = rest[5 + length:]
        assert handshake[0] == 1, "not a ClientHello"
        body = handshake[4:4 + int.from_bytes(handshake[1:4], "big")]
        p = 2 + 32
        p += 1 + body[p]  # session id
        p += 2 + struct.unpack("!H", body[p:p + 2])[0]  # cipher suites
        p += 1 + body[p]  # compression methods
        head = body[:p]
        (ext_len,) = struct.unpack("!H", body[p:p + 2])
        ext_data = body[p + 2:p + 2 + ext_len]
        extensions = []
        q = 0
        while q < len(ext_data):
            ext_type, n = struct.unpack("!HH", ext_data[q:q + 4])
            extensions.append((ext_type, ext_data[q + 4:q + 4 + n]))
            q += 4 + n
        return cls(head, extensions, record_version)

    def with_server_name(self, body: bytes | None) -> Hello:
        """Replace the server_name extension's body (None: remove it); added first when absent."""
        exts = [e for e in self.extensions if e[0] != EXT_SERVER_NAME]
        if body is not None:
            exts.insert(0, (EXT_SERVER_NAME, body))
        return Hello(self.head, exts, self.record_version)

    def with_extension(self, ext_type: int, body: bytes, first: bool = False) -> Hello:
        exts = list(self.extensions)
        # keep pre_shared_key (41) last, as TLS 1.3 requires
        at = 0 if first else next((i for i, (t, _) in enumerate(exts) if t == 41), len(exts))
        exts.insert(at, (ext_type, body))
        return Hello(self.head, exts, self.record_version)

    def message(self) -> bytes:
        """The handshake message (type 1, ClientHello)."""
        ext_data = b"".join(struct.pack("!HH", t, len(b)) + b for t, b in self.extensions)
        body = self.head + struct.pack("!H", len(ext_data)) + ext_data
        return b"\x01" + len(body).to_bytes(3, "big") + body

    def records(self, fragment: int | None = None) -> bytes:
        """The message in TLS handshake records of at most `fragment` bytes each (default: one)."""
        msg = self.message()
        size = fragment or len(msg)
        return b"".join(record(HANDSHAKE, msg[i:i + size], self.record_version) for i in range(0, len(msg), size))


def record(content_type: int, payload: bytes, version: bytes = b"\x03\x03") -> bytes:
    """One TLS record: `content_type` (e.g. HANDSHAKE), the 2-byte record `version`, the length, `payload`."""
    return bytes([content_type]) + version + struct.pack("!H", len(payload)) + payload


def ech_outer_body(config_id: int = 0x2A, enc: bytes = b"\x11" * 32, payload: bytes = b"\x22" * 144) -> bytes:
    """The body of an encrypted_client_hello extension of type outer (RFC 9849 section 5): cipher suite
    HKDF-SHA256/AES-128-GCM, `config_id`, `enc`, `payload`. Random-looking bytes, as both a real ECH and
    a GREASE placeholder (section 6.2) send them: the two cannot be told apart by their bytes."""
    return (b"\x00" + struct.pack("!HHB", 1, 1, config_id) + struct.pack("!H", len(enc)) + enc
            + struct.pack("!H", len(payload)) + payload)


def esni_body(key: bytes = b"\x33" * 32, encrypted: bytes = b"\x44" * 80) -> bytes:
    """The body of an encrypted_server_name extension (draft-ietf-tls-esni-02 section 5.1): cipher suite
    TLS_AES_128_GCM_SHA256, an X25519 key share, a record digest and the encrypted SNI."""
    return (struct.pack("!H", 0x1301) + struct.pack("!HH", 0x001D, len(key)) + key
            + struct.pack("!H", 32) + b"\x55" * 32 + struct.pack("!H", len(encrypted)) + encrypted)
