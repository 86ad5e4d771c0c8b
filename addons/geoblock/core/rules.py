"""Reading and validating rule files (YAML) into plain, typed rule specifications.

A rules source is one YAML file or a directory of them (*.yaml, *.yml; hidden files and editor
back-ups are skipped; files are read in name order). Each file is a mapping that may hold:

- policy keys (`home_countries`, `default`, `unknown_country`, `on_error`, `ech`, `name_mismatch`,
  `unreadable`, `ech_public_names`, `doh_canary`), normally in policy.yaml;
  a key may be set in one file only;
- `rules`: a list of rules.

A rule may take domain entries from list files (`domains_from`, paths relative to the YAML file's
directory; core/lists.py reads them), name the platform its entries belong to (`platform`, for entries
that name none) and the basis of the block for the block page (`notice`: text or a URL).

Every value is read from the text as written, not as YAML 1.1 types it (`NO` is Norway, not false;
`010` is AS 10, not octal 8); `offshore` takes true or false only. Every problem raises `RuleError`
naming the file and line: bad YAML, unknown or duplicate keys, a bad CIDR, country code, ASN, domain,
boolean or action, a duplicate rule id. Nothing here imports mitmproxy.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

import yaml

from geoblock.core.countries import ISO_3166_ALPHA2, suggest_country
from geoblock.core.listindex import open_list
from geoblock.core.lists import DomainMode, Entry, ListError, ListFile, parse_entry
from geoblock.core.model import ACTIONS, ON_ERROR, Action, OnError
from geoblock.errors import GeoblockError

_set_whole = object.__setattr__  # sets a frozen instance's __dict__ in one call (see DomainSpec.__init__)

__all__ = ["ACTIONS", "DOH_CANARY", "ON_ERROR", "POLICY_KEYS", "RULE_KEYS", "DomainSpec", "Policy", "RuleError",
           "RuleSource", "RuleSpec", "load_rules", "read_file", "rule_files"]

POLICY_KEYS = ("home_countries", "default", "unknown_country", "on_error", "ech", "name_mismatch", "unreadable",
               "ech_public_names", "doh_canary")
DohCanary = Literal["nxdomain", "pass"]  # Firefox's canary name: answered NXDOMAIN, or passed on
DOH_CANARY: tuple[DohCanary, ...] = get_args(DohCanary)
DEFAULT_ECH_PUBLIC_NAMES = frozenset({"cloudflare-ech.com"})  # the public name of Cloudflare's ECH service
RULE_KEYS = (
    "id",
    "action",
    "description",
    "domains",
    "domains_from",
    "platform",
    "notice",
    "patterns",
    "offshore",
    "countries",
    "asns",
    "networks",
    "clients",
)
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}\Z")
_PATTERN = re.compile(r"[a-z0-9_.*?-]+\Z")


class RuleError(GeoblockError, ValueError):
    """A rule file that cannot be used. `str()` is "file:line: message"; `line` is None when the problem
    is the whole file (missing, unreadable). Also a ValueError: a bad value in a file."""

    def __init__(self, path: str | os.PathLike[str], line: int | None, message: str) -> None:
        self.path = str(path)
        self.line = line
        self.message = message
        where = self.path if line is None else f"{self.path}:{line}"
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True, init=False)
class DomainSpec:
    """One domain entry, of `domains` or of a list file (`domains_from`): `name` (name and subdomains),
    `=name` (exact), `*.name` (subdomains)."""

    name: str  # normalised (names.normalize_host)
    mode: DomainMode  # "tree": the name and its subdomains; "exact": the name only; "below": subdomains only
    text: str  # as written, for explanations
    platform: str | None = None  # the platform the entry belongs to (its list line, else the rule's platform)
    where: str = ""  # "file:line" of the entry (the YAML file's line, or the list file's)
    listfile: ListFile | None = None  # the list file it came from (its name and version go into records)

    def __init__(self, name: str, mode: DomainMode, text: str, platform: str | None = None, where: str = "",
                 listfile: ListFile | None = None) -> None:
        # one store of the whole instance dict (as model.Verdict's): a listed name's decision makes one
        # DomainSpec for the entry it found, and a frozen dataclass's generated __init__ costs one
        # object.__setattr__ call per field. tests/test_model.py checks the fields and defaults agree.
        _set_whole(self, "__dict__", {"name": name, "mode": mode, "text": text, "platform": platform, "where": where,
                                      "listfile": listfile})


def listed_spec(entry: Entry, listfile: ListFile) -> DomainSpec:
    """The DomainSpec of a list file's entry (its file:line, platform and list)."""
    return DomainSpec(entry.name, entry.mode, entry.text, entry.platform, f"{listfile.path}:{entry.line}", listfile)


@dataclass(frozen=True)
class RuleSpec:
    """One rule as written and validated. It matches a flow when every condition it has holds (a list
    matches when any entry does): `domains`/`patterns` on the flow's names, `offshore`/`countries`/`asns`/
    `networks` on the server, `clients` on the client's address."""

    id: str
    action: Action
    source: str  # "file:line"
    description: str = ""
    platform: str | None = None  # the platform of entries that name none, and of the rule's other matches
    notice: str | None = None  # the basis of the block for the block page: text or a URL
    lists: tuple[ListFile, ...] = ()  # the list files of `domains_from`, compiled (ListFile.index)
    domains: tuple[DomainSpec, ...] = ()  # the entries of `domains` (YAML); list entries are in `lists`
    patterns: tuple[str, ...] = ()
    offshore: bool | None = None
    countries: frozenset[str] = frozenset()
    asns: frozenset[int] = frozenset()
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    clients: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @property
    def has_name_condition(self) -> bool:
        return bool(self.domains or self.patterns or self.lists)

    @property
    def domain_count(self) -> int:
        """Domain entries of `domains` and of every list file."""
        return len(self.domains) + sum(lf.entry_count for lf in self.lists)

    def all_domains(self) -> Iterator[DomainSpec]:
        """Every domain entry: `domains`, then each list's entries in file order (materialised one by one
        from the compiled lists: for lint, discover and check, not for the per-flow path)."""
        yield from self.domains
        for lf in self.lists:
            if lf.index is None:
                continue
            for e in lf.index.entries():
                yield listed_spec(e, lf)

    @property
    def needs_location(self) -> bool:
        """True when the rule needs the server's country or ASN."""
        return self.offshore is not None or bool(self.countries) or bool(self.asns)

    @property
    def needs_server_ip(self) -> bool:
        return self.needs_location or bool(self.networks)


@dataclass(frozen=True)
class Policy:
    """The policy keys (docs/rules.md): what applies where no rule decides, or a rule cannot."""

    home_countries: frozenset[str] = frozenset()  # ISO 3166-1 alpha-2; servers elsewhere are offshore
    default: Action = "allow"  # no rule matches
    unknown_country: Action = "log"  # a rule needs the server's location, which is not known
    on_error: OnError = "block"  # geoblock cannot judge the flow (an invalid name, an internal error)
    ech: Action = "log"  # a ClientHello with Encrypted Client Hello: its real name is hidden
    name_mismatch: Action = "log"  # the names of one flow differ (SNI vs Host or CONNECT target)
    unreadable: Action = "log"  # a stream that is neither HTTP nor TLS (raw TCP or UDP): it shows no name
    # outer SNIs that front Encrypted Client Hello: 0xfe0d beside one of these (or below) hides a name
    ech_public_names: frozenset[str] = DEFAULT_ECH_PUBLIC_NAMES
    doh_canary: DohCanary = "nxdomain"  # where geoblock serves DNS: Firefox's use-application-dns.net


@dataclass(frozen=True)
class RuleSource:
    """Everything read from a rules file or directory, before compilation."""

    policy: Policy
    rules: tuple[RuleSpec, ...]
    files: tuple[str, ...]
    version: str  # sha256 over file names and contents (rule files and lists), shortened
    warnings: tuple[str, ...] = field(default=())
    lists: tuple[ListFile, ...] = ()  # every list file a rule names (provenance, without entries)


# --------------------------------------------------------------------------------------------
# YAML with line numbers


_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C parser when libyaml is present
_NULL = "tag:yaml.org,2002:null"


def _compose(path: Path, text: str) -> yaml.Node | None:
    try:
        return yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = exc.problem or exc.context or "invalid YAML"
        raise RuleError(path, line, f"bad YAML: {problem}") from None
    except yaml.reader.ReaderError as exc:  # a character YAML refuses (e.g. a control character)
        # its position counts UTF-8 bytes (libyaml) or characters (the pure-Python parser)
        if _Loader is not yaml.SafeLoader:
            line = text.encode("utf-8")[: exc.position].count(b"\n") + 1
        else:
            line = text[: exc.position].count("\n") + 1
        raise RuleError(path, line, f"bad YAML: {str(exc).splitlines()[0]}") from None
    except yaml.YAMLError as exc:
        raise RuleError(path, None, f"bad YAML: {exc}") from None


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _mapping(path: Path, node: yaml.Node, what: str) -> dict[str, tuple[yaml.Node, yaml.Node]]:
    if not isinstance(node, yaml.MappingNode):
        raise RuleError(path, _line(node), f"{what} must be a mapping")
    out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            raise RuleError(path, _line(key_node), f"{what}: keys must be plain names")
        key = key_node.value
        if key in out:
            raise RuleError(
                path, _line(key_node), f"{what}: duplicate key {key!r} (first on line {_line(out[key][0])})"
            )
        out[key] = (key_node, value_node)
    return out


def _text(path: Path, node: yaml.Node, what: str) -> str:
    """The text of a scalar node exactly as written (without surrounding spaces), whatever YAML 1.1
    would make of it: PyYAML reads NO, no, ON, off, Y and n as booleans, 010 as octal 8, 1_000 as 1000
    and 12:30 as sexagesimal 750, so `home_countries: [NO]` would arrive as [False]. Codes, names, ids,
    numbers and networks are read from this text instead. Raises RuleError for a list or mapping, or an
    empty value."""
    if not isinstance(node, yaml.ScalarNode):
        raise RuleError(path, _line(node), f"{what} must be a single value")
    text = node.value.strip()
    if not text:
        raise RuleError(path, _line(node), f"{what} is empty")
    return text


def _string(path: Path, node: yaml.Node, what: str) -> str:
    return _text(path, node, what)


_TRUE = ("true", "True", "TRUE")  # YAML 1.2 core schema booleans (YAML 1.2 section 10.3.2)
_FALSE = ("false", "False", "FALSE")
_YAML11_BOOLEANS = frozenset("y Y yes Yes YES n N no No NO on On ON off Off OFF".split())


def _boolean(path: Path, node: yaml.Node, what: str) -> bool:
    """true or false, unquoted (the YAML 1.2 core schema's spellings). YAML 1.1's other booleans (yes,
    no, on, off, y, n) are refused: YAML 1.2 reads them as text, and a rule's meaning must not depend on
    which YAML version a reader follows. Raises RuleError naming the value."""
    text = _text(path, node, what)
    plain = isinstance(node, yaml.ScalarNode) and not node.style  # None (pure Python) or "" (libyaml)
    if plain and text in _TRUE:
        return True
    if plain and text in _FALSE:
        return False
    hint = ""
    if plain and text in _YAML11_BOOLEANS:
        hint = f" (YAML 1.1 reads {text} as a boolean, YAML 1.2 as text: write true or false)"
    elif not plain:
        hint = " (quoted: write true or false without quotes)"
    raise RuleError(path, _line(node), f"{what} must be true or false, not {text!r}{hint}")


def _list(path: Path, node: yaml.Node, what: str) -> list[yaml.Node]:
    if isinstance(node, yaml.ScalarNode) and node.tag != _NULL:
        return [node]  # a single value is accepted where a list is expected
    if isinstance(node, yaml.ScalarNode):
        raise RuleError(path, _line(node), f"{what} must be a list, not empty")
    if not isinstance(node, yaml.SequenceNode):
        raise RuleError(path, _line(node), f"{what} must be a list")
    if not node.value:
        raise RuleError(path, _line(node), f"{what} is an empty list")
    return list(node.value)


_Word = TypeVar("_Word", bound=str)


def _choice(path: Path, node: yaml.Node, what: str, choices: tuple[_Word, ...]) -> _Word:
    """The one of `choices` that the node's text is (as written, case included). Raises RuleError."""
    value = _text(path, node, what)
    for choice in choices:
        if value == choice:
            return choice
    raise RuleError(path, _line(node), f"{what} must be one of {', '.join(choices)}, not {value!r}")


# --------------------------------------------------------------------------------------------
# Field parsers


def parse_country(path: Path, node: yaml.Node, what: str) -> str:
    """An ISO 3166-1 alpha-2 code as written (any case): `NO` is Norway, never YAML 1.1's false."""
    value = _text(path, node, what)
    code = value.upper()
    if code not in ISO_3166_ALPHA2:
        hint = suggest_country(code)
        extra = f" (did you mean {hint}?)" if hint else ""
        raise RuleError(
            path, _line(node), f"{what}: {value!r} is not an ISO 3166 alpha-2 country code{extra}"
        )
    return code


_ASN = re.compile(r"(?:AS)?([0-9]+)\Z", re.IGNORECASE)


def parse_asn(path: Path, node: yaml.Node, what: str) -> int:
    """An AS number in decimal (RFC 5396 "asplain"), optionally prefixed AS: 13335, AS13335, 010 (= 10:
    leading zeros are decimal, never octal). Raises RuleError naming the value as written."""
    text = _text(path, node, what)
    match = _ASN.match(text)
    digits = match.group(1).lstrip("0") if match else ""
    value = int(digits or "0") if match and len(digits) <= 10 else None  # a longer number is out of range
    if value is None or not 0 < value < 2**32:
        raise RuleError(path, _line(node), f"{what}: {text!r} is not an AS number (1 to 4294967295, in "
                        "decimal digits, optionally written AS13335)")
    return value


def parse_network(path: Path, node: yaml.Node, what: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    value = _text(path, node, what)
    try:
        net = ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        raise RuleError(path, _line(node), f"{what}: {value!r} is not a valid CIDR network ({exc})") from None
    if net.version == 6 and net.prefixlen >= 96 and net.network_address.ipv4_mapped is not None:
        # ::ffff:a.b.c.d/n covers IPv4 addresses, which geoblock always compares as IPv4.
        net = ipaddress.ip_network(f"{net.network_address.ipv4_mapped}/{net.prefixlen - 96}")
    return net


def parse_domain(path: Path, node: yaml.Node, what: str) -> DomainSpec:
    """A domain entry of YAML (`name`, `=name`, `*.name`, `.name`), read as a list file's entry is
    (lists.parse_entry). Raises RuleError naming the file, line and value."""
    text = _string(path, node, what)
    try:
        host, mode = parse_entry(text)
    except ListError as exc:
        raise RuleError(path, _line(node), f"{what}: {exc}") from None
    return DomainSpec(host, mode, text, where=f"{path}:{_line(node)}")


def _list_path(path: Path, node: yaml.Node, what: str) -> Path:
    """A `domains_from` entry: a list file's path, relative to the directory of the YAML file naming it."""
    text = _text(path, node, what)
    target = Path(text)
    if not target.is_absolute():
        target = path.parent / target
    if target.is_dir():
        raise RuleError(path, _line(node), f"{what}: {text!r} is a directory ({target}): name each list file")
    if not target.is_file():
        what_it_is = "not a regular file" if target.exists() else "no such list file"
        raise RuleError(path, _line(node), f"{what}: {text!r}: {what_it_is} ({target})")
    return target


def parse_pattern(path: Path, node: yaml.Node, what: str) -> str:
    text = _string(path, node, what).lower()
    if not _PATTERN.match(text) or "*" not in text and "?" not in text:
        raise RuleError(
            path,
            _line(node),
            f"{what}: {text!r} is not a name pattern (letters, digits, '-', '.', with '*' or '?' wildcards)",
        )
    return text


# --------------------------------------------------------------------------------------------
# Files


def _parse_rule(path: Path, node: yaml.Node, index: int) -> RuleSpec:
    where = f"rule #{index + 1}"
    fields = _mapping(path, node, where)
    if "id" in fields:
        rule_id = _string(path, fields["id"][1], f"{where}: id")
        if not _ID.match(rule_id):
            raise RuleError(
                path, _line(fields["id"][1]), f"rule id {rule_id!r}: use letters, digits, '.', '_', ':' or '-'"
            )
        where = f"rule {rule_id!r}"
    else:
        raise RuleError(path, _line(node), f"{where}: missing key 'id'")
    for key, (key_node, _) in fields.items():
        if key not in RULE_KEYS:
            raise RuleError(
                path, _line(key_node), f"{where}: unknown key {key!r} (allowed: {', '.join(RULE_KEYS)})"
            )
    if "action" not in fields:
        raise RuleError(path, _line(node), f"{where}: missing key 'action' (one of {', '.join(ACTIONS)})")
    action = _choice(path, fields["action"][1], f"{where}: action", ACTIONS)
    kwargs: dict[str, Any] = {}
    if "description" in fields:
        kwargs["description"] = _string(path, fields["description"][1], f"{where}: description")
    platform = None
    if "platform" in fields:
        platform = kwargs["platform"] = _string(path, fields["platform"][1], f"{where}: platform")
    if "notice" in fields:
        kwargs["notice"] = _string(path, fields["notice"][1], f"{where}: notice")
    domains: list[DomainSpec] = []
    if "domains" in fields:
        domains.extend(
            replace(spec, platform=platform)
            for spec in (parse_domain(path, n, f"{where}: domains")
                         for n in _list(path, fields["domains"][1], f"{where}: domains"))
        )
    if "domains_from" in fields:
        lists = []
        for n in _list(path, fields["domains_from"][1], f"{where}: domains_from"):
            listed = open_list(_list_path(path, n, f"{where}: domains_from"), platform=platform)
            if not listed.entry_count:
                raise RuleError(listed.path, None, f"the list holds no entries ({where} at {path}:{_line(n)} "
                                                   "takes its domains from it)")
            lists.append(listed)
        kwargs["lists"] = tuple(lists)
    if domains:
        kwargs["domains"] = tuple(domains)
    if "patterns" in fields:
        kwargs["patterns"] = tuple(
            parse_pattern(path, n, f"{where}: patterns")
            for n in _list(path, fields["patterns"][1], f"{where}: patterns")
        )
    if "offshore" in fields:
        kwargs["offshore"] = _boolean(path, fields["offshore"][1], f"{where}: offshore")
    if "countries" in fields:
        kwargs["countries"] = frozenset(
            parse_country(path, n, f"{where}: countries")
            for n in _list(path, fields["countries"][1], f"{where}: countries")
        )
    if "asns" in fields:
        kwargs["asns"] = frozenset(
            parse_asn(path, n, f"{where}: asns") for n in _list(path, fields["asns"][1], f"{where}: asns")
        )
    for key in ("networks", "clients"):
        if key in fields:
            kwargs[key] = tuple(
                parse_network(path, n, f"{where}: {key}") for n in _list(path, fields[key][1], f"{where}: {key}")
            )
    spec = RuleSpec(id=rule_id, action=action, source=f"{path}:{_line(node)}", **kwargs)
    if not (spec.has_name_condition or spec.needs_server_ip or spec.clients):
        raise RuleError(
            path,
            _line(node),
            f"{where} has no condition (domains, patterns, offshore, countries, asns, networks or clients); "
            "set `default` in policy.yaml to change what happens when no rule matches",
        )
    return spec


def _parse_policy_value(path: Path, key: str, node: yaml.Node) -> Any:
    if key == "home_countries":
        if isinstance(node, yaml.SequenceNode) and not node.value:
            return frozenset()
        return frozenset(parse_country(path, n, "home_countries") for n in _list(path, node, "home_countries"))
    if key == "on_error":
        return _choice(path, node, key, ON_ERROR)
    if key == "doh_canary":
        return _choice(path, node, key, DOH_CANARY)
    if key == "ech_public_names":
        if isinstance(node, yaml.SequenceNode) and not node.value:
            return frozenset()
        names = set()
        for n in _list(path, node, key):
            spec = parse_domain(path, n, key)
            if spec.mode != "tree":
                raise RuleError(path, _line(n), f"{key}: {spec.text!r}: give a plain domain (it covers its "
                                                "subdomains); '=' and '*.' are for rules")
            names.add(spec.name)
        return frozenset(names)
    return _choice(path, node, key, ACTIONS)


def read_file(path: Path, text: str) -> tuple[dict[str, tuple[Any, int]], list[RuleSpec]]:
    """Parse one file: its policy keys (value, line) and its rules."""
    root = _compose(path, text)
    if root is None:
        return {}, []
    top = _mapping(path, root, "the file")
    policy: dict[str, tuple[Any, int]] = {}
    rules: list[RuleSpec] = []
    for key, (key_node, value_node) in top.items():
        if key in POLICY_KEYS:
            policy[key] = (_parse_policy_value(path, key, value_node), _line(key_node))
        elif key == "rules":
            if isinstance(value_node, yaml.ScalarNode) and value_node.tag == _NULL:
                continue
            if not isinstance(value_node, yaml.SequenceNode):
                raise RuleError(path, _line(value_node), "rules must be a list of rules")
            rules.extend(_parse_rule(path, n, i) for i, n in enumerate(value_node.value))
        else:
            raise RuleError(
                path,
                _line(key_node),
                f"unknown key {key!r} (allowed at the top of a file: {', '.join(POLICY_KEYS)}, rules)",
            )
    return policy, rules


def rule_files(source: str | os.PathLike[str]) -> list[Path]:
    """The files a rules source consists of, in the order they are read: a file, or a directory's
    *.yaml and *.yml files (any case), hidden files and editor back-ups left out. Raises RuleError when
    the source does not exist."""
    path = Path(source)
    if path.is_dir():
        return sorted(p for p in path.iterdir() if _is_rule_file(p))
    if path.is_file():
        return [path]
    raise RuleError(path, None, "no such rules file or directory")


def _is_rule_file(path: Path) -> bool:
    return path.suffix.lower() in (".yaml", ".yml") and not _skipped(path) and path.is_file()


def _skipped(path: Path) -> bool:
    """Hidden files and editor back-ups (`.x`, `#x#`, `x~`, `x.swp`, `x.bak`, `x.orig`, `x.rej`)."""
    name = path.name
    return name.startswith((".", "#", "~")) or name.endswith(("~", ".swp", ".bak", ".orig", ".rej", ".dpkg-old",
                                                               ".dpkg-dist", ".rpmnew", ".rpmsave"))


def _unread(source: Path, lists: set[Path]) -> list[str]:
    """Warnings for what a rules directory holds that geoblock does not read: a file that is no rule
    file and no rule's list, and a subdirectory with rule files or lists no rule names."""
    if not source.is_dir():
        return []
    out = []
    for path in sorted(source.iterdir()):
        if path.name.startswith(".") and path.suffix.lower() in (".yaml", ".yml") and path.is_file():
            out.append(f"{path}: not read: a hidden file (its name starts with a dot)")
            continue
        if _skipped(path) or _is_rule_file(path):
            continue
        if path.is_file() and path.resolve() not in lists:
            out.append(f"{path}: not read: rule files end in .yaml or .yml (hidden files and editor back-ups "
                       f"are skipped); a list file is read only where a rule names it (domains_from: "
                       f"[{path.name}])")
        elif path.is_dir():
            unused = [p for p in sorted(path.rglob("*")) if p.is_file() and not _skipped(p)
                      and p.resolve() not in lists]
            yaml_files = [p for p in unused if p.suffix.lower() in (".yaml", ".yml")]
            if yaml_files:
                out.append(f"{yaml_files[0]}: not read: rules are read from {source} itself, not its "
                           f"subdirectories ({len(yaml_files)} .yaml file(s) in {path})")
            elif unused:
                out.append(f"{unused[0]}: not read: no rule names it in domains_from "
                           f"({len(unused)} unused file(s) in {path})")
    return out


def load_rules(source: str | os.PathLike[str]) -> RuleSource:
    """Read and validate a rules file or directory, and the list files its rules name. Raises RuleError.
    The version hashes every file read (rule files and lists); warnings name what is not read."""
    files = rule_files(source)
    if not files:
        raise RuleError(source, None, "no rule files (*.yaml) in this directory")
    digest = hashlib.sha256()
    policy_values: dict[str, tuple[Any, str]] = {}
    all_rules: list[RuleSpec] = []
    seen: dict[str, str] = {}
    lists: dict[Path, ListFile] = {}
    for path in files:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise RuleError(path, None, f"cannot read: {exc.strerror}") from None
        digest.update(path.name.encode() + b"\0" + data + b"\0")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            raise RuleError(path, line, "not UTF-8 text") from None
        file_policy, rules = read_file(path, text)
        for key, (value, line) in file_policy.items():
            if key in policy_values:
                raise RuleError(path, line, f"{key} is already set in {policy_values[key][1]}")
            policy_values[key] = (value, f"{path}:{line}")
        for rule in rules:
            if rule.id in seen:
                line = int(rule.source.rsplit(":", 1)[1])
                raise RuleError(path, line, f"duplicate rule id {rule.id!r} (first at {seen[rule.id]})")
            seen[rule.id] = rule.source
            all_rules.append(rule)
            for listed in rule.lists:
                lists.setdefault(Path(listed.path).resolve(), listed)
                digest.update(b"list\0" + listed.name.encode() + b"\0" + listed.sha256.encode() + b"\0")
    warnings = _unread(Path(source), set(lists))
    if "home_countries" not in policy_values and any(r.offshore is not None for r in all_rules):
        warnings.append("home_countries is not set: every server with a known country counts as offshore")
    policy = Policy(**{k: v for k, (v, _) in policy_values.items()})
    return RuleSource(
        policy=policy,
        rules=tuple(all_rules),
        files=tuple(str(p) for p in files),
        version=digest.hexdigest()[:12],
        warnings=tuple(warnings),
        lists=tuple(lists.values()),
    )
