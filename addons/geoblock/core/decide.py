"""The decision: a pure function of what a flow shows (enriched) and the compiled ruleset.

Semantics:
- a rule matches when all its conditions hold (a list matches when any entry does);
- the names of a flow (CONNECT target, SNI, Host) are judged one by one, and the strictest verdict
  of them wins, so a blocked name cannot hide behind an allowed one;
- for one name, an allow rule beats a block rule, which beats a log rule; with no match, `default`.
  An allow rule overrides a block rule only where it is as specific: a block rule with no name
  condition (on the server's location or the client's address) is overridden only by an allow rule
  that also constrains the server (resp. the client). A client-chosen name alone never lifts a block
  on where the server is or who the client is;
- at the "ip" stage (a transparent connection, before any byte is read) only the address is known:
  `default` does not apply there (the name, still to come, decides), and a block waits for the name
  when an allow rule on name and server could still lift it;
- a ClientHello whose encrypted SNI hides its real name (observe.ech_of: not a GREASE placeholder), and
  a flow whose names differ (SNI vs Host or CONNECT target: domain fronting) may hide one: the policy's
  `ech` and `name_mismatch` verdicts (log by default) apply when they are stricter than the rules';
- at the "stream" stage (a stream that is neither HTTP nor TLS: raw TCP or UDP, bytes that are no
  protocol) no new name is shown: the stream is judged on its address and the names the connection
  already showed (a CONNECT target), and the policy's `unreadable` verdict (log by default) applies
  when it is stricter than the rules';
- at the "dns" stage only the name is known: rules that need the server's location are left to the
  connection that follows, which sees the server;
- a rule that needs the server's location (country, offshore, ASN, network) when it cannot be found
  gives the policy's `unknown_country` verdict, never more than the rule's own action; an allow rule is
  never granted on an unknown location.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from operator import itemgetter

from geoblock.core.model import SEVERITY, STAGES, Action, Facts, Verdict
from geoblock.core.names import EmbeddedIPv4, IPAddress, unicode_name
from geoblock.core.rules import DomainSpec, RuleSpec
from geoblock.core.ruleset import CompiledRule, Hit, Ruleset

# Facts and Verdict live in geoblock.core.model; they are importable from here too.
__all__ = ["STAGES", "Facts", "Verdict", "decide", "server_text"]

_STRICT_FIRST: tuple[Action, ...] = ("block", "log")  # without an allow, the strictest match decides
_rule_index = itemgetter(0)  # a Hit's rule index: candidates are judged in rule order


@dataclass(slots=True)
class _Match:
    rule: CompiledRule
    entry: DomainSpec | None  # the domain entry that matched the name; None: a pattern, or no name condition
    action: Action
    unknown: str | None  # what could not be found, when the verdict comes from unknown_country


def decide(facts: Facts, rs: Ruleset) -> Verdict:
    """The verdict for `facts` under `rs` (see the module's semantics). Pure: reads `facts` and `rs`,
    changes neither, raises nothing for any Facts whose names are normalised (names.normalize_host)."""
    country = facts.country
    offshore = None if country is None else country not in rs.policy.home_countries
    client_hits = rs.clients.lookup(facts.client_ip) if rs.any_clients and facts.client_ip is not None else None
    server_hits = rs.networks.lookup(facts.server_ip) if rs.any_networks and facts.server_ip is not None else None
    best: Verdict | None = None
    for name in facts.names or (None,):
        verdict = _decide_name(name, facts, rs, offshore, client_hits, server_hits)
        if best is None or SEVERITY[verdict.action] > SEVERITY[best.action]:
            best = verdict
    assert best is not None
    if facts.stage == "ip":
        return _ip_stage(best, rs)
    if facts.stage == "stream" and SEVERITY[rs.policy.unreadable] > SEVERITY[best.action]:
        best = Verdict(action=rs.policy.unreadable, rule="policy:unreadable", offshore=offshore, name=best.name,
                       reason=f"the stream is neither HTTP nor TLS, so it shows no name; the policy for "
                              f"unreadable is {rs.policy.unreadable} (without it: {best.action})")
    if facts.ech and SEVERITY[rs.policy.ech] > SEVERITY[best.action]:
        best = Verdict(action=rs.policy.ech, rule="policy:ech", offshore=offshore, name=best.name,
                       reason=f"the ClientHello hides its real name behind the outer SNI "
                              f"{facts.sni or '(none)'}: {facts.ech_why or 'Encrypted Client Hello'}; "
                              f"the policy for ech is {rs.policy.ech} (without it: {best.action})")
    if facts.mismatch and SEVERITY[rs.policy.name_mismatch] > SEVERITY[best.action]:
        best = Verdict(action=rs.policy.name_mismatch, rule="policy:name-mismatch", offshore=offshore, name=best.name,
                       reason=f"{facts.mismatch}; the policy for name_mismatch is {rs.policy.name_mismatch} "
                              f"(without it: {best.action})")
    return best


def _ip_stage(verdict: Verdict, rs: Ruleset) -> Verdict:
    if verdict.rule is None:
        return Verdict(action="allow", offshore=verdict.offshore,
                       reason="no rule applies to the address alone; the name will decide")
    if verdict.action == "block" and rs.name_allows_on_server:
        ids = ", ".join(r.id for r in rs.name_allows_on_server[:3])
        return Verdict(action="allow", offshore=verdict.offshore,
                       reason=f"{verdict.reason}; waiting for the name, which allow rule {ids} could exempt")
    return verdict


def _decide_name(
    name: str | None,
    facts: Facts,
    rs: Ruleset,
    offshore: bool | None,
    client_hits: frozenset[int] | None,
    server_hits: frozenset[int] | None,
) -> Verdict:
    rules = rs.rules
    candidates: Sequence[Hit] = () if name is None else rs.name_hits(name)
    if rs.nameless_hits:
        candidates = [*rs.nameless_hits, *candidates]
    if not candidates:
        return Verdict(action=rs.policy.default, reason=_default_reason(name, rs), offshore=offshore, name=name)
    if len(candidates) == 1:
        index, entry = candidates[0]
        rule = rules[index]
        if not rule.needs_server_ip and not rule.spec.clients:
            # one rule on the name alone (a listed name's usual case): it decides as the loop below would,
            # with the reason _reason gives such a match
            action = rule.action
            reason = f"{_named(name, entry, rule.spec)}: {action}"
            if entry is None:
                return Verdict.of(action, reason, rule.id, offshore, name, None, rule.spec.platform, None, None, None)
            listed, where = entry.listfile, entry.where
            if listed is None:
                return Verdict.of(action, reason, rule.id, offshore, name, None, entry.platform, where, None, None)
            return Verdict.of(action, reason, rule.id, offshore, name, None, entry.platform, where, listed.name,
                              listed.version)
    else:
        candidates = sorted(candidates, key=_rule_index)
    unknown_policy = rs.policy.unknown_country
    dns_stage = facts.stage == "dns"
    found: dict[Action, list[_Match]] = {}
    for index, entry in candidates:
        rule = rules[index]
        spec = rule.spec
        if dns_stage and rule.needs_server_ip:
            continue
        if spec.clients and (client_hits is None or index not in client_hits):
            continue
        unknown: str | None = None
        if rule.needs_server_ip:
            if spec.networks:
                if facts.server_ip is None:
                    unknown = "address"
                elif server_hits is None or index not in server_hits:
                    continue
            if spec.countries or spec.offshore is not None:
                if facts.country is None:
                    unknown = unknown or "country"
                elif spec.countries and facts.country not in spec.countries:
                    continue
                elif spec.offshore is not None and offshore != spec.offshore:
                    continue
            if spec.asns:
                if facts.asn is None:
                    unknown = unknown or "ASN"
                elif facts.asn not in spec.asns:
                    continue
        action = rule.action
        if unknown is not None:
            if action == "allow" or unknown_policy == "allow":
                continue
            if SEVERITY[unknown_policy] < SEVERITY[action]:
                action = unknown_policy
        found.setdefault(action, []).append(_Match(rule, entry, action, unknown))
    allows, blocks = found.get("allow"), found.get("block")
    if allows:
        standing = [b for b in blocks or () if not any(_overrides(a.rule, b.rule) for a in allows)]
        if not standing:
            return _verdict(allows[0], "allow", name, offshore, _reason(name, facts, rs, offshore, allows[0], blocks))
        return _verdict(standing[0], "block", name, offshore,
                        _reason(name, facts, rs, offshore, standing[0], None, allows[0]))
    for action in _STRICT_FIRST:
        matches = found.get(action)
        if matches:
            return _verdict(matches[0], action, name, offshore, _reason(name, facts, rs, offshore, matches[0], None))
    return Verdict(action=rs.policy.default, reason=_default_reason(name, rs), offshore=offshore, name=name)


def _verdict(match: _Match, action: Action, name: str | None, offshore: bool | None, reason: str) -> Verdict:
    """The verdict a matching rule gives, with the entry that matched (its platform, file:line, list)."""
    entry = match.entry
    if entry is None:
        return Verdict(action=action, rule=match.rule.id, offshore=offshore, name=name, unknown=match.unknown,
                       reason=reason, platform=match.rule.spec.platform)
    listed = entry.listfile
    return Verdict(action=action, rule=match.rule.id, offshore=offshore, name=name, unknown=match.unknown,
                   reason=reason, platform=entry.platform, entry=entry.where,
                   list=None if listed is None else listed.name,
                   list_version=None if listed is None else listed.version)


def _overrides(allow: CompiledRule, block: CompiledRule) -> bool:
    """Whether an allow rule may lift a block rule (see the module's semantics)."""
    b, a = block.spec, allow.spec
    if b.has_name_condition:
        return True
    if b.needs_server_ip and not a.needs_server_ip:
        return False
    if b.clients and not a.clients:
        return False
    return True


def _default_reason(name: str | None, rs: Ruleset) -> str:
    subject = unicode_name(name) if name else "this flow"
    return f"no rule matches {subject}; the default is {rs.policy.default}"


def server_text(addr: IPAddress) -> str:
    """An address for a reason: an IPv4 address carried in IPv6 names both forms."""
    if isinstance(addr, EmbeddedIPv4):
        return f"{addr} (carried in {addr.ipv6}, {addr.form})"
    return str(addr)


def _where(facts: Facts, offshore: bool | None, rs: Ruleset) -> str:
    if facts.server_ip is None:
        return "the server's address is unknown"
    server = server_text(facts.server_ip)
    if facts.country is None:
        place = f"server {server} has no known country"
        if facts.geoip_code is not None:
            place += f" (the GeoIP database says {facts.geoip_code}, which is not a country)"
    else:
        side = "offshore" if offshore else "onshore"
        home = ",".join(sorted(rs.policy.home_countries)) or "none"
        place = f"server {server} is in {facts.country} ({side}; home: {home})"
        if facts.country_source == "geoip-registered":
            place = place.replace(" is in ", " is registered in ", 1)
    if facts.asn is not None:
        place += f", AS{facts.asn}"
    return place


def _named(name: str | None, entry: DomainSpec | None, spec: RuleSpec) -> str:
    """The first part of a reason: how the name matched rule `spec` (the entry `entry`, or a pattern), or
    that the rule applies (no name condition matched a name)."""
    if name is None or (entry is None and not spec.patterns):
        return f"rule {spec.id} applies"
    shown = unicode_name(name)
    if entry is None:
        return f"{shown} matches a name pattern of rule {spec.id}"
    listfile, platform = entry.listfile, entry.platform
    if listfile is not None:
        listed = f" (list {listfile.name}, platform {platform})" if platform else f" (list {listfile.name})"
    else:
        listed = f" (platform {platform})" if platform else ""
    if entry.mode == "exact":
        return f"{shown} is listed exactly (={entry.name}) in rule {spec.id}{listed}"
    if entry.mode == "tree" and name == entry.name:
        return f"{shown} is listed in rule {spec.id}{listed}"
    return f"{shown} is under {unicode_name(entry.name)}, listed in rule {spec.id}{listed}"


def _reason(
    name: str | None,
    facts: Facts,
    rs: Ruleset,
    offshore: bool | None,
    match: _Match,
    overridden: list[_Match] | None,
    refused_allow: _Match | None = None,
) -> str:
    spec = match.rule.spec
    parts = [_named(name, match.entry, spec)]
    if spec.clients and facts.client_ip is not None:
        parts.append(f"client {facts.client_ip} is in its client networks")
    if match.rule.needs_server_ip:
        parts.append(_where(facts, offshore, rs))
    if match.unknown is not None:
        parts.append(
            f"the rule needs the server's {match.unknown}, which is unknown, so unknown_country "
            f"({rs.policy.unknown_country}) applies"
        )
    sentence = "; ".join(parts) + f": {match.action}"
    if overridden:
        ids = ", ".join(m.rule.id for m in overridden)
        sentence += f" (overrides block rule{'s' if len(overridden) > 1 else ''} {ids})"
    if refused_allow is not None:
        sentence += (
            f" (allow rule {refused_allow.rule.id} does not lift it: it does not constrain the "
            f"{'server' if spec.needs_server_ip else 'client'} this rule is about)"
        )
    return sentence
