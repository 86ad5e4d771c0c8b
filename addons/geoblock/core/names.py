"""Normalisation of host names and IP addresses.

Every name geoblock compares (rule domains, CONNECT targets, SNI, Host headers, DNS questions) goes
through `normalize_host` first, so that one name has one spelling:

- case is folded, one trailing dot is dropped, a port is removed;
- internationalised names become their IDNA 2008 A-label form (UTS 46 mapping), so the Unicode and the
  punycode spelling of a name are the same string;
- IP literals (bracketed or not, IPv6 with a zone id) become `ipaddress` objects, and an IPv4-mapped
  IPv6 address becomes the IPv4 address it carries;
- an IPv6 address that carries an IPv4 address a translator or tunnel will reach (NAT64, 6to4, Teredo,
  IPv4-compatible: see `carried_ipv4`) becomes that IPv4 address as an `EmbeddedIPv4`, which keeps the
  IPv6 address as written: the server is judged by the IPv4 address, and a rule on the IPv6 form still
  applies.

Anything that is not a valid host raises `InvalidHost`, which names the offending value.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from functools import lru_cache
from typing import Any

import idna

from geoblock.errors import GeoblockError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_NAME = 253
MAX_LABEL = 63

# Host names seen on the wire: letters, digits, hyphen, and underscore (used by real services,
# e.g. _dmarc, and accepted by browsers). Anything else in an ASCII label is refused.
_ASCII_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\Z")


class InvalidHost(GeoblockError, ValueError):
    """A host name or address that cannot be normalised. The message names the value.

    Also a ValueError: it is a bad value, and callers that catch ValueError catch it too."""

    def __init__(self, value: object, why: str) -> None:
        self.value = value
        self.why = why
        super().__init__(f"invalid host {_show(value)}: {why}")


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# The same few hosts and addresses recur on every flow: normalised forms are cached (bounded; values
# are immutable; invalid input raises every time and is not cached).
_CACHE = 16384


class EmbeddedIPv4(ipaddress.IPv4Address):
    """An IPv4 address that arrived inside an IPv6 address (see `carried_ipv4`).

    It is the IPv4 address in every comparison, hash, `str()` and lookup (equal to the plain
    `IPv4Address`), so a server reached this way is judged where the IPv4 address is. It also keeps:
    - `ipv6`: the `IPv6Address` as written or dialled (what a connection to it really uses);
    - `form`: which IPv6 form carried it, one of `EMBEDDING_FORMS`.
    """

    __slots__ = ("ipv6", "form")

    def __init__(self, address: object, ipv6: ipaddress.IPv6Address, form: str) -> None:
        super().__init__(address)
        self.ipv6 = ipv6
        self.form = form

    def __reduce__(self) -> tuple[Any, ...]:
        return self.__class__, (self._ip, self.ipv6, self.form)  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return f"EmbeddedIPv4({str(self)!r}, ipv6={str(self.ipv6)!r}, form={self.form!r})"


# The IPv6 forms that carry an IPv4 address, most specific first: (network, form, where the IPv4 is).
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")
_TEREDO = ipaddress.IPv6Network("2001::/32")
_COMPATIBLE = ipaddress.IPv6Network("::/96")
_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")
EMBEDDING_FORMS = ("nat64", "nat64-local", "6to4", "teredo", "ipv4-compatible", "ipv4-translated")


def carried_ipv4(addr: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, str] | None:
    """The IPv4 address an IPv6 address leads to through a translator or tunnel, and the form's name;
    None for any other IPv6 address. The forms (see docs/evasion.md, "Addresses that carry an IPv4
    address"):

    - "nat64": 64:ff9b::/96, the NAT64 well-known prefix; the IPv4 address is the last 32 bits
      (RFC 6052 section 2.1, the /96 format of section 2.2);
    - "nat64-local": 64:ff9b:1::/48, the local-use NAT64 prefix (RFC 8215). An operator may use the
      /48 itself or any RFC 6052 prefix length inside it; geoblock reads the last 32 bits, the /96
      format that operators commonly use. A network using a shorter prefix inside it is judged on the
      IPv6 address only (a `networks` rule on that prefix applies);
    - "6to4": 2002::/16; the IPv4 address is bits 16-47 (RFC 3056 section 2; `IPv6Address.sixtofour`);
    - "teredo": 2001::/32; the Teredo client's public IPv4 address, the last 32 bits inverted (RFC 4380
      section 4; the second item of `IPv6Address.teredo`). That is the host the address reaches; the
      Teredo server in bits 32-63 only relays the qualification;
    - "ipv4-compatible": ::/96 except :: and ::1; the last 32 bits (RFC 4291 section 2.5.5.1,
      deprecated, still accepted by some stacks);
    - "ipv4-translated": ::ffff:0:0:0/96, the addresses a stateless translator (SIIT) maps to IPv4
      hosts; the last 32 bits (RFC 2765 section 2.1, RFC 7915).

    ISATAP interface identifiers (`...:5efe:a.b.c.d`, RFC 5214) are not read: the IPv4 address there
    is a host on an ISATAP link, which the gateway reaches only through a router of that link.

    IPv4-mapped addresses (::ffff:0:0/96) are not here: they are the IPv4 address itself (`normalize_ip`).
    """
    value = int(addr)
    if addr in _NAT64:
        return ipaddress.IPv4Address(value & 0xFFFFFFFF), "nat64"
    if addr in _NAT64_LOCAL:
        return ipaddress.IPv4Address(value & 0xFFFFFFFF), "nat64-local"
    if addr in _SIX_TO_FOUR:
        return ipaddress.IPv4Address((value >> 80) & 0xFFFFFFFF), "6to4"
    if addr in _TEREDO:
        return ipaddress.IPv4Address(~value & 0xFFFFFFFF), "teredo"
    if addr in _COMPATIBLE and value > 1:
        return ipaddress.IPv4Address(value), "ipv4-compatible"
    if addr in _TRANSLATED:
        return ipaddress.IPv4Address(value & 0xFFFFFFFF), "ipv4-translated"
    return None


def as_written(addr: IPAddress) -> IPAddress:
    """The address a connection uses: the IPv6 address for an `EmbeddedIPv4`, else `addr` itself.
    For dialling, DNS answers and client addresses, where the IPv4 address judged is not what is sent."""
    return addr.ipv6 if isinstance(addr, EmbeddedIPv4) else addr


def normalize_ip(value: str | IPAddress) -> IPAddress:
    """Parse an IP address (text, optionally with a %zone id, or an `ipaddress` object). IPv4-mapped
    IPv6 becomes `IPv4Address`; an IPv6 address that carries an IPv4 address (`carried_ipv4`) becomes
    an `EmbeddedIPv4`. Raises InvalidHost naming the value."""
    if isinstance(value, str):
        return _normalize_ip_text(value)
    if isinstance(value, EmbeddedIPv4):
        return value
    return _embed(_unmap(value))


@lru_cache(maxsize=_CACHE)
def _normalize_ip_text(value: str) -> IPAddress:
    return _embed(_unmap(_parse_ip(value)))


def _embed(addr: IPAddress) -> IPAddress:
    if addr.version == 6:
        carried = carried_ipv4(addr)
        if carried is not None:
            return EmbeddedIPv4(int(carried[0]), addr, carried[1])
    return addr


def _parse_ip(value: str | IPAddress) -> IPAddress:
    if isinstance(value, str):
        try:
            addr: IPAddress = ipaddress.ip_address(value.split("%", 1)[0])
        except ValueError:
            raise InvalidHost(value, "not an IP address") from None
    else:
        addr = value
    return addr


def _unmap(addr: IPAddress) -> IPAddress:
    if addr.version == 6 and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _strip_port(value: str) -> str:
    """Remove a port (and brackets around an IPv6 literal)."""
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise InvalidHost(value, "unclosed '[' in IPv6 literal")
        rest = value[end + 1 :]
        if rest and not (rest.startswith(":") and rest[1:].isdigit()):
            raise InvalidHost(value, "unexpected text after IPv6 literal")
        return value[1:end]
    if value.count(":") == 1:
        host, _, port = value.partition(":")
        if port and not port.isdigit():
            raise InvalidHost(value, "port is not a number")
        return host
    return value


def normalize_host(value: str) -> str | IPAddress:
    """Return the canonical form of a host: an IP address object or a lower-case A-label name.

    Accepts "Name", "name.", "name:443", "[v6]:443", "v6", "Bücher.example", "xn--bcher-kva.example".
    """
    if not isinstance(value, str):
        raise InvalidHost(value, "not text")
    return _normalize_host(value)


@lru_cache(maxsize=_CACHE)
def _normalize_host(value: str) -> str | IPAddress:
    try:
        host = _strip_port(value.strip())
    except InvalidHost as exc:  # name the value as given, surrounding spaces included
        raise InvalidHost(value, exc.why) from None
    if not host:
        raise InvalidHost(value, "empty")
    if ":" in host:
        # IPv6 literal, possibly with a zone id.
        return normalize_ip(host)
    if not host.isascii():
        # UTS 46 maps fullwidth and superscript digits and ideographic dots to ASCII: "１２７．０．０．５"
        # spells an address, and must be judged as one.
        try:
            mapped = idna.uts46_remap(host, std3_rules=False, transitional=False)
        except (idna.IDNAError, UnicodeError) as exc:
            raise InvalidHost(value, f"not a valid internationalised name ({exc})") from None
        if mapped.isascii() and mapped and mapped != host:
            as_address = _address_form(mapped)
            if as_address is not None:
                return as_address
    as_address = _address_form(host)
    if as_address is not None:
        return as_address
    return normalize_name(host, original=value)


def _address_form(host: str) -> IPAddress | None:
    """The address `host` spells (standard or legacy IPv4, IPv6), or None when it is a name."""
    if ":" in host:
        try:
            return normalize_ip(host)
        except InvalidHost:
            return None
    if host[-1].isdigit() or host[-1] in "abcdefABCDEF.":
        try:
            return normalize_ip(host)
        except InvalidHost:
            pass  # e.g. "1.2.3.4.example.123": a name ending in a digit.
        return _legacy_ipv4(host)
    return None


_LEGACY_PART = re.compile(r"(?:0[xX][0-9a-fA-F]*|[0-9]+)\Z")


def _legacy_ipv4(host: str) -> IPAddress | None:
    """IPv4 in the forms the system resolver (inet_aton) still accepts: decimal ("2130706433"), octal
    ("0177.0.0.1"), hexadecimal ("0x7f000001"), shortened ("127.1"). A client can reach a server with
    them, so they are that server's address, never names."""
    parts = host[:-1].split(".") if host.endswith(".") else host.split(".")
    if not 1 <= len(parts) <= 4 or not all(_LEGACY_PART.match(p) for p in parts):
        return None
    try:
        packed = socket.inet_aton(host.rstrip("."))
    except OSError:
        return None
    return ipaddress.IPv4Address(packed)


def normalize_name(name: str, original: object = None) -> str:
    """Return the lower-case A-label form of a DNS name (no IP handling). Raises InvalidHost."""
    shown = name if original is None else original
    if name.endswith("."):
        name = name[:-1]
    if not name:
        raise InvalidHost(shown, "empty name")
    if name.isascii():
        name = name.lower()
        labels = name.split(".")
        for label in labels:
            if not _ASCII_LABEL.match(label):
                raise InvalidHost(shown, _label_problem(label))
    else:
        try:
            mapped = idna.uts46_remap(name, std3_rules=False, transitional=False)
        except (idna.IDNAError, UnicodeError) as exc:
            raise InvalidHost(shown, f"not a valid internationalised name ({exc})") from None
        if mapped.endswith("."):
            mapped = mapped[:-1]
        labels = []
        for label in mapped.split("."):
            if label.isascii():
                if not _ASCII_LABEL.match(label):
                    raise InvalidHost(shown, _label_problem(label))
                labels.append(label)
                continue
            try:
                labels.append(idna.alabel(label).decode("ascii"))
            except (idna.IDNAError, UnicodeError) as exc:
                raise InvalidHost(shown, f"label {label!r} is not valid IDNA 2008 ({exc})") from None
        name = ".".join(labels)
    if len(name) > MAX_NAME:
        raise InvalidHost(shown, f"name longer than {MAX_NAME} characters")
    return name


def _label_problem(label: str) -> str:
    if not label:
        return "empty label"
    if len(label) > MAX_LABEL:
        return f"label longer than {MAX_LABEL} characters"
    if label.startswith("-") or label.endswith("-"):
        return f"label {label!r} starts or ends with '-'"
    return f"label {label!r} has characters not allowed in a host name"


def unicode_name(name: str) -> str:
    """The Unicode form of a normalised name, for people (falls back to the A-label form). A name with
    no A-label (no "xn--") is its own Unicode form and is returned as it is, without the cache: most
    names are, and a cache lookup and insert cost a decision more than the test does."""
    if "xn--" not in name:
        return name
    return _decoded(name)


@lru_cache(maxsize=4096)
def _decoded(name: str) -> str:
    """unicode_name of a name with an A-label: IDNA 2008 decoding (idna.decode), remembered."""
    try:
        return idna.decode(name)
    except (idna.IDNAError, UnicodeError):
        return name


def cache_sizes() -> dict[str, tuple[int, int | None]]:
    """(entries, bound) of this module's caches, for geoblock.status."""
    infos = {"names": _normalize_host.cache_info(), "addresses": _normalize_ip_text.cache_info(),
             "unicode names": _decoded.cache_info()}
    return {label: (info.currsize, info.maxsize) for label, info in infos.items()}
