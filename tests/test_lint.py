"""`geoblock check` lint (geoblock/core/lint.py, docs/lint.md): each warning as the operator sees it.

Every test writes a rules directory, runs the real `geoblock` command (the console script of the venv
running the tests) as a subprocess, and checks what it prints and its exit status.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from geoblock.core.lint import SAMPLE_PATH, _glob_matches_below, load_sample

REPO = Path(__file__).resolve().parents[1]
GEOBLOCK = Path(sys.executable).parent / "geoblock"
WORDS = Path("/usr/share/dict/american-english")  # Debian's wamerican
POLICY = "home_countries: [CN]\n"


def check(cwd: Path, files: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Write rules/ under cwd (policy.yaml included unless given) and run `geoblock check rules *args`."""
    rules = cwd / "rules"
    rules.mkdir(exist_ok=True)
    for name, text in {"policy.yaml": POLICY, **files}.items():
        (rules / name).write_text(text, encoding="utf-8")
    return subprocess.run([str(GEOBLOCK), "check", "rules", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def warnings(done: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in done.stdout.splitlines() if line.startswith("warning: ")]


def test_the_shipped_rules_lint_clean_under_strict() -> None:
    done = subprocess.run([str(GEOBLOCK), "check", "rules", "--strict"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("ok: ruleset ") and warnings(done) == [], done.stdout


def test_public_suffixes_in_block_and_allow_rules(tmp_path: Path) -> None:
    rules = {"a.yaml": """rules:
  - id: blocks
    action: block
    domains:
      - binance.com
      - co.uk
      - github.io
      - =blogspot.com
  - id: lift
    action: allow
    domains: [com]
"""}
    done = check(tmp_path, rules)
    assert done.returncode == 0  # warnings alone do not fail without --strict
    found = [w for w in warnings(done) if "public suffix" in w]
    assert found == [
        "warning: rules/a.yaml:6: co.uk in block rule blocks is a public suffix (a registry, not one "
        "party's domain): it blocks every name registered under it (list the registrable domains you mean, "
        "e.g. example.co.uk)",
        "warning: rules/a.yaml:7: github.io in block rule blocks is a public suffix (a registry, not one "
        "party's domain): it blocks every name registered under it (list the registrable domains you mean, "
        "e.g. example.github.io)",
        "warning: rules/a.yaml:11: com in allow rule lift is a public suffix (a registry, not one "
        "party's domain): it lifts every block on the names registered under it (list the registrable domains "
        "you mean, e.g. example.com)",
    ]
    assert check(tmp_path, rules, "--strict").returncode == 1


def block_rule(rule_id: str, names: list[str], extra: str = "") -> str:
    entries = "".join(f"      - \"{n}\"\n" for n in names)
    return f"  - id: {rule_id}\n    action: block\n{extra}    domains:\n{entries}"


def test_an_allow_rule_that_lifts_many_blocks(tmp_path: Path) -> None:
    exchanges = [f"x{i}.example.com" for i in range(12)]
    text = "rules:\n" + block_rule("exchanges", exchanges) + (
        "  - id: lift-example\n    action: allow\n    domains: [example.com]\n")
    done = check(tmp_path, {"a.yaml": text})
    assert warnings(done) == [
        "warning: rules/a.yaml:17: allow rule lift-example lifts 12 block entries, wholly or in part (more than "
        "10): "
        "x0.example.com (rules/a.yaml:5), x1.example.com (rules/a.yaml:6), x2.example.com "
        "(rules/a.yaml:7), x3.example.com (rules/a.yaml:8), x4.example.com "
        "(rules/a.yaml:9), ... (narrow its domains to the names it should exempt, or raise "
        "--max-lifted if this is meant)"]
    # within --max-lifted, but the whole block rule: still said (found in review: an allow rule naming
    # the block rule's own list lifted all of it without a word)
    assert warnings(check(tmp_path, {"a.yaml": text}, "--max-lifted", "12")) == [
        "warning: rules/a.yaml:17: allow rule lift-example lifts 12 of the 12 entries of block rule exchanges "
        "(rules/a.yaml:2), wholly or in part (an allow rule exempts a few names from a block: narrow its domains, "
        "or remove the block rule if it is meant to go)"]
    few = "rules:\n" + block_rule("exchanges", exchanges) + (
        "  - id: lift-one\n    action: allow\n    domains: [x3.example.com]\n")
    assert warnings(check(tmp_path, {"a.yaml": few})) == []  # one name exempted: what allow rules are for


def test_an_allow_rule_naming_the_block_rules_own_list_is_said(tmp_path: Path) -> None:
    (tmp_path / "rules" / "lists").mkdir(parents=True)
    (tmp_path / "rules" / "lists" / "x.txt").write_text("binance.com  Binance\nokx.com  OKX\nbybit.com  Bybit\n")
    text = ("rules:\n  - {id: blk, action: block, domains_from: [lists/x.txt]}\n"
            "  - {id: alw, action: allow, domains_from: [lists/x.txt]}\n")
    done = check(tmp_path, {"a.yaml": text}, "--strict")
    assert done.returncode == 1 and any("allow rule alw lifts 3 of the 3 entries of block rule blk" in w
                                        for w in warnings(done))


def test_allow_patterns_on_subdomains_lift_every_block_under_them(tmp_path: Path) -> None:
    # api.* / www.* / m.* match no block entry's own name, but they lift api.binance.com, www.kraken.com, ...
    text = "rules:\n" + block_rule("exchanges", ["binance.com", "kraken.com", "*.bybit.com", "=okx.com"]) + (
        "  - id: allow-api\n    action: allow\n    patterns: [\"api.*\", \"www.*\", \"m.*\"]\n")
    done = check(tmp_path, {"a.yaml": text}, "--strict", "--max-lifted", "0", "--max-share", "0")
    lifts = [w for w in warnings(done) if "allow rule allow-api lifts" in w]
    # =okx.com (that name alone) is not lifted: no pattern matches okx.com itself
    assert lifts == [
        "warning: rules/a.yaml:9: allow rule allow-api lifts 3 block entries, wholly or in part (more than 0): "
        "binance.com (rules/a.yaml:5), kraken.com (rules/a.yaml:6), *.bybit.com (rules/a.yaml:7) (narrow its "
        "domains to the names it should exempt, or raise --max-lifted if this is meant)"]
    assert [w.split(" of ")[0] for w in warnings(done) if "ordinary names" in w] == [
        "warning: rules/a.yaml:11: pattern 'api.*'", "warning: rules/a.yaml:11: pattern 'www.*'",
        "warning: rules/a.yaml:11: pattern 'm.*'"]  # each matches www./api./m. of every ordinary name
    assert done.returncode == 1
    # a pattern that cannot match under a block entry lifts nothing
    narrow = text.replace('[\"api.*\", \"www.*\", \"m.*\"]', '[\"api.partner.example\", \"*.partner.org\"]')
    assert [w for w in warnings(check(tmp_path, {"a.yaml": narrow}, "--max-lifted", "0"))
            if "allow-api" in w] == []


@pytest.mark.parametrize(("pattern", "under"), [
    ("api.*", True), ("*.binance.com", True), ("*binance.com", True), ("api.kraken.*", True),  # api.kraken.binance.com
    ("*.com", True), ("??binance.com", True), ("a.b.binance.com", True), ("*coin*", True),
    ("binance.com", False), ("?binance.com", False),  # binance.com itself, .binance.com: no name under it
    ("*.org", False), ("*.binance.co", False), ("x.binance.com.evil", False), ("api.binance.*.org", False),
])
def test_whether_a_pattern_can_match_under_a_name(pattern, under) -> None:
    assert _glob_matches_below(pattern, "binance.com") is under


def test_allow_entries_under_a_block_entry_lift_part_of_it(tmp_path: Path) -> None:
    text = "rules:\n" + block_rule("exchanges", ["binance.com", "*.kraken.com", "=okx.com", "bybit.com"]) + (
        "  - id: exempt\n    action: allow\n    domains: [api.binance.com, \"*.kraken.com\", www.okx.com, "
        "\"=bybit.com\"]\n")
    done = check(tmp_path, {"a.yaml": text}, "--max-lifted", "0")
    # www.okx.com lifts nothing of =okx.com (that name alone); =bybit.com lifts part of bybit.com
    assert [w for w in warnings(done) if "allow rule exempt" in w] == [
        "warning: rules/a.yaml:9: allow rule exempt lifts 3 block entries, wholly or in part (more than 0): "
        "binance.com (rules/a.yaml:5), *.kraken.com (rules/a.yaml:6), bybit.com (rules/a.yaml:8) (narrow its "
        "domains to the names it should exempt, or raise --max-lifted if this is meant)"]


def test_an_allow_rule_without_names_that_overrides_blocks(tmp_path: Path) -> None:
    text = "rules:\n" + block_rule("exchanges", ["binance.com", "kraken.com"]) + (
        "  - id: north-korea\n    action: block\n    countries: [KP]\n"
        "  - id: admins\n    action: allow\n    clients: [10.0.0.0/8]\n"
        "  - id: partner\n    action: allow\n    domains: [partner.example]\n")
    done = check(tmp_path, {"a.yaml": text}, "--strict")
    # admins lifts the name block (not the block on where the server is: decide's rule); partner lifts nothing
    assert warnings(done) == [
        "warning: rules/a.yaml:10: allow rule admins has no domains or patterns, so it lifts block rule exchanges "
        "(2 domain entries) for every name it applies to (give it the domains it should exempt, or give it the "
        "same server or client conditions as the block it is meant to lift)"]
    assert done.returncode == 1


def test_duplicate_and_shadowed_entries_name_the_first(tmp_path: Path) -> None:
    text = ("rules:\n"
            + block_rule("exchanges", ["binance.com", "kraken.com", "binance.com", "api.binance.com",
                                       "api.binance.com"])
            + block_rule("more", ["kraken.com", "*.kraken.com", "=bybit.com"])
            + block_rule("us-only", ["bybit.com", "www.binance.com"], "    countries: [US]\n")
            + "  - id: watch\n    action: log\n    domains: [binance.com, api.kraken.com]\n")
    done = check(tmp_path, {"a.yaml": text})
    assert warnings(done) == [
        "warning: rules/a.yaml:7: binance.com is listed twice in block rule exchanges (first at rules/a.yaml:5) "
        "(remove this entry)",
        "warning: rules/a.yaml:9: api.binance.com is listed twice in block rule exchanges (first at "
        "rules/a.yaml:8) (remove this entry)",
        "warning: rules/a.yaml:13: kraken.com is listed twice in block rules exchanges and more (first at "
        "rules/a.yaml:6) (remove this entry)",
        # the repeated api.binance.com (line 9) is reported once, as a duplicate
        "warning: rules/a.yaml:8: api.binance.com in block rule exchanges is already covered by binance.com "
        "(rule exchanges, rules/a.yaml:5) (remove this entry: binance.com covers it)",
        "warning: rules/a.yaml:14: *.kraken.com in block rule more is already covered by kraken.com "
        "(rule exchanges, rules/a.yaml:6) (remove this entry: kraken.com covers it)",
        # us-only's www.binance.com: binance.com (no condition) covers it wherever us-only applies
        "warning: rules/a.yaml:21: www.binance.com in block rule us-only is already covered by binance.com "
        "(rule exchanges, rules/a.yaml:5) (remove this entry: binance.com covers it)",
    ]
    # not warned: =bybit.com beside bybit.com of a narrower rule (US only), and the log rule's entries
    # (another action)


PATTERNS = ("*exchange*", "*crypto*", "*bitcoin*", "*btc*", "*coin*", "*swap*", "*futures*", "*trade*", "*token*",
            "*defi*")  # rules/review.yaml before issue 14


def test_the_former_review_patterns_are_too_broad(tmp_path: Path) -> None:
    listed = "".join(f'      - "{p}"\n' for p in PATTERNS)
    text = f"rules:\n  - id: review\n    action: log\n    offshore: true\n    patterns:\n{listed}"
    done = check(tmp_path, {"review.yaml": text}, "--json")
    report = json.loads(done.stdout)
    assert done.returncode == 0
    broad = {re.search(r"pattern '([^']+)'", w["message"]).group(1): w  # type: ignore[union-attr]
             for w in report["warnings"]}
    assert sorted(broad) == ["*coin*", "*defi*", "*swap*", "*token*", "*trade*"]
    assert {p: w["where"] for p, w in broad.items()} == {  # each pattern's own line
        "*coin*": "rules/review.yaml:10", "*swap*": "rules/review.yaml:11", "*trade*": "rules/review.yaml:13",
        "*token*": "rules/review.yaml:14", "*defi*": "rules/review.yaml:15"}
    assert {w["code"] for w in broad.values()} == {"broad-pattern"}
    defi = broad["*defi*"]
    assert re.fullmatch(r"pattern '\*defi\*' of log rule review matches \d+ of 50,012 ordinary names "
                        r"\(0\.\d+ %, more than 0\.01 %\), e\.g\. [a-z]+\.com(, [a-z.]+){4}", defi["message"])
    assert defi["fix"] == "narrow it, e.g. to '*defi.*' (the word at a label's end), or list the domains"
    text_out = check(tmp_path, {"review.yaml": text}, "--strict")
    assert text_out.returncode == 1
    assert len(warnings(text_out)) == 5
    assert warnings(text_out)[0].startswith("warning: rules/review.yaml:10: pattern '*coin*' of log rule review "
                                            "matches ")
    assert warnings(check(tmp_path, {"review.yaml": text}, "--max-share", "0.1")) == []


def test_patterns_on_subdomains_of_ordinary_names_are_too_broad(tmp_path: Path) -> None:
    # the sample holds registrable names only: www.* matches none of them, but www. of every one
    text = "rules:\n  - id: web\n    action: log\n    patterns:\n      - \"www.*\"\n      - \"*.binance.com\"\n"
    found = warnings(check(tmp_path, {"log.yaml": text}))
    assert len(found) == 1, found
    assert re.fullmatch(r"warning: rules/log\.yaml:5: pattern 'www\.\*' of log rule web matches 50,012 of 50,012 "
                        r"ordinary names \(100 %, more than 0\.01 %\), e\.g\. www\.[a-z]+\.com(, www\.[a-z.]+){4} "
                        r"\(narrow it, or list the platforms' domains instead\)", found[0]), found[0]


def test_the_sample_holds_ordinary_names_the_old_patterns_caught() -> None:
    sample = set(load_sample())
    assert {"definitions.com", "tradeshow.com", "swapmeet.com", "swapcard.com", "coincidence.org"} <= sample
    header = [line for line in SAMPLE_PATH.read_text(encoding="utf-8").splitlines() if line.startswith("#")]
    assert any("scripts/make_ordinary_names.py" in line for line in header)
    assert any("wamerican" in line for line in header) and any("Kevin Atkinson" in line for line in header)


def test_the_sample_is_remade_from_the_word_list() -> None:
    if not WORDS.exists():
        pytest.skip("Debian's wamerican word list is not installed (apt-get install wamerican)")
    made = subprocess.run([sys.executable, str(REPO / "scripts" / "make_ordinary_names.py"), str(WORDS)],
                          capture_output=True, text=True, timeout=120, check=True)
    assert made.stdout == SAMPLE_PATH.read_text(encoding="utf-8")


@pytest.mark.parametrize("text", ["", "# everything moved elsewhere\n", "rules: []\n", "rules:\n"])
def test_an_emptied_rules_file(tmp_path: Path, text: str) -> None:
    done = check(tmp_path, {"a.yaml": "rules:\n" + block_rule("x", ["binance.com"]), "b.yaml": text}, "--strict")
    assert warnings(done) == ["warning: rules/b.yaml:1: this rules file holds no rules and no policy keys "
                              "(emptied?) (restore its rules, or delete the file if it is no longer wanted)"]
    assert done.returncode == 1


def test_lookalike_letters(tmp_path: Path) -> None:
    names = ["binаnce.com", "аррӏе.com", "кошка.рф", "bücher.example", "xn--80ak6aa92e.net"]  # Cyrillic а, р, ӏ, е
    done = check(tmp_path, {"a.yaml": "rules:\n" + block_rule("x", names)})
    assert warnings(done) == [
        "warning: rules/a.yaml:5: binаnce.com (xn--binnce-5nf.com) in block rule x mixes Cyrillic and Latin "
        "letters: 'а' (Cyrillic) looks like 'a'; it reads as binance.com (write the name in one script: if you "
        "meant binance.com, type it in Latin letters)",
        "warning: rules/a.yaml:6: аррӏе.com (xn--80ak6aa92e.com) in block rule x is written in Cyrillic "
        "letters that look like Latin ones: 'а' (Cyrillic) looks like 'a', 'р' (Cyrillic) looks like 'p', 'ӏ' "
        "(Cyrillic) looks like 'i', 'е' (Cyrillic) looks like 'e'; it reads as appie.com (write the name in one "
        "script: if you meant appie.com, type it in Latin letters)",
        "warning: rules/a.yaml:9: аррӏе.net (xn--80ak6aa92e.net) in block rule x is written in Cyrillic "
        "letters that look like Latin ones: 'а' (Cyrillic) looks like 'a', 'р' (Cyrillic) looks like 'p', 'ӏ' "
        "(Cyrillic) looks like 'i', 'е' (Cyrillic) looks like 'e'; it reads as appie.net (write the name in one "
        "script: if you meant appie.net, type it in Latin letters)",
    ]


def test_lookalikes_one_step_beyond_the_confusables_table(tmp_path: Path) -> None:
    """Found in review: окх.com and һтх.com (Cyrillic, reading as okx.com and htx.com) passed, because
    Unicode's confusables map к and т to ĸ and ᴛ, not to ASCII letters."""
    done = check(tmp_path, {"a.yaml": "rules:\n" + block_rule("x", ["окх.com", "һтх.com"])})
    assert [w.split("; it reads as ")[1].split(" ")[0] for w in warnings(done)] == ["okx.com", "htx.com"]


def test_json_lists_warnings_and_strict_sets_the_exit_status(tmp_path: Path) -> None:
    files = {"a.yaml": "rules:\n" + block_rule("x", ["github.io"])}
    done = check(tmp_path, files, "--json")
    report = json.loads(done.stdout)
    assert done.returncode == 0 and report["rules"] == 1
    assert report["warnings"] == [{
        "where": "rules/a.yaml:5", "code": "public-suffix",
        "message": "github.io in block rule x is a public suffix (a registry, not one party's domain): it blocks "
                   "every name registered under it",
        "fix": "list the registrable domains you mean, e.g. example.github.io"}]
    assert report["load_warnings"] == []
    strict = check(tmp_path, files, "--json", "--strict")
    assert strict.returncode == 1 and json.loads(strict.stdout) == report


def test_a_load_warning_fails_strict_too(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "a.yaml").write_text("rules:\n  - id: off\n    action: log\n    offshore: true\n", encoding="utf-8")
    done = subprocess.run([str(GEOBLOCK), "check", "rules", "--strict"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1
    assert warnings(done) == ["warning: home_countries is not set: every server with a known country counts as "
                              "offshore"]


@pytest.mark.parametrize("args", [["--max-share", "101"], ["--max-lifted", "-1"]])
def test_bad_limits_are_a_usage_error(tmp_path: Path, args: list[str]) -> None:
    done = check(tmp_path, {}, *args)
    assert done.returncode == 2
    assert "--max-lifted must be 0 or more and --max-share a percentage (0 to 100)" in done.stderr


def test_entries_of_a_list_file_are_named_by_its_own_lines(tmp_path: Path) -> None:
    (tmp_path / "rules" / "lists").mkdir(parents=True)
    (tmp_path / "rules" / "lists" / "x.txt").write_text(
        "# source: test\nbinance.com  Binance\napi.binance.com  Binance\nkraken.com\nbinance.com\nco.uk\n"
        "binаnce.com\n", encoding="utf-8")
    done = check(tmp_path, {"a.yaml": "rules:\n  - id: x\n    action: block\n    domains_from: [lists/x.txt]\n"},
                 "--strict")
    assert done.returncode == 1
    assert warnings(done) == [
        "warning: rules/lists/x.txt:6: co.uk in block rule x is a public suffix (a registry, not one party's "
        "domain): it blocks every name registered under it (list the registrable domains you mean, e.g. "
        "example.co.uk)",
        "warning: rules/lists/x.txt:5: binance.com is listed twice in rules/lists/x.txt (first at "
        "rules/lists/x.txt:2) (remove this entry)",
        "warning: rules/lists/x.txt:3: api.binance.com in block rule x is already covered by binance.com (rule x, "
        "rules/lists/x.txt:2) (remove this entry: binance.com covers it)",
        "warning: rules/lists/x.txt:7: binаnce.com (xn--binnce-5nf.com) in block rule x mixes Cyrillic and Latin "
        "letters: 'а' (Cyrillic) looks like 'a'; it reads as binance.com (write the name in one script: if you "
        "meant binance.com, type it in Latin letters)",
    ]
