"""Hot reload with a running mitmdump: rules and databases change under it, it keeps serving, applies
what is valid, keeps the last good ruleset or database otherwise, and says why."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from support import waiting
from support.decisions import read
from support.geodb import PLACES, write_asn_db, write_country_db
from support.proc import Mitmdump, geoblock_options
from support.servers import TestServer

pytestmark = pytest.mark.e2e

POLICY = "home_countries: [CN]\ndefault: allow\nunknown_country: log\non_error: block\n"


def wait_for(predicate, what: str = "condition"):
    """support.waiting.wait_for, 8 s at most (a reload interval here is 0.3 s)."""
    return waiting.wait_for(predicate, timeout=8.0, what=what)


def read_response(reader) -> bytes:
    """One whole HTTP/1.1 response (status line, headers, Content-Length body) from a socket file."""
    status = reader.readline()
    length = 0
    while (line := reader.readline()) not in (b"\r\n", b""):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    reader.read(length)
    return status


def replace_atomically(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".new")
    write(tmp)
    os.replace(tmp, path)


class Setup:
    def __init__(self, tmp: Path, reload_interval: str = "0.3") -> None:
        self.rules = tmp / "rules"
        self.rules.mkdir()
        (self.rules / "policy.yaml").write_text(POLICY)
        (self.rules / "crypto.yaml").write_text(
            "rules:\n  - {id: crypto, action: block, domains: [binance.com]}\n")
        (self.rules / "offshore.yaml").write_text(
            "rules:\n  - {id: offshore, action: block, domains: [offshore-only.test], offshore: true}\n")
        self.geo = tmp / "geo"
        self.geo.mkdir()
        write_country_db(self.geo / "GeoLite2-Country.mmdb")
        write_asn_db(self.geo / "GeoLite2-ASN.mmdb")
        self.log = tmp / "decisions.jsonl"
        self.proxy = Mitmdump(tmp / "conf", geoblock_options(self.rules, self.geo, self.log,
                                                             geoblock_reload_interval=reload_interval))

    def http(self, server: TestServer, host: str) -> int:
        r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5",
                            "-x", self.proxy.url, "-H", f"Host: {host}", f"http://{server.host}:{server.port}/"],
                           capture_output=True, text=True, timeout=10)
        return int(r.stdout or 0)

    def last(self) -> dict:
        return read(self.log)[-1]


@pytest.fixture
def setup(tmp_path):
    s = Setup(tmp_path)
    with s.proxy:
        yield s


def test_a_replaced_database_is_used_for_the_next_decision(setup, web):
    assert setup.http(web["sg"], "offshore-only.test") == 451
    build_before = setup.last()["geoip_build"]
    assert setup.last()["country"] == "SG" and build_before
    moved = dict(PLACES, **{"127.0.0.2/32": ("CN", 64500)})  # the server moves home
    replace_atomically(setup.geo / "GeoLite2-Country.mmdb", lambda p: write_country_db(p, moved))
    wait_for(lambda: "databases reloaded" in setup.proxy.output(), what="the database reload")
    assert setup.http(web["sg"], "offshore-only.test") == 200
    rec = setup.last()
    assert rec["country"] == "CN" and rec["action"] == "allow"


def test_a_broken_rule_edit_keeps_the_old_rules_then_a_fix_applies(setup, web):
    assert setup.http(web["cn"], "binance.com") == 451
    version = setup.last()["ruleset"]
    (setup.rules / "crypto.yaml").write_text(
        "rules:\n  - id: crypto\n    action: block\n    domains: [binance.com, okx.com]\n    countries: [UK]\n")
    out = wait_for(lambda: "rules change refused" in setup.proxy.output() and setup.proxy.output(),
                   what="the refusal")
    assert f"{setup.rules / 'crypto.yaml'}:5:" in out and "'UK'" in out and f"keeping ruleset {version}" in out
    assert setup.http(web["cn"], "binance.com") == 451  # the old rules are still enforced
    assert setup.http(web["cn"], "okx.com") == 200
    assert setup.last()["ruleset"] == version
    (setup.rules / "crypto.yaml").write_text(
        "rules:\n  - {id: crypto, action: block, domains: [binance.com, okx.com]}\n")
    wait_for(lambda: setup.http(web["cn"], "okx.com") == 451, what="the fixed rules")
    assert setup.last()["ruleset"] != version and setup.last()["rule"] == "crypto"


def test_a_deleted_rule_file_takes_its_rules_away(setup, web):
    assert setup.http(web["sg"], "offshore-only.test") == 451
    (setup.rules / "offshore.yaml").unlink()
    wait_for(lambda: setup.http(web["sg"], "offshore-only.test") == 200, what="the rule to go")
    assert setup.http(web["cn"], "binance.com") == 451


def test_a_corrupt_database_keeps_the_last_good_one(setup, web):
    path = setup.geo / "GeoLite2-Country.mmdb"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])  # truncated in place
    wait_for(lambda: "keeping the last good database" in setup.proxy.output(), what="the refusal")
    assert setup.http(web["sg"], "offshore-only.test") == 451
    assert setup.last()["country"] == "SG"
    path.write_bytes(b"garbage" * 100)
    time.sleep(1)
    assert setup.http(web["sg"], "offshore-only.test") == 451 and setup.last()["country"] == "SG"
    assert setup.proxy.proc.poll() is None


def test_sighup_reloads_and_connections_in_flight_survive(tmp_path, web):
    s = Setup(tmp_path, reload_interval="0")  # only SIGHUP
    with s.proxy:
        # a keep-alive connection through the proxy, open across the reload
        sock = socket.create_connection(("127.0.0.1", s.proxy.port))
        target = web["cn"]
        req = (f"GET http://{target.host}:{target.port}/ HTTP/1.1\r\nHost: allowed.test\r\n\r\n").encode()
        reader = sock.makefile("rb")
        sock.sendall(req)
        assert read_response(reader).startswith(b"HTTP/1.1 200")
        (s.rules / "crypto.yaml").write_text("rules:\n  - {id: crypto, action: block, domains: [okx.com]}\n")
        time.sleep(0.5)
        assert s.http(target, "okx.com") == 200  # no watching: not yet
        settled = "long-lived objects moved out of the collector's scans"  # geoblock_gc_freeze, at start-up
        assert s.proxy.output().count(settled) == 1
        s.proxy.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "rules reloaded" in s.proxy.output(), what="the SIGHUP reload")
        wait_for(lambda: s.proxy.output().count(settled) == 2, what="the new ruleset frozen in turn")
        assert s.http(target, "okx.com") == 451
        sock.sendall(req)
        assert read_response(reader).startswith(b"HTTP/1.1 200")  # the old connection still works
        sock.close()


def test_a_changed_list_file_is_reloaded_and_a_broken_one_keeps_the_last_good_list(setup, web):
    """A rule's list file (domains_from) is watched like the rule files: a new entry is enforced, a bad
    entry is refused naming the list's file and line, and the last good list stays in force."""
    lists = setup.rules / "lists"
    lists.mkdir()
    (lists / "ex.txt").write_text("okx.com  OKX\n")
    (setup.rules / "list.yaml").write_text("rules:\n  - {id: listed, action: block, domains_from: [lists/ex.txt]}\n")
    wait_for(lambda: setup.http(web["cn"], "okx.com") == 451, what="the list in force")
    rec = setup.last()
    assert (rec["rule"], rec["platform"], rec["list"]) == ("listed", "OKX", "ex.txt")
    version = rec["ruleset"]
    replace_atomically(lists / "ex.txt", lambda p: p.write_text("okx.com  OKX\nbybit.com  Bybit\n"))
    wait_for(lambda: setup.http(web["cn"], "bybit.com") == 451, what="the new list entry")
    rec = setup.last()
    assert rec["platform"] == "Bybit" and rec["ruleset"] != version and rec["list_version"] != ""
    (lists / "ex.txt").write_text("okx.com  OKX\nbybit.com  Bybit\nhttps://kucoin.com/  KuCoin\n")
    out = wait_for(lambda: "rules change refused" in setup.proxy.output() and setup.proxy.output(),
                   what="the refusal")
    assert f"{lists / 'ex.txt'}:3: 'https://kucoin.com/': must be a bare domain" in out
    assert setup.http(web["cn"], "bybit.com") == 451 and setup.http(web["cn"], "kucoin.com") == 200


def test_a_list_rewritten_in_place_with_its_old_size_and_mtime_is_still_reloaded(setup, web):
    """Found in review: an edit that keeps the file's inode, size and mtime (`touch -d` back) went
    unnoticed, and the old list stayed in force; the stamp now holds ctime, which no edit keeps."""
    lists = setup.rules / "lists"
    lists.mkdir()
    target = lists / "ex.txt"
    target.write_text("okx.com  OKX\n")
    (setup.rules / "list.yaml").write_text("rules:\n  - {id: listed, action: block, domains_from: [lists/ex.txt]}\n")
    wait_for(lambda: setup.http(web["cn"], "okx.com") == 451, what="the list in force")
    before = target.stat()
    with target.open("r+") as f:  # the same inode, the same size
        f.write("oky.com  OKY\n")
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))  # and the old mtime
    assert (target.stat().st_size, target.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    wait_for(lambda: setup.http(web["cn"], "oky.com") == 451, what="the rewritten list")
    assert setup.http(web["cn"], "okx.com") == 200
