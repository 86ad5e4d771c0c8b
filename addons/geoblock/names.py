"""Normalisation of host names and IP addresses.

Every name geoblock compares (rule domains, CONNECT targets, SNI, Host headers, DNS questions) goes
through `normalize_host` first, so that one name has one spelling:

- case is folded, one trailing dot is dropped, a port is removed;
- internationalised names become their IDNA 2008 A-label form (UTS 46 mapping), so the Unicode and the
  punycode spelling of a name are the same string;
- IP literals (bracketed or not, IPv6 with a zone id) become `ipaddress` objects, and an IPv4-mapped
  IPv6 address becomes the IPv4 address it carries.

Anything that is not a valid host raises `InvalidHost`, which names the offending value.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from functools import lru_cache
from typing import Union

import idna

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

MAX_NAME = 253
MAX_LABEL = 63

# Host names seen on the wire: letters, digits, hyphen, and underscore (used by real services,
# e.g. _dmarc, and accepted by browsers). Anything else in an ASCII label is refused.
_ASCII_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\Z")


class InvalidHost(ValueError):
    """A host name or address that cannot be normalised. The message names the value."""

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


def normalize_ip(value: str | IPAddress) -> IPAddress:
    """Parse an IP address; IPv4-mapped IPv6 becomes IPv4. Raises InvalidHost."""
    if isinstance(value, str):
        return _normalize_ip_text(value)
    return _unmap(value)


@lru_cache(maxsize=_CACHE)
def _normalize_ip_text(value: str) -> IPAddress:
    return _unmap(_parse_ip(value))


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
    if addr.version == 6 and addr.ipv4_mapped is not None:  # type: ignore[union-attr]
        return addr.ipv4_mapped  # type: ignore[union-attr,return-value]
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


@lru_cache(maxsize=4096)
def unicode_name(name: str) -> str:
    """The Unicode form of a normalised name, for people (falls back to the A-label form)."""
    if "xn--" not in name:
        return name
    try:
        return idna.decode(name)
    except (idna.IDNAError, UnicodeError):
        return name


def cache_sizes() -> dict[str, tuple[int, int | None]]:
    """(entries, bound) of this module's caches, for geoblock.status."""
    infos = {"names": _normalize_host.cache_info(), "addresses": _normalize_ip_text.cache_info(),
             "unicode names": unicode_name.cache_info()}
    return {label: (info.currsize, info.maxsize) for label, info in infos.items()}
