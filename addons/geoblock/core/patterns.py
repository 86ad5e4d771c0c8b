"""Many glob patterns matched against a name at once.

A rule's `patterns` are shell-style globs (`*exchange*`, `api?.binance.*`) with fnmatch's meaning as
geoblock uses it: the whole name must match, `*` is any run of characters (dots included), `?` one
character, everything else itself (rule files allow letters, digits, `_`, `.`, `-`, `*` and `?`; names
and patterns are lower case). Matching each name against one regular expression per pattern rule costs a
regex match per rule: with 10,000 pattern rules that is 10,000 matches for every name.

`PatternSet` instead puts the longest literal run of each glob (`exchange` in `*exchange*`) into one
Aho-Corasick automaton (pyahocorasick): a single pass over the name finds every literal it contains,
and only the globs whose literal occurs are checked with their own expression (fnmatch.translate, as
before, compiled the first time the glob is a candidate, so that building a set of 10,000 globs does not
compile 10,000 expressions). A glob without any literal (`*`, `?*`, `???`) or with a character class
(`[...]`, which rule files do not allow, kept exact anyway) is checked for every name: that list is small
in practice.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable

import ahocorasick


def longest_literal(glob: str) -> str:
    """The longest run of characters of `glob` that every matching name contains verbatim: the longest
    piece between `*` and `?` wildcards ("" when there is none, or when the glob has a `[` class: such
    globs are always checked)."""
    if "[" in glob:
        return ""
    return max(re.split(r"[*?]", glob), key=len)


class PatternSet:
    """Globs, each tagged with the index of its rule, matched all at once (see the module docstring).

    Args:
        entries: (glob, rule index) pairs; a rule may have several globs, a glob may repeat.

    `matches(name)` gives the rule indexes with at least one glob matching the whole name, in increasing
    order (file order), each once: the same rules the per-rule `re.match` loop gave.
    """

    def __init__(self, entries: Iterable[tuple[str, int]]) -> None:
        self._globs: list[str] = []  # per glob id
        self._regex: list[re.Pattern[str] | None] = []  # per glob id, compiled when first a candidate
        self._rule: list[int] = []  # per glob id
        self._always: list[int] = []  # glob ids without a usable literal: checked for every name
        by_literal: dict[str, list[int]] = {}
        for glob, rule in entries:
            gid = len(self._globs)
            self._globs.append(glob)
            self._regex.append(None)
            self._rule.append(rule)
            literal = longest_literal(glob)
            if literal:
                by_literal.setdefault(literal, []).append(gid)
            else:
                self._always.append(gid)
        self._automaton: ahocorasick.Automaton | None = None
        if by_literal:
            automaton = ahocorasick.Automaton(ahocorasick.STORE_ANY, ahocorasick.KEY_STRING)
            for literal, gids in by_literal.items():
                automaton.add_word(literal, tuple(gids))
            automaton.make_automaton()
            self._automaton = automaton
        self.count = len(self._globs)
        """How many globs the set holds."""

    def __len__(self) -> int:
        return self.count

    def matches(self, name: str) -> list[int]:
        """Rule indexes (sorted, distinct) with a glob matching all of `name`; [] when none does."""
        if not self.count:
            return []
        candidates: set[int] = set(self._always)
        if self._automaton is not None:
            for _end, gids in self._automaton.iter(name):
                candidates.update(gids)
        if not candidates:
            return []
        rules: set[int] = set()
        regex, rule_of = self._regex, self._rule
        for gid in candidates:
            rule = rule_of[gid]
            if rule in rules:
                continue
            pattern = regex[gid]
            if pattern is None:  # compiled on first use: most globs of a large set are never candidates
                pattern = regex[gid] = re.compile(fnmatch.translate(self._globs[gid]))
            if pattern.match(name):
                rules.add(rule)
        return sorted(rules)
