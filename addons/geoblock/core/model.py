"""The decision's vocabulary: what a flow shows (`Facts`), what geoblock makes of it (`Verdict`), and the
closed sets of words both use (`Action`, `Stage`, `CountrySource`, `OnError`).

Every part of geoblock speaks these types: the rules (an action per rule), the decision (Facts in,
Verdict out), the record (one line per Verdict) and the proxy's hooks (one stage each). Nothing here
imports mitmproxy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from geoblock.core.names import IPAddress

_set_whole = object.__setattr__  # sets a frozen instance's __dict__ in one call (see Verdict.__init__)
_new = object.__new__

Action = Literal["allow", "log", "block"]
"""What happens to a flow: "allow" (it goes on, recorded), "log" (it goes on, recorded as noteworthy),
"block" (it is refused, recorded)."""

ACTIONS: tuple[Action, ...] = get_args(Action)  # ("allow", "log", "block"): in order of severity

SEVERITY: dict[Action, int] = {action: rank for rank, action in enumerate(ACTIONS)}
"""How strict each action is (allow 0 < log 1 < block 2): the strictest verdict of several wins."""

OnError = Literal["block", "allow"]
"""The policy's `on_error`: what a flow geoblock cannot judge gets (fail closed, or open)."""

ON_ERROR: tuple[OnError, ...] = get_args(OnError)

Stage = Literal["ip", "dns", "connect", "tls", "http", "stream"]
"""Where in a connection a judgement is made, in the order a connection shows them:

- "ip": a transparent connection, before any byte is read: only the addresses are known;
- "dns": a DNS question (or answer) where geoblock serves DNS: only the name is known;
- "connect": an explicit proxy's CONNECT request: its target;
- "tls": a TLS ClientHello: its SNI (and Encrypted Client Hello);
- "http": an HTTP request: its Host, `:authority` or absolute URL, and the connection's SNI;
- "stream": a stream that is neither HTTP nor TLS: the address and the names the connection showed.
"""

STAGES: tuple[Stage, ...] = get_args(Stage)

CountrySource = Literal["geoip", "geoip-registered", "rir", "rdap"]
"""Where a server's country came from: "geoip" (the GeoIP database's `country`, where the addresses
are), "geoip-registered" (its `registered_country`, where the block is registered), "rir" (the regional
registries' delegation data shipped with geoblock: where the block is registered; for an address the
GeoIP databases did not place, or when there are none), "rdap" (the registry's country for the network,
asked over the network: the last resort)."""


@dataclass(slots=True)
class Facts:
    """What a flow shows at one stage, normalised and enriched with the server's location.

    Built by the observers (names normalised with `names.normalize_host`), then completed by
    enrichment (`geo.Geo.place`, RDAP), then judged by `decide.decide`. Mutable while it is being
    completed; `dataclasses.replace` makes a variant (e.g. the same tunnel judged at another stage).
    """

    stage: Stage
    names: tuple[str, ...] = ()  # normalised, distinct; the first is the main one
    client_ip: IPAddress | None = None  # as the connection came (names.as_written)
    # The server's address as judged: an IPv4 address carried in IPv6 (NAT64, 6to4, Teredo,
    # IPv4-compatible) is a names.EmbeddedIPv4, which keeps the IPv6 form for networks and the record.
    server_ip: IPAddress | None = None
    country: str | None = None  # ISO 3166-1 alpha-2 (countries.ISO_3166_ALPHA2), or None: not known
    asn: int | None = None  # the server's autonomous system number, or None: not known
    country_source: CountrySource | None = None  # where `country` came from; None without a country
    geoip_code: str | None = None  # a code the GeoIP database gave that is not a country (EU, AP)
    anycast: bool = False  # the GeoIP database marks the server's network anycast
    sni: str | None = None  # as sent, for the record
    host: str | None = None  # as sent, for the record
    ech: bool = False  # the ClientHello hides its real name with encrypted SNI (observe.ech_of: hides_name)
    ech_grease: bool = False  # it carries a placeholder ECH extension that hides nothing (recorded only)
    ech_why: str | None = None  # what was seen, for the reason (observe.EchSeen.why)
    mismatch: str | None = None  # "SNI a ≠ Host b" when the names of one flow differ
    # Where the flow was seen, for the record only (never judged): the proxy's id of the client connection
    # (the same for every flow of one connection), the client's port, and the server's port where known.
    connection_id: str | None = None
    client_port: int | None = None  # 0-65535
    server_port: int | None = None  # 0-65535: the port the flow goes to (CONNECT target, request, destination)


@dataclass(frozen=True, kw_only=True, init=False)
class Verdict:
    """The outcome of judging one flow. Built by keyword only (`Verdict(action="block", reason=...)`).

    - `action`: what happens to the flow;
    - `reason`: one sentence for people (the record's `reason`, the block page's): which rule applied,
      to which name, and what was known of the server;
    - `rule`: the id of the rule that decided, "policy:<key>" when a policy key did (e.g.
      "policy:unreadable", "policy:ech"), or None when no rule did (the default, on_error);
    - `offshore`: whether the server's country is outside the policy's home countries; None when its
      country is not known;
    - `name`: the normalised name this verdict is about (the strictest of the flow's names), or None;
    - `unknown`: when the policy's `unknown_country` decided (the deciding rule needs the server's location,
      which is not known): what was missing, "country", "ASN" or "address"; else None;
    - `platform`: the platform the deciding entry belongs to (a list line's, or its rule's `platform`),
      or None;
    - `entry`: "file:line" of the domain entry that decided (a list file's line, or the YAML line), or
      None when no domain entry did (a pattern, a rule without names, a policy key);
    - `list`, `list_version`: the list file the deciding entry came from (its name) and its version (the
      first 12 hex digits of its sha256), or None.
    """

    action: Action
    reason: str
    rule: str | None = None
    offshore: bool | None = None
    name: str | None = None
    unknown: str | None = None
    platform: str | None = None
    entry: str | None = None
    list: str | None = None
    list_version: str | None = None

    def __init__(self, *, action: Action, reason: str, rule: str | None = None, offshore: bool | None = None,
                 name: str | None = None, unknown: str | None = None, platform: str | None = None,
                 entry: str | None = None, list: str | None = None,  # noqa: A002 - the record's field name
                 list_version: str | None = None) -> None:
        # One store of the whole instance dict: a frozen dataclass's generated __init__ makes one
        # object.__setattr__ call per field, which costs a listed name's decision about 0.5 µs
        # (scripts/bench_biglist.py). The fields, their order and defaults are those declared above
        # (tests/test_model.py checks they agree); the instance stays frozen (FrozenInstanceError).
        _set_whole(self, "__dict__", {
            "action": action, "reason": reason, "rule": rule, "offshore": offshore, "name": name,
            "unknown": unknown, "platform": platform, "entry": entry, "list": list, "list_version": list_version})

    @classmethod
    def of(cls, action: Action, reason: str, rule: str | None, offshore: bool | None, name: str | None,
           unknown: str | None, platform: str | None, entry: str | None, list: str | None,  # noqa: A002
           list_version: str | None) -> Verdict:
        """The same Verdict as `Verdict(action=..., reason=..., ...)`, every field given by position in
        the order declared: for the decision's hot path (a listed name), where parsing ten keyword
        arguments costs about 0.3 µs of a decision. Elsewhere, build by keyword."""
        verdict = _new(cls)
        _set_whole(verdict, "__dict__", {
            "action": action, "reason": reason, "rule": rule, "offshore": offshore, "name": name,
            "unknown": unknown, "platform": platform, "entry": entry, "list": list, "list_version": list_version})
        return verdict
