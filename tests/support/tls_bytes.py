"""TLS bytes for the tests, the fuzzers and the benchmarks: ClientHellos real and hand-made.

- `client_hello(sni)` takes a real ClientHello from Python's ssl module (memory BIOs, no network), so a
  real server answers it.
- `Hello` splits a ClientHello into its fields and extensions, lets a test change the server_name
  extension byte for byte or add extensions (ECH), and puts it back together, in one TLS record or
  fragmented across several.
- `tls_ext`, `sni_ext`, `alpn_ext`, `client_hello_body`, `handshake_message` and `handshake_records`
  build a ClientHello from parts, lengths as given (the fuzzers make them inconsistent on purpose).
- `ech_outer_body`, `esni_body`, `ech_config_list`: the bodies of the encrypted-name extensions and of
  an HTTPS record's `ech` parameter.

Every function returns wire bytes (`bytes`); nothing here checks what it builds.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from geoblock.probe.hello import (  # noqa: F401 - re-exported: the tests' one place for ClientHello bytes
    ACCESS_DENIED_ALERT,
    ALERT,
    APPLICATION_DATA,
    EXT_ECH,
    EXT_ECH_DRAFT_10,
    EXT_ESNI,
    EXT_SERVER_NAME,
    HANDSHAKE,
    Hello,
    client_hello,
    client_hello_with,
    ech_outer_body,
    esni_body,
    record,
    server_name_body,
)

# -- a ClientHello from parts (the fuzzers' structured inputs; lengths as given, unchecked) -------------


def tls_ext(ext_type: int, body: bytes) -> bytes:
    """One extension: type, length (the low 16 bits of `len(body)`), body."""
    return struct.pack("!HH", ext_type, len(body) & 0xFFFF) + body


def sni_ext(names: Sequence[bytes], name_type: int = 0) -> bytes:
    """A server_name extension listing `names` (raw bytes), each with `name_type` (0: host_name)."""
    return tls_ext(EXT_SERVER_NAME, server_name_body(*names, name_type=name_type))


def alpn_ext(protos: Sequence[bytes]) -> bytes:
    """An application_layer_protocol_negotiation extension (type 16) offering `protos`."""
    entries = b"".join(bytes([len(p)]) + p for p in protos)
    return tls_ext(16, struct.pack("!H", len(entries)) + entries)


def client_hello_body(exts: Sequence[bytes], session_id: bytes = b"",
                      ciphers: bytes = b"\x13\x01\x13\x02\xc0\x2f") -> bytes:
    """A ClientHello's body: TLS 1.2 legacy version, a zero random, `session_id`, the cipher suites
    `ciphers` (2 bytes each), the null compression method, then the extensions `exts` (from `tls_ext`)."""
    body = b"\x03\x03" + bytes(32) + bytes([len(session_id)]) + session_id
    body += struct.pack("!H", len(ciphers)) + ciphers + b"\x01\x00"
    e = b"".join(exts)
    return body + struct.pack("!H", len(e)) + e


def handshake_message(body: bytes, msg_type: int = 1) -> bytes:
    """A handshake message: `msg_type` (1: ClientHello), the 3-byte length, `body`."""
    return bytes([msg_type]) + len(body).to_bytes(3, "big") + body


def handshake_records(message: bytes, cuts: Sequence[int] = (), version: bytes = b"\x03\x01") -> bytes:
    """`message` in TLS handshake records with record version `version`, split at the offsets `cuts`
    (offsets outside the message and repeats are ignored; no cut: one record)."""
    out, start = b"", 0
    for cut in sorted(c for c in set(cuts) if 0 < c < len(message)) + [len(message)]:
        out += record(HANDSHAKE, message[start:cut], version)
        start = cut
    return out


def ech_config_list(*public_names: str) -> bytes:
    """An ECHConfigList (RFC 9849 section 4) with one version-0xfe0d ECHConfig per public name: X25519
    key, HKDF-SHA256/AES-128-GCM, no extensions. What an HTTPS or SVCB record's `ech` parameter holds."""
    configs = b""
    for i, name in enumerate(public_names):
        key = bytes([i + 1]) * 32
        contents = (bytes([i + 1]) + struct.pack("!H", 0x0020) + struct.pack("!H", len(key)) + key
                    + struct.pack("!HHH", 4, 1, 1) + b"\x00" + bytes([len(name)]) + name.encode("ascii")
                    + struct.pack("!H", 0))
        configs += struct.pack("!HH", 0xFE0D, len(contents)) + contents
    return struct.pack("!H", len(configs)) + configs
