"""Lint: rules that load but are probably a mistake, each with where it is and what to do.

`lint(source)` reads a `RuleSource` (rules.load_rules) and returns `LintWarning`s, in file order within
each kind. Kinds (`LintWarning.code`, docs/lint.md):

- "public-suffix": a domain entry that is a public suffix (`com`, `co.uk`, `github.io`: a registry, not one
  party's domain), by the Public Suffix List that the `publicsuffixlist` package ships (ICANN and private
  sections; names the list does not know are not suffixes here). `=name` entries are left alone;
- "allow-lifts-blocks": an allow rule whose domains or patterns lift, wholly or in part, more than
  `max_lifted` domain entries of block rules it overrides (decide._overrides says which): an entry counts
  when an allow entry or pattern matches at least one name it blocks (`api.*` lifts part of `binance.com`),
  or an allow rule without a name condition that overrides block rules (it lifts them for every name);
- "duplicate": the same name and mode twice in one list file or rule, or in two rules of the same action
  and the same conditions on server and client;
- "shadowed": an entry that another entry of a rule of the same action already covers (`api.binance.com`
  under `binance.com`), that rule having no narrower conditions on server and client;
- "broad-pattern": a name pattern matching more than `max_share` of the reference sample of ordinary
  names shipped in geoblock/data/ordinary-names.txt (scripts/make_ordinary_names.py says how it was made),
  a name counting when the pattern matches it or its www., api., m. or app. form,
  named by the pattern's own line when `texts` is given (else its rule's);
- "no-sample": the shipped sample cannot be read (a broken install), so patterns were not checked;
- "no-rules": a rules file with neither rules nor policy keys (an emptied file), when `texts` is given;
- "lookalike": a domain entry whose labels mix scripts (Latin and Cyrillic) or are written wholly in
  letters that look like Latin ones (Unicode's confusables, from the `confusable-homoglyphs` package).

Pure: no mitmproxy, no I/O but reading the shipped sample once (cached). Warnings never raise.
"""

from __future__ import annotations

import bisect
import fnmatch
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

import yaml
from confusable_homoglyphs import categories, confusables
from publicsuffixlist import PublicSuffixList

from geoblock.core.decide import _overrides
from geoblock.core.lists import ListFile
from geoblock.core.names import unicode_name
from geoblock.core.rules import DomainSpec, RuleSource, RuleSpec, read_file
from geoblock.core.ruleset import CompiledRule, Ruleset

__all__ = ["DEFAULT_MAX_LIFTED", "DEFAULT_MAX_SHARE", "SAMPLE_PATH", "LintWarning", "lint", "load_sample"]

DEFAULT_MAX_LIFTED = 10  # block entries one allow rule may lift before geoblock check warns
# share of the ordinary-name sample a pattern may match: 1 in 10,000. Patterns on trading words made of
# one English word (*defi*, *trade*, *swap*, *coin*, *token*) match 0.02 % to 0.1 % of it; the narrow
# ones (*crypto*, *bitcoin*, *btc*, *exchange*, *futures*) under 0.01 % (docs/lint.md).
DEFAULT_MAX_SHARE = 0.0001
SAMPLE_PATH = Path(__file__).resolve().parent.parent / "data" / "ordinary-names.txt"
_EXAMPLES = 5  # names or entries a warning quotes
_Entry = tuple[RuleSpec, DomainSpec]  # a domain entry and its rule


@dataclass(frozen=True)
class LintWarning:
    """One finding. `where` is "file:line" (the entry's, else its rule's); `code` one of the kinds in the
    module's docstring; `message` what is wrong; `fix` what to do about it."""

    where: str
    code: str
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message} ({self.fix})"

    def as_dict(self) -> dict[str, str]:
        return {"where": self.where, "code": self.code, "message": self.message, "fix": self.fix}


def lint(
    source: RuleSource,
    *,
    max_lifted: int = DEFAULT_MAX_LIFTED,
    max_share: float = DEFAULT_MAX_SHARE,
    sample: Sequence[str] | None = None,
    texts: Mapping[str, str] | None = None,
    ruleset: Ruleset | None = None,
) -> list[LintWarning]:
    """The warnings for `source`, grouped by kind in the order of the module's docstring.

    max_lifted: block entries an allow rule may lift (an int >= 0); max_share: the share (0 to 1) of the
    sample a pattern may match; sample: ordinary names (default: the shipped sample, load_sample());
    texts: file path -> text of the rules files as read (rules.load_rules read them), for "no-rules";
    ruleset: `source` compiled, when the caller has it (else lint compiles it).
    """
    rs = ruleset if ruleset is not None and ruleset.source is source else Ruleset(source)
    # every rule with its list files' entries among its domains (materialised once: list entries live
    # in compiled indexes, and the checks below compare entries by identity)
    rules = [replace(r, domains=tuple(r.all_domains())) if r.lists else r for r in source.rules]
    expanded = {id(old): new for old, new in zip(source.rules, rules, strict=True)}
    found: list[LintWarning] = []
    found += _public_suffixes(rules)
    found += _lifts(rs, max_lifted, expanded)
    found += _list_duplicates(source.lists)
    found += _duplicates(rules)
    if sample is None and any(r.patterns for r in source.rules):
        try:
            sample = load_sample()
        except OSError as exc:  # a broken install: say so rather than fail the whole check
            found.append(LintWarning(str(SAMPLE_PATH), "no-sample", f"the sample of ordinary names cannot be read "
                                     f"({exc.strerror or exc}), so patterns were not checked", "reinstall geoblock"))
    found += _broad_patterns(source.rules, sample or (), max_share, _pattern_lines(texts or {}))
    if texts is not None:
        found += _empty_files(texts)
    found += _lookalikes(rules)
    return found


def _where(rule: RuleSpec, dom: DomainSpec) -> str:
    """The entry's "file:line" (DomainSpec.where, in a list file or YAML) or else its rule's."""
    return dom.where or rule.source


def _shown(dom: DomainSpec) -> str:
    prefix = {"tree": "", "exact": "=", "below": "*."}[dom.mode]
    return prefix + unicode_name(dom.name)


# --------------------------------------------------------------------------------------------
# public suffixes


@cache
def _psl() -> PublicSuffixList:
    return PublicSuffixList(accept_unknown=False)  # the package's own snapshot; no network


_COVERS = {"block": "it blocks every name registered under it",
           "allow": "it lifts every block on the names registered under it",
           "log": "it logs every name registered under it"}


def _public_suffixes(rules: Iterable[RuleSpec]) -> list[LintWarning]:
    psl = _psl()
    out = []
    for rule in rules:
        for dom in rule.domains:
            if dom.mode != "exact" and psl.is_public(dom.name):
                out.append(LintWarning(
                    _where(rule, dom), "public-suffix",
                    f"{_shown(dom)} in {rule.action} rule {rule.id} is a public suffix (a registry, not one "
                    f"party's domain): {_COVERS[rule.action]}",
                    f"list the registrable domains you mean, e.g. example.{unicode_name(dom.name)}"))
    return out


# --------------------------------------------------------------------------------------------
# allow rules that lift blocks


def _covers(outer: DomainSpec, inner: DomainSpec) -> bool:
    """Whether every name `inner` matches is matched by `outer` too."""
    below = inner.name.endswith("." + outer.name)
    if outer.mode == "tree":
        return below or inner.name == outer.name
    if outer.mode == "below":
        return below or (inner.name == outer.name and inner.mode == "below")
    return inner.name == outer.name and inner.mode == "exact"


def _suffixes(name: str) -> list[str]:
    """The name and each of its parent names: api.binance.com, binance.com, com."""
    return [name] + [name[i + 1:] for i, c in enumerate(name) if c == "."]


def _overlaps(a: DomainSpec, b: DomainSpec) -> bool:
    """Whether some name is matched by both entries (`binance.com` and `api.binance.com`: yes; `=binance.com`
    and `*.binance.com`: no)."""
    if a.name == b.name:
        return {a.mode, b.mode} != {"exact", "below"}
    if a.name.endswith("." + b.name):  # a's names lie strictly under b's name
        return b.mode != "exact"
    if b.name.endswith("." + a.name):
        return a.mode != "exact"
    return False


def _lifted(dom: DomainSpec, allow: RuleSpec, by_name: Mapping[str, list[DomainSpec]], above: set[str]) -> bool:
    """Whether allow rule `allow` lifts the block entry `dom` for at least one name: an allow entry matching
    one of dom's names (the same name, a parent, or a name under it: `api.binance.com` lifts part of
    `binance.com`), or an allow pattern matching dom's name or a name under it (`api.*` matches
    `api.binance.com`, so it lifts part of every tree or below entry). by_name: the allow rule's domain
    entries by name; above: every name that has one of them strictly under it."""
    if any(_overlaps(a, dom) for suffix in _suffixes(dom.name) for a in by_name.get(suffix, ())):
        return True
    if dom.mode != "exact" and dom.name in above:  # an allow entry's names all lie under dom's name
        return True
    for pattern in allow.patterns:
        if dom.mode != "below" and fnmatch.fnmatchcase(dom.name, pattern):
            return True
        if dom.mode != "exact" and _glob_matches_below(pattern, dom.name):
            return True
    return False


def _glob_matches_below(pattern: str, name: str) -> bool:
    """Whether the name pattern `pattern` (rules' `patterns`: `*` any run of characters, dots included, `?`
    one character, the rest literal) matches at least one name strictly under `name` (`LABELS.name`).

    Decided from the pattern, not by trying names. A matched text ends with what the pattern's tail (after
    its last `*`, or the whole pattern without one) matches, and must end with "." + name: so the tail's
    last characters must match the suffix's. With a `*`, that is enough: the `*` can supply the rest of the
    suffix and the labels before it (`api.*`, `*.binance.com`, `api.kraken.*` all match under binance.com).
    Without one, the pattern must also be longer than the suffix (`??binance.com` yes, `?binance.com` no).
    """
    suffix = "." + name
    star = pattern.rfind("*")
    tail = pattern[star + 1:]
    if star < 0 and len(tail) <= len(suffix):
        return False
    k = min(len(tail), len(suffix))
    return all(p in ("?", c) for p, c in zip(tail[len(tail) - k:], suffix[len(suffix) - k:], strict=True))


def _lifts(rs: Ruleset, max_lifted: int, expanded: Mapping[int, RuleSpec]) -> list[LintWarning]:
    out = []

    def spec_of(rule: CompiledRule) -> RuleSpec:
        return expanded.get(id(rule.spec), rule.spec)

    blocks = [r for r in rs.rules if r.action == "block"]
    for allow in rs.rules:
        if allow.action != "allow":
            continue
        spec = expanded.get(id(allow.spec), allow.spec)
        lifted_rules = [b for b in blocks if _overrides(allow, b)]
        if not spec.has_name_condition:
            if lifted_rules:
                ids = ", ".join(b.id for b in lifted_rules[:_EXAMPLES])
                entries = sum(len(spec_of(b).domains) for b in lifted_rules)
                counted = f" ({entries} domain entries)" if entries else ""
                out.append(LintWarning(
                    spec.source, "allow-lifts-blocks",
                    f"allow rule {spec.id} has no domains or patterns, so it lifts block rule"
                    f"{'s' if len(lifted_rules) > 1 else ''} {ids}{counted} for every name it applies to",
                    "give it the domains it should exempt, or give it the same server or client conditions "
                    "as the block it is meant to lift"))
            continue
        by_name: dict[str, list[DomainSpec]] = {}
        above: set[str] = set()
        for entry in spec.domains:
            by_name.setdefault(entry.name, []).append(entry)
            above.update(_suffixes(entry.name)[1:])
        lifted: list[_Entry] = []
        for block in lifted_rules:
            for dom in spec_of(block).domains:
                if _lifted(dom, spec, by_name, above):
                    lifted.append((spec_of(block), dom))
        per_rule: dict[str, int] = {}
        for block_spec, _ in lifted:
            per_rule[block_spec.id] = per_rule.get(block_spec.id, 0) + 1
        most = [(spec_of(b), per_rule[b.id]) for b in lifted_rules
                if spec_of(b).domains and per_rule.get(b.id, 0) * 2 >= len(spec_of(b).domains)]
        if most and len(lifted) <= max_lifted:  # few entries, but half a block rule or more: a list undone
            block_spec, n = most[0]
            out.append(LintWarning(
                spec.source, "allow-lifts-blocks",
                f"allow rule {spec.id} lifts {n} of the {len(block_spec.domains)} entries of block rule "
                f"{block_spec.id} ({block_spec.source}), wholly or in part",
                "an allow rule exempts a few names from a block: narrow its domains, or remove the block "
                "rule if it is meant to go"))
        elif len(lifted) > max_lifted:
            shown = ", ".join(f"{_shown(d)} ({_where(b, d)})" for b, d in lifted[:_EXAMPLES])
            out.append(LintWarning(
                spec.source, "allow-lifts-blocks",
                f"allow rule {spec.id} lifts {len(lifted)} block entries, wholly or in part (more than "
                f"{max_lifted}): {shown}"
                f"{', ...' if len(lifted) > _EXAMPLES else ''}",
                "narrow its domains to the names it should exempt, or raise --max-lifted if this is meant"))
    return out


# --------------------------------------------------------------------------------------------
# duplicates and shadowed entries


def _conditions(rule: RuleSpec) -> tuple[object, ...]:
    return (rule.offshore, rule.countries, rule.asns, frozenset(rule.networks), frozenset(rule.clients))


_NO_CONDITIONS: tuple[object, ...] = (None, frozenset(), frozenset(), frozenset(), frozenset())


def _no_narrower(outer: RuleSpec, inner: RuleSpec) -> bool:
    """Whether `outer` applies wherever `inner` does, names aside: it has no condition on server or client,
    or the same ones."""
    conditions = _conditions(outer)
    return outer is inner or conditions == _NO_CONDITIONS or conditions == _conditions(inner)


def _duplicates(rules: Sequence[RuleSpec]) -> list[LintWarning]:
    out = []
    repeated: set[int] = set()  # id() of the entries reported as duplicates: not reported again as shadowed
    first: dict[tuple[str, str, str], list[_Entry]] = {}
    covering: dict[tuple[str, str], list[_Entry]] = {}  # (action, name): its tree and below entries
    for rule in rules:
        for dom in rule.domains:
            key = (rule.action, dom.name, dom.mode)
            twin = next(((r, d) for r, d in first.get(key, ()) if r is rule or
                         (_no_narrower(r, rule) and _no_narrower(rule, r))), None)
            if twin is not None:
                out.append(LintWarning(
                    _where(rule, dom), "duplicate",
                    f"{_shown(dom)} is listed twice in {rule.action} rule"
                    f"{'' if twin[0] is rule else 's'} {twin[0].id}"
                    f"{'' if twin[0] is rule else ' and ' + rule.id} (first at {_where(*twin)})",
                    "remove this entry"))
                repeated.add(id(dom))
                continue
            first.setdefault(key, []).append((rule, dom))
            if dom.mode != "exact":
                covering.setdefault((rule.action, dom.name), []).append((rule, dom))
    for rule in rules:
        for dom in rule.domains:
            cover = None if id(dom) in repeated else _shadow(rule, dom, covering)
            if cover is not None:
                out.append(LintWarning(
                    _where(rule, dom), "shadowed",
                    f"{_shown(dom)} in {rule.action} rule {rule.id} is already covered by {_shown(cover[1])} "
                    f"(rule {cover[0].id}, {_where(*cover)})",
                    f"remove this entry: {_shown(cover[1])} covers it"))
    return out


def _list_duplicates(lists: Iterable[ListFile]) -> list[LintWarning]:
    """Entries a list file repeats (lists.read_list keeps the first and notes the others)."""
    return [LintWarning(f"{listed.path}:{line}", "duplicate",
                        f"{text} is listed twice in {listed.path} (first at {listed.path}:{first})",
                        "remove this entry")
            for listed in lists for line, text, first in listed.duplicates]


def _shadow(rule: RuleSpec, dom: DomainSpec, covering: Mapping[tuple[str, str], list[_Entry]]) -> _Entry | None:
    """The first entry of a rule of the same action that covers `dom` (not `dom` itself, not its twin)."""
    for suffix in _suffixes(dom.name):
        for other, cover in covering.get((rule.action, suffix), ()):
            if cover is dom or (cover.name, cover.mode) == (dom.name, dom.mode):
                continue
            if _covers(cover, dom) and _no_narrower(other, rule):
                return other, cover
    return None


# --------------------------------------------------------------------------------------------
# broad patterns


@cache
def load_sample(path: Path = SAMPLE_PATH) -> tuple[str, ...]:
    """The ordinary names of the shipped reference sample (one a line, `#` comments). Raises OSError."""
    with open(path, encoding="utf-8") as fp:
        return tuple(line.strip() for line in fp if line.strip() and not line.startswith("#"))


def _broad_patterns(rules: Iterable[RuleSpec], sample: Sequence[str], max_share: float,
                    lines: Mapping[tuple[str, str], str]) -> list[LintWarning]:
    out: list[LintWarning] = []
    if not sample:
        return out
    for rule in rules:
        for pattern in rule.patterns:
            hits = _hits(pattern, sample)
            share = len(hits) / len(sample)
            if share > max_share:
                examples = ", ".join(_examples(hits))
                # `*word*` -> `*word.*` (the word ends a label, as in kucoin.com), when that is narrow enough
                narrower = pattern[:-1] + ".*" if pattern.endswith("*") and not pattern.endswith(".*") else None
                if narrower and len(_hits(narrower, sample)) / len(sample) <= max_share:
                    fix = f"narrow it, e.g. to {narrower!r} (the word at a label's end), or list the domains"
                else:
                    fix = "narrow it, or list the platforms' domains instead"
                out.append(LintWarning(
                    lines.get((rule.source, pattern), rule.source), "broad-pattern",
                    f"pattern {pattern!r} of {rule.action} rule {rule.id} matches {len(hits):,} of {len(sample):,} "
                    f"ordinary names ({100 * share:.3g} %, more than {100 * max_share:.3g} %), e.g. {examples}",
                    fix))
    return out


def _pattern_lines(texts: Mapping[str, str]) -> dict[tuple[str, str], str]:
    """(rule's "file:line", pattern) -> the pattern's own "file:line", read from the files' YAML (RuleSpec
    keeps patterns without their lines). A file that does not parse adds nothing."""
    out: dict[tuple[str, str], str] = {}
    for path, text in texts.items():
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError:
            continue
        if not isinstance(root, yaml.MappingNode):
            continue
        for key, value in root.value:
            if key.value != "rules" or not isinstance(value, yaml.SequenceNode):
                continue
            for node in value.value:
                if not isinstance(node, yaml.MappingNode):
                    continue
                source = f"{path}:{node.start_mark.line + 1}"
                for field, items in node.value:
                    if field.value == "patterns":
                        for item in items.value if isinstance(items, yaml.SequenceNode) else [items]:
                            if isinstance(item, yaml.ScalarNode):
                                out.setdefault((source, item.value.strip().lower()),
                                               f"{path}:{item.start_mark.line + 1}")
    return out


# labels that commonly stand before a registrable name: a pattern is also tried on these forms of each sample
# name (`www.*` matches none of the registrable names, but www. of nearly every one of them)
_SUBDOMAINS = ("www", "api", "m", "app")


def _hits(pattern: str, sample: Sequence[str]) -> list[tuple[str, str]]:
    """(name, form) for each sample name the pattern matches, in sample order: form is the first of its
    forms that matched, the name itself, else one under it (`www.example.com`: _SUBDOMAINS).

    One regular-expression scan over every form, one a line (_forms), rather than a call per name: the
    pattern's `*` and `?` never cross a line's end."""
    text, starts = _forms(tuple(sample))
    glob = "".join("[^\n]*" if c == "*" else "[^\n]" if c == "?" else re.escape(c) for c in pattern)
    per_name = 1 + len(_SUBDOMAINS)
    out: list[tuple[str, str]] = []
    last = -1
    for m in re.finditer(f"^(?:{glob})$", text, re.MULTILINE):
        index = bisect.bisect_right(starts, m.start()) - 1
        name = sample[index // per_name]
        if index // per_name != last:  # the first form of a name that matched (forms come in order)
            out.append((name, m.group()))
            last = index // per_name
    return out


@cache
def _forms(sample: tuple[str, ...]) -> tuple[str, list[int]]:
    """The forms of each sample name (the name, then www.name, api.name, ...), one a line, and where each
    line starts."""
    lines = [form for name in sample for form in (name, *(f"{label}.{name}" for label in _SUBDOMAINS))]
    starts = []
    at = 0
    for line in lines:
        starts.append(at)
        at += len(line) + 1
    return "\n".join(lines), starts


def _examples(hits: Sequence[tuple[str, str]]) -> list[str]:
    """A few matched forms: of names under com first, shortest first."""
    return [form for name, form in sorted(
        hits, key=lambda h: (h[0].count(".") > 1 or h[0].split(".")[-1] != "com", len(h[1]), h[1]))[:_EXAMPLES]]


# --------------------------------------------------------------------------------------------
# emptied files


def _empty_files(texts: Mapping[str, str]) -> list[LintWarning]:
    out = []
    for path, text in texts.items():
        try:
            policy, rules = read_file(Path(path), text)
        except ValueError:  # RuleError: load_rules refuses the file anyway
            continue
        if not policy and not rules:
            out.append(LintWarning(
                f"{path}:1", "no-rules", "this rules file holds no rules and no policy keys (emptied?)",
                "restore its rules, or delete the file if it is no longer wanted"))
    return out


# --------------------------------------------------------------------------------------------
# look-alike letters


def _lookalikes(rules: Iterable[RuleSpec]) -> list[LintWarning]:
    out = []
    for rule in rules:
        for dom in rule.domains:
            if "xn--" not in dom.name:
                continue
            shown = unicode_name(dom.name)
            problem = _lookalike(shown)
            if problem is not None:
                why, skeleton = problem
                out.append(LintWarning(
                    _where(rule, dom), "lookalike",
                    f"{shown} ({dom.name}) in {rule.action} rule {rule.id} {why}; it reads as {skeleton}",
                    f"write the name in one script: if you meant {skeleton}, type it in Latin letters"))
    return out


def _latin_letter(char: str) -> str | None:
    """The ASCII letter a non-ASCII Latin letter is a form of, one step beyond Unicode's confusables
    (Cyrillic к is confusable with ĸ, LATIN SMALL LETTER KRA, т with ᴛ, LATIN LETTER SMALL CAPITAL T):
    small capitals by their name, kra as k; None for anything else."""
    if char == "\u0138":
        return "k"
    try:
        name = unicodedata.name(char)
    except (ValueError, TypeError):
        return None
    if name.startswith("LATIN LETTER SMALL CAPITAL ") and len(name.rsplit(" ", 1)[1]) == 1:
        return name.rsplit(" ", 1)[1].lower()
    return None


def _lookalike(name: str) -> tuple[str, str] | None:
    """(what is wrong, the Latin look-alike) for a name whose labels mix scripts or are written wholly in
    letters that pass for ASCII ones (аррӏе.com); None for a name in one script that does not pass for
    Latin (кошка.рф)."""
    labels = name.split(".")
    findings: list[str] = []
    skeleton: list[str] = []
    for label in labels:
        scripts = categories.unique_aliases(label) - {"COMMON", "INHERITED"}
        found = confusables.is_confusable(label, preferred_aliases=["latin"], greedy=True) or []
        swaps = {}  # a letter of another script -> the ASCII letter or digit it passes for
        for f in found:
            ascii_ = [h["c"] for h in f["homoglyphs"] if h["c"].isascii() and h["c"].isalnum()]
            ascii_ = ascii_ or [a for a in (_latin_letter(h["c"]) for h in f["homoglyphs"]) if a]
            if ascii_ and f["alias"] not in ("COMMON", "INHERITED", "LATIN"):
                swaps[f["character"]] = ascii_[0].lower()
        letters = [c for c in label if categories.alias(c) not in ("COMMON", "INHERITED")]
        mixed = len(scripts) > 1
        whole = bool(letters) and scripts and "LATIN" not in scripts and all(c in swaps for c in letters)
        if mixed or whole:
            chars = ", ".join(f"{c!r} ({categories.alias(c).title()}) looks like {swaps[c]!r}"
                              for c in dict.fromkeys(label) if c in swaps)
            kind = f"mixes {' and '.join(sorted(s.title() for s in scripts))} letters" if mixed else \
                f"is written in {next(iter(scripts)).title()} letters that look like Latin ones"
            findings.append(f"{kind}: {chars}" if chars else kind)
        skeleton.append("".join(swaps.get(c, c) for c in label))
    if not findings:
        return None
    return "; ".join(findings), ".".join(skeleton)
