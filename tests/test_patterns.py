"""PatternSet (core/patterns.py): many glob patterns matched at once, exactly as the per-rule regular
expressions geoblock used before (one `re.match` of fnmatch.translate's alternation per pattern rule)."""

from __future__ import annotations

import fnmatch
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geoblock.core.patterns import PatternSet, longest_literal
from geoblock.core.ruleset import Ruleset

# small alphabets so that random names and globs meet often (the profile comes from test_properties)
glob = st.text(alphabet="ab.-*?", min_size=1, max_size=8)
rules = st.lists(st.lists(glob, min_size=1, max_size=3), min_size=0, max_size=12)
plain = st.text(alphabet="ab.-", max_size=12)
# derandomised like tests/test_properties.py: the same examples on every run, CI included
exact = settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


def old_matches(rule_globs: list[list[str]], name: str) -> list[int]:
    """Ruleset before PatternSet: one expression per rule (its `_compile_patterns`), every rule tried."""
    compiled = [re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in globs)) for globs in rule_globs]
    return [i for i, pattern in enumerate(compiled) if pattern.match(name)]


def entries(rule_globs: list[list[str]]) -> list[tuple[str, int]]:
    return [(g, i) for i, globs in enumerate(rule_globs) for g in globs]


@st.composite
def name_from(draw: st.DrawFn, rule_globs: list[list[str]]) -> str:
    """A name that one of the globs matches by construction (wildcards filled in), or a random one."""
    globs = [g for globs in rule_globs for g in globs]
    if not globs or draw(st.booleans()):
        return draw(plain)
    out = []
    for ch in draw(st.sampled_from(globs)):
        if ch == "*":
            out.append(draw(st.text(alphabet="ab.-", max_size=4)))
        elif ch == "?":
            out.append(draw(st.sampled_from("ab.-")))
        else:
            out.append(ch)
    return "".join(out)


@exact
@given(st.data(), rules)
def test_a_pattern_set_matches_the_rules_the_per_rule_expressions_matched(data, rule_globs):
    ps = PatternSet(entries(rule_globs))
    for _ in range(5):
        name = data.draw(name_from(rule_globs))
        assert ps.matches(name) == old_matches(rule_globs, name), (rule_globs, name)


@exact
@given(st.lists(st.text(alphabet="ab.-*?[]!", min_size=1, max_size=7), max_size=6),
       st.text(alphabet="ab.-[]!", max_size=8))
def test_fnmatch_classes_and_stray_brackets_keep_their_meaning(globs, name):
    """Rule files allow no brackets, but a PatternSet given any glob answers as fnmatch does."""
    rule_globs = [[g] for g in globs]
    assert PatternSet(entries(rule_globs)).matches(name) == old_matches(rule_globs, name)


def test_longest_literal():
    assert longest_literal("*exchange*") == "exchange"
    assert longest_literal("api?.binance.*") == ".binance."
    assert longest_literal("*") == "" and longest_literal("??") == ""
    assert longest_literal("[ab]*exchange") == ""  # a class: always checked


def test_an_empty_set_matches_nothing():
    assert PatternSet([]).matches("binance.com") == [] and len(PatternSet([])) == 0


def test_ten_thousand_patterns_check_only_the_candidates():
    """10,000 pattern rules: a name is checked against the globs whose literal it contains (and those
    without a literal), not against every rule's expression."""
    rule_globs = [[f"*exchange{i}.*"] for i in range(10_000)] + [["*"], ["bin?nce.*"]]
    ps = PatternSet(entries(rule_globs))
    calls: list[int] = []

    class Counting:
        def __init__(self, gid: int, pattern: re.Pattern[str]) -> None:
            self.gid, self.pattern = gid, pattern

        def match(self, name: str) -> re.Match[str] | None:
            calls.append(self.gid)
            return self.pattern.match(name)

    ps._regex = [Counting(gid, re.compile(fnmatch.translate(g))) for gid, g in enumerate(ps._globs)]  # type: ignore[misc]
    assert ps.matches("www.exchange1234.example") == [1234, 10_000]
    assert len(calls) <= 4, calls  # exchange1234 (its literal also holds exchange1, exchange12, ...) and "*"
    calls.clear()
    assert ps.matches("binance.com") == [10_000, 10_001]
    assert len(calls) == 2


def test_the_ruleset_names_the_pattern_rules_in_file_order(tmp_path):
    (tmp_path / "rules.yaml").write_text(
        "home_countries: [CN]\ndefault: allow\nrules:\n"
        "  - {id: first, action: log, patterns: ['*exchange*', 'coin?.*']}\n"
        "  - {id: listed, action: block, domains: [exchange.example]}\n"
        "  - {id: third, action: block, patterns: ['*.example']}\n"
        "  - {id: fourth, action: log, patterns: ['nomatch*']}\n"
    )
    rs = Ruleset.load(str(tmp_path / "rules.yaml"))
    hits = rs.name_hits("exchange.example")
    assert [(rs.rules[i].id, entry is None) for i, entry in hits] == [
        ("listed", False), ("first", True), ("third", True)]
    assert [rs.rules[i].id for i, _ in rs.name_hits("coin1.org")] == ["first"]
