"""What if: decision logs re-judged under another ruleset, and what would change.

`geoblock-replay LOG.jsonl --rules NEW` (tools/replay.py hands decision logs here) reads decision
records (JSON lines as the proxy writes them: record.DecisionRecord; plain or gzip, `-` for stdin),
rebuilds each record's `Facts` as the proxy built them, judges them again with `Engine.judge` under NEW
(the engine the proxy judges with) and compares the verdicts with the recorded ones, or with those of a
baseline ruleset (`--baseline OLD`). docs/whatif.md says how to use it and what it cannot know.

What a record gives back (`rebuild`):
- `stage`, `client` (+ `client_port`, `connection_id`), `server_ip` (the IPv6 form where `server_ipv6`
  is present: the same `names.EmbeddedIPv4` the proxy judged), `server_port`;
- the location as recorded (`country`, `country_source`, `asn`, `geoip_code`, `anycast`): the facts of the
  day; `relocate=True` clears them so the engine's GeoIP databases place the server again;
- `ech`, `ech_grease`, `mismatch`;
- the names, normalised as the proxy does (`names.normalize_host`), in the proxy's order for the stage:
  connect: the CONNECT target (`host`); tls: SNI, then the CONNECT target (`host`); http: the request
  target and URI authority (as far as `mismatch` or `name` show them), Host (`host`), SNI; stream: SNI,
  CONNECT target; dns: the answer's `chain` or the question (`host`); ip: none. The record's `name` (the
  name its verdict was about) is added first when none of these is it.

Records the engine does not judge by rules are judged as the proxy judged them: one with an `error`
(on_error decided) gets the new policy's on_error; a refused protocol switch (`upgrade`) is blocked
whatever the rules; Firefox's DNS canary follows the new policy's `doh_canary`; a request inside a tunnel
blocked at an earlier stage (`blocked_at`) gets the tunnel's new verdict when that is still a block, else
its own.

Imports nothing from mitmproxy.
"""

from __future__ import annotations

import gzip
import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import IO, Any, Literal, get_args

from geoblock.core.countries import ISO_3166_ALPHA2
from geoblock.core.model import ACTIONS, STAGES, Action, CountrySource, Facts, Stage, Verdict
from geoblock.core.names import EmbeddedIPv4, InvalidHost, IPAddress, as_written, normalize_host, normalize_ip
from geoblock.engine import Engine
from geoblock.errors import GeoblockError

DOH_CANARY = "use-application-dns.net"  # as geoblock.mitm.dnsanswers.DOH_CANARY (that module imports mitmproxy)

_GZIP_MAGIC = b"\x1f\x8b"
_LOG_SUFFIXES = (".jsonl", ".json", ".log", ".ndjson")

Kind = Literal["newly-blocked", "newly-allowed", "now-logged", "no-longer-logged", "rule-changed"]
"""How a record's verdict changes: "newly-blocked" (allow or log before, block now), "newly-allowed" (block
before, allow or log now: the flow would pass), "now-logged" (allow -> log), "no-longer-logged" (log ->
allow), "rule-changed" (the same action, by another rule or for another platform)."""

KINDS: tuple[Kind, ...] = get_args(Kind)
ACTION_KINDS: tuple[Kind, ...] = KINDS[:4]  # the kinds that change what happens to a flow (exit status 3)

HEADINGS: dict[Kind, str] = {
    "newly-blocked": "newly blocked",
    "newly-allowed": "newly allowed (block before, the flow would pass)",
    "now-logged": "now logged (allow before)",
    "no-longer-logged": "no longer logged (allow now)",
    "rule-changed": "same action, another rule or platform",
}


class RecordError(GeoblockError, ValueError):
    """A decision-log line that cannot be rebuilt into facts. `where` is "file:line", `why` says what is
    wrong (the field and its value)."""

    def __init__(self, where: str, why: str) -> None:
        self.where = where
        self.why = why
        super().__init__(f"{where}: {why}")


class LogError(GeoblockError):
    """A decision log that cannot be read at all (cannot be opened, not gzip when it says so). The message
    names the file."""

    def __init__(self, path: str, why: str) -> None:
        self.path = path
        self.why = why
        super().__init__(f"{path}: {why}")


# --------------------------------------------------------------------------------------------
# Telling a decision log from a flow file, and reading its lines


def looks_like_log(head: bytes, name: str = "") -> bool:
    """Whether a file's first bytes `head` are those of a decision log: gzip (a rotated log; a flow file
    is never compressed by mitmdump) or, after white space, a JSON object `{`. A mitmproxy flow file
    starts with a tnetstring length (digits). An empty file is a log when `name` ends in a log suffix
    (.jsonl, .json, .log, .ndjson, .gz)."""
    if head.startswith(_GZIP_MAGIC):
        return True
    stripped = head.lstrip()
    if not stripped:
        return name.endswith((*_LOG_SUFFIXES, ".gz"))
    return stripped.startswith(b"{")


def sniff(path: str) -> bool:
    """Whether the file at `path` is a decision log (`looks_like_log` on its first bytes). Raises
    LogError naming the file when it cannot be opened or read."""
    try:
        with open(path, "rb") as fo:
            head = fo.read(64)
    except OSError as exc:
        raise LogError(path, f"cannot open: {exc.strerror or exc}") from None
    return looks_like_log(head, path)


def _open_binary(path: str, stdin: IO[bytes] | None) -> IO[bytes]:
    if path == "-":
        if stdin is None:
            raise LogError("-", "no standard input")
        peek = getattr(stdin, "peek", None)  # sys.stdin.buffer: a BufferedReader
        if peek is not None:
            head = peek(2)[:2]
        else:  # a seekable stream (io.BytesIO)
            start = stdin.tell()
            head = stdin.read(2)
            stdin.seek(start)
        return gzip.GzipFile(fileobj=stdin, mode="rb") if head == _GZIP_MAGIC else stdin  # type: ignore[return-value]
    try:
        with open(path, "rb") as fo:
            packed = fo.read(2) == _GZIP_MAGIC
        stream = gzip.open(path, "rb") if packed else open(path, "rb")  # gzip.open owns (and closes) its file
        return stream  # type: ignore[return-value]
    except OSError as exc:
        raise LogError(path, f"cannot open: {exc.strerror or exc}") from None


def read_lines(path: str, stdin: IO[bytes] | None = None) -> Iterator[tuple[str, dict[str, Any] | RecordError]]:
    """("file:line", record or RecordError) for every line of the decision log at `path` ("-": `stdin`),
    in order; plain or gzip. A line that is not UTF-8 JSON holding one object is a RecordError naming
    its place (never skipped: an empty line is one too). Raises LogError when the file cannot be opened
    or its gzip stream is damaged (the lines before the damage have been yielded)."""
    shown = "<stdin>" if path == "-" else path
    fo = _open_binary(path, stdin)
    try:
        for number, line in enumerate(fo, 1):
            where = f"{shown}:{number}"
            text = line.rstrip(b"\r\n")
            if not text.strip():
                yield where, RecordError(where, "empty line")
                continue
            try:
                value = json.loads(text)
            except UnicodeDecodeError as exc:
                yield where, RecordError(where, f"not UTF-8 ({exc.reason} at byte {exc.start})")
                continue
            except ValueError as exc:
                yield where, RecordError(where, f"not JSON ({exc})")
                continue
            if not isinstance(value, dict):
                yield where, RecordError(where, f"not a JSON object but {type(value).__name__}")
                continue
            yield where, value
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise LogError(shown, f"cannot read: {exc}") from None
    finally:
        if fo is not stdin:
            fo.close()


# --------------------------------------------------------------------------------------------
# Facts from a record


@dataclass(frozen=True, slots=True)
class Outcome:
    """A verdict as compared: `action`, `rule` (None: no rule, the default or on_error), `platform`
    (the list entry's or the rule's platform, None when none was named), `reason`, `name`, and `entry`:
    where the deciding domain entry is (a verdict's "file:line"; a record's `list`, the list file's name)."""

    action: Action
    rule: str | None
    platform: str | None
    reason: str
    name: str | None = None
    entry: str | None = None

    @classmethod
    def of(cls, verdict: Verdict) -> Outcome:
        return cls(verdict.action, verdict.rule, verdict.platform, verdict.reason, verdict.name, verdict.entry)


@dataclass(slots=True)
class Rebuilt:
    """One record, rebuilt: `where` ("file:line"), the record itself, the `facts` the proxy judged (names
    normalised), the recorded verdict (`recorded`), and how the proxy reached it when rules did not:
    `error` (on_error's cause: the record has an `error` field), `fixed` (a verdict no rule decides: a
    refused protocol switch), `blocked_at` (a request inside a tunnel blocked at that stage)."""

    where: str
    record: Mapping[str, Any]
    facts: Facts
    recorded: Outcome
    error: str | None = None
    fixed: Verdict | None = None
    blocked_at: Stage | None = None


_FIELDS = ("request target", "URI authority", "Host", "SNI", "CONNECT target")
_MISMATCH = re.compile(rf"({'|'.join(_FIELDS)}) (\S+) ≠ ({'|'.join(_FIELDS)}) (\S+)")
_HTTP_ORDER = ("request target", "URI authority", "Host", "SNI")  # observe.http_target's order


def _text(rec: Mapping[str, Any], key: str, where: str) -> str | None:
    value = rec.get(key)
    if value is None or isinstance(value, str):
        return value
    raise RecordError(where, f"field {key!r}: {value!r} is not text")


def _flag(rec: Mapping[str, Any], key: str, where: str) -> bool:
    value = rec.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise RecordError(where, f"field {key!r}: {value!r} is not true or false")
    return value


def _number(rec: Mapping[str, Any], key: str, where: str, top: int) -> int | None:
    value = rec.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top:
        raise RecordError(where, f"field {key!r}: {value!r} is not a number from 0 to {top}")
    return value


def _address(rec: Mapping[str, Any], key: str, where: str) -> IPAddress | None:
    text = _text(rec, key, where)
    if text is None:
        return None
    try:
        return normalize_ip(text)
    except InvalidHost as exc:
        raise RecordError(where, f"field {key!r}: {exc.why}: {text!r}") from None


def _one_of(rec: Mapping[str, Any], key: str, where: str, choices: Iterable[str], optional: bool) -> Any:
    value = rec.get(key)
    if value is None and optional:
        return None
    choices = tuple(choices)
    if value not in choices:
        shown = "missing" if key not in rec else repr(value)
        raise RecordError(where, f"field {key!r}: {shown}, expected one of {', '.join(choices)}")
    return value


def _name(value: str | None) -> str | None:
    """`value` normalised as the proxy does, when it is a host name; None for no value or an address.
    Raises InvalidHost."""
    if not value:
        return None
    host = normalize_host(value)
    return host if isinstance(host, str) else None


def _names(stage: Stage, rec: Mapping[str, Any], where: str) -> tuple[str, ...]:
    """The names the proxy judged at `stage`, in its order, from the record's fields (see the module's
    docstring). Raises InvalidHost for a value the proxy could not have normalised either."""
    host, sni = rec.get("host"), rec.get("sni")
    names: list[str | None]
    if stage == "connect":
        names = [_name(host)]
    elif stage == "tls":
        names = [_name(sni), _name(host)]
    elif stage == "stream":
        names = [_name(sni), _name(host)]
    elif stage == "http":
        shown: dict[str, str | None] = {}
        match = _MISMATCH.fullmatch(rec.get("mismatch") or "")
        if match:
            shown[match.group(1)] = _name(match.group(2))
            shown[match.group(3)] = _name(match.group(4))
        shown["Host"] = _name(host)
        shown["SNI"] = _name(sni)
        names = [shown.get(f) for f in _HTTP_ORDER]
    elif stage == "dns":
        chain = rec.get("chain")
        if chain is not None:
            if not isinstance(chain, list) or not all(isinstance(n, str) for n in chain):
                raise RecordError(where, f"field 'chain': {chain!r} is not a list of names")
            names = [_name(n) for n in chain]
        else:
            names = [_name(host)]
    else:  # "ip": only the addresses are known
        return ()
    out = list(dict.fromkeys(n for n in names if n))
    decided = _name(rec.get("name"))
    if decided and decided not in out:
        out.insert(0, decided)  # a name the other fields do not show (the request target): judged first
    return tuple(out)


def rebuild(where: str, rec: Mapping[str, Any]) -> Rebuilt:
    """The facts and recorded verdict of one decision record. Raises RecordError naming the field and
    its value for a record that does not fit record.DecisionRecord (a missing or unknown stage or
    action, an address that is not one, a port out of range, a country that is not an ISO code, ...)."""
    stage: Stage = _one_of(rec, "stage", where, STAGES, optional=False)
    action: Action = _one_of(rec, "action", where, ACTIONS, optional=False)
    for key in ("sni", "host", "name", "rule", "mismatch", "error", "upgrade", "platform", "list", "connection_id"):
        _text(rec, key, where)
    reason = rec.get("reason")
    if not isinstance(reason, str):
        raise RecordError(where, f"field 'reason': {reason!r} is not text")
    client = _address(rec, "client", where)
    server = _address(rec, "server_ip", where)
    ipv6 = _address(rec, "server_ipv6", where)
    if ipv6 is not None:
        if not isinstance(ipv6, EmbeddedIPv4) or (server is not None and ipv6 != server):
            raise RecordError(where, f"field 'server_ipv6': {rec['server_ipv6']!r} does not carry server_ip "
                                     f"{rec.get('server_ip')!r}")
        server = ipv6
    country = _text(rec, "country", where)
    if country is not None and country not in ISO_3166_ALPHA2:
        raise RecordError(where, f"field 'country': {country!r} is not an ISO 3166-1 alpha-2 code")
    source: CountrySource | None = _one_of(rec, "country_source", where, get_args(CountrySource), optional=True)
    geoip_code = _text(rec, "geoip_code", where)
    facts = Facts(
        stage,
        client_ip=None if client is None else as_written(client),
        server_ip=server,
        country=country,
        asn=_number(rec, "asn", where, 2**32 - 1),
        country_source=source if country is not None else None,
        geoip_code=geoip_code,
        anycast=_flag(rec, "anycast", where),
        sni=rec.get("sni"),
        host=rec.get("host"),
        ech=_flag(rec, "ech", where),
        ech_grease=_flag(rec, "ech_grease", where),
        mismatch=rec.get("mismatch") or None,
        connection_id=rec.get("connection_id"),
        client_port=_number(rec, "client_port", where, 65535),
        server_port=_number(rec, "server_port", where, 65535),
    )
    recorded = Outcome(action, rec.get("rule"), rec.get("platform"), reason, rec.get("name"), rec.get("list"))
    blocked_at: Stage | None = _one_of(rec, "blocked_at", where, STAGES, optional=True)
    out = Rebuilt(where, rec, facts, recorded, blocked_at=blocked_at)
    if rec.get("error") is not None:
        out.error = reason.rsplit("; on_error is ", 1)[0]
    elif rec.get("upgrade") is not None:
        out.fixed = Verdict(action=action, rule=rec.get("rule"), reason=reason, offshore=rec.get("offshore"),
                            name=rec.get("name"))
    try:
        facts.names = _names(stage, rec, where)
    except InvalidHost as exc:
        if out.error is None and out.fixed is None:
            out.error = f"{exc}"  # the proxy could not normalise it either: on_error
    return out


def rejudge(item: Rebuilt, engine: Engine, relocate: bool = False) -> tuple[Facts, Verdict]:
    """The facts judged (a copy: `item` is not changed) and the verdict `engine` gives them, as the proxy
    would reach it under the engine's ruleset. `relocate`: forget the recorded location and let the
    engine's locators (its GeoIP databases) place the server again; else the recorded location is judged
    (an engine without databases adds nothing to it)."""
    facts = replace(item.facts)
    if relocate:
        facts.country = facts.country_source = facts.geoip_code = None
        facts.asn = None
        facts.anycast = False
        engine.place(facts)
    if item.fixed is not None:
        return facts, item.fixed
    if item.error is not None:
        return facts, engine.on_error(item.error)
    policy = engine.ruleset.policy
    if facts.stage == "dns" and DOH_CANARY in facts.names and policy.doh_canary == "nxdomain":
        return facts, Verdict(
            action="block", rule="policy:doh-canary", offshore=None, name=DOH_CANARY,
            reason=f"{DOH_CANARY} is Firefox's canary: NXDOMAIN keeps its DNS over HTTPS off, so it uses this "
                   f"DNS (blocked names, ECH removed); the policy for doh_canary is nxdomain")
    if item.blocked_at is not None:
        name = item.recorded.name
        tunnel = replace(facts, stage=item.blocked_at, names=(name,) if name else (), mismatch=None)
        verdict = engine.judge(tunnel)
        if verdict.action == "block":
            return tunnel, verdict
    return facts, engine.judge(facts)


# --------------------------------------------------------------------------------------------
# Comparing


def kind_of(before: Outcome, after: Outcome, platforms: bool = True) -> Kind | None:
    """How the verdict changed (Kind), or None when it did not (same action, rule and, when `platforms`,
    platform: False for a record written before records named platforms)."""
    if before.action != after.action:
        if after.action == "block":
            return "newly-blocked"
        if before.action == "block":
            return "newly-allowed"
        return "now-logged" if after.action == "log" else "no-longer-logged"
    if before.rule != after.rule or (platforms and before.platform != after.platform):
        return "rule-changed"
    return None


@dataclass(slots=True)
class Change:
    """One record whose verdict changes: where it is, its facts, the verdict before and after."""

    kind: Kind
    item: Rebuilt
    before: Outcome
    after: Outcome
    facts: Facts  # as judged now (placed again with --relocate)

    @property
    def subject(self) -> str:
        """What the flow was about: the verdict's name, else the record's name, host, or server address."""
        rec = self.item.record
        return (self.after.name or self.before.name or rec.get("name") or rec.get("host")
                or rec.get("server_ip") or "?")

    def deciding(self) -> tuple[str | None, str | None]:
        """(rule, platform) this change is filed under: the rule that blocks or logs now for a new block or
        log, the rule that blocked or logged before for a lifted one."""
        side = self.before if self.kind in ("newly-allowed", "no-longer-logged") else self.after
        return side.rule, side.platform

    def as_json(self) -> dict[str, Any]:
        rec = self.item.record
        file, _, line = self.item.where.rpartition(":")
        return {
            "file": file, "line": int(line), "kind": self.kind, "ts": rec.get("ts"), "stage": rec.get("stage"),
            "connection_id": rec.get("connection_id"), "client": rec.get("client"), "name": self.subject,
            "names": list(self.facts.names), "server_ip": rec.get("server_ip"), "country": self.facts.country,
            "asn": self.facts.asn,
            "before": _outcome_json(self.before), "after": _outcome_json(self.after),
        }


def _outcome_json(o: Outcome) -> dict[str, Any]:
    return {"action": o.action, "rule": o.rule, "platform": o.platform, "entry": o.entry, "reason": o.reason}


@dataclass(slots=True)
class Group:
    """Changes of one kind filed under one (rule, platform): how many records, which names and clients,
    and what the other side of the change was (`other`: "allow (no rule)" -> count)."""

    kind: Kind
    rule: str | None
    platform: str | None
    records: int = 0
    names: dict[str, None] = field(default_factory=dict)  # insertion-ordered set
    clients: set[str] = field(default_factory=set)
    other: Counter[str] = field(default_factory=Counter)

    def add(self, change: Change) -> None:
        self.records += 1
        self.names.setdefault(change.subject, None)
        client = change.item.record.get("client")
        if client:
            self.clients.add(client)
        side = change.after if change.kind in ("newly-allowed", "no-longer-logged") else change.before
        self.other[f"{side.action} ({side.rule or 'no rule'})"] += 1

    def as_json(self, examples: int) -> dict[str, Any]:
        return {"kind": self.kind, "rule": self.rule, "platform": self.platform, "records": self.records,
                "names": len(self.names), "clients": len(self.clients), "examples": list(self.names)[:examples],
                ("now" if self.kind in ("newly-allowed", "no-longer-logged") else "before"): dict(self.other)}


@dataclass(slots=True)
class WhatIf:
    """The outcome of a what-if run: every change, the records that could not be rebuilt (RecordError,
    by file:line), and counts. `without_address`: records judged now on a rule that needs the server's
    address or location the record does not hold (nothing was resolved when it was recorded)."""

    records: int = 0
    unchanged: int = 0
    changes: list[Change] = field(default_factory=list)
    bad: list[RecordError] = field(default_factory=list)
    without_address: int = 0
    versions: Counter[str] = field(default_factory=Counter)  # recorded ruleset versions -> records

    def counts(self) -> dict[Kind, int]:
        c = Counter(ch.kind for ch in self.changes)
        return {k: c.get(k, 0) for k in KINDS}

    @property
    def action_changes(self) -> int:
        """Records whose action changes (every kind but "rule-changed")."""
        return sum(1 for ch in self.changes if ch.kind in ACTION_KINDS)

    def groups(self) -> list[Group]:
        """The changes grouped by (kind, rule, platform): kinds in KINDS order, then most records first."""
        out: dict[tuple[Kind, str | None, str | None], Group] = {}
        for ch in self.changes:
            rule, platform = ch.deciding()
            key = (ch.kind, rule, platform)
            if key not in out:
                out[key] = Group(ch.kind, rule, platform)
            out[key].add(ch)
        return sorted(out.values(), key=lambda g: (KINDS.index(g.kind), -g.records, g.rule or "", g.platform or ""))


def compare(items: Iterable[Rebuilt | RecordError], engine: Engine, baseline: Engine | None = None,
            relocate: bool = False) -> WhatIf:
    """Re-judge every rebuilt record with `engine` and compare with the recorded verdict, or with
    `baseline`'s verdict on the same facts when a baseline engine is given. RecordErrors are kept in
    `bad`, in order."""
    out = WhatIf()
    for item in items:
        if isinstance(item, RecordError):
            out.bad.append(item)
            continue
        out.records += 1
        version = item.record.get("ruleset")
        if isinstance(version, str):
            out.versions[version] += 1
        facts, verdict = rejudge(item, engine, relocate)
        after = Outcome.of(verdict)
        before = item.recorded if baseline is None else Outcome.of(rejudge(item, baseline, relocate)[1])
        if verdict.unknown is not None and item.facts.server_ip is None and item.error is None:
            out.without_address += 1
        # a record without a `platform` field was written before records named platforms: no change there
        kind = kind_of(before, after, platforms=baseline is not None or "platform" in item.record)
        if kind is None:
            out.unchanged += 1
            continue
        out.changes.append(Change(kind, item, before, after, facts))
    return out


def rebuilt_lines(lines: Iterable[tuple[str, dict[str, Any] | RecordError]]) -> Iterator[Rebuilt | RecordError]:
    """`rebuild` over `read_lines`' output: a Rebuilt per record, a RecordError for every line that is
    not a record or cannot be rebuilt."""
    for where, value in lines:
        if isinstance(value, RecordError):
            yield value
            continue
        try:
            yield rebuild(where, value)
        except RecordError as exc:
            yield exc


def read_logs(paths: Iterable[str], stdin: IO[bytes] | None = None) -> Iterator[Rebuilt | RecordError]:
    """Every record of the decision logs at `paths`, rebuilt, in order. Raises LogError."""
    for path in paths:
        yield from rebuilt_lines(read_lines(path, stdin))


# --------------------------------------------------------------------------------------------
# Printing


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def text_report(result: WhatIf, examples: int = 5, bad_shown: int = 20) -> list[str]:
    """The report for a person: totals, then per kind the groups by rule and platform (records, distinct
    names and clients, the other side of the change, example names), then the records not rebuilt."""
    counts = result.counts()
    lines = [f"{_plural(result.records, 'record')} re-judged: {result.unchanged} unchanged, "
             + ", ".join(f"{counts[k]} {k.replace('-', ' ')}" for k in KINDS)
             + (f"; {_plural(len(result.bad), 'line')} not rebuilt" if result.bad else "")]
    groups = result.groups()
    for kind in KINDS:
        mine = [g for g in groups if g.kind == kind]
        if not mine:
            continue
        names = {n for g in mine for n in g.names}
        clients = {c for g in mine for c in g.clients}
        lines.append(f"{HEADINGS[kind]}: {_plural(counts[kind], 'record')}, {_plural(len(names), 'name')}, "
                     f"{_plural(len(clients), 'client')}")
        for g in mine:
            other = ", ".join(f"{k} {v}" for k, v in g.other.most_common())
            label = "now" if kind in ("newly-allowed", "no-longer-logged") else "before"
            shown = list(g.names)[:examples]
            more = f" (+{len(g.names) - len(shown)} more)" if len(g.names) > len(shown) else ""
            lines.append(f"  rule {g.rule or '(none)'}, platform {g.platform or '(none)'}: "
                         f"{_plural(g.records, 'record')}, {_plural(len(g.names), 'name')}, "
                         f"{_plural(len(g.clients), 'client')}; {label}: {other}; e.g. {', '.join(shown)}{more}")
    if result.without_address:
        lines.append(f"note: {_plural(result.without_address, 'record')} met a rule that needs the server's "
                     f"location, which the record does not hold (no address was resolved when it was recorded): "
                     f"judged by unknown_country; see docs/whatif.md")
    if result.bad:
        lines.append(f"not rebuilt: {_plural(len(result.bad), 'line')}")
        lines.extend(f"  {exc}" for exc in result.bad[:bad_shown])
        if len(result.bad) > bad_shown:
            lines.append(f"  ... and {len(result.bad) - bad_shown} more (--json lists every one)")
    return lines


def summary_json(result: WhatIf, examples: int, **extra: Any) -> dict[str, Any]:
    """The summary object of `--json` (the last line): counts per kind, groups, records not rebuilt (all,
    by file:line), and `extra` (the rulesets compared, the exit status)."""
    return {
        "summary": True,
        "records": result.records,
        "unchanged": result.unchanged,
        "changes": {k.replace("-", "_"): v for k, v in result.counts().items()},
        "groups": [g.as_json(examples) for g in result.groups()],
        "without_address": result.without_address,
        "not_rebuilt": [{"where": e.where, "why": e.why} for e in result.bad],
        "recorded_rulesets": dict(result.versions),
        **extra,
    }


def is_log_path(path: str) -> bool:
    """Whether `path` names a decision log: "-" (standard input is only read as a decision log), or a
    file whose content looks like one (`sniff`). Raises LogError for a file that cannot be opened."""
    return path == "-" or sniff(os.fspath(path))
