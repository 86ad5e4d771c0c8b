"""`geoblock discover` over decision logs of known content, run as an operator runs it (the installed
`geoblock` command, in a subprocess), its list file read back, and its HTML page rendered by a real
headless Chromium; and once over a log the addon itself wrote (the `gb` harness), so the fields it reads
are the real ones.

The built log holds listed platforms blocked at their servers (binance.com, okx.com, bitfinex.com on a
CDN address shared by twenty ordinary sites), mirrors of them that no rule lists (the same address, the
same /24 or /48, the brand in the name) and decoys: ordinary offshore sites, the CDN's other customers,
names the review rule logged (`bitcoin-news.example`, `definitions-daily.example`), and names that hold a
short or common brand by chance (`habit-tracker.example` holds `bit`, `krakenrum.example` holds `kraken`).
"""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from geoblock.core.lists import read_list
from geoblock.core.names import normalize_host
from geoblock.tools.discover import brand_kind, brand_matches, registrable
from support import browser
from support.record_schema import check

GEOBLOCK = Path(sys.executable).with_name("geoblock")
START = datetime(2026, 11, 20, 8, tzinfo=UTC)
BLOCK_RULE, LOG_RULE = "offshore-crypto-exchanges", "review-offshore-trading-names"
EVIL = "<b>KY</b>"  # a forged log's country: text on the page, never markup

# name -> (server address, country, ASN)
CDN = ("198.51.100.80", "US", 64700)
SERVERS: dict[str, tuple[str, str, int]] = {
    # listed platforms (blocked by their domain entries)
    "binance.com": ("203.0.113.10", "SG", 64600), "api.binance.com": ("203.0.113.10", "SG", 64600),
    "okx.com": ("192.0.2.20", "SC", 64610), "www.okx.com": ("192.0.2.20", "SC", 64610),
    "bitfinex.com": CDN,
    "bybit.com": ("2001:db8:40:1::10", "KY", 64620),
    # mirrors: unlisted
    "binancezh.shop": ("203.0.113.10", "SG", 64600),  # brand + same address
    "www.binancezh.shop": ("203.0.113.10", "SG", 64600),
    "bnbfast.top": ("203.0.113.10", "SG", 64600),  # same address only
    "okx-app.top": ("192.0.2.21", "SC", 64610),  # short brand as a token + same /24
    "binance-cn.example": ("198.18.0.7", "KY", 64630),  # brand only
    "m.bybit-pro.example": ("2001:db8:40:2::7", "KY", 64620),  # brand as a token + same /48
    "binance-promo.example": ("198.18.0.8", EVIL, 64631),  # brand only
    "<b>binance</b>.example": ("198.18.0.9", "KY", 64631),  # a forged name: no host name, never a candidate
    # decoys
    "tradecraft-blog.example": CDN,  # the CDN's customer, logged by the review rule
    "bitcoin-news.example": ("198.18.1.1", "DE", 64701),  # logged; holds bit (bit.com), bitcoin (bitcoin.de)
    "definitions-daily.example": ("198.18.1.2", "DE", 64701),  # logged (*defi*)
    "habit-tracker.example": ("198.18.1.3", "DE", 64702),  # holds bit
    "krakenrum.example": ("198.18.1.4", "DE", 64702),  # holds kraken, an ordinary word
    "binance.wikipedia.org": ("198.18.1.5", "US", 64703),  # the brand in a label anyone can put before a domain
    "pay.binance.com": ("203.0.113.11", "SG", 64600),  # listed (block rule) though an allow rule lets it pass
}
SERVERS |= {f"site{i:02d}.example": CDN for i in range(20)}  # ordinary sites on the CDN
LISTED = {"binance.com", "api.binance.com", "okx.com", "www.okx.com", "bitfinex.com", "bybit.com", "pay.binance.com"}
LOGGED = {"tradecraft-blog.example", "bitcoin-news.example", "definitions-daily.example"}
MIRRORS = ["binancezh.shop", "bnbfast.top", "okx-app.top", "binance-cn.example", "bybit-pro.example",
           "binance-promo.example"]
DECOYS = ["tradecraft-blog.example", "bitcoin-news.example", "definitions-daily.example", "habit-tracker.example",
          "krakenrum.example", "wikipedia.org"] + [f"site{i:02d}.example" for i in range(20)]


def record(at: datetime, name: str, client: str, conn: str, stage: str = "tls") -> dict[str, Any]:
    """A DecisionRecord as the proxy writes it for `name` at its server (SERVERS), judged by the shipped
    rules: listed names blocked by the block rule, LOGGED names logged by the review rule, others allowed."""
    ip, country, asn = SERVERS[name]
    if name in LISTED and name != "pay.binance.com":
        action, rule, reason = "block", BLOCK_RULE, f"{name} is listed in rule {BLOCK_RULE}: block"
    elif name in LOGGED:
        action, rule, reason = "log", LOG_RULE, f"{name} matches a name pattern of rule {LOG_RULE}; server offshore: log"
    elif name == "pay.binance.com":
        action, rule, reason = "allow", "exact-allow", f"{name} is listed in rule exact-allow: allow"
    else:
        action, rule, reason = "allow", None, f"{name}: no rule applies: allow"
    platform = {"binance": "Binance", "okx": "OKX", "bitfinex": "Bitfinex", "bybit": "Bybit"}.get(name.split(".")[-2])
    r: dict[str, Any] = {
        "ts": at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z", "stage": stage,
        "connection_id": conn, "client": client, "client_port": 40000, "sni": name if stage == "tls" else None,
        "host": name if stage != "tls" else None, "name": name, "server_ip": ip, "server_port": 443,
        "country": country, "country_source": "geoip", "asn": asn, "offshore": True, "action": action,
        "enforced": True, "rule": rule, "reason": reason, "platform": platform if action == "block" else None,
        "ruleset": "0123456789ab", "geoip_build": "2026-11-17", "asn_build": "2026-11-17", "observer_hostname": "gw1",
    }
    if action == "block":  # an entry of the shipped list file decided
        r |= {"list": "exchanges.txt", "list_version": "5f0c3a9e1b2d"}
    return r


# name -> [(client, connections)]: who visited what
VISITS: dict[str, list[tuple[str, int]]] = {
    "binance.com": [("10.0.0.2", 3), ("10.0.0.3", 2)], "api.binance.com": [("10.0.0.2", 1)],
    "okx.com": [("10.0.0.4", 2), ("10.0.0.10", 1)], "www.okx.com": [("10.0.0.4", 1)],
    "bitfinex.com": [("10.0.0.5", 1), ("10.0.0.11", 1)], "bybit.com": [("10.0.0.6", 1), ("10.0.0.12", 1)],
    "pay.binance.com": [("10.0.0.2", 1)],
    "binancezh.shop": [("10.0.0.2", 2), ("10.0.0.7", 1)], "www.binancezh.shop": [("10.0.0.7", 1)],
    "bnbfast.top": [("10.0.0.3", 1)], "okx-app.top": [("10.0.0.4", 1)], "binance-cn.example": [("10.0.0.8", 1)],
    "m.bybit-pro.example": [("10.0.0.6", 1)],
    "binance-promo.example": [("10.0.0.9", 1)], "<b>binance</b>.example": [("10.0.0.9", 1)],
    "tradecraft-blog.example": [(f"10.0.1.{i}", 2) for i in range(2, 12)],  # popular decoys: many clients
    "bitcoin-news.example": [(f"10.0.1.{i}", 3) for i in range(2, 30)],
    "definitions-daily.example": [(f"10.0.1.{i}", 1) for i in range(2, 9)],
    "habit-tracker.example": [("10.0.1.2", 1)], "krakenrum.example": [("10.0.1.3", 1)],
    "binance.wikipedia.org": [("10.0.1.4", 1)],  # one request forged to get wikipedia.org proposed
} | {f"site{i:02d}.example": [(f"10.0.2.{i + 2}", 2)] for i in range(20)}


def build_log() -> list[dict[str, Any]]:
    """The records of VISITS over two days: each connection a connect and a tls record (one for blocked
    ones, which end at the first), in time order."""
    records = []
    n = 0
    for name, visits in VISITS.items():
        for client, conns in visits:
            for _ in range(conns):
                n += 1
                at = START + timedelta(minutes=37 * n)
                conn = f"c-{n:05d}"
                stages = ("tls",) if name in LISTED and name != "pay.binance.com" else ("connect", "tls")
                records += [record(at + timedelta(milliseconds=5 * i), name, client, conn, s)
                            for i, s in enumerate(stages)]
    return sorted(records, key=lambda r: r["ts"])


def run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(GEOBLOCK), "discover", *map(str, args)], capture_output=True, text=True, timeout=120,
                          cwd=cwd)


@pytest.fixture(scope="module")
def made(tmp_path_factory, rules_dir) -> tuple[Path, list[dict[str, Any]], dict[str, Any], Path, Path]:
    """(log file, its records, the JSON discover printed, the list file, the HTML page), every candidate
    kept (--min-score 0)."""
    d = tmp_path_factory.mktemp("discover")
    records = build_log()
    check(records)
    log = d / "decisions.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in records))
    done = run(log, "--rules", rules_dir, "--json", "-o", d / "discover.html", "--list-out", d / "candidates.txt",
               "--min-score", "0")
    assert done.returncode == 0, done.stderr
    return log, records, json.loads(done.stdout), d / "candidates.txt", d / "discover.html"


def test_mirrors_rank_above_every_decoy(made) -> None:
    _, _, found, _, _ = made
    ranked = [c["domain"] for c in found["candidates"]]
    assert set(MIRRORS) <= set(ranked), ranked
    scores = {c["domain"]: c["score"] for c in found["candidates"]}
    lowest_mirror = min(scores[m] for m in MIRRORS)
    beaten = [(d, scores[d]) for d in DECOYS if d in scores and scores[d] >= lowest_mirror]
    assert beaten == [], (lowest_mirror, scores)
    assert ranked[: len(MIRRORS)] == sorted(MIRRORS, key=lambda m: ranked.index(m))
    # names that hold a short or common brand by chance fire nothing
    assert "habit-tracker.example" not in scores and "krakenrum.example" not in scores
    # nor does a brand in a subdomain label: the candidate is the registrable domain, judged on its own label
    assert "wikipedia.org" not in scores


def test_listed_names_are_never_candidates(made) -> None:
    _, _, found, _, _ = made
    names = {n for c in found["candidates"] for n in c["names"]}
    assert not names & LISTED  # pay.binance.com too: the block rule covers it, an allow rule lifts it
    assert not {c["domain"] for c in found["candidates"]} & {"binance.com", "okx.com", "bitfinex.com", "bybit.com"}


def test_each_signal_says_why(made) -> None:
    _, _, found, _, _ = made
    c = {c["domain"]: c for c in found["candidates"]}
    assert set(c["binancezh.shop"]["signals"]) == {"address", "network", "asn", "brand"}
    assert c["binancezh.shop"]["evidence"]["brand"][0].startswith("carries the brand binance of binance.com, ")
    assert c["binancezh.shop"]["evidence"]["address"][0].startswith("203.0.113.10 also served binance.com")
    assert c["binancezh.shop"]["platform"] in ("Binance",) and c["binancezh.shop"]["guessed_from"] == "brand"
    assert set(c["bnbfast.top"]["signals"]) == {"address", "network", "asn"}
    assert c["bnbfast.top"]["platform"] == "Binance" and c["bnbfast.top"]["guessed_from"] == "servers"
    assert set(c["okx-app.top"]["signals"]) == {"network", "asn", "brand"}  # 192.0.2.21 in okx.com's /24
    assert "192.0.2.0/24 also served okx.com" in c["okx-app.top"]["evidence"]["network"][0]
    assert c["okx-app.top"]["platform"] == "OKX"  # the platform the list file names for okx.com
    assert set(c["bybit-pro.example"]["signals"]) == {"network", "asn", "brand"}  # the /48 of bybit.com
    assert "2001:db8:40::/48" in c["bybit-pro.example"]["evidence"]["network"][0]
    assert set(c["binance-cn.example"]["signals"]) == {"brand"}
    assert set(c["bitcoin-news.example"]["signals"]) == {"review"}  # neither bit (bit.com) nor bitcoin (bitcoin.de)
    assert c["bitcoin-news.example"]["evidence"]["review"] == [f"logged offshore by rule {LOG_RULE}"]
    # the CDN's customers: one shared address among 22 domains counts 3/log2(22)
    cdn = c["site00.example"]
    assert set(cdn["signals"]) == {"address", "network", "asn"} and cdn["score"] == pytest.approx(0.67, abs=0.01)
    assert "(22 registrable domains there)" in cdn["evidence"]["address"][0]


def test_counts_are_the_logs(made) -> None:
    _, records, found, _, _ = made
    c = next(c for c in found["candidates"] if c["domain"] == "binancezh.shop")
    mine = [r for r in records if r["name"] in ("binancezh.shop", "www.binancezh.shop")]
    assert c["records"] == len(mine) == 8
    assert c["clients"] == len({r["client"] for r in mine}) == 2
    assert c["connections"] == len({r["connection_id"] for r in mine}) == 4
    assert (c["first"], c["last"]) == (min(r["ts"] for r in mine), max(r["ts"] for r in mine))
    assert (c["countries"], c["asns"], c["offshore_records"]) == (["SG"], [64600], 8)
    assert c["names"] == ["binancezh.shop", "www.binancezh.shop"] and c["name_count"] == 2
    assert found["summary"]["records"] == len(records)


def test_default_min_score_leaves_out_the_cdn_customers(made, rules_dir, tmp_path) -> None:
    log = made[0]
    done = run(log, "--rules", rules_dir, "--json", "-q", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    domains = [c["domain"] for c in json.loads(done.stdout)["candidates"]]
    assert not [d for d in domains if d.startswith("site")]
    assert set(MIRRORS) <= set(domains) and "bitcoin-news.example" in domains
    assert not (tmp_path / "discover.html").exists()  # --json alone writes no page


def test_the_list_file_is_ready_for_review(made) -> None:
    _, _, found, listed, _ = made
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    lines = listed.read_text().splitlines()
    entries = [(i, line) for i, line in enumerate(lines) if line and not line.startswith("#")]
    assert [line.split()[0] for _, line in entries] == [c["domain"] for c in found["candidates"]]
    for i, line in entries:
        name, platform = line.split(None, 1)
        assert normalize_host(name) == name and platform.strip()
        comment = lines[i - 1]
        assert comment.startswith(f"# discovered {today}: ") and "score " in comment
    # the list format geoblock reads (strict: a bad entry would raise naming file:line)
    read = read_list(listed)
    assert [(e.name, e.platform) for e in read.entries] == [(c["domain"], c["platform"]) for c in found["candidates"]]
    assert read.format == "plain" and read.retrieved == today and read.source.startswith("geoblock discover over ")
    i, line = next((i, line) for i, line in entries if line.startswith("binancezh.shop "))
    assert line == "binancezh.shop  Binance"
    assert "brand (carries the brand binance of binance.com, " in lines[i - 1]
    assert "address (203.0.113.10 also served binance.com" in lines[i - 1]


def test_the_page_holds_the_candidates_escaped(made) -> None:
    _, _, found, _, page = made
    text = page.read_text()
    assert "&lt;b&gt;KY&lt;/b&gt;" in text and "<b>KY</b>" not in text and "binance</b>.example" not in text
    order = [text.index(f"<b>{c['domain']}</b>") for c in found["candidates"][:8]]
    assert order == sorted(order)
    assert text.count("<svg") == 1  # the scores chart, inline
    assert "Content-Security-Policy" in text and "src=" not in text and "<script" not in text
    assert "href=" not in text.replace('xlink:href="#', "")  # only the SVG's own glyph references


@pytest.mark.browser
def test_the_page_renders_in_chromium_offline(made, tmp_path) -> None:
    if browser.CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run does it as root)")
    page = made[4]
    listener = browser.Listener()
    try:
        shown = browser.visit(page.as_uri(), f"http://127.0.0.1:{listener.port}", tmp_path / "chromium",
                              extra=["--enable-logging=stderr", "--v=0", "--window-size=1200,3000"])
    finally:
        listener.close()
    assert shown.returncode == 0, shown.problems
    assert [line for line in shown.log.splitlines() if "CONSOLE" in line] == []
    assert browser.page_requests(listener.requests) == []
    assert shown.title.startswith("geoblock discover")
    assert shown.dom.count("<svg") == 1 and shown.dom.count("<path") > 20  # the chart drawn: bars, ticks, axes
    assert "binancezh.shop" in shown.dom and "&lt;b&gt;KY&lt;/b&gt;" in shown.dom
    assert "<b>KY</b>" not in shown.dom  # escaped: the DOM holds no such element
    (tmp_path / "discover.png").write_bytes(shown.png)
    assert browser.png_pixels(shown.png)[:2] == (1200, 3000)
    assert browser.dark_pixels(shown.png) > 3000  # the table drawn, not a blank page


def test_bad_input_is_named(tmp_path, rules_dir) -> None:
    done = run(tmp_path / "nope.jsonl", "--rules", rules_dir)
    assert done.returncode == 2 and "nope.jsonl: no such log file" in done.stderr
    log = tmp_path / "d.jsonl"
    log.write_text(json.dumps(build_log()[0]) + "\n")
    done = run(log, "--rules", rules_dir, "--since", "2030-01-01")
    assert done.returncode == 2 and "no decision record between 2030-01-01" in done.stderr
    bad_rules = tmp_path / "bad.yaml"
    bad_rules.write_text("rules:\n  - id: x\n    action: blok\n")
    done = run(log, "--rules", bad_rules)
    assert done.returncode == 1 and f"{bad_rules}:3" in done.stderr


def _tls_flow(gb, sni: str, server: str) -> None:
    """One TLS connection to `server`:443 with SNI `sni` through the addon in transparent mode (mitmproxy's
    own layers and test connections, real ClientHello bytes): its layer choice, then its ClientHello."""
    import asyncio

    from mitmproxy.proxy import context, events, layer
    from mitmproxy.proxy.layers import modes, tls
    from mitmproxy.test import tflow

    from geoblock.mitm import enforce
    from support.tls_bytes import client_hello

    def run_hook(coro) -> None:
        if coro is not None:
            asyncio.run(coro)

    client = tflow.tclient_conn()
    client.peername = ("127.0.0.1", 50000)
    ctx = context.Context(client, gb.tctx.options)
    ctx.server.address = (server, 443)
    modes.TransparentProxy(ctx)
    nl = layer.NextLayer(ctx)
    nl.events.append(events.DataReceived(client, client_hello(sni)))
    run_hook(gb.next_layer(nl))
    if not isinstance(nl.layer, enforce.DenyTLS):  # not refused at once: its ClientHello is judged
        run_hook(gb.tls_clienthello(tls.ClientHelloData(nl.context, tls.parse_client_hello(client_hello(sni)))))


def test_a_log_the_addon_wrote(gb, rules_dir, tmp_path) -> None:
    """The addon's own records (the gb harness; test databases: 127.0.0.1 CN home AS64500, 127.0.0.2 SG
    AS64501, ::1 CN AS64500): a blocked listed platform, a mirror on its address carrying its brand, a name the review
    rule logs there, and an ordinary site at home."""
    from support.harness import logged

    for sni, server in [("binance.com", "127.0.0.2"), ("www.binance.com", "127.0.0.2"),
                        ("binanceglobal.example", "127.0.0.2"), ("coinswap.example", "127.0.0.2"),
                        ("ordinary.example", "::1")]:
        _tls_flow(gb, sni, server)
    records = logged(gb)
    check(records)
    by_name = {r["name"]: r for r in records}
    assert by_name["binance.com"]["action"] == "block" and by_name["binance.com"]["server_ip"] == "127.0.0.2"
    assert by_name["coinswap.example"]["action"] == "log" and by_name["ordinary.example"]["action"] == "allow"
    # one client here (the harness's): let one client's blocks make a server a listed platform's
    done = run(gb.log_path, "--rules", rules_dir, "--json", "--min-score", "0", "--min-clients", "1", "-q")
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    ranked = [c["domain"] for c in found["candidates"]]
    assert ranked == ["binanceglobal.example", "coinswap.example"], found
    mirror, logged_name = found["candidates"]
    assert set(mirror["signals"]) == {"address", "network", "asn", "brand"} and mirror["platform"] == "Binance"
    assert mirror["evidence"]["address"][0].startswith("127.0.0.2 also served binance.com")
    assert (mirror["countries"], mirror["asns"], mirror["clients"]) == (["SG"], [64501], 1)
    assert set(logged_name["signals"]) == {"review", "address", "network", "asn"}
    assert found["summary"]["listed_servers"] == 1


def test_since_and_until_keep_the_period(made, rules_dir) -> None:
    log, records, _, _, _ = made
    done = run(log, "--rules", rules_dir, "--json", "-q", "--min-score", "0", "--since", "2026-11-21T00:00Z",
               "--until", "2026-11-23")
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    kept = [r for r in records if "2026-11-21" <= r["ts"] < "2026-11-23"]
    assert found["summary"]["records"] == len(kept)
    domains = {c["domain"] for c in found["candidates"]}
    assert "bitcoin-news.example" in domains and "binancezh.shop" not in domains  # seen on the 20th only
    c = next(c for c in found["candidates"] if c["domain"] == "bitcoin-news.example")
    assert c["records"] == sum(1 for r in kept if r["name"] == "bitcoin-news.example")
    assert "2026-11-21" <= c["first"] <= c["last"] < "2026-11-23"


def test_a_log_without_connection_ids_counts_records_and_says_so(tmp_path, rules_dir) -> None:
    records = [{**r, "connection_id": None} for r in build_log()]
    check(records)
    log = tmp_path / "d.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in records))
    done = run(log, "--rules", rules_dir, "--json")
    assert done.returncode == 0, done.stderr
    assert "note: The log has no connection ids" in done.stderr
    c = next(c for c in json.loads(done.stdout)["candidates"] if c["domain"] == "binancezh.shop")
    assert c["connections"] == c["records"] == 8


def test_a_damaged_gzip_log_is_named_with_what_is_wrong(tmp_path, rules_dir) -> None:
    whole = gzip.compress("".join(json.dumps(r) + "\n" for r in build_log()).encode())
    cut = tmp_path / "decisions.jsonl.2.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    done = run(cut, "--rules", rules_dir, "--json", "--min-score", "0")
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert f"geoblock discover: {cut}" not in lines  # no bare name: the line says what is wrong with the file
    said = [line for line in lines if line.startswith(f"geoblock discover: {cut}: ")]
    assert len(said) == 1 and re.fullmatch(
        rf"geoblock discover: {re.escape(str(cut))}: compressed data cut short or damaged: reading the "
        r"[\d.,]+ (bytes|kB|MB) of text before the damage", said[0]), lines
    assert f"geoblock discover: note: {cut} ends early (compressed data cut short or damaged)" in done.stderr


@pytest.mark.parametrize(("brand", "kind"), [
    ("binance", "anywhere"), ("bitfinex", "anywhere"), ("swanbitcoin", "anywhere"), ("bitkub", "anywhere"),
    ("okx", "token"), ("gate", "token"), ("bit", "token"), ("bybit", "token"), ("coinw", "token"), ("bitso", "token"),
    ("bitcoin", "label"), ("crypto", "label"), ("kraken", "label"), ("gemini", "label"),
    ("xt", None), ("zb", None),
])
def test_how_each_brand_may_match(brand, kind) -> None:
    assert brand_kind(brand) == kind


@pytest.mark.parametrize(("brand", "name", "carried"), [
    ("binance", "binancezh.shop", True),
    ("binance", "www.my-binance.example", True),
    ("binance", "binance.example.co.uk", False),  # only in a subdomain label: judged on example.co.uk
    ("binance", "binance.wikipedia.org", False),
    ("binance", "www.binance-login.github.io", True),  # github.io is a public suffix: binance-login is its own
    ("okx", "okx-app.top", True),
    ("okx", "okx.app-store.top", False),
    ("okx", "okxapp.top", False),  # 3 letters: a whole token only
    ("bit", "habit-tracker.example", False),
    ("bit", "bitcoin-news.example", False),
    ("bitcoin", "bitcoin-news.example", False),  # an ordinary word...
    ("bitcoin", "www.bitcoin.top", True),  # ... only as the whole registrable label
    ("kraken", "krakenrum.example", False),
    ("bybit", "bybitglobal.example", False),  # by + bit: a token only
    ("bybit", "m.bybit-pro.example", True),
    ("exchange", "binance.exchange", False),  # never in the public suffix
])
def test_brands_in_names(brand, name, carried) -> None:
    domain = registrable(name)
    assert domain is not None
    assert brand_matches(brand, domain) is carried


@pytest.mark.parametrize(("name", "domain"), [
    ("api.binance.com", "binance.com"), ("a.user.github.io", "user.github.io"), ("www.bitpoint.co.jp", "bitpoint.co.jp"),
    ("co.uk", None), ("203.0.113.7", None), ("localhost", None), ("<b>x</b>.example", None), ("x..example", None),
    ("xn--bcher-kva.example", "xn--bcher-kva.example"),
])
def test_registrable_domains(name, domain) -> None:
    assert registrable(name) == domain


def test_one_client_cannot_make_an_address_a_listed_platforms_server(tmp_path, rules_dir) -> None:
    """Found in review: on a transparent gateway `server_ip` is the destination the client chose, so one
    client sending binance.com's SNI to a Wikipedia address made wikipedia.org a candidate (score 3)."""
    at = START
    forged = record(at, "binance.com", "10.0.0.66", "c-1") | {"server_ip": "198.35.26.96", "asn": 14907}
    visits = [record(at + timedelta(minutes=i + 1), "site00.example", f"10.0.3.{i}", f"c-{i + 2}")
              | {"name": "en.wikipedia.org", "sni": "en.wikipedia.org", "server_ip": "198.35.26.96", "asn": 14907}
              for i in range(5)]
    log = tmp_path / "d.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in [forged, *visits]))
    done = run(log, "--rules", rules_dir, "--json", "-q")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["candidates"] == []
    done = run(log, "--rules", rules_dir, "--json", "-q", "--min-clients", "1")  # what it did before
    assert [c["domain"] for c in json.loads(done.stdout)["candidates"]] == ["wikipedia.org"]
