"""List files (docs/lists.md): each format read into entries with their platform and line, provenance
kept, and every bad entry refused naming file:line; a rule's `domains_from` puts them in force, and
the verdict names the platform, the list and the entry's line."""

import textwrap
from pathlib import Path

import pytest

from geoblock.core.decide import Facts, decide
from geoblock.core.lists import read_list
from geoblock.core.rules import RuleError, load_rules
from geoblock.core.ruleset import Ruleset

POLICY = "home_countries: [CN]\ndefault: allow\n"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def entries(path: Path, **kw) -> list[tuple[str, str, str | None, int]]:
    return [(e.name, e.mode, e.platform, e.line) for e in read_list(path, **kw).entries]


def test_plain_entries_with_platforms_modes_comments_and_provenance(tmp_path):
    f = write(tmp_path / "x.txt", """
        # Example list
        # source: https://regulator.example/list.csv
        # retrieved: 2026-11-20

        Binance.com        Binance      # the main domain
        =www.okx.com       OKX
        *.bitfinex.com
        .kraken.com        Kraken       # Squid's dstdomain notation: the name and its subdomains
        bücher.example     Bücher AG
        """)
    assert entries(f) == [
        ("binance.com", "tree", "Binance", 5), ("www.okx.com", "exact", "OKX", 6),
        ("bitfinex.com", "below", None, 7), ("kraken.com", "tree", "Kraken", 8),
        ("xn--bcher-kva.example", "tree", "Bücher AG", 9),
    ]
    lf = read_list(f)
    assert (lf.source, lf.retrieved, lf.format) == ("https://regulator.example/list.csv", "2026-11-20", None)
    assert len(lf.sha256) == 64 and lf.version == lf.sha256[:12] and lf.platforms == {"Binance", "OKX", "Kraken",
                                                                                      "Bücher AG"}


def test_hosts_and_adblock_lines_detected_or_declared(tmp_path):
    f = write(tmp_path / "mixed.txt", """
        [Adblock Plus 2.0]
        ! an adblock comment
        0.0.0.0 localhost
        0.0.0.0 binance.com www.binance.com   # hosts: every name counts
        127.0.0.1	okx.com
        ||bybit.com^
        kucoin.com    KuCoin
        """)
    assert [(n, p) for n, _, p, _ in entries(f)] == [("binance.com", None), ("www.binance.com", None),
                                                    ("okx.com", None), ("bybit.com", None), ("kucoin.com", "KuCoin")]
    declared = write(tmp_path / "hosts.txt", "# format: hosts\n0.0.0.0 a.example\nb.example\n")
    with pytest.raises(RuleError) as err:
        read_list(declared)
    assert str(err.value) == f"{declared}:3: 'b.example': a hosts line starts with an address (0.0.0.0 name), not 'b.example'"


def test_csv_with_a_platform_column(tmp_path):
    f = write(tmp_path / "regulator.csv", """
        Platform,Website,Notes
        Binance,binance.com,"listed 2026-01"
        "OKX, Inc.",okx.com,
        """)
    assert entries(f) == [("binance.com", "tree", "Binance", 2), ("okx.com", "tree", "OKX, Inc.", 3)]
    bad = write(tmp_path / "bad.csv", "Platform,Notes\nBinance,x\n")
    with pytest.raises(RuleError, match=r"bad\.csv:1: no domain column in the header row"):
        read_list(bad)


@pytest.mark.parametrize("line, why", [
    ("https://binance.com/en", "must be a bare domain (no scheme, port or path)"),
    ("binance.com:443", "must be a bare domain (no scheme, port or path)"),
    ("203.0.113.9", "an IP address; put it under a rule's networks"),
    ("bin*ance.com", "a wildcard is allowed only as a leading `*.`"),
    ("||binance.com^$third-party", "adblock modifiers ($third-party) are not supported"),
    ("@@||binance.com^", "an adblock exception rule (@@); put the name in an allow rule instead"),
    ("||binance.com/path^", "an adblock rule with a path or separator inside"),
    ("bad_label-.com", "not a valid domain"),
])
def test_a_bad_entry_is_refused_naming_file_line_and_why(tmp_path, line, why):
    f = write(tmp_path / "l.txt", f"ok.example\n{line}\n")
    with pytest.raises(RuleError) as err:
        read_list(f)
    assert str(err.value).startswith(f"{f}:2: ") and why in str(err.value)
    lenient = read_list(f, lenient=True)  # as `geoblock lists import` reads: a URL gives its host
    if line.startswith("https://"):
        assert [e.name for e in lenient.entries] == ["ok.example", "binance.com"] and not lenient.refused
        return
    assert [e.name for e in lenient.entries] == ["ok.example"]
    assert [(r.line, why in r.why) for r in lenient.refused] == [(2, True)]


def test_duplicates_are_kept_once_and_reported(tmp_path):
    f = write(tmp_path / "d.txt", "a.example  A\nb.example\nA.example.  A again\n")
    lf = read_list(f)
    assert [e.name for e in lf.entries] == ["a.example", "b.example"]
    assert lf.duplicates == ((3, "A.example.", 1),)


def test_not_utf8_and_missing_files_are_refused(tmp_path):
    f = tmp_path / "l.txt"
    f.write_bytes(b"ok.example\nbad\xff.example\n")
    with pytest.raises(RuleError, match=r"l\.txt:2: not UTF-8 text"):
        read_list(f)
    with pytest.raises(RuleError, match=r"nope\.txt: cannot read list file"):
        read_list(tmp_path / "nope.txt")


def rules_with_list(tmp_path: Path, rule: str, listing: str) -> Path:
    d = tmp_path / "rules"
    write(d / "policy.yaml", POLICY)
    write(d / "r.yaml", rule)
    write(d / "lists" / "ex.txt", listing)
    return d


def test_domains_from_puts_the_list_in_force_and_the_verdict_names_platform_list_and_line(tmp_path):
    d = rules_with_list(tmp_path, """
        rules:
          - id: exchanges
            action: block
            platform: Unnamed exchange
            domains: [yaml.example]
            domains_from: [lists/ex.txt]
        """, "# source: test\nbinance.com  Binance\nnoname.example\n")
    rs = Ruleset.load(str(d))
    v = decide(Facts("tls", names=("api.binance.com",)), rs)
    assert (v.action, v.rule, v.platform, v.entry, v.list) == (
        "block", "exchanges", "Binance", f"{d}/lists/ex.txt:2", "ex.txt")
    assert v.list_version == rs.source.lists[0].version
    assert "(list ex.txt, platform Binance)" in v.reason
    v = decide(Facts("tls", names=("noname.example",)), rs)
    assert (v.platform, v.entry) == ("Unnamed exchange", f"{d}/lists/ex.txt:3")  # the rule's platform
    v = decide(Facts("tls", names=("yaml.example",)), rs)
    assert (v.platform, v.entry, v.list) == ("Unnamed exchange", f"{d}/r.yaml:5", None)
    before = rs.version
    (d / "lists" / "ex.txt").write_text("binance.com  Binance\n")
    assert Ruleset.load(str(d)).version != before  # the ruleset's version covers its lists


def test_a_bad_list_entry_refuses_the_ruleset_naming_the_list_line(tmp_path):
    d = rules_with_list(tmp_path, "rules:\n  - {id: x, action: block, domains_from: [lists/ex.txt]}\n",
                        "ok.example\n\nhttp://bad.example/\n")
    with pytest.raises(RuleError) as err:
        load_rules(d)
    assert str(err.value).startswith(f"{d}/lists/ex.txt:3: 'http://bad.example/': must be a bare domain")


def test_a_missing_or_empty_list_is_refused(tmp_path):
    d = rules_with_list(tmp_path, "rules:\n  - {id: x, action: block, domains_from: [lists/nope.txt]}\n", "a.example\n")
    with pytest.raises(RuleError, match=r"r\.yaml:2: rule 'x': domains_from: 'lists/nope.txt': no such list file"):
        load_rules(d)
    d = rules_with_list(tmp_path / "2", "rules:\n  - {id: x, action: block, domains_from: [lists/ex.txt]}\n",
                        "# only comments\n")
    with pytest.raises(RuleError, match=r"ex\.txt: the list holds no entries"):
        load_rules(d)


def test_files_in_the_rules_directory_that_are_not_read_are_named(tmp_path):
    d = rules_with_list(tmp_path, "rules:\n  - {id: x, action: block, domains_from: [lists/ex.txt]}\n", "a.example\n")
    write(d / "blocklist.txt", "0.0.0.0 b.example\n")
    write(d / "more" / "sub.yaml", "rules: []\n")
    write(d / "lists" / "unused.txt", "c.example\n")
    write(d / "UPPER.YAML", "rules:\n  - {id: y, action: block, domains: [d.example]}\n")
    (d / "r.yaml~").write_text("editor back-up")
    write(d / ".hidden.yaml", "rules:\n  - {id: z, action: block, domains: [e.example]}\n")
    source = load_rules(d)
    assert {r.id for r in source.rules} == {"x", "y"}  # .YAML is a rule file too
    assert [w.split(": not read")[0] for w in source.warnings] == [
        f"{d}/.hidden.yaml", f"{d}/blocklist.txt", f"{d}/lists/unused.txt", f"{d}/more/sub.yaml"]
    assert "domains_from: [blocklist.txt]" in source.warnings[1]


@pytest.mark.parametrize("line, why", [
    ("binance.com okx.com", "holds the name okx.com, which this list does not list"),
    ("binance.com\tbinance.me", "holds the name binance.me, which this list does not list"),
    ("binance.com =okx.com", "holds the name okx.com, which this list does not list"),
    ("Binance binance.com", "a single label, not a domain"),
    ("binance.com https://www.okx.com/", "holds the name www.okx.com, which this list does not list"),
    ("bybit.com bücher.de", "holds the name xn--bcher-kva.de, which this list does not list"),
    ("kraken.com gate.io,", "holds the name gate.io, which this list does not list"),
    ("htx.com kucoin。com", "holds the name kucoin.com, which this list does not list"),
    ("htx.com ＯＫＸ.com", "holds the name okx.com, which this list does not list"),
    ("htx.com ok\u200bx.com", "holds the name okx.com, which this list does not list"),
    ("htx.com OKX.COM", "holds the name okx.com, which this list does not list"),
    ("htx.com \"okx.com\"", "holds the name okx.com, which this list does not list"),
    ("Binance", "a single label, not a domain"),
    ("Service temporarily unavailable", "a single label, not a domain"),
])
def test_a_line_that_is_not_one_entry_and_its_platform_is_refused(tmp_path, line, why):
    """Fail-open found in review: the second name of a line became the first one's platform, so it was
    never blocked; a platform's name in the entry's place gave an entry that matches nothing."""
    f = write(tmp_path / "l.txt", f"ok.example  OK Exchange\n{line}\n")
    with pytest.raises(RuleError) as err:
        read_list(f)
    assert str(err.value).startswith(f"{f}:2: ") and why in str(err.value)
    assert read_list(write(tmp_path / "ok.txt", "crypto.com  Crypto.com\nbit.com  Bit.com\ngate.com  Gate.io\n"
                                                "gate.io  Gate.io\n")).platforms == {
        "Crypto.com", "Bit.com", "Gate.io"}  # a platform named like a domain the list holds


def test_csv_takes_the_domain_column_before_a_name_column_and_reads_every_data_row(tmp_path):
    """Fail-open found in review: with `Name,Website` the platform's name was taken as the domain, and a
    data row whose first cell began with # was skipped as a comment."""
    f = write(tmp_path / "r.csv", """
        # source: https://regulator.example/r.csv
        Name,Website
        Binance,https://www.binance.com/
        OKX,okx.com
        #1 Exchange,htx.com
        """)
    assert [(e.name, e.platform) for e in read_list(f, lenient=True).entries] == [
        ("binance.com", "Binance"), ("okx.com", "OKX"), ("htx.com", "#1 Exchange")]  # a URL names its site
    assert read_list(f, lenient=True).source == "https://regulator.example/r.csv"
    with pytest.raises(RuleError, match=r"r\.csv:3: 'https://www\.binance\.com/': must be a bare domain"):
        read_list(f)  # strict, as a rule reads it: the URL is refused, never a silent nothing
    extra = write(tmp_path / "x.csv", "platform,domain\nplatform,domain\nOKX,okx.com\n")
    with pytest.raises(RuleError, match=r"x\.csv:2: 'domain': a single label"):
        read_list(extra)  # a second header row is no entry


def test_a_directory_named_as_a_list_is_refused(tmp_path):
    d = rules_with_list(tmp_path, "rules:\n  - {id: x, action: block, domains_from: [lists]}\n", "a.example\n")
    with pytest.raises(RuleError, match=r"r\.yaml:2: rule 'x': domains_from: 'lists' is a directory"):
        load_rules(d)


@pytest.mark.parametrize("line, why", [
    ("0.0.0.0.0 binance.com", "its last label is all digits"),
    ("0.0.0.0.0", "its last label is all digits"),  # a hosts line whose address is written wrong
    ("800.0.0.1\tokx.com", "its last label is all digits"),
    ("kucoin.com  KuCoin (see kucoin.top)", "holds the name kucoin.top, which this list does not list"),
])
def test_found_by_the_lists_fuzzer_a_name_hidden_in_the_platform_is_refused(tmp_path, line, why):
    """The lists fuzzer (tests/support/fuzz_targets.py ListsTarget) found lines whose names were read as
    a platform: a hosts line with a mistyped address became an entry `0.0.0.0.0` and its names its
    platform, so they were never blocked."""
    f = write(tmp_path / "l.txt", f"{line}\n")
    with pytest.raises(RuleError) as err:
        read_list(f)
    assert str(err.value).startswith(f"{f}:1: ") and why in str(err.value)


def test_csv_rows_wider_than_the_header_and_two_domain_columns_are_refused(tmp_path):
    """Found in the second review: a cell past the header's columns (`mexc.com,MEXC,bitget.com`) and a
    second `domain` column were ignored, so those names were never blocked."""
    wide = write(tmp_path / "w.csv", "domain,platform\nmexc.com,MEXC,bitget.com\n")
    with pytest.raises(RuleError, match=r"w\.csv:2: a row of 3 cells under a header of 2"):
        read_list(wide)
    twice = write(tmp_path / "t.csv", "domain,domain\nbinance.com,okx.com\n")
    with pytest.raises(RuleError, match=r"t\.csv:1: the header row names the domain column 'domain' twice"):
        read_list(twice)


def test_written_lists_read_back_the_same_entries_whatever_their_length(tmp_path):
    """Found in the second review: a name of 48 characters or more was written glued to its platform
    (`...amazonaws.comBinance`), so another name was in force."""
    from geoblock.core.lists import Entry, write_list

    long = "binance-static-assets.s3.ap-northeast-1.amazonaws.com"
    entries = [Entry("binance.com", "tree", "binance.com", "Binance", 1), Entry(long, "tree", long, "Binance", 2),
               Entry("x" * 60 + ".example", "exact", "=" + "x" * 60 + ".example", "P Q", 3)]
    f = write(tmp_path / "w.txt", write_list(entries, source="s"))
    assert [(e.name, e.mode, e.platform) for e in read_list(f).entries] == [(e.name, e.mode, e.platform)
                                                                           for e in entries]
