"""Compiled lists (core/listindex.py): a list file becomes a memory-mapped trie artifact that answers as
the entries themselves would, at any size; a bad list is refused naming file:line wherever it compiles;
a damaged or unwritable cache never changes a verdict."""

from __future__ import annotations

import json
import random
import string
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geoblock.core import listindex, lists
from geoblock.core.decide import Facts, decide
from geoblock.core.rules import RuleError
from geoblock.core.ruleset import Ruleset

# ---------------------------------------------------------------------------------------------------
# the fast path for plain lines reads exactly as the general parser

_NAMES = ["binance.com", "api.binance.com", "Binance.COM", "okx.com.", "b_x.io", "a-b.c-d.app", "-bad.com",
          "bad-.com", "1.2.3.4", "0x7f.1", "1.2.3.0xa", "10.0.0.1.example", "example.123", "x.y.z.org",
          "localhost", "single", "a..b.com", "xn--bcher-kva.example", "bücher.example", ".okx.com", "=okx.com",
          "*.okx.com", "||okx.com^", "0.0.0.0", "http://okx.com/", "okx.com:443", "a" * 64 + ".com",
          ".".join(["abcdefghij"] * 26) + ".com", "ok\u00a0x.com", "OKX.com", "okx.c0m", "okx.c_m"]
_TAILS = ["", " Binance", "\tOKX Exchange", "  Crypto.com", " okx.com", " https://www.okx.com/", " x" * 60,
          " #comment", " Plat # c", " Plat\x00x", "\x0cPlat", " ＯＫＸ.com", "   ", " a\tb  c", " Binance "]
_PREFIX = ["", " ", "\t", "# c ", "0.0.0.0 "]


@st.composite
def _list_text(draw: st.DrawFn) -> str:
    lines = draw(st.lists(st.tuples(st.sampled_from(_PREFIX), st.sampled_from(_NAMES), st.sampled_from(_TAILS)),
                          min_size=1, max_size=12))
    return "\n".join(p + n + t for p, n, t in lines) + draw(st.sampled_from(["", "\n", "\r\n"]))


def _read(text: str, lenient: bool, fast: bool) -> object:
    was = lists.FAST_PATH
    lists.FAST_PATH = fast
    try:
        cols = lists.read_columns("x.txt", text, lenient=lenient, platform="Default")
    except RuleError as exc:
        return ("error", str(exc))
    finally:
        lists.FAST_PATH = was
    return (cols.names, cols.modes, cols.texts, cols.platforms, cols.lines, cols.info)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_list_text(), st.booleans())
def test_the_fast_path_reads_every_line_as_the_general_parser(text: str, lenient: bool) -> None:
    assert _read(text, lenient, fast=True) == _read(text, lenient, fast=False)


_GOOD_NAMES = ["binance.com", "api.binance.com", "okx.com", "b_x.io", "a-b.c-d.app", "x.y.z.org", "crypto.com",
               "xn--bcher-kva.example", "a" * 63 + ".com", ".".join(["abcdefghij"] * 22) + ".com"]
_GOOD_TAILS = ["", " Binance", "\tOKX Exchange", "  Crypto.com", "   ", " a\tb  c", " Binance "]


@st.composite
def _good_text(draw: st.DrawFn) -> str:
    """Lists whose every line the fast path reads (or a blank or comment line): the columns are built a
    column at a time (lists._bulk), unless a name repeats."""
    lines = draw(st.lists(st.one_of(
        st.tuples(st.sampled_from(_GOOD_NAMES), st.sampled_from(_GOOD_TAILS)).map("".join),
        st.sampled_from(["", "   ", "# a comment", "  # indented comment", "# source: https://x.example/"])),
        min_size=1, max_size=12))
    return "\n".join(lines) + draw(st.sampled_from(["", "\n"]))


@settings(max_examples=300, deadline=None)
@given(_good_text(), st.booleans())
def test_a_list_read_a_column_at_a_time_reads_as_the_general_parser(text: str, lenient: bool) -> None:
    assert _read(text, lenient, fast=True) == _read(text, lenient, fast=False)


# ---------------------------------------------------------------------------------------------------
# a compiled list answers as the same entries written in YAML

_LABELS = ["a", "b", "ab", "x-y", "c1"]
_TLDS = ["com", "io"]


@st.composite
def _name(draw: st.DrawFn) -> str:
    return ".".join(draw(st.lists(st.sampled_from(_LABELS), min_size=1, max_size=3)) + [draw(st.sampled_from(_TLDS))])


def _rules(tmp: Path, entries: list[str], as_list: bool) -> Ruleset:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "policy.yaml").write_text("home_countries: [CN]\ndefault: allow\n")
    if as_list:
        (tmp / "lists").mkdir(exist_ok=True)
        (tmp / "lists" / "l.txt").write_text("".join(f"{e}  P{i}\n" for i, e in enumerate(entries)))
        rule = {"id": "r", "action": "block", "domains_from": ["lists/l.txt"]}
    else:
        rule = {"id": "r", "action": "block", "domains": entries}
    other = {"id": "s", "action": "log", "domains": ["ab.com", "=a.io"]}
    (tmp / "r.yaml").write_text(json.dumps({"rules": [rule, other]}))
    return Ruleset.load(str(tmp))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(["", "=", "*."]), _name()), min_size=1, max_size=8, unique_by=lambda t: t),
       st.lists(_name(), min_size=1, max_size=10))
def test_a_compiled_list_answers_as_the_same_entries_in_yaml(entries: list[tuple[str, str]], names: list[str]) -> None:
    written = [m + n for m, n in entries]
    if len({(m, n) for m, n in entries}) != len(written):
        return
    with tempfile.TemporaryDirectory() as tmp:
        listed = _rules(Path(tmp) / "l", written, as_list=True)
        inline = _rules(Path(tmp) / "y", written, as_list=False)
        for name in names + [n for _, n in entries]:
            got = [(i, d.name, d.mode, d.text) for i, d in listed.name_hits(name) if d is not None]
            want = [(i, d.name, d.mode, d.text) for i, d in inline.name_hits(name) if d is not None]
            assert got == want, name
            a, b = decide(Facts("tls", names=(name,)), listed), decide(Facts("tls", names=(name,)), inline)
            assert (a.action, a.rule) == (b.action, b.rule)


@given(st.lists(st.tuples(st.sampled_from(["", "=", "*."]), _name()), min_size=1, max_size=8, unique_by=lambda t: t),
       st.lists(_name(), max_size=6), st.sampled_from(["block", "log", "allow"]), st.booleans())
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_a_single_name_rules_verdict_is_the_one_the_full_comparison_gives(entries: list[tuple[str, str]], names: list[str],
                                                                          action: str, as_list: bool) -> None:
    """decide's fast path (one rule on the name alone matches) gives the verdict, reason and entry the
    rule-by-rule comparison gives: the same ruleset with a rule that applies to every flow and never
    matches (a client network no flow comes from) takes the comparison for every name."""
    written = [m + n for m, n in entries]
    with tempfile.TemporaryDirectory() as tmp:
        made, d = [], Path(tmp)  # one directory: the two rulesets' records name the same files
        (d / "lists").mkdir(parents=True)
        (d / "policy.yaml").write_text("home_countries: [CN]\ndefault: allow\n")
        (d / "lists" / "l.txt").write_text("".join(f"{e}  P{i}\n" for i, e in enumerate(written)))
        for extra in ([], [{"id": "never", "action": "block", "clients": ["203.0.113.255/32"]}]):
            rule = ({"id": "r", "action": action, "domains_from": ["lists/l.txt"]} if as_list
                    else {"id": "r", "action": action, "domains": written, "platform": "Q"})
            (d / "r.yaml").write_text(json.dumps({"rules": [rule, *extra]}))
            made.append(Ruleset.load(str(d)))
        fast, full = made
        assert not fast.nameless and full.nameless
        for name in names + [n for _, n in entries] + ["www." + n for _, n in entries]:
            assert decide(Facts("tls", names=(name,)), fast) == decide(Facts("tls", names=(name,)), full), name


def test_a_listed_entry_names_its_file_line_platform_and_notation(tmp_path: Path) -> None:
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "l.txt").write_text("# source: https://feed.example/l\nokx.com  OKX\n.bybit.com  Bybit\n"
                                              "=kraken.com\n*.htx.com  HTX\nBinance.COM  Binance\n")
    (tmp_path / "r.yaml").write_text("rules:\n  - {id: r, action: block, domains_from: [lists/l.txt], platform: Any}\n")
    rs = Ruleset.load(str(tmp_path))
    where = str(tmp_path / "lists" / "l.txt")
    seen = {}
    for name in ("www.okx.com", "bybit.com", "kraken.com", "api.htx.com", "binance.com"):
        v = decide(Facts("tls", names=(name,)), rs)
        assert v.action == "block", name
        seen[name] = (v.entry, v.platform, v.list)
    assert seen == {"www.okx.com": (f"{where}:2", "OKX", "l.txt"), "bybit.com": (f"{where}:3", "Bybit", "l.txt"),
                    "kraken.com": (f"{where}:4", "Any", "l.txt"), "api.htx.com": (f"{where}:5", "HTX", "l.txt"),
                    "binance.com": (f"{where}:6", "Binance", "l.txt")}
    assert decide(Facts("tls", names=("htx.com",)), rs).action == "allow"  # *.htx.com: subdomains only
    assert decide(Facts("tls", names=("www.kraken.com",)), rs).action == "allow"  # =kraken.com: the name only
    texts = {d.name: d.text for d in rs.rules[0].spec.all_domains()}
    assert texts == {"okx.com": "okx.com", "bybit.com": ".bybit.com", "kraken.com": "=kraken.com",
                     "htx.com": "*.htx.com", "binance.com": "Binance.COM"}


# ---------------------------------------------------------------------------------------------------
# where and how it compiles


def test_a_large_list_compiles_in_a_child_process_and_a_bad_line_is_named(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(listindex, "CHILD_BYTES", 10)

    def not_here(*args: object) -> None:
        raise AssertionError("compiled in the proxy's own process")

    monkeypatch.setattr(listindex, "compile_list", not_here)
    monkeypatch.setenv("GEOBLOCK_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "lists").mkdir()
    lst = tmp_path / "lists" / "l.txt"
    lst.write_text("".join(f"n{i}.example  P\n" for i in range(500)))
    (tmp_path / "r.yaml").write_text("rules:\n  - {id: r, action: block, domains_from: [lists/l.txt]}\n")
    rs = Ruleset.load(str(tmp_path))
    assert decide(Facts("tls", names=("www.n499.example",)), rs).entry == f"{lst}:500"
    lst.write_text(lst.read_text() + "n500.example  P\nhttp://bad.example/  P\n")
    with pytest.raises(RuleError) as err:
        Ruleset.load(str(tmp_path))
    assert str(err.value).startswith(f"{lst}:502: 'http://bad.example/': must be a bare domain")
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")] == []  # no build left


def test_a_damaged_artifact_is_compiled_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("GEOBLOCK_CACHE_DIR", str(cache))
    (tmp_path / "rules" / "lists").mkdir(parents=True)
    (tmp_path / "rules" / "lists" / "l.txt").write_text("okx.com  OKX\nbinance.com  Binance\n")
    (tmp_path / "rules" / "r.yaml").write_text("rules:\n  - {id: r, action: block, domains_from: [lists/l.txt]}\n")
    Ruleset.load(str(tmp_path / "rules"))
    (artifact,) = [p for p in cache.iterdir() if not p.name.startswith(".")]
    for damage in ("trie.marisa", "entries.u64", "meta.json"):
        data = (artifact / damage).read_bytes()
        (artifact / damage).write_bytes(data[: len(data) // 2])
        rs = Ruleset.load(str(tmp_path / "rules"))
        assert decide(Facts("tls", names=("api.binance.com",)), rs).action == "block", damage
        assert decide(Facts("tls", names=("okx.com",)), rs).platform == "OKX", damage


def test_without_a_writable_cache_it_compiles_aside_and_leaves_nothing(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("GEOBLOCK_CACHE_DIR", str(blocker / "cache"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "l.txt").write_text("okx.com  OKX\n")
    (tmp_path / "r.yaml").write_text("rules:\n  - {id: r, action: block, domains_from: [lists/l.txt]}\n")
    rs = Ruleset.load(str(tmp_path))
    assert decide(Facts("tls", names=("www.okx.com",)), rs).action == "block"
    assert list((tmp_path / "tmp").iterdir()) == []  # the temporary artifact is gone, its map stays


# ---------------------------------------------------------------------------------------------------
# a national-scale list (not timed: scripts/bench_biglist.py takes the figures)


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def test_a_list_of_a_million_names_loads_and_decides_correctly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEOBLOCK_CACHE_DIR", str(tmp_path / "cache"))
    rng = random.Random(15)
    names: set[str] = set()
    while len(names) < 1_000_000:
        label = "".join(rng.choices(string.ascii_lowercase + string.digits, k=rng.randint(5, 12)))
        names.add(f"{label}.{rng.choice(('com', 'net', 'io', 'xyz'))}")
    ordered = sorted(names)
    (tmp_path / "lists").mkdir()
    with (tmp_path / "lists" / "big.txt").open("w") as f:
        f.write("# format: plain\n")
        f.writelines(f"{n}  Platform {i % 997}\n" for i, n in enumerate(ordered))
    (tmp_path / "big.yaml").write_text("rules:\n  - {id: big, action: block, domains_from: [lists/big.txt]}\n")
    before = _rss_mb()
    rs = Ruleset.load(str(tmp_path))
    added = _rss_mb() - before
    assert rs.domain_count == 1_000_000
    where = str(tmp_path / "lists" / "big.txt")
    for i in rng.sample(range(len(ordered)), 3000):
        name = ordered[i]
        for asked in (name, "www." + name, "a.b." + name):
            v = decide(Facts("tls", names=(asked,)), rs)
            assert (v.action, v.rule, v.entry, v.platform) == ("block", "big", f"{where}:{i + 2}",
                                                              f"Platform {i % 997}"), asked
        assert decide(Facts("tls", names=(name[1:],)), rs).action == ("block" if name[1:] in names else "allow")
        assert decide(Facts("tls", names=(name + "x",)), rs).action == ("block" if name + "x" in names else "allow")
    assert added < 100, f"the compiled list added {added:.0f} MB to the process"


# ---------------------------------------------------------------------------------------------------
# what an artifact's reading depends on is in its name (found by a review)


def test_the_same_bytes_as_csv_and_as_a_plain_list_are_two_artifacts(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A file named .csv reads as CSV, any other line by line: one artifact for both let whichever was
    compiled first decide for the other (a listed name allowed)."""
    monkeypatch.setenv("GEOBLOCK_CACHE_DIR", str(tmp_path / "cache"))
    content = "binance.com Binance,domain\nx.example X,okx.com\n"
    for d, name in (("a", "l.csv"), ("b", "l.txt")):
        (tmp_path / d / "lists").mkdir(parents=True)
        (tmp_path / d / "lists" / name).write_text(content)
        (tmp_path / d / "r.yaml").write_text(f"rules:\n  - {{id: r, action: block, domains_from: [lists/{name}]}}\n")
    as_csv = Ruleset.load(str(tmp_path / "a"))
    as_plain = Ruleset.load(str(tmp_path / "b"))
    assert decide(Facts("tls", names=("okx.com",)), as_csv).action == "block"
    assert decide(Facts("tls", names=("binance.com",)), as_plain).action == "block"
    assert decide(Facts("tls", names=("okx.com",)), as_plain).action == "allow"


def test_another_parser_gets_another_artifact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An artifact made by another release (another parser) is not reused: the code is in its name."""
    monkeypatch.setenv("GEOBLOCK_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "l.txt").write_text("okx.com  OKX\n")
    (tmp_path / "r.yaml").write_text("rules:\n  - {id: r, action: block, domains_from: [lists/l.txt]}\n")
    Ruleset.load(str(tmp_path))
    monkeypatch.setattr(listindex, "_CODE", "another-release")
    Ruleset.load(str(tmp_path))
    assert len([p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]) == 2


def test_the_child_compiler_imports_nothing_from_the_current_directory(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(listindex, "CHILD_BYTES", 10)
    monkeypatch.setenv("GEOBLOCK_CACHE_DIR", str(tmp_path / "cache"))
    work = tmp_path / "work"
    work.mkdir()
    (work / "marisa_trie.py").write_text(f"open({str(tmp_path / 'PWNED')!r}, 'w').write('x')\n")
    monkeypatch.chdir(work)
    (tmp_path / "rules" / "lists").mkdir(parents=True)
    (tmp_path / "rules" / "lists" / "l.txt").write_text("".join(f"n{i}.example\n" for i in range(100)))
    (tmp_path / "rules" / "r.yaml").write_text("rules:\n  - {id: r, action: block, domains_from: [lists/l.txt]}\n")
    rs = Ruleset.load(str(tmp_path / "rules"))
    assert decide(Facts("tls", names=("n7.example",)), rs).action == "block"
    assert not (tmp_path / "PWNED").exists()
