"""Decision logs of known content, for the report's tests and its benchmark (scripts/bench_report.py).

`generate(n, seed)` makes `n` decision records (geoblock.record.DecisionRecord, "ts" first) spread over
`days` days from `START`: client connections of 1 to 3 records each (connect, tls, http), sharing one
`connection_id`; blocked, logged and allowed names; offshore servers in a few countries and ASNs;
`unknown_country` verdicts (country unknown, the reason says so), `on_error` verdicts (an `error`
field), `lost_before` on some records, and a ruleset and database change half-way through. `Expected`
holds what a report of those records must say, counted here in plain Python, independently of the
report's SQL.

`write_jsonl(path, records, gzip_it=False, bad_lines=())` writes them as the proxy does (one line each),
with malformed lines slipped in after the given record indexes.
"""

from __future__ import annotations

import gzip
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

START = datetime(2026, 11, 20, tzinfo=UTC)

CLIENTS = [f"10.0.{i // 10}.{i % 10 + 2}" for i in range(40)]
BLOCKED = ["binance.com", "api.binance.com", "okx.com", "www.okx.com", "bitfinex.com", "kucoin.com", "bybit.com"]
PLATFORMS = {"binance.com": "Binance", "api.binance.com": "Binance", "okx.com": "OKX", "www.okx.com": "OKX",
             "bitfinex.com": "Bitfinex", "kucoin.com": "KuCoin", "bybit.com": "Bybit"}
LOGGED = ["coinswap.example", "tradefast.example", "cryptodesk.example"]
ALLOWED = ["example.org", "news.example", "bank.example", "mail.example", "shop.example", "video.example"]
# country, ASN, offshore
SERVERS = [("SG", 64501, True), ("KY", 64502, True), ("SC", 64503, True), ("SG", 64504, True),
           ("KZ", 64510, False), ("KZ", 64511, False), ("DE", 64520, True)]
BLOCK_RULE = "offshore-crypto-exchanges"
LOG_RULE = "review-offshore-trading-names"
VERSIONS = [("a126de6f218b", "2026-11-17", "2026-11-17"), ("9c73fd455c5c", "2026-11-24", "2026-11-24")]
BAD_LINES = [b'{"ts":"2026-11-21T00:00:00.000Z","stage":"tls"', b"not json at all", b'{"ts": 12, "asn": [1]}',
             b"\x00\x01\x02 binary", b"[1, 2, 3]"]


@dataclass
class Expected:
    """What a report of the generated records must say. Counters over the records (not the bad lines)."""

    records: int = 0
    clients: set[str] = field(default_factory=set)
    by_action: Counter[str] = field(default_factory=Counter)
    by_day_action: Counter[tuple[str, str]] = field(default_factory=Counter)  # ("2026-11-20", "block")
    by_rule: Counter[str] = field(default_factory=Counter)  # every record with a rule
    blocked_names: Counter[str] = field(default_factory=Counter)
    platform_connections: dict[str, set[str]] = field(default_factory=dict)  # blocked, by platform
    client_blocked_connections: dict[str, set[str]] = field(default_factory=dict)
    client_blocked_records: Counter[str] = field(default_factory=Counter)
    offshore_countries: Counter[str] = field(default_factory=Counter)  # offshore records by country
    offshore_asns: Counter[int] = field(default_factory=Counter)
    unknown_country: int = 0
    on_error: int = 0
    on_error_causes: Counter[str] = field(default_factory=Counter)
    lost: int = 0
    lost_gaps: int = 0
    versions: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    first_ts: str = ""
    last_ts: str = ""

    def add(self, r: dict[str, Any]) -> None:
        self.records += 1
        self.clients.add(r["client"])
        action = r["action"]
        self.by_action[action] += 1
        self.by_day_action[(r["ts"][:10], action)] += 1
        if r["rule"] is not None:
            self.by_rule[r["rule"]] += 1
        if action == "block":
            if r["name"] is not None:
                self.blocked_names[r["name"]] += 1
            self.client_blocked_connections.setdefault(r["client"], set()).add(r.get("connection_id", ""))
            self.client_blocked_records[r["client"]] += 1
            if r.get("platform"):
                self.platform_connections.setdefault(r["platform"], set()).add(r.get("connection_id", ""))
        if r["offshore"] is True:
            self.offshore_countries[r["country"]] += 1
            self.offshore_asns[r["asn"]] += 1
        if "unknown_country" in r["reason"]:
            self.unknown_country += 1
        if "error" in r:
            self.on_error += 1
            self.on_error_causes[r["error"]] += 1
        if "lost_before" in r:
            self.lost += r["lost_before"]
            self.lost_gaps += 1
        self.versions[(r["ruleset"], r["geoip_build"], r["asn_build"])] += 1
        self.first_ts = min(self.first_ts or r["ts"], r["ts"])
        self.last_ts = max(self.last_ts, r["ts"])


def _ts(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def generate(n: int, seed: int = 13, days: int = 5, connection_ids: bool = True,
             start: datetime = START) -> tuple[list[dict[str, Any]], Expected]:
    """`n` decision records over `days` days from `start` (in time order) and what a report of them must
    say. `connection_ids=False` leaves the `connection_id` field out (logs written before it existed)."""
    rng = random.Random(seed)
    expected = Expected()
    records: list[dict[str, Any]] = []
    span = timedelta(days=days).total_seconds()
    conn = 0
    while len(records) < n:
        conn += 1
        at = start + timedelta(seconds=span * len(records) / n + rng.random())
        version = VERSIONS[0] if len(records) < n // 2 else VERSIONS[1]
        client = CLIENTS[min(int(rng.expovariate(0.15)), len(CLIENTS) - 1)]  # a few clients do most
        stages = rng.choice([("connect",), ("connect", "tls"), ("tls",), ("connect", "tls", "http"), ("http",)])
        kind = rng.random()
        country, asn, offshore = rng.choice(SERVERS)
        extra: dict[str, Any] = {}
        ends = True  # a blocked connection ends at its first blocked stage, unless intercepted (below)
        server_ip: str | None = f"198.51.100.{asn % 250}"
        if kind < 0.3:
            name = rng.choice(BLOCKED)
            action, rule, reason = "block", BLOCK_RULE, f"{name} is listed in rule {BLOCK_RULE}: block"
            if rng.random() < 0.4:  # geoblock_intercept: the blocked tunnel's requests are records too
                stages, ends = ("connect", "http", "http"), False
        elif kind < 0.38:
            name = rng.choice(LOGGED)
            action, rule = "log", LOG_RULE
            if rng.random() < 0.5:
                country, asn, offshore = None, None, None
                reason = (f"{name} matches a name pattern of rule {LOG_RULE}; the rule needs the server's country, "
                          "which is unknown, so unknown_country (log) applies: log")
            else:
                reason = f"{name} matches a name pattern of rule {LOG_RULE}; server offshore: log"
        elif kind < 0.41:
            name = rng.choice(ALLOWED)
            action, rule = "block", None
            cause = rng.choice(["invalid-input", "incomplete-first-bytes", "ValueError: bad"])
            reason, extra["error"] = f"geoblock could not judge this flow ({cause}); on_error is block", cause
        else:
            name = rng.choice(ALLOWED)
            action, rule, reason = "allow", None, f"{name}: no rule applies: allow"
        for i, stage in enumerate(stages):
            t = at + timedelta(milliseconds=3 * i)
            record: dict[str, Any] = {
                "ts": _ts(t), "stage": stage, "client": client, "sni": name if stage == "tls" else None,
                "host": name if stage != "tls" else None, "name": name, "server_ip": server_ip,
                "country": country, "country_source": "geoip" if country else None, "asn": asn,
                "offshore": offshore, "action": action, "enforced": True, "rule": rule, "reason": reason,
                "platform": PLATFORMS.get(name) if rule == BLOCK_RULE else None,
                "ruleset": version[0], "geoip_build": version[1], "asn_build": version[2],
            }
            if connection_ids:
                record["connection_id"] = f"c{seed}-{conn:08d}"
            record.update(extra)
            if rng.random() < 0.004:
                record["lost_before"] = rng.randint(1, 9)
            records.append(record)
            expected.add(record)
            if len(records) == n or (action == "block" and ends):
                break
    return records, expected


def write_jsonl(path: Path, records: Sequence[dict[str, Any]] | Iterable[dict[str, Any]], gzip_it: bool = False,
                bad_lines: Iterable[int] = ()) -> int:
    """Write `records` to `path` as JSON lines (gzip-compressed with `gzip_it`), with one malformed line
    (from BAD_LINES, in turn) after each record index in `bad_lines`. Returns how many bad lines went in."""
    bad = set(bad_lines)
    out = bytearray()
    written = 0
    for i, record in enumerate(records):
        out += orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
        if i in bad:
            out += BAD_LINES[written % len(BAD_LINES)] + b"\n"
            written += 1
    path.write_bytes(gzip.compress(bytes(out), compresslevel=5) if gzip_it else bytes(out))
    return written
