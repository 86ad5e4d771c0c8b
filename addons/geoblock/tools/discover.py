"""`geoblock discover`: the platforms the decision logs point at that no block rule lists yet.

    geoblock discover LOG... [--rules RULES] [-o discover.html] [--list-out candidates.txt] [--json]
                             [--since ISO] [--until ISO] [--min-score N] [--min-clients N]

LOG: decision log files, directories or glob patterns, read with DuckDB exactly as `geoblock report`
reads them (tools/report.py: `read_logs`). RULES: the rules the list is judged against (the default
rules of `geoblock check`). Every name of the log is grouped under its registrable domain (the Public
Suffix List: `binance-cn.example`, `user.github.io`); a name any block rule covers is listed already and
left out. A registrable domain is a candidate when a signal fires (docs/discover.md):

- `review`: a rule with action `log` (the review rules) logged one of its names on an offshore server;
- `address`, `network`, `asn`: one of its names was served from an address, a /24 (IPv4) or /48 (IPv6)
  network, or an autonomous system that also served a listed platform (a record blocked by a block
  rule's domain entry). Each is weighted by how many registrable domains that address, network or ASN
  serves in the log: a CDN serving hundreds counts little;
- `brand`: its own registrable label carries a listed platform's brand (the first label of a listed
  registrable domain: `binance` in `binance-cn.example` and `binancezh.top`), under the rules of
  `brand_kind`. A brand in a subdomain label only (`binance.wikipedia.org`) fires nothing: whoever sends
  one request can put any label before any domain, and the candidate is the registrable domain.

Each candidate's score adds its signals' weights (`WEIGHTS`), counting only the strongest of address,
network and ASN (`Candidate.score`); candidates are ranked by score, then clients. Outputs: an HTML page
(self-contained, offline, every value escaped), a list file in the plain list format (`name  Platform`)
with a `# discovered <date>: <signals>` comment before each line, and with --json one JSON object on
stdout. Exit codes: 0 written, 1 rules refused, 2 usage or input
error (no such file, no record in the period).
"""

from __future__ import annotations

import argparse
import html
import ipaddress
import json
import math
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import duckdb
from duckdb.func import SPECIAL
from publicsuffixlist import PublicSuffixList

from geoblock.core.rules import RuleError
from geoblock.core.ruleset import Ruleset
from geoblock.tools import report
from geoblock.tools.report import ReportError

PROG = "geoblock discover"

# The fields read from each record: the report's (a superset of what discovery needs).
COLUMNS = report.COLUMNS

# What each signal adds to the score. The infrastructure weights are multiplied by `sharing(n)`, and only
# the strongest of the three counts (Candidate.score).
WEIGHTS = {"review": 1.0, "address": 3.0, "network": 2.0, "asn": 1.5, "brand": 3.0}
SIGNALS = tuple(WEIGHTS)
INFRA = ("address", "network", "asn")
MIN_CLIENTS = 2  # clients a listed platform's server address must be seen from to count as its server
MIN_SCORE = 1.0  # default --min-score: leaves out candidates whose only evidence is a CDN or big host
NAMES_SHOWN = 10  # names listed per candidate (the count says how many there are)
GUESS_SHARING = 0.5  # sharing() at least this (4 domains or fewer there) to guess the platform from servers
EVIDENCE_SHOWN = 3  # shared addresses, networks or ASNs described per signal (the strongest)

# Brands: at least this long to match anywhere inside a name; shorter ones only as a whole token.
BRAND_ANYWHERE = 5
BRAND_SHORTEST = 3  # shorter brands (xt, zb) never match: any name could carry them
BRAND_DISTINCT = 3  # letters a brand needs beyond a common crypto word to match anywhere
# Words of the trade, common in ordinary names: bybit = by + bit has only 2 letters of its own.
CRYPTO_WORDS = ("bitcoin", "crypto", "exchange", "token", "trade", "swap", "coin", "btc", "bit")
# Brands that are ordinary words or names (found in many unrelated names): they match only as a whole
# registrable label (`kraken.top`), never inside one (`krakenrum.example`, `bitcoin-news.example`).
COMMON_WORDS = frozenset({
    "backpack", "bigone", "bitcoin", "blockchain", "bullish", "coins", "crypto", "cumberland", "delta", "gemini",
    "kanga", "kraken", "lemon", "newton", "pintu", "probit", "tokenize", "uphold", "yellowcard",
})


class DiscoverError(ReportError):
    """Discovery cannot run: no such log, no record in the period, an output that cannot be written."""


_PSL: PublicSuffixList | None = None
# a normalised host name (names.normalize_host: lower case, A-labels, no trailing dot) of two labels or more
_HOST = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,62})(?:\.[a-z0-9_](?:[a-z0-9_-]{0,62}))+")


def psl() -> PublicSuffixList:
    """The Public Suffix List (the package's snapshot; both ICANN and private sections), loaded once."""
    global _PSL
    if _PSL is None:
        _PSL = PublicSuffixList()
    return _PSL


def registrable(name: str) -> str | None:
    """The registrable domain of the normalised name `name` (`api.binance.com` -> `binance.com`,
    `a.user.github.io` -> `user.github.io`), or None for an IP literal, a public suffix, a bare label, or
    text that is not a normalised host name (a forged record's `<b>x</b>.example`)."""
    if not _HOST.fullmatch(name) or name.rsplit(".", 1)[1].isdigit():  # not a host name, or IPv4
        return None
    found = psl().privatesuffix(name)
    return found if isinstance(found, str) else None


def network_of(ip: str) -> str | None:
    """The /24 (IPv4) or /48 (IPv6) network of the address text `ip` ("198.51.100.0/24"), None if not one."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    prefix = 24 if addr.version == 4 else 48
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False))


def sharing(domains: int) -> float:
    """The weight (0-1] of an address, network or ASN that serves `domains` registrable domains in the log:
    1 for the listed platform and one other, 1/log2(n) beyond (4: 0.5, 16: 0.25, 256: 0.125)."""
    return 1.0 / max(1.0, math.log2(max(domains, 1)))


def _label(domain: str) -> str:
    return domain.split(".", 1)[0]


def _own_letters(brand: str) -> int:
    """The letters of `brand` beyond the longest common crypto word it starts or ends with."""
    stem = max((len(w) for w in CRYPTO_WORDS if brand.startswith(w) or brand.endswith(w)), default=0)
    return len(brand) - stem


def brand_kind(brand: str) -> str | None:
    """How the brand `brand` may match a registrable domain's own label (`Brands`): "anywhere", "token",
    "label", or None (never):

    - brands shorter than BRAND_SHORTEST letters never match;
    - a brand in COMMON_WORDS matches only when it is the whole registrable label (`kraken.top`): "label";
    - a brand of BRAND_ANYWHERE letters or more, BRAND_DISTINCT of them beyond a common crypto word,
      matches anywhere in the label (`binancezh.top`, `my-binance.example`);
    - any other brand matches only as a whole token, the label split at `-` (`okx-app.top`,
      `bybit-pro.example`; not `habit.example` for `bit`, nor `bybitglobal.example`)."""
    if len(brand) < BRAND_SHORTEST:
        return None
    if brand in COMMON_WORDS:
        return "label"
    if len(brand) >= BRAND_ANYWHERE and _own_letters(brand) >= BRAND_DISTINCT:
        return "anywhere"
    return "token"


class Brands:
    """The brands of the listed platforms (`owners`: brand -> the listed registrable domains carrying it,
    in list order), sorted by how they may match (brand_kind), for `carried`."""

    def __init__(self, owners: dict[str, list[str]]) -> None:
        self.owners = owners
        kinds = {brand: brand_kind(brand) for brand in owners}
        self.anywhere: dict[str, list[str]] = {}  # the first BRAND_ANYWHERE letters -> the brands starting so
        for b, k in kinds.items():
            if k == "anywhere":
                self.anywhere.setdefault(b[:BRAND_ANYWHERE], []).append(b)
        self.token = frozenset(b for b, k in kinds.items() if k == "token")
        self.label = frozenset(b for b, k in kinds.items() if k == "label")

    def carried(self, domain: str) -> set[str]:
        """The brands the registrable domain `domain` carries in its own label (`binance-cn` of
        `binance-cn.example`; never in its public suffix, nor in labels of names under it)."""
        label = _label(domain)
        found: set[str] = set()
        anywhere, n = self.anywhere, BRAND_ANYWHERE
        for i in range(len(label) - n + 1):  # each place a brand could start: one dict probe
            starting = anywhere.get(label[i:i + n])
            if starting:
                found.update(b for b in starting if label.startswith(b, i))
        found.update(self.token.intersection(label.split("-")))
        if label in self.label:
            found.add(label)
        return found


def brand_matches(brand: str, domain: str) -> bool:
    """Whether the registrable domain `domain` carries the brand `brand` (Brands.carried)."""
    return brand in Brands({brand: []}).carried(domain)


@dataclass(frozen=True)
class Listed:
    """A listed platform as the rules give it: `domain` the registrable domain of a block rule's domain
    entry, `platform` its platform's name (from the list or the rule; else the brand, capitalised),
    `brand` the first label of `domain`, `rule` the rule's id, `entry` the entry as written, `order`
    its place in the rules (the first listed wins a tie when guessing a platform)."""

    order: int
    domain: str
    platform: str
    brand: str
    rule: str
    entry: str


def listed_platforms(rs: Ruleset) -> dict[str, Listed]:
    """Every registrable domain a block rule's domain entry names, with its platform (first entry wins)."""
    found: dict[str, Listed] = {}
    for rule in rs.rules:
        if rule.action != "block":
            continue
        for spec in rule.spec.all_domains():
            domain = registrable(spec.name) or spec.name
            if domain not in found:
                brand = _label(domain)
                platform = spec.platform or rule.spec.platform or brand.capitalize()
                found[domain] = Listed(len(found), domain, platform, brand, rule.id, spec.text)
    return found


class Judge:
    """What the rules say of a name: `covered(name)` any block rule covers it (a domain entry or a
    pattern: it is listed already); `listed(name)` the registrable domain of the block rule's domain
    entry covering it (a listed platform's name), or None."""

    def __init__(self, rs: Ruleset) -> None:
        self.rs = rs
        self.block_rules = frozenset(r.id for r in rs.rules if r.action == "block")

    def covered(self, name: str) -> bool:
        return any(self.rs.rules[i].action == "block" for i, _ in self.rs.name_hits(name))

    def listed(self, name: str) -> str | None:
        for index, entry in self.rs.name_hits(name):
            if entry is not None and self.rs.rules[index].action == "block":
                return registrable(entry.name) or entry.name
        return None


@dataclass
class Candidate:
    """One registrable domain not listed yet, with its evidence. `signals`: signal -> weight it added;
    `evidence`: signal -> sentences saying why; `related`: the listed registrable domains it shares
    something with; `platform`: the platform guessed, `guessed_from` the signal that gave it."""

    domain: str
    names: list[str]
    name_count: int
    records: int
    clients: int
    connections: int
    first: str
    last: str
    countries: list[str]
    asns: list[int]
    offshore_records: int
    signals: dict[str, float] = field(default_factory=dict)
    evidence: dict[str, list[str]] = field(default_factory=dict)
    related: list[str] = field(default_factory=list)
    platform: str = ""
    guessed_from: str = ""

    def counted(self) -> set[str]:
        """The signals the score counts: review, brand, and the strongest of address, network and ASN
        (they are nested: a shared address is a shared network and ASN too, so they do not add up)."""
        infra = [level for level in INFRA if level in self.signals]
        best = max(infra, key=lambda level: self.signals[level]) if infra else None
        return {k for k in self.signals if k not in INFRA or k == best}

    @property
    def score(self) -> float:
        """The sum of the counted signals' weights (`counted`)."""
        return round(sum(self.signals[k] for k in self.counted()), 2)

    def to_json(self) -> dict[str, Any]:
        return {"domain": self.domain, "score": self.score, "platform": self.platform,
                "guessed_from": self.guessed_from, "signals": {k: round(v, 3) for k, v in self.signals.items()},
                "evidence": self.evidence, "related": self.related, "clients": self.clients,
                "connections": self.connections, "records": self.records, "first": self.first, "last": self.last,
                "countries": self.countries, "asns": self.asns, "offshore_records": self.offshore_records,
                "names": self.names, "name_count": self.name_count}


@dataclass
class Discovery:
    """What `discover` found: `candidates` best first; `summary` (JSON values); `notes` for the reader."""

    candidates: list[Candidate]
    summary: dict[str, Any]
    notes: list[str]


_TS = "'%Y-%m-%dT%H:%M:%S.%gZ'"


def discover(files: Sequence[str], rs: Ruleset, since: datetime | None = None, until: datetime | None = None,
             progress: TextIO | None = None, min_score: float = MIN_SCORE,
             min_clients: int = MIN_CLIENTS) -> Discovery:
    """Read the decision logs `files` (records with `since <= ts < until`, naive UTC; None: unbounded) and
    find the candidates (module docstring) scoring at least `min_score`, judged against the ruleset `rs`;
    a listed platform's server address counts when `min_clients` distinct clients were blocked there.
    Raises DiscoverError (no file, no record), duckdb.Error."""
    started = time.monotonic()
    logs = report.read_logs(files, since, until, progress, columns=COLUMNS, prog=PROG)
    con = logs.con
    try:
        return _discover(con, logs, files, rs, since, until, min_score, min_clients, started)
    finally:
        con.close()


def _discover(con: duckdb.DuckDBPyConnection, logs: report.Logs, files: Sequence[str], rs: Ruleset,
              since: datetime | None, until: datetime | None, min_score: float, min_clients: int,
              started: float) -> Discovery:
    # fetchall, not fetchone: a result left unfinished keeps create_function from running
    row = con.execute(f"SELECT count(*), strftime(min(t), {_TS}), strftime(max(t), {_TS}) FROM d").fetchall()[0]
    records, first, last = int(row[0]), row[1], row[2]
    if not records:
        period = f" between {since or 'the start'} and {until or 'the end'}" if since or until else ""
        raise DiscoverError(f"no decision record{period} in {len(files)} file(s) ({logs.lines} line(s), "
                            f"{logs.bad} malformed)")
    judge = Judge(rs)
    listed = listed_platforms(rs)
    # What the rules and the Public Suffix List say of each distinct name and address, computed once each
    # (Python functions called by DuckDB over the distinct values only), joined to the records as `r`.
    con.create_function("gb_registrable", registrable, ["VARCHAR"], "VARCHAR", null_handling=SPECIAL)
    con.create_function("gb_covered", judge.covered, ["VARCHAR"], "BOOLEAN", null_handling=SPECIAL)
    con.create_function("gb_listed", judge.listed, ["VARCHAR"], "VARCHAR", null_handling=SPECIAL)
    con.create_function("gb_network", network_of, ["VARCHAR"], "VARCHAR", null_handling=SPECIAL)
    con.execute("""CREATE TABLE m AS SELECT name, gb_registrable(name) AS domain, gb_covered(name) AS covered,
                                           gb_listed(name) AS listed
                   FROM (SELECT DISTINCT name FROM d WHERE name IS NOT NULL)""")
    con.execute("""CREATE TABLE s AS SELECT server_ip, gb_network(server_ip) AS net
                   FROM (SELECT DISTINCT server_ip FROM d WHERE server_ip IS NOT NULL)""")
    con.execute("""CREATE VIEW r AS SELECT d.*, m.domain, m.covered, m.listed, s.net
                   FROM d JOIN m USING (name) LEFT JOIN s USING (server_ip) WHERE m.domain IS NOT NULL""")
    blocks = report._sql_list(sorted(judge.block_rules)) if judge.block_rules else "['']"
    # the listed platforms' servers: records a block rule's domain entry blocked
    # seen from MIN_CLIENTS clients at least: a transparent gateway records the destination a client chose,
    # so one client sending a listed name to any address must not make that address a platform's server
    con.execute(f"""CREATE TABLE li AS SELECT listed, server_ip, any_value(net) AS net, any_value(asn) AS asn FROM r
                    WHERE listed IS NOT NULL AND action = 'block' AND list_contains({blocks}, rule)
                      AND server_ip IS NOT NULL
                    GROUP BY listed, server_ip HAVING count(DISTINCT client) >= {int(min_clients)}""")
    infra: dict[str, dict[Any, set[str]]] = {"address": {}, "network": {}, "asn": {}}
    for owner, ip, net, asn in con.execute("SELECT listed, server_ip, net, asn FROM li").fetchall():
        infra["address"].setdefault(ip, set()).add(owner)
        if net is not None:
            infra["network"].setdefault(net, set()).add(owner)
        if asn is not None:
            infra["asn"].setdefault(asn, set()).add(owner)
    # how many registrable domains each of those addresses, networks and ASNs serves in the log
    served: dict[str, dict[Any, int]] = {
        level: dict(con.execute(f"""SELECT {col}, count(DISTINCT domain) FROM r
                                    WHERE {col} IN (SELECT {col} FROM li) GROUP BY {col}""").fetchall())
        for level, col in (("address", "server_ip"), ("network", "net"), ("asn", "asn"))}
    review = "action = 'log' AND offshore AND rule IS NOT NULL AND NOT starts_with(rule, 'policy:')"
    rows = con.execute(f"""
        SELECT domain, count(*), count(DISTINCT client),
               count(DISTINCT connection_id) + count(*) FILTER (WHERE connection_id IS NULL),
               strftime(min(t), {_TS}), strftime(max(t), {_TS}),
               list(DISTINCT country ORDER BY country) FILTER (WHERE country IS NOT NULL),
               list(DISTINCT asn ORDER BY asn) FILTER (WHERE asn IS NOT NULL),
               count(*) FILTER (WHERE offshore),
               list(DISTINCT name ORDER BY name),
               list(DISTINCT rule ORDER BY rule) FILTER (WHERE {review})
        FROM r WHERE NOT covered GROUP BY domain""").fetchall()
    # the candidates' addresses, networks and ASNs that listed platforms' servers share (few, found here
    # rather than by walking every address of every candidate)
    shares: dict[str, dict[str, list[Any]]] = {level: {} for level in INFRA}
    for level, col in (("address", "server_ip"), ("network", "net"), ("asn", "asn")):
        for domain, value in con.execute(f"""SELECT DISTINCT domain, {col} FROM r
                                             WHERE NOT covered AND {col} IN (SELECT {col} FROM li)""").fetchall():
            shares[level].setdefault(domain, []).append(value)
    brand_owners: dict[str, list[str]] = {}  # brand -> the listed registrable domains carrying it, list order
    for p in listed.values():
        brand_owners.setdefault(p.brand, []).append(p.domain)
    brands = Brands(brand_owners)
    candidates = []
    for domain, n, clients, conns, first_seen, last_seen, countries, asns, offshore, names, reviewed in rows:
        c = Candidate(domain, list(names[:NAMES_SHOWN]), len(names), int(n), int(clients), int(conns), first_seen,
                      last_seen, list(countries or []), [int(a) for a in asns or []], int(offshore))
        if reviewed:
            c.signals["review"] = WEIGHTS["review"]
            c.evidence["review"] = [f"logged offshore by rule {rule}" for rule in reviewed]
        guesses: dict[str, float] = {}  # listed domain -> weight of what the candidate shares with it
        related: set[str] = set()
        for level in INFRA:
            shared = []  # (weight, value as shown, its listed owners, registrable domains there)
            for value in shares[level].get(domain, ()):
                owners = infra[level].get(value)
                if owners:
                    domains = served[level].get(value, 2)
                    shared.append((WEIGHTS[level] * sharing(domains), f"AS{value}" if level == "asn" else str(value),
                                   sorted(owners), domains))
            if not shared:
                continue
            shared.sort(key=lambda x: (-x[0], x[1]))
            c.signals[level] = shared[0][0]
            c.evidence[level] = [f"{shown} also served {_few(owners)} ({domains} registrable domains there)"
                                 for _, shown, owners, domains in shared[:EVIDENCE_SHOWN]]
            if len(shared) > EVIDENCE_SHOWN:
                c.evidence[level].append(f"{len(shared) - EVIDENCE_SHOWN} more")
            for weight, _, sharers, _ in shared:
                related.update(sharers)
                if weight >= GUESS_SHARING * WEIGHTS[level]:  # only servers few others share tell the platform
                    for owner in sharers:
                        guesses[owner] = guesses.get(owner, 0.0) + weight / len(sharers)
        carried = {b: brand_owners[b] for b in sorted(brands.carried(domain))}
        if carried:
            c.signals["brand"] = WEIGHTS["brand"]
            c.evidence["brand"] = [f"carries the brand {b} of {_few(ds)}" for b, ds in carried.items()]
            for b, ds in carried.items():  # a brand outweighs shared servers; the longest brand first
                related.update(ds)
                for d in ds:
                    guesses[d] = guesses.get(d, 0.0) + 10 * WEIGHTS["brand"] + len(b)
        if not c.signals or c.score < min_score:
            continue
        c.related = sorted(related)
        c.platform, c.guessed_from = _label(domain).capitalize(), "name"
        if guesses:  # the strongest, the first listed of equals
            owner = min(guesses, key=lambda d: (-guesses[d], listed[d].order if d in listed else len(listed), d))
            c.platform = listed[owner].platform if owner in listed else _label(owner).capitalize()
            c.guessed_from = "brand" if any(owner in ds for ds in carried.values()) else "servers"
        candidates.append(c)
    candidates.sort(key=lambda c: (-c.score, -c.clients, c.domain))
    notes = list(logs.notes)
    if logs.bad:
        notes.append(f"{logs.bad:,} malformed line(s) skipped (not JSON, cut short, or without a time or an action).")
    if not _scalar(con, "SELECT count(connection_id) FROM d"):
        notes.append("The log has no connection ids (connection_id): connections are counted per record.")
    if not infra["address"]:
        notes.append("No record of a listed platform's server (a block by a domain entry, with the server's "
                     "address): the address, network and ASN signals could not fire. Blocks decided on the name "
                     "before any address is known (explicit proxy, CONNECT) carry none.")
    summary = {
        "files": list(files), "records": records, "lines": logs.lines, "malformed_lines": logs.bad,
        "first": first, "last": last,
        "since": since.isoformat() + "Z" if since else None, "until": until.isoformat() + "Z" if until else None,
        "ruleset": rs.version, "listed_domains": len(listed), "listed_servers": len(infra["address"]),
        "domains_seen": int(_scalar(con, "SELECT count(DISTINCT domain) FROM r")),
        "unlisted_domains_seen": len(rows), "candidates": len(candidates), "min_score": min_score,
        "weights": WEIGHTS, "made": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "seconds": round(time.monotonic() - started, 3),
    }
    return Discovery(candidates, summary, notes)


def _when(ts: str) -> str:
    """An ISO 8601 UTC time as the page shows it: "2026-11-20 08:37 UTC"."""
    return f"{ts[:10]} {ts[11:16]} UTC" if len(ts) >= 16 else ts


def _few(items: Sequence[str], shown: int = 3) -> str:
    return ", ".join(items[:shown]) + (f" and {len(items) - shown} more" if len(items) > shown else "")


def _scalar(con: duckdb.DuckDBPyConnection, sql: str) -> Any:
    return con.execute(sql).fetchall()[0][0]


# ---------------------------------------------------------------------------------------------- output

def to_json(found: Discovery) -> dict[str, Any]:
    """{"summary": {...}, "notes": [...], "candidates": [Candidate.to_json(), ...]} (best first)."""
    return {"summary": found.summary, "notes": found.notes, "candidates": [c.to_json() for c in found.candidates]}


def provenance(c: Candidate, date: str) -> str:
    """The `# discovered <date>: <signals>` comment of a candidate's list line (one line, no newline)."""
    said = "; ".join(f"{signal} ({c.evidence[signal][0]}{', ...' if len(c.evidence[signal]) > 1 else ''})"
                     for signal in SIGNALS if signal in c.signals)
    text = (f"# discovered {date}: {said}; score {c.score:g}; {c.clients} client(s), {c.connections} "
            f"connection(s), {c.records} record(s), {c.first[:10]}..{c.last[:10]}")
    return " ".join(text.split())  # never a line break from a value


def list_text(found: Discovery, date: str) -> str:
    """The candidates as a list file in the plain format (core/lists.py; `geoblock check` reads it once a
    rule names it): provenance header comments (`# source:`, `# retrieved:`, `# format: plain`), then per
    candidate, best first, its provenance comment and `domain  Platform` (the platform guessed)."""
    s = found.summary
    files = len(s["files"])
    lines = [f"# source: geoblock discover over {s['records']:,} decision record(s) in {files} file(s), "
             f"{s['first']} - {s['last']}, ruleset {s['ruleset']}: {len(found.candidates)} candidate(s)",
             f"# retrieved: {date}",
             "# format: plain",
             "# Candidates for review (docs/discover.md): check each before a block rule takes its names from it.",
             ""]
    for c in found.candidates:
        lines += [provenance(c, date), f"{c.domain}  {c.platform}", ""]
    return "\n".join(lines)


# one colour per signal in the chart (the infrastructure signals in shades of one colour)
SIGNAL_COLOURS = {"brand": "#c0392b", "address": "#1f4e79", "network": "#4a6fa5", "asn": "#8fb0d6",
                  "review": "#e6a23c"}
CHART_ROWS = 20  # candidates drawn in the chart (the table lists them all)


def _score_chart(candidates: Sequence[Candidate]) -> str:
    """The candidates' scores as horizontal bars, each split by the signals it counts (inline SVG drawn by
    matplotlib, as the report draws its charts), or "" without candidates."""
    if not candidates:
        return ""

    def draw(ax: Any) -> None:
        ys = list(range(len(candidates)))[::-1]
        left = [0.0] * len(candidates)
        for signal in ("brand", "address", "network", "asn", "review"):
            widths = [c.signals[signal] if signal in c.counted() else 0.0 for c in candidates]
            if any(widths):
                ax.barh(ys, widths, left=left, color=SIGNAL_COLOURS[signal], label=signal)
                left = [a + b for a, b in zip(left, widths, strict=True)]
        ax.set_yticks(ys, [c.domain if len(c.domain) <= 48 else c.domain[:47] + "…" for c in candidates])
        ax.set_xlabel("score (the signals it counts)")
        ax.legend(loc="lower right", frameon=False)
        ax.spines[["top", "right"]].set_visible(False)
    return report.svg_chart(draw, 0.8 + 0.28 * len(candidates))


def render_html(found: Discovery) -> str:
    """The candidates as one self-contained HTML page (no script, nothing fetched; every value escaped)."""
    s, e = found.summary, html.escape
    notes = "".join(f'<p class="note">{e(n)}</p>' for n in found.notes)
    rows = []
    nested = ' <span class="muted">(nested: not counted)</span>'
    for rank, c in enumerate(found.candidates, 1):
        counted = c.counted()
        signals = "".join(
            f"<li><b>{e(k)}</b> {'+' if k in counted else ''}{v:.2f}{'' if k in counted else nested}: "
            f"{e('; '.join(c.evidence.get(k, [])))}</li>" for k, v in c.signals.items())
        names = ", ".join(e(n) for n in c.names)
        if c.name_count > len(c.names):
            names += f' <span class="muted">(+{c.name_count - len(c.names)} more)</span>'
        cells = [
            f'<td class="n">{rank}</td>',
            f'<td><b>{e(c.domain)}</b><br><span class="muted">{names}</span></td>',
            f'<td class="n">{c.score:.2f}</td>',
            f'<td>{e(c.platform)} <span class="muted">({e(c.guessed_from)})</span></td>',
            f'<td class="signals"><ul>{signals}</ul></td>',
            f'<td class="n">{c.clients:,}</td><td class="n">{c.connections:,}</td><td class="n">{c.records:,}</td>',
            f'<td class="when">{e(_when(c.first))}<br>{e(_when(c.last))}</td>',
            f'<td>{e(", ".join(c.countries))}</td><td>{e(", ".join(f"AS{a}" for a in c.asns))}</td>',
        ]
        rows.append(f"<tr>{''.join(cells)}</tr>\n")
    head = "".join(f"<th>{h}</th>" for h in ("#", "registrable domain and names", "score", "platform guess",
                                             "signals", "clients", "connections", "records", "first / last seen",
                                             "countries", "ASNs"))
    table = (f'<table><thead><tr>{head}</tr></thead><tbody>\n{"".join(rows)}</tbody></table>' if rows
             else '<p class="muted">no candidate</p>')
    weights = ", ".join(f"{k} {v:g}" for k, v in WEIGHTS.items())
    chart = _score_chart(found.candidates[:CHART_ROWS])
    period = f"{s['first']} – {s['last']}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>geoblock discover {e(period)}</title><style>{report.CSS} td ul {{ margin: 0; padding-left: 1.1em; }}
td.signals {{ min-width: 26em; }} td.when {{ white-space: nowrap; }}
body {{ max-width: 80em; }}</style></head>
<body><h1>geoblock discover: platforms not listed yet</h1>
<dl><dt>period</dt><dd>{e(period)}</dd>
<dt>decisions</dt><dd>{s['records']:,} ({s['malformed_lines']:,} malformed line(s) skipped)</dd>
<dt>ruleset</dt><dd>{e(str(s['ruleset']))}: {s['listed_domains']:,} listed registrable domains,
{s['listed_servers']:,} of their server addresses seen</dd>
<dt>candidates</dt><dd>{s['candidates']:,} of {s['unlisted_domains_seen']:,} unlisted registrable domains
(score at least {s['min_score']:g})</dd>
<dt>made</dt><dd>{e(s['made'])} in {s['seconds']:.2f} s from {len(s['files'])} file(s)</dd></dl>
<p>Signals and their weights: {e(weights)}; address, network and ASN weights are divided by log2 of the
registrable domains each serves in the log. A candidate is evidence for review, not a verdict: see
docs/discover.md.</p>
{notes}
<section><h2>Candidates, best first</h2>{f"<figure>{chart}</figure>" if chart else ""}{table}</section>
</body></html>
"""


def main(args: argparse.Namespace) -> int:
    """`geoblock discover` (the module's docstring)."""
    started = time.monotonic()
    try:
        since = report.parse_time(args.since) if args.since else None
        until = report.parse_time(args.until) if args.until else None
    except ValueError as exc:
        print(f"{PROG}: --since/--until: {exc}", file=sys.stderr)
        return 2
    try:
        rs = Ruleset.load(args.rules)
    except RuleError as exc:
        print(f"{PROG}: rules refused: {exc}", file=sys.stderr)
        return 1

    def work() -> tuple[Discovery, list[str]]:
        files = report.log_files(args.logs)
        found = discover(files, rs, since, until, progress=None if args.quiet else sys.stderr,
                         min_score=args.min_score, min_clients=args.min_clients)
        written = []
        if args.output or not args.json:
            out = Path(args.output or "discover.html")
            out.write_text(render_html(found), encoding="utf-8")
            written.append(str(out))
        if args.list_out:
            Path(args.list_out).write_text(list_text(found, found.summary["made"][:10]), encoding="utf-8")
            written.append(args.list_out)
        return found, written

    done = report.reading_logs(PROG, work)
    if done is None:
        return 2
    found, written = done
    if args.json:
        print(json.dumps(to_json(found), indent=1, ensure_ascii=False))
    for note in found.notes:
        print(f"{PROG}: note: {note}", file=sys.stderr)
    print(f"{PROG}: {len(found.candidates)} candidate(s) from {found.summary['records']:,} records in "
          f"{time.monotonic() - started:.2f} s{' -> ' + ', '.join(written) if written else ''}", file=sys.stderr)
    return 0


def add_parser(sub: Any) -> None:
    """The `discover` subcommand on the `geoblock` parser's subparsers `sub`."""
    p = sub.add_parser("discover", help="platforms the decision logs point at that no block rule lists yet",
                       description="Candidate platforms not listed yet, from decision logs: names the review "
                                   "rules logged, names sharing listed platforms' servers, names carrying a "
                                   "listed brand; an HTML page, a list file for review, or JSON.")
    p.add_argument("logs", nargs="+", metavar="LOG",
                   help="decision log files (.jsonl, rotated .gz), directories or glob patterns")
    p.add_argument("--rules", help="the rules to judge what is listed (a file or directory; default: as check)")
    p.add_argument("-o", "--output", help="the HTML page to write (default: discover.html; with --json only "
                                          "when given)")
    p.add_argument("--list-out", metavar="FILE", help="also write the candidates as a list file for review")
    p.add_argument("--json", action="store_true", help="print the candidates as one JSON object on stdout")
    p.add_argument("--since", help="only records at or after this time (ISO 8601; UTC unless an offset is given)")
    p.add_argument("--until", help="only records before this time (ISO 8601)")
    p.add_argument("--min-clients", type=int, default=MIN_CLIENTS,
                   help=f"distinct clients blocked at a listed platform's server address before it counts as the "
                        f"platform's server (default {MIN_CLIENTS}: one client choosing a destination cannot "
                        "make it one)")
    p.add_argument("--min-score", type=float, default=MIN_SCORE,
                   help=f"leave out candidates scoring less (default {MIN_SCORE:g})")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr (the final line stays)")
    p.set_defaults(func=main)
