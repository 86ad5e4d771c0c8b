"""Faults with a running mitmdump: each leaves the proxy serving, with verdicts that follow the policy,
the problem reported once, no decision record lost without saying so, and recovery once it is fixed.

Every end-to-end test runs a real mitmdump with geoblock, real clients (curl, Python sockets) and local
servers placed in countries by a real test GeoIP database (127.0.0.1 CN = home, 127.0.0.2 SG = offshore).
The last section injects a failure into every hook stage (mitmproxy's test helpers) and checks the
guard: on_error applies, and the error is logged once for many flows.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from support.faults import (DnsStub, RefusingPort, ResettingServer, Tmpfs, private_mounts_unavailable,
                            with_resolv_conf)
from support.decisions import read
from support.geodb import PLACES, write_asn_db, write_country_db
from support.proc import Mitmdump, geoblock_options
from support.rdap_server import RdapServer, country, hang
from support.tls_bytes import client_hello
from support.waiting import wait_for
from support.servers import TestServer

POLICY = "home_countries: [CN]\ndefault: allow\nunknown_country: block\non_error: block\n"
CRYPTO = "rules:\n  - {id: crypto, action: block, domains: [binance.com]}\n"
OFFSHORE = "rules:\n  - {id: offshore, action: block, domains: [offshore-only.test], offshore: true}\n"
INTERVAL = "0.2"  # geoblock_reload_interval: recovery is expected within a few of these
RECOVERY = 15.0  # seconds a recovery may take on a loaded machine (many reload intervals)


# --- set-up ------------------------------------------------------------------------------------------

def write_rules(d: Path, extra: str = "") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "policy.yaml").write_text(POLICY)
    (d / "crypto.yaml").write_text(CRYPTO + extra)
    (d / "offshore.yaml").write_text(OFFSHORE)
    return d


class Proxy:
    """A mitmdump with geoblock on rules, databases and a decision log under `tmp`."""

    def __init__(self, tmp: Path, country_db: Path | None = None, log: Path | None = None,
                 extra_args: list[str] | None = None, **options: object) -> None:
        self.tmp = tmp
        self.rules = write_rules(tmp / "rules")
        self.geo = tmp / "geo"
        self.geo.mkdir(exist_ok=True)
        self.country_db = country_db or self.geo / "GeoLite2-Country.mmdb"
        if country_db is None:
            write_country_db(self.country_db)
        write_asn_db(self.geo / "GeoLite2-ASN.mmdb")
        self.log = log or tmp / "decisions.jsonl"
        self.m = Mitmdump(tmp / "conf", {
            "geoblock_rules": self.rules,
            "geoblock_country_db": self.country_db,
            "geoblock_asn_db": self.geo / "GeoLite2-ASN.mmdb",
            "geoblock_log": self.log,
            "geoblock_reload_interval": INTERVAL,
            **options,
        }, extra_args=extra_args)

    def __enter__(self) -> "Proxy":
        self.m.start(timeout=60)
        return self

    def __exit__(self, *exc: object) -> None:
        self.m.stop()

    @property
    def url(self) -> str:
        return self.m.url

    def output(self) -> str:
        return self.m.output()

    def count(self, text: str) -> int:
        """How many times `text` appears in mitmdump's own log."""
        return self.output().count(text)

    def serving(self) -> bool:
        return self.m.proc is not None and self.m.proc.poll() is None

    def http(self, server, host: str | None = None, url: str | None = None) -> tuple[int, float]:
        """(status, seconds) of a GET through the proxy; 0 when curl got no HTTP answer."""
        url = url or f"http://{server.host}:{server.port}/"
        args = ["-H", f"Host: {host}"] if host else []
        started = time.monotonic()
        r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "20",
                            "-x", self.url, *args, url], capture_output=True, text=True, timeout=40)
        return int(r.stdout or 0), time.monotonic() - started

    def status(self, server, host: str | None = None, url: str | None = None) -> int:
        return self.http(server, host, url)[0]

    def records(self, path: Path | None = None) -> list[dict]:
        try:
            return read(path or self.log)  # every line must be a whole record
        except IsADirectoryError:
            return []

    def last(self, **match) -> dict:
        found = [r for r in self.records() if all(r.get(k) == v for k, v in match.items())]
        assert found, f"no decision record with {match}"
        return found[-1]


def replace(path: Path, data: bytes) -> None:
    """Replace a file whole (write aside, then rename), as an operator or updater would."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def still_serving(p: Proxy, web) -> None:
    """What an operator checks first: an allowed request gets 200, a blocked name still gets 451."""
    assert p.status(web["cn"], "allowed.test") == 200
    assert p.status(web["cn"], "binance.com") == 451
    assert p.serving()


# --- GeoIP database --------------------------------------------------------------------------------

@pytest.mark.parametrize("fault", ["deleted", "truncated", "garbage", "an ASN database"])
def test_geoip_database_fault_keeps_the_last_good_one_and_a_restored_one_applies(tmp_path, web, fault):
    with Proxy(tmp_path) as p:
        db = p.country_db
        good = db.read_bytes()
        assert p.status(web["sg"], "offshore-only.test") == 451 and p.last()["country"] == "SG"
        # each fault is one change on disk (one syscall), so it is seen and reported exactly once
        if fault == "deleted":
            db.unlink()
        elif fault == "truncated":
            os.truncate(db, len(good) // 3)  # in place, under the running proxy
        elif fault == "garbage":
            replace(db, os.urandom(len(good)))
        else:  # the wrong file installed under the country database's name
            replace(db, write_asn_db(tmp_path / "asn.mmdb").read_bytes())
        wait_for(lambda: p.count("database change refused") >= 1, RECOVERY, "the refusal")
        if fault == "an ASN database":  # geoip2 reads the type: the message names the file and both types
            assert p.count(f"{db}: expected a Country or City database (GeoLite2-Country, GeoLite2-City, "
                           "GeoIP2-Country, GeoIP2-City, DB-IP's Country or City Lite), found a GeoLite2-ASN "
                           "database") == 1, p.output()
        time.sleep(float(INTERVAL) * 5)  # several checks of an unchanged broken file
        assert p.count("database change refused") == 1  # once, not at every check
        assert p.count("keeping the last good database") == 1
        # the last good database still places servers: country rules follow the policy, not unknown_country
        still_serving(p, web)
        assert p.status(web["sg"], "offshore-only.test") == 451
        rec = p.last(stage="http", host="offshore-only.test")
        assert (rec["country"], rec["rule"], rec["offshore"]) == ("SG", "offshore", True)
        assert p.status(web["cn"], "offshore-only.test") == 200
        # fixed: a new good database (where the SG server has moved home) is used within the interval
        moved = dict(PLACES, **{"127.0.0.2/32": ("CN", 64500)})
        tmp = db.with_name("new.mmdb")
        write_country_db(tmp, moved)
        os.replace(tmp, db)
        wait_for(lambda: p.status(web["sg"], "offshore-only.test") == 200, RECOVERY, "the restored database")
        rec = p.last(stage="http", host="offshore-only.test")
        assert (rec["country"], rec["action"]) == ("CN", "allow")
        assert p.count("database change refused") == 1
        assert "Traceback" not in p.output()


def test_without_a_geoip_database_country_rules_follow_unknown_country_until_one_is_installed(tmp_path, web):
    missing = tmp_path / "geo" / "GeoLite2-Country.mmdb"  # gone when the proxy starts
    with Proxy(tmp_path, country_db=missing) as p:
        assert not missing.exists()
        assert p.count("cannot place servers and give unknown_country=block") == 1
        still_serving(p, web)  # domain rules are enforced as usual
        status, took = p.http(web["cn"], "offshore-only.test")
        assert status == 451 and took < 10
        rec = p.last(stage="http", host="offshore-only.test")
        assert rec["country"] is None and rec["offshore"] is None and rec["geoip_build"] is None
        assert "unknown_country (block) applies" in rec["reason"]
        # garbage at the path: refused once, still unknown_country
        replace(missing, b"\x00garbage" * 512)
        wait_for(lambda: p.count("not a readable MaxMind database") >= 1, RECOVERY, "the refusal")
        time.sleep(float(INTERVAL) * 5)
        assert p.count("not a readable MaxMind database") == 1
        assert p.status(web["cn"], "offshore-only.test") == 451
        # a good database installed: within the interval, servers are placed again
        tmp = missing.with_name("new.mmdb")
        write_country_db(tmp)
        os.replace(tmp, missing)
        wait_for(lambda: p.status(web["cn"], "offshore-only.test") == 200, RECOVERY, "the installed database")
        assert p.last(stage="http", host="offshore-only.test")["country"] == "CN"
        assert p.status(web["sg"], "offshore-only.test") == 451
        assert p.last(stage="http", host="offshore-only.test")["rule"] == "offshore"


# --- rules ---------------------------------------------------------------------------------------

def test_rules_directory_removed_keeps_the_last_good_ruleset_and_a_restored_one_applies(tmp_path, web):
    with Proxy(tmp_path) as p:
        assert p.status(web["cn"], "binance.com") == 451
        version = p.last()["ruleset"]
        p.rules.rename(tmp_path / "rules.gone")  # removed at once, not file by file
        shutil.rmtree(tmp_path / "rules.gone")
        wait_for(lambda: p.count("rules change refused") >= 1, RECOVERY, "the refusal")
        time.sleep(float(INTERVAL) * 5)
        assert p.count("rules change refused") == 1
        out = p.output()
        assert f"keeping ruleset {version}" in out and "no such rules file or directory" in out
        still_serving(p, web)
        assert p.status(web["sg"], "offshore-only.test") == 451
        assert p.last()["ruleset"] == version
        # restored (made aside, then moved into place), with one more blocked name: in force within the interval
        write_rules(tmp_path / "rules.new", extra="  - {id: more, action: block, domains: [okx.com]}\n")
        (tmp_path / "rules.new").rename(p.rules)
        wait_for(lambda: p.status(web["cn"], "okx.com") == 451, RECOVERY, "the restored rules")
        assert p.last()["ruleset"] != version and p.last()["rule"] == "more"
        assert p.count("rules reloaded") == 1
        still_serving(p, web)


# --- the decision log ------------------------------------------------------------------------------

def account(p: Proxy, files: list[Path], requests: int) -> int:
    """Check that every decision is in a file or counted as lost; returns the number lost."""
    recs = [r for f in files for r in p.records(f)]
    lost = sum(r.get("lost_before", 0) for r in recs)
    assert len(recs) + lost == requests, (len(recs), lost, requests)
    return lost


def test_decision_log_unwritable_counts_lost_records_and_resumes(tmp_path, web):
    with Proxy(tmp_path) as p:
        made = []  # one decision per request

        def request(host: str) -> int:
            made.append(host)
            return p.status(web["cn"], host)

        assert request("allowed.test") == 200 and request("binance.com") == 451
        rotated = p.log.with_name("decisions.jsonl.1")
        p.log.rename(rotated)  # records go on into the moved file until geoblock notices
        p.log.mkdir()  # ... and then the path can no longer be opened as a file, not even by root
        wait_for(lambda: request("allowed.test") == 200 and p.count("cannot write the decision log"),
                 RECOVERY, "the write error")
        assert p.count("1 record(s) lost so far") == 1
        for host in ("allowed.test", "binance.com") * 5:
            assert request(host) == (451 if host == "binance.com" else 200)  # still served and enforced
        assert p.count("cannot write the decision log") == 1  # once, not per flow
        assert "Is a directory" in p.output()
        lost = len(made) - len(p.records(rotated))
        assert lost >= 10
        # fixed: the next decision is written, and says how many were lost before it
        p.log.rmdir()
        assert request("binance.com") == 451
        first = p.records()[0]
        assert first["lost_before"] == lost and first["action"] == "block"
        assert p.count(f"writable again; {lost} record(s) were lost") == 1
        assert request("allowed.test") == 200
        assert "lost_before" not in p.records()[-1]
        assert account(p, [rotated, p.log], len(made)) == lost


@pytest.fixture
def tmpfs(tmp_path):
    try:
        fs = Tmpfs(tmp_path / "small", "64k")
    except PermissionError as exc:
        pytest.skip(f"mounting a small tmpfs for the disk-full test is refused here: {exc}")
    yield fs
    fs.close()


def test_decision_log_disk_full_counts_lost_records_and_resumes(tmp_path, web, tmpfs):
    with Proxy(tmp_path, log=tmpfs.path / "decisions.jsonl") as p:
        requests = 0
        for host in ("allowed.test", "binance.com") * 3:
            p.status(web["cn"], host)
            requests += 1
        tmpfs.fill()
        for host in ("allowed.test", "binance.com") * 10:
            assert p.status(web["cn"], host) == (451 if host == "binance.com" else 200)  # still enforced
            requests += 1
        assert p.count("cannot write the decision log") == 1, p.output()
        assert "No space left on device" in p.output()
        written_before = len(p.records())  # every line is a whole record (a cut line is taken back)
        lost = requests - written_before
        assert lost >= 10
        # space freed: the next record says how many were lost before it
        tmpfs.free()
        assert p.status(web["cn"], "allowed.test") == 200
        requests += 1
        recs = p.records()
        assert len(recs) == written_before + 1
        assert recs[-1]["lost_before"] == lost and recs[-1]["action"] == "allow"
        assert p.count(f"writable again; {lost} record(s) were lost") == 1
        assert account(p, [p.log], requests) == lost
        still_serving(p, web)


# --- name resolution -------------------------------------------------------------------------------

@pytest.fixture
def stub():
    why = private_mounts_unavailable()
    if why:
        pytest.skip(why)
    names = {f"{label}.offshore-only.test": "127.0.0.1" for label in
             ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o", "p"]}
    names.update({f"late{i}.offshore-only.test": "127.0.0.1" for i in range(60)})
    try:
        s = DnsStub(names)
    except PermissionError as exc:
        pytest.skip(f"binding a DNS stub on a loopback address, port 53, needs root ({exc})")
    yield s
    s.close()


def dns_proxy(tmp_path: Path, stub: DnsStub, timeout: str, resolver_timeout: int = 1) -> Proxy:
    p = Proxy(tmp_path, geoblock_dns_timeout=timeout)
    conf = stub.resolv_conf(tmp_path / "resolv.conf", timeout=resolver_timeout)
    p.m.args = with_resolv_conf(p.m.args, conf)  # only this mitmdump sees the stub as its resolver
    return p


def name_url(web, name: str) -> str:
    return f"http://{name}:{web['cn'].port}/"


def test_dns_failing_gives_unknown_country_reported_once_then_recovers(tmp_path, web, stub):
    with dns_proxy(tmp_path, stub, timeout="2") as p:
        # working: the name is resolved (by the stub) and placed at home
        assert p.status(None, url=name_url(web, "a.offshore-only.test")) == 200
        rec = p.last(stage="http", name="a.offshore-only.test")
        assert (rec["server_ip"], rec["country"], rec["action"]) == ("127.0.0.1", "CN", "allow")
        stub.set_mode("servfail")
        for label in "bcdef":
            status, took = p.http(None, url=name_url(web, f"{label}.offshore-only.test"))
            assert status == 451 and took < 10  # unknown_country: block, never dialled
            rec = p.last(stage="http", name=f"{label}.offshore-only.test")
            assert rec["server_ip"] is None and "unknown_country (block) applies" in rec["reason"]
        assert stub.questions("b.offshore-only.test") >= 1  # it was asked, and failed
        assert p.count("name resolution failed") == 1  # once for five names
        still_serving(p, web)  # names no rule needs to place are never resolved
        # DNS back: names resolve again, and the log says so once
        stub.set_mode("answer")
        assert p.status(None, url=name_url(web, "g.offshore-only.test")) == 200
        assert p.last(stage="http", name="g.offshore-only.test")["country"] == "CN"
        assert p.count("name resolution works again") == 1
        assert p.status(None, url=name_url(web, "a.offshore-only.test")) == 200  # the cached answer
        assert p.serving()


def test_dns_slow_does_not_hold_flows_past_the_timeout_then_recovers(tmp_path, web, stub):
    with dns_proxy(tmp_path, stub, timeout="0.5", resolver_timeout=10) as p:
        stub.set_mode("slow", delay=8.0)
        names = [f"{label}.offshore-only.test" for label in "abcdefghijkl"]  # more than geoblock's lookup threads
        with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
            results = list(pool.map(lambda n: p.http(None, url=name_url(web, n)), names))
        for (status, took), name in zip(results, names, strict=False):
            assert status == 451, name  # unknown_country: block, decided without the late answer
            assert took < 6.0, (name, took)  # not the 8 s the resolver takes
        rec = p.last(stage="http", name=names[0])
        assert rec["server_ip"] is None and "unknown_country (block) applies" in rec["reason"]
        assert p.count("name resolution failed: no answer within 0.5 s") == 1
        still_serving(p, web)
        # DNS fast again: once the slow lookups have drained, new names are placed and allowed
        stub.set_mode("answer")
        fresh = iter(f"late{i}.offshore-only.test" for i in range(60))
        wait_for(lambda: p.status(None, url=name_url(web, next(fresh))) == 200, 40, "resolution to recover",
                 every=0.5)
        assert p.count("name resolution works again") == 1


# --- RDAP ----------------------------------------------------------------------------------------

def test_rdap_hanging_stalls_no_flow_and_later_answers_are_used(tmp_path, geo_dir):
    """Public addresses are only ever named in CONNECTs that geoblock refuses; mitmdump runs in upstream
    mode towards a local server that answers every plain request, so nothing leaves the machine."""
    rdap = RdapServer()
    hung = ["9.9.9.9", "9.9.9.10", "9.9.9.11", "9.9.9.12", "9.9.9.13"]  # more than the RDAP threads
    for addr in hung:
        rdap.set_answer(addr, hang(60, then=country("US")))
    upstream = TestServer("127.0.0.1")
    rules = write_rules(tmp_path / "rules")
    (rules / "us.yaml").write_text("rules:\n  - {id: no-us, action: block, countries: [US]}\n")
    log = tmp_path / "decisions.jsonl"
    m = Mitmdump(tmp_path / "conf", geoblock_options(
        rules, geo_dir, log, geoblock_rdap_url=rdap.bootstrap_url, geoblock_rdap_timeout="2",
        geoblock_rir="false",  # these public addresses are left to RDAP (the registries' data places them)
    ), extra_args=["--mode", f"upstream:http://127.0.0.1:{upstream.port}"])

    def connect(target: str) -> tuple[str, float]:
        started = time.monotonic()
        r = subprocess.run(["curl", "-sS", "--max-time", "10", "-x", m.url, f"https://{target}/"],
                           capture_output=True, text=True, timeout=20)
        return r.stderr, time.monotonic() - started

    def last(target: str) -> dict:
        return [r for r in map(json.loads, log.read_text().splitlines()) if r.get("server_ip") == target][-1]

    try:
        with m:
            for addr in hung:
                err, took = connect(addr)
                assert "response 451" in err and took < 5.0  # unknown_country now, RDAP in the background
            wait_for(lambda: sum(rdap.hits_for(a) for a in hung) >= 4, RECOVERY, "the RDAP lookups to hang")
            for addr in hung * 2:
                err, took = connect(addr)
                assert "response 451" in err and took < 5.0, took  # not curl's 10 s
                assert "unknown_country (block) applies" in last(addr)["reason"]
            # plain requests go on (through the local upstream)
            r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10", "-x",
                                m.url, "-H", "Host: allowed.test", f"http://127.0.0.1:{upstream.port}/"],
                               capture_output=True, text=True, timeout=20)
            assert r.stdout == "200"
            # the hanging lookups end by the RDAP timeout, reported once for all of them
            wait_for(lambda: "no answer within 2 s" in m.output(), RECOVERY, "the RDAP timeout to be reported")
            # RDAP answers again: a new address is placed by it for later flows
            rdap.set_answer("8.8.8.8", country("US"))
            err, _ = connect("8.8.8.8")
            assert "response 451" in err and last("8.8.8.8")["country"] is None
            wait_for(lambda: rdap.hits_for("8.8.8.8") == 1, RECOVERY, "the RDAP lookup")

            def placed() -> bool:
                connect("8.8.8.8")
                return last("8.8.8.8")["country_source"] == "rdap"
            wait_for(placed, RECOVERY, "the RDAP answer to be used", every=0.3)
            rec = last("8.8.8.8")
            assert (rec["country"], rec["rule"], rec["action"]) == ("US", "no-us", "block")
            assert m.output().count("no answer within 2 s") == 1
            assert m.proc.poll() is None
    finally:
        rdap.close()
        upstream.close()


# --- upstream --------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["refusing", "resetting"])
def test_upstream_refusing_or_resetting(tmp_path, web, kind):
    bad = RefusingPort() if kind == "refusing" else ResettingServer()
    try:
        with Proxy(tmp_path) as p:
            for _ in range(3):
                assert p.status(bad, "allowed.test") == 502  # mitmproxy's answer: the server failed
                rec = p.last(stage="http", host="allowed.test")
                assert (rec["action"], rec["server_ip"]) == ("allow", "127.0.0.1")
            if kind == "resetting":
                assert bad.connections == 3
                bad.reset()
            # blocked flows are refused without dialling
            assert p.status(bad, "binance.com") == 451
            r = subprocess.run(["curl", "-sS", "--max-time", "20", "-x", p.url, "https://binance.com/",
                                "--connect-to", f"binance.com:443:127.0.0.1:{bad.port}"],
                               capture_output=True, text=True, timeout=40)
            assert "alert access denied" in r.stderr  # the CONNECT is to the IP; the SNI is refused
            if kind == "resetting":
                assert bad.connections == 0
            # allowed TLS: the tunnel opens, the handshake fails at the server; geoblock allowed it
            r = subprocess.run(["curl", "-sS", "--max-time", "20", "-x", p.url, "https://allowed.test/",
                                "--connect-to", f"allowed.test:443:127.0.0.1:{bad.port}"],
                               capture_output=True, text=True, timeout=40)
            assert r.returncode != 0
            rec = p.last(stage="tls", sni="allowed.test")
            assert rec["action"] == "allow"
            still_serving(p, web)
            assert "geoblock: error" not in p.output()  # the server's failure is not geoblock's
    finally:
        bad.close()


# --- one guard for every hook: an injected failure in each stage --------------------------------------

from mitmproxy.proxy import context, events, layer, mode_specs  # noqa: E402
from mitmproxy.proxy.layers import modes, tls  # noqa: E402
from mitmproxy.test import tflow, tutils  # noqa: E402

import geoblock.engine as engine_mod  # noqa: E402
from geoblock.mitm import enforce  # noqa: E402
from support.harness import geoblock_in_context, logged  # noqa: E402


from mitmproxy import dns as mdns  # noqa: E402

DNSMessage = getattr(mdns, "DNSMessage", None) or mdns.Message  # mitmproxy 12 renamed Message


@pytest.fixture(params=["block", "allow"])
def gb_on_error(request, tmp_path, geo_dir):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "policy.yaml").write_text(f"home_countries: [CN]\non_error: {request.param}\n")
    (rules / "r.yaml").write_text(CRYPTO)
    with geoblock_in_context(rules, geo_dir, tmp_path / "decisions.jsonl") as addon:
        addon.on_error = request.param
        yield addon


def _conn_flow(host: str = "allowed.test"):
    return tflow.tflow(req=tutils.treq(method=b"CONNECT", host=host, port=443, path=b"",
                                       authority=f"{host}:443".encode()))


def _http_flow():
    f = tflow.tflow(req=tutils.treq(host="127.0.0.1", port=80, headers=((b"host", b"allowed.test"),)))
    f.client_conn.sni = None
    return f


def _next_layer(gb):
    client = tflow.tclient_conn()
    ctx = context.Context(client, gb.tctx.options)
    ctx.server.address = ("127.0.0.1", 443)
    modes.TransparentProxy(ctx)  # the layer below a layer choice (mitmproxy's choice reads the stack)
    nl = layer.NextLayer(ctx)
    nl.events.append(events.DataReceived(client, client_hello("allowed.test")))
    return nl


def _client():
    client = tflow.tclient_conn()
    client.proxy_mode = mode_specs.ProxyMode.parse("transparent")
    client.sockname = ("127.0.0.1", 443)
    return client


class _HookData:
    """What mitmproxy hands server_connect: the client and the server connection."""

    def __init__(self, client) -> None:
        self.client = client
        self.server = tflow.tserver_conn()
        self.server.error = None


def _dns_flow():
    f = tflow.tdnsflow()
    f.response = None
    return f


def _blocked(stage: str, obj) -> bool:
    """Whether the hook's object was blocked, the way each stage blocks."""
    if stage == "ip":
        return bool(obj.error)
    if stage == "dns":
        return obj.response is not None and obj.response.response_code == 3  # NXDOMAIN
    if stage in ("connect", "http"):
        return obj.response is not None and obj.response.status_code == 451
    if stage == "tls":
        return isinstance(obj.layer, enforce.DenyTLS)
    if stage == "tls_clienthello":
        return obj.ignore_connection is False
    if stage == "server_connect":
        return bool(obj.server.error)
    raise AssertionError(stage)


STAGES = {
    # stage -> (hook name, make the hook's object)
    "ip": ("client_connected", _client),
    "dns": ("dns_request", _dns_flow),
    "connect": ("http_connect", _conn_flow),
    "tls": ("next_layer", None),
    "http": ("requestheaders", _http_flow),
}


@pytest.mark.parametrize("stage", list(STAGES))
def test_an_injected_failure_in_a_deciding_stage_applies_on_error_once_logged(gb_on_error, stage, monkeypatch, caplog):
    gb = gb_on_error
    hook_name, make = STAGES[stage]

    def broken(facts, rs):
        raise RuntimeError(f"injected failure in {facts.stage}")
    monkeypatch.setattr(engine_mod, "decide", broken)
    caplog.set_level(logging.INFO, logger="geoblock")
    objs = [(_next_layer(gb) if make is None else make()) for _ in range(20)]
    for obj in objs:
        asyncio.run(getattr(gb, hook_name)(obj))
    blocked = [_blocked(stage, o) for o in objs]
    assert blocked == [gb.on_error == "block"] * len(objs)
    errors = [r for r in caplog.records if "injected failure" in r.getMessage() and r.levelno >= logging.ERROR]
    assert len(errors) == 1 and f"error in the {stage} stage" in errors[0].getMessage()
    recs = logged(gb)
    assert len(recs) == len(objs)
    assert all(r["action"] == gb.on_error and r["stage"] == stage and r["error"].startswith("RuntimeError")
               for r in recs)


def test_an_injected_failure_in_tls_clienthello_applies_on_error_once_logged(gb_on_error, caplog):
    gb = gb_on_error
    caplog.set_level(logging.INFO, logger="geoblock")
    objs = []
    for _ in range(20):
        nl = _next_layer(gb)  # never judged by next_layer: the ClientHello reaches TLS unjudged
        data = tls.ClientHelloData(nl.context, tls.parse_client_hello(client_hello("allowed.test")))
        data.ignore_connection = True  # as if mitmproxy were about to pass it through
        asyncio.run(gb.tls_clienthello(data))
        objs.append(data)
    assert [_blocked("tls_clienthello", o) for o in objs] == [gb.on_error == "block"] * len(objs)
    errors = [r for r in caplog.records if "reached the TLS layer" in r.getMessage() and r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert gb.judging.counts["error"] == len(objs)


def test_an_injected_failure_in_server_connect_applies_on_error_once_logged(gb_on_error, monkeypatch, caplog):
    gb = gb_on_error
    caplog.set_level(logging.INFO, logger="geoblock")

    class Exploding(dict):
        def get(self, *a, **kw):
            raise RuntimeError("injected failure in server_connect")
    monkeypatch.setattr(gb.judging, "sessions", Exploding())
    objs = [_HookData(tflow.tclient_conn()) for _ in range(20)]
    for obj in objs:
        asyncio.run(gb.server_connect(obj))
    assert [_blocked("server_connect", o) for o in objs] == [gb.on_error == "block"] * len(objs)
    errors = [r for r in caplog.records if "injected failure" in r.getMessage() and r.levelno >= logging.ERROR]
    assert len(errors) == 1
    recs = logged(gb)
    assert len(recs) == len(objs) and all(r["action"] == gb.on_error and r["error"] for r in recs)
