"""Compiling rule specifications into lookup structures.

A `Ruleset` is immutable: a reload compiles a new one and swaps it in whole. Lookups cost a handful of
dict probes whatever the number of rules:

- domain entries live in three suffix maps (name and subdomains, exact name, subdomains only); a name is
  looked up by walking its suffixes (api.binance.com, binance.com, com);
- networks (server side) and clients live in a `PrefixTable`: one dict per prefix length in use;
- rules without a name condition are candidates for every flow;
- patterns (globs such as `*exchange*`) go into one PatternSet (core/patterns.py): one automaton pass per name.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from geoblock.core.listindex import ListIndex
from geoblock.core.lists import DomainMode, ListFile
from geoblock.core.model import SEVERITY, Action
from geoblock.core.names import EmbeddedIPv4, IPAddress
from geoblock.core.patterns import PatternSet
from geoblock.core.rules import DomainSpec, Policy, RuleSource, RuleSpec, load_rules

# at one name: an exact entry, then name-and-subdomains, then subdomains (ListIndex.hits's ranks)
_RANK = {"exact": 0, "tree": 1, "below": 2}
_MODES: tuple[DomainMode, ...] = ("exact", "tree", "below")

__all__ = ["SEVERITY", "CompiledRule", "Hit", "Network", "PrefixTable", "Ruleset"]
# Names whose hits a ruleset remembers; the memo starts over when full. 1,024 holds the names of the flows
# in hand (each asks twice) and the most frequent ones; 16,384 cost every decision on a new name about
# 0.4 µs in cache misses and in freeing the entries when it started over (scripts/bench_biglist.py).
_HITS_MEMO = 1024

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Hit = tuple[int, DomainSpec | None]
"""A rule a name matches: (the rule's index in Ruleset.rules, the domain entry that covers the name, or
None when the rule's patterns matched)."""


class PrefixTable:
    """Longest-and-shortest prefix lookup: every stored network containing an address."""

    __slots__ = ("_v4", "_v6")

    def __init__(self, entries: Iterable[tuple[Network, int]]) -> None:
        v4: dict[int, dict[int, list[int]]] = {}
        v6: dict[int, dict[int, list[int]]] = {}
        for net, payload in entries:
            table, bits = (v4, 32) if net.version == 4 else (v6, 128)
            key = int(net.network_address) >> (bits - net.prefixlen)
            table.setdefault(net.prefixlen, {}).setdefault(key, []).append(payload)
        self._v4 = tuple((32 - plen, keys) for plen, keys in sorted(v4.items()))
        self._v6 = tuple((128 - plen, keys) for plen, keys in sorted(v6.items()))

    def __bool__(self) -> bool:
        return bool(self._v4 or self._v6)

    def lookup(self, addr: IPAddress) -> frozenset[int]:
        """The payloads of every stored network that contains `addr`. For an `EmbeddedIPv4` (an IPv4
        address carried in an IPv6 address, names.carried_ipv4) both forms count: a network written on
        the IPv4 address and one written on the IPv6 form (e.g. 2002::/16) both contain it."""
        hits = self._lookup(addr)
        if isinstance(addr, EmbeddedIPv4):
            hits.extend(self._lookup(addr.ipv6))
        return frozenset(hits)

    def _lookup(self, addr: IPAddress) -> list[int]:
        value = int(addr)
        hits: list[int] = []
        for shift, keys in self._v4 if addr.version == 4 else self._v6:
            found = keys.get(value >> shift)
            if found:
                hits.extend(found)
        return hits


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """A rule ready for lookups: its place in the ruleset, its spec, and what decide reads most."""

    index: int  # its position in Ruleset.rules (file order): the first matching rule is named
    spec: RuleSpec
    id: str
    action: Action
    needs_server_ip: bool


class Ruleset:
    """A compiled, immutable ruleset."""

    def __init__(self, source: RuleSource) -> None:
        self.source = source
        self.policy: Policy = source.policy
        self.version = source.version
        self.rules: tuple[CompiledRule, ...] = tuple(
            CompiledRule(
                index=i,
                spec=spec,
                id=spec.id,
                action=spec.action,
                needs_server_ip=spec.needs_server_ip,
            )
            for i, spec in enumerate(source.rules)
        )
        self.tree: dict[str, list[Hit]] = {}
        self.exact: dict[str, list[Hit]] = {}
        self.below: dict[str, list[Hit]] = {}
        maps = {"tree": self.tree, "exact": self.exact, "below": self.below}
        for rule in self.rules:
            for dom in rule.spec.domains:
                maps[dom.mode].setdefault(dom.name, []).append((rule.index, dom))
        # list files: compiled indexes, asked per name (core/listindex.py), in rule order:
        # (rule index, list file, its index)
        self.indexed: tuple[tuple[int, ListFile, ListIndex], ...] = tuple(
            (r.index, lf, lf.index) for r in self.rules for lf in r.spec.lists if lf.index is not None)
        self.inline_tlds = frozenset(name[name.rfind(".") + 1:]
                                     for names in (self.tree, self.exact, self.below) for name in names)
        self.has_patterns = any(r.spec.patterns for r in self.rules)
        self.patterns = PatternSet((p, r.index) for r in self.rules for p in r.spec.patterns)  # core/patterns.py
        self.nameless = tuple(r.index for r in self.rules if not r.spec.has_name_condition)
        self.nameless_hits: tuple[Hit, ...] = tuple((i, None) for i in self.nameless)  # candidates for every flow
        self.nameless_need_server = any(self.rules[i].needs_server_ip for i in self.nameless)
        self.networks = PrefixTable((net, r.index) for r in self.rules for net in r.spec.networks)
        self.clients = PrefixTable((net, r.index) for r in self.rules for net in r.spec.clients)
        self.any_networks, self.any_clients = bool(self.networks), bool(self.clients)  # read on every decision
        # allow rules that could lift a block on the server's location once the name is known
        self.name_allows_on_server = tuple(
            r for r in self.rules if r.action == "allow" and r.spec.has_name_condition and r.needs_server_ip
        )
        self.domain_count = sum(r.spec.domain_count for r in self.rules)
        self.needs_country = any(r.spec.offshore is not None or r.spec.countries for r in self.rules)
        self.needs_asn = any(r.spec.asns for r in self.rules)
        self._hits_memo: dict[str, tuple[Hit, ...]] = {}

    @classmethod
    def load(cls, source: str) -> Ruleset:
        """Read, validate and compile a rules file or directory. Raises RuleError."""
        return cls(load_rules(source))

    def name_hits(self, name: str) -> tuple[Hit, ...]:
        """(rule index, entry) for every rule whose name condition covers `name`: the domain entry that
        covers it (its list file and line, platform, notation), or None where a pattern matched.

        Memoised per ruleset (bounded): a flow asks once to know whether it needs the server's address
        and again to decide, and the same names recur on every flow. A reload builds a new ruleset,
        so the memo never outlives the rules it came from."""
        memo = self._hits_memo
        found = memo.get(name)
        if found is None:
            found = self._name_hits(name)
            if len(memo) >= _HITS_MEMO:
                memo.clear()
            memo[name] = found
        return found

    def _name_hits(self, name: str) -> tuple[Hit, ...]:
        hits: list[Hit] = []
        # the suffix walk over the YAML entries, only where one could match: every entry's name ends in
        # one of `inline_tlds` (a list-only ruleset skips it)
        if self.inline_tlds and name[name.rfind(".") + 1:] in self.inline_tlds:
            found = self.exact.get(name)
            if found:
                hits.extend(found)
            found = self.tree.get(name)
            if found:
                hits.extend(found)
            tree, below = self.tree, self.below
            dot = name.find(".")
            while dot >= 0:
                suffix = name[dot + 1 :]
                found = tree.get(suffix)
                if found:
                    hits.extend(found)
                found = below.get(suffix)
                if found:
                    hits.extend(found)
                dot = name.find(".", dot + 1)
        indexed = self.indexed
        if len(indexed) == 1 and not hits:
            # one list and no YAML entry covering the name (the usual case at national scale): the list's
            # hits in the order ListIndex.hits gives them, most specific first, as the general case does
            index, lf, ix = indexed[0]
            path = lf.path
            for rank, length, kid in ix.hits(name):  # as _listed, inline: a decision on a listed name runs it
                entry_name, mode = name[len(name) - length:], _MODES[rank]
                text, platform, line = ix.describe(kid, entry_name, mode)
                hits.append((index, DomainSpec(entry_name, mode, text, platform, f"{path}:{line}", lf)))
        elif indexed:
            listed: list[tuple[int, int, Hit]] = []
            for index, lf, ix in indexed:
                for rank, length, kid in ix.hits(name):
                    listed.append((-length, rank, (index, self._listed(name, rank, length, lf, ix, kid))))
            if listed:
                if hits:  # most specific first across both, then by rule: the order the suffix walk gives
                    ranked = [(-len(d.name) if d else 0, _RANK[d.mode] if d else 0, h) for h in hits for d in (h[1],)]
                    ranked += listed
                    ranked.sort(key=lambda r: (r[0], r[1], r[2][0]))
                    hits = [h for _, _, h in ranked]
                else:
                    hits = [h for _, _, h in listed]
        if self.has_patterns:
            hits.extend((i, None) for i in self.patterns.matches(name))
        return tuple(hits)

    @staticmethod
    def _listed(name: str, rank: int, length: int, lf: ListFile, ix: ListIndex, kid: int) -> DomainSpec:
        """The DomainSpec of the list entry `ix.hits(name)` found as (rank, length, kid). Made anew each
        time (the name memo keeps it for a name that recurs): a second memo per entry cost a decision on
        a new listed name more than it saved (scripts/bench_biglist.py)."""
        entry_name, mode = name[len(name) - length:], _MODES[rank]
        text, platform, line = ix.describe(kid, entry_name, mode)
        return DomainSpec(entry_name, mode, text, platform, f"{lf.path}:{line}", lf)

    def needs_server_ip(self, names: Iterable[str]) -> bool:
        """Whether a verdict for these names could depend on the server's address or location."""
        if self.nameless_need_server:
            return True
        rules = self.rules
        return any(rules[i].needs_server_ip for name in names for i, _ in self.name_hits(name))

    def sizes(self) -> dict[str, tuple[int, int | None]]:
        """(entries, bound) of this ruleset's memo, for geoblock.status."""
        return {"rule hits": (len(self._hits_memo), _HITS_MEMO)}

    def summary(self) -> dict[str, object]:
        counts = {a: 0 for a in SEVERITY}
        for rule in self.rules:
            counts[rule.action] += 1
        return {
            "version": self.version,
            "rules": len(self.rules),
            "domains": self.domain_count,
            "by_action": counts,
            "files": list(self.source.files),
            "lists": [
                {"path": lf.path, "entries": lf.entry_count, "platforms": len(lf.platforms), "sha256": lf.sha256,
                 "version": lf.version, "mtime": lf.mtime, "source": lf.source, "retrieved": lf.retrieved}
                for lf in self.source.lists
            ],
            "platforms": len({d.platform for r in self.rules for d in r.spec.domains if d.platform}
                             | {p for r in self.rules for lf in r.spec.lists for p in lf.platforms}
                             | {r.spec.platform for r in self.rules if r.spec.platform}),
        }

