"""Rule files: the shipped ones compile; each kind of broken file is refused naming file and line."""

import textwrap
from pathlib import Path

import pytest

from geoblock.core.rules import RuleError, load_rules
from geoblock.core.ruleset import Ruleset

REPO = Path(__file__).resolve().parents[1]
POLICY = "home_countries: [CN]\ndefault: allow\nunknown_country: log\non_error: block\n"


def make(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / name).write_text(textwrap.dedent(text))
    return tmp_path


def refused(tmp_path: Path, files: dict[str, str]) -> RuleError:
    with pytest.raises(RuleError) as err:
        load_rules(make(tmp_path, files))
    return err.value


def test_shipped_rules_compile():
    rs = Ruleset.load(str(REPO / "rules"))
    assert rs.policy.home_countries == {"CN"}
    assert rs.policy.on_error == "block"
    ids = {r.id for r in rs.rules}
    assert {"offshore-crypto-exchanges", "review-offshore-trading-names"} <= ids
    crypto = next(r for r in rs.rules if r.id == "offshore-crypto-exchanges")
    assert crypto.action == "block"
    names = {d.name for d in tuple(crypto.spec.all_domains())}
    assert {"binance.com", "okx.com", "bitfinex.com"} <= names


def test_shipped_list_names_at_least_124_platforms_each_with_its_domains():
    rs = Ruleset.load(str(REPO / "rules"))
    crypto = next(r for r in rs.rules if r.id == "offshore-crypto-exchanges")
    assert [Path(lf.path).name for lf in crypto.spec.lists] == ["exchanges.txt"]
    assert all(d.platform and d.listfile is not None for d in tuple(crypto.spec.all_domains()))
    platforms = {d.platform for d in tuple(crypto.spec.all_domains())}
    assert len(platforms) >= 124
    assert len(tuple(crypto.spec.all_domains())) == len({d.name for d in tuple(crypto.spec.all_domains())})  # no domain twice
    by = {p: {d.name for d in tuple(crypto.spec.all_domains()) if d.platform == p} for p in ("Binance", "OKX", "Bitfinex")}
    assert {"binance.com", "bnbstatic.com", "binance.vision"} <= by["Binance"]  # official, static, data
    assert by["OKX"] == {"okx.com", "okex.com"} and "ethfinex.com" in by["Bitfinex"]
    lf = crypto.spec.lists[0]
    assert lf.source and lf.retrieved == "2026-11-30" and lf.entry_count == len(tuple(crypto.spec.all_domains()))


def test_version_changes_with_content(tmp_path):
    d = make(tmp_path, {"policy.yaml": POLICY, "r.yaml": "rules:\n  - {id: a, action: block, domains: [x.test]}\n"})
    v1 = load_rules(d).version
    (d / "r.yaml").write_text("rules:\n  - {id: a, action: block, domains: [y.test]}\n")
    assert load_rules(d).version != v1


@pytest.mark.parametrize("content, line, message", [
    ("rules:\n  - id: a\n    action: block\n    domains: [x.test\n", 5, "bad YAML"),
    ("rules:\n  - id: a\n    action: block\n    domian: [x.test]\n", 4, "unknown key 'domian'"),
    ("rules:\n  - id: a\n    action: block\n    networks: [10.0.0.0/33]\n", 4, "'10.0.0.0/33' is not a valid CIDR"),
    ("rules:\n  - id: a\n    action: block\n    networks: [10.0.0.1/8]\n", 4, "has host bits set"),
    ("rules:\n  - id: a\n    action: block\n    countries: [UK]\n", 4, "'UK' is not an ISO 3166 alpha-2 country code (did you mean GB?)"),
    ("rules:\n  - id: a\n    action: block\n    countries: [SG, XX]\n", 4, "'XX' is not an ISO 3166"),
    ("rules:\n  - id: a\n    action: block\n    domains: [x.test]\n  - id: a\n    action: log\n    domains: [y.test]\n",
     5, "duplicate rule id 'a' (first at"),
    ("rules:\n  - id: a\n    action: deny\n    domains: [x.test]\n", 3, "action must be one of allow, log, block, not 'deny'"),
    ("rules:\n  - id: a\n    action: block\n    asns: [AS-1]\n", 4, "is not an AS number"),
    ("rules:\n  - id: a\n    action: block\n    domains: [bad..name]\n", 4, "not a valid domain"),
    ("rules:\n  - id: a\n    action: block\n    domains: [https://x.test/]\n", 4, "must be a bare domain"),
    ("rules:\n  - id: a\n    action: block\n", 2, "has no condition"),
    ("rules:\n  - action: block\n    domains: [x.test]\n", 2, "missing key 'id'"),
    ("rules:\n  - id: a\n    action: block\n    domains: [x.test]\n    domains: [y.test]\n", 5, "duplicate key 'domains'"),
    ("rulez: []\n", 1, "unknown key 'rulez'"),
    ("rules:\n  - id: a\n    action: block\n    offshore: maybe\n", 4, "offshore must be true or false"),
])
def test_broken_rule_file_is_refused_naming_file_and_line(tmp_path, content, line, message):
    err = refused(tmp_path, {"policy.yaml": POLICY, "broken.yaml": content})
    assert err.path.endswith("broken.yaml")
    assert err.line == line, str(err)
    assert message in str(err)
    assert str(err).startswith(f"{tmp_path / 'broken.yaml'}:{line}: ")


def test_duplicate_id_across_files_names_both(tmp_path):
    err = refused(tmp_path, {
        "policy.yaml": POLICY,
        "a.yaml": "rules:\n  - {id: same, action: block, domains: [x.test]}\n",
        "b.yaml": "rules:\n\n  - {id: same, action: log, domains: [y.test]}\n",
    })
    assert err.path.endswith("b.yaml") and err.line == 3
    assert "a.yaml:2" in str(err)


@pytest.mark.parametrize("policy, line, message", [
    ("home_countries: [CN]\ndefault: deny\n", 2, "default must be one of allow, log, block"),
    ("home_countries: [CHN]\n", 1, "'CHN' is not an ISO 3166"),
    ("on_error: log\n", 1, "on_error must be one of block, allow"),
    ("unknown_country: maybe\n", 1, "unknown_country must be one of"),
    ("doh_canary: block\n", 1, "doh_canary must be one of nxdomain, pass, not 'block'"),
    ("ech_public_names:\n  - cloudflare-ech.com\n  - =front.example\n", 3,
     "ech_public_names: '=front.example': give a plain domain"),
    ("ech_public_names: [https://front.example/]\n", 1, "ech_public_names: 'https://front.example/': must be a bare domain"),
])
def test_broken_policy_is_refused(tmp_path, policy, line, message):
    err = refused(tmp_path, {"policy.yaml": policy})
    assert err.path.endswith("policy.yaml") and err.line == line
    assert message in str(err)


def test_policy_key_set_twice_is_refused(tmp_path):
    err = refused(tmp_path, {"policy.yaml": POLICY, "other.yaml": "default: block\n"})
    # files are read in name order: other.yaml first, so policy.yaml:2 is the second setting
    assert err.path.endswith("policy.yaml") and err.line == 2
    assert "default is already set in" in str(err) and "other.yaml:1" in str(err)


def test_missing_source_and_empty_directory(tmp_path):
    with pytest.raises(RuleError, match="no such rules file or directory"):
        load_rules(tmp_path / "nope")
    with pytest.raises(RuleError, match="no rule files"):
        load_rules(tmp_path)


def test_non_utf8_file_is_refused_with_line(tmp_path):
    (tmp_path / "policy.yaml").write_text(POLICY)
    (tmp_path / "bad.yaml").write_bytes(b"rules:\n  - id: a\n    action: block\n    domains: [\xff.test]\n")
    with pytest.raises(RuleError) as err:
        load_rules(tmp_path)
    assert err.value.line == 4 and "not UTF-8" in str(err.value)


def test_editor_backups_and_hidden_files_are_skipped(tmp_path):
    make(tmp_path, {"policy.yaml": POLICY, ".hidden.yaml": "garbage: [", "r.yaml~": "garbage: ["})
    assert load_rules(tmp_path).rules == ()


def test_single_file_with_policy_and_rules(tmp_path):
    f = tmp_path / "all.yaml"
    f.write_text(POLICY + "rules:\n  - {id: a, action: block, domains: [x.test]}\n")
    src = load_rules(f)
    assert src.policy.default == "allow" and [r.id for r in src.rules] == ["a"]


# --- values are read as written, not as YAML 1.1 types them ---------------------------------------
# PyYAML follows YAML 1.1: NO/no/ON/off/Y/n are booleans, 010 is octal 8, 1_000 is 1000, 12:30 is 750.
# Every test here runs with libyaml's parser and with PyYAML's pure-Python one (they differ in details).

@pytest.fixture(params=["libyaml", "python"])
def yaml_parser(request, monkeypatch):
    import yaml

    import geoblock.core.rules as rules_mod
    if request.param == "libyaml":
        if not hasattr(yaml, "CSafeLoader"):
            pytest.fail("PyYAML is built without libyaml here: the libyaml row cannot run")
        monkeypatch.setattr(rules_mod, "_Loader", yaml.CSafeLoader)
    else:
        monkeypatch.setattr(rules_mod, "_Loader", yaml.SafeLoader)
    return request.param


def rule_file(tmp_path: Path, rule: str, policy: str = POLICY) -> Path:
    return make(tmp_path, {"policy.yaml": policy, "r.yaml": "rules:\n  - id: r\n    action: block\n" + rule})


@pytest.mark.parametrize("written", ["[NO]", "[no]", "NO", "[No]", '["NO"]', "[SG, NO]"])
def test_norway_is_a_home_country(tmp_path, yaml_parser, written):
    src = load_rules(make(tmp_path, {"policy.yaml": f"home_countries: {written}\n"}))
    assert "NO" in src.policy.home_countries


@pytest.mark.parametrize("code", ["NO", "no", "Y", "n", "ON", "off", "yes"])
def test_country_codes_are_the_text_as_written(tmp_path, yaml_parser, code):
    """NO is Norway; ON, Y, off ... are refused naming the code as written, not True or False."""
    path = rule_file(tmp_path, f"    countries: [{code}]\n")
    if code.upper() == "NO":
        assert next(iter(load_rules(path).rules)).countries == {"NO"}
        return
    with pytest.raises(RuleError) as err:
        load_rules(path)
    assert err.value.line == 4
    assert f"countries: {code!r} is not an ISO 3166 alpha-2 country code" in str(err.value)


@pytest.mark.parametrize("written, asn", [("010", 10), ("AS010", 10), ("as64500", 64500), ("64500", 64500),
                                          ('"13335"', 13335), ("4294967295", 4294967295)])
def test_asns_are_decimal_as_written(tmp_path, yaml_parser, written, asn):
    assert next(iter(load_rules(rule_file(tmp_path, f"    asns: [{written}]\n")).rules)).asns == {asn}


@pytest.mark.parametrize("written", ["1_000", "12:30", "0x10", "0o10", "1.5", "AS-1", "0", "4294967296", "9" * 40, "١٢"])
def test_an_asn_that_is_not_decimal_digits_is_refused_as_written(tmp_path, yaml_parser, written):
    with pytest.raises(RuleError) as err:
        load_rules(rule_file(tmp_path, f"    asns: [{written}]\n"))
    assert err.value.line == 4 and f"asns: {written!r} is not an AS number" in str(err.value)


@pytest.mark.parametrize("written, name", [("NO", "no"), ("yes", "yes"), ("on", "on"), ("1_000", "1_000"),
                                           ("Y.example", "y.example")])
def test_domains_are_the_text_as_written(tmp_path, yaml_parser, written, name):
    """`domains: [NO]` is Norway's top-level domain, `1_000` the name 1_000 (not the number 1000)."""
    spec = next(iter(load_rules(rule_file(tmp_path, f"    domains: [{written}]\n")).rules))
    assert [d.name for d in spec.domains] == [name] and spec.domains[0].text == written


@pytest.mark.parametrize("written", ["0x7f000005", "010", "2130706437", "1.5"])
def test_a_number_looking_domain_is_refused_naming_it_as_written(tmp_path, yaml_parser, written):
    """Each spells an IPv4 address (as inet_aton reads it): refused, with the text as written."""
    with pytest.raises(RuleError) as err:
        load_rules(rule_file(tmp_path, f"    domains: [{written}]\n"))
    assert f"domains: {written!r}: an IP address; put it under a rule's networks" in str(err.value)


@pytest.mark.parametrize("written", ["010", "yes", "12:30", "1_000", "NO"])
def test_ids_and_descriptions_are_the_text_as_written(tmp_path, yaml_parser, written):
    path = make(tmp_path, {"policy.yaml": POLICY, "r.yaml": f"rules:\n  - id: {written}\n    action: block\n"
                           f"    description: {written}\n    domains: [x.test]\n"})
    rule = next(iter(load_rules(path).rules))
    assert (rule.id, rule.description) == (written, written)


@pytest.mark.parametrize("key, written", [("networks", "12:30"), ("clients", "2130706437"), ("networks", "010.0.0.0/8")])
def test_networks_are_refused_naming_the_text_as_written(tmp_path, yaml_parser, key, written):
    with pytest.raises(RuleError) as err:
        load_rules(rule_file(tmp_path, f"    {key}: [{written}]\n"))
    assert err.value.line == 4 and f"{key}: {written!r} is not a valid CIDR network" in str(err.value)


@pytest.mark.parametrize("written, value", [("true", True), ("True", True), ("TRUE", True), ("false", False),
                                            ("False", False), ("FALSE", False)])
def test_offshore_takes_true_or_false(tmp_path, yaml_parser, written, value):
    spec = next(iter(load_rules(rule_file(tmp_path, f"    domains: [x.test]\n    offshore: {written}\n")).rules))
    assert spec.offshore is value


@pytest.mark.parametrize("written, hint", [
    ("yes", "YAML 1.1 reads yes as a boolean, YAML 1.2 as text: write true or false"),
    ("no", "YAML 1.1 reads no as a boolean"), ("on", "YAML 1.1 reads on as a boolean"),
    ("off", "YAML 1.1 reads off as a boolean"), ("Y", "YAML 1.1 reads Y as a boolean"),
    ('"true"', "quoted: write true or false without quotes"), ("1", ""), ("maybe", ""),
])
def test_offshore_refuses_other_booleans_clearly(tmp_path, yaml_parser, written, hint):
    with pytest.raises(RuleError) as err:
        load_rules(rule_file(tmp_path, f"    domains: [x.test]\n    offshore: {written}\n"))
    shown = written.strip('"')
    assert err.value.line == 5 and f"offshore must be true or false, not {shown!r}" in str(err.value)
    assert hint in str(err.value)


@pytest.mark.parametrize("content, line, message", [
    ("rules:\n  - id: a\n    action: on\n    domains: [x.test]\n", 3, "action must be one of allow, log, block, not 'on'"),
    ("default: no\n", 1, "default must be one of allow, log, block, not 'no'"),
    ("ech: off\n", 1, "ech must be one of allow, log, block, not 'off'"),
    ("rules:\n  - id: a\n    action: block\n    countries:\n      -\n", 5, "countries is empty"),
])
def test_choices_name_the_text_as_written(tmp_path, yaml_parser, content, line, message):
    err = refused(tmp_path, {"broken.yaml": content})
    assert err.line == line and message in str(err), str(err)


def test_ech_public_names_and_doh_canary_defaults_and_values(tmp_path):
    def policy(sub: str, extra: str):
        (tmp_path / sub).mkdir()
        return load_rules(make(tmp_path / sub, {"policy.yaml": POLICY + extra})).policy

    default = policy("default", "")
    assert default.ech_public_names == {"cloudflare-ech.com"} and default.doh_canary == "nxdomain"
    given = policy("given", "ech_public_names: [Front.Example., x.test]\ndoh_canary: pass\n")
    assert given.ech_public_names == {"front.example", "x.test"} and given.doh_canary == "pass"
    assert policy("none", "ech_public_names: []\n").ech_public_names == frozenset()
