"""RDAP fallback through a running mitmdump and a local RDAP server.

The server addresses here are public (8.8.8.8, 9.9.9.9) because RDAP is only asked about public
addresses; no packet is ever sent to them: every flow to them is blocked at CONNECT, and mitmdump runs
in upstream mode towards a closed loopback port, so even a flow that were allowed would go nowhere else.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from support.decisions import read
from support.proc import Mitmdump, free_port, geoblock_options
from support.rdap_server import RdapServer, country, hang
from support.servers import TestServer

pytestmark = pytest.mark.e2e


@pytest.fixture
def setup(tmp_path, geo_dir):
    rdap = RdapServer()
    rdap.set_answer("8.8.8.8", country("US"))
    rdap.set_answer("9.9.9.9", hang(30, then=country("US")))
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "policy.yaml").write_text("home_countries: [CN]\nunknown_country: block\n")
    (rules / "r.yaml").write_text("rules:\n  - {id: no-us, action: block, countries: [US]}\n")
    log = tmp_path / "decisions.jsonl"
    proxy = Mitmdump(tmp_path / "conf", geoblock_options(
        rules, geo_dir, log, geoblock_rdap_url=rdap.bootstrap_url, geoblock_rdap_timeout="2",
        geoblock_rir="false",  # 8.8.8.8 and 9.9.9.9 are left to RDAP (the registries' data places them)
    ), extra_args=["--mode", f"upstream:http://127.0.0.1:{free_port()}"])
    with proxy:
        yield proxy, rdap, log
    rdap.release()
    rdap.close()


def connect(proxy: Mitmdump, target: str) -> tuple[str, float]:
    started = time.monotonic()
    r = subprocess.run(["curl", "-sS", "--max-time", "5", "-x", proxy.url, f"https://{target}/"],
                       capture_output=True, text=True, timeout=10)
    return r.stderr, time.monotonic() - started


def test_an_unplaced_address_is_looked_up_once_and_later_flows_use_the_answer(setup):
    proxy, rdap, log = setup
    err, _ = connect(proxy, "8.8.8.8")
    assert "response 451" in err
    first = read(log)[-1]
    assert (first["country"], first["rule"], first["action"]) == (None, "no-us", "block")
    assert "unknown_country (block) applies" in first["reason"]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and rdap.hits_for("8.8.8.8") == 0:
        time.sleep(0.05)
    time.sleep(0.3)  # the answer is cached by the background worker
    for _ in range(5):
        err, _ = connect(proxy, "8.8.8.8")
        assert "response 451" in err
    later = read(log)[-1]
    assert (later["country"], later["country_source"], later["rule"]) == ("US", "rdap", "no-us")
    assert "is in US" in later["reason"]
    assert rdap.hits_for("8.8.8.8") == 1  # the cache works


def test_a_hanging_rdap_server_never_slows_other_flows(setup):
    proxy, rdap, log = setup
    local = TestServer("127.0.0.1")  # placed in CN by the test database: allowed (through the upstream)
    try:
        err, took = connect(proxy, "9.9.9.9")
        assert "response 451" in err and took < 1.0  # unknown_country now; RDAP goes on in the background
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and rdap.hits_for("9.9.9.9") == 0:
            time.sleep(0.05)
        assert rdap.hits_for("9.9.9.9") == 1  # the lookup is hanging now
        for _ in range(5):
            err, took = connect(proxy, "9.9.9.9")
            assert "response 451" in err and took < 1.0
        assert rdap.hits_for("9.9.9.9") == 1  # coalesced: one lookup in flight
        # flows to an address the database places are decided at once too
        started = time.monotonic()
        r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", "-x",
                            proxy.url, f"http://127.0.0.1:{local.port}/"], capture_output=True, text=True)
        assert time.monotonic() - started < 1.0 and r.stdout == "502"  # allowed, then the closed upstream
        assert read(log)[-1]["action"] == "allow"
    finally:
        local.close()
