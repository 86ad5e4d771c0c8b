"""Soak: scripts/soak.py's short run (30 s, 500 held connections) passes its criteria, and the figures in
its JSON say so; plus the keep-alive case the soak found (a client's 6th request by name hung)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from support import soak
from support.geodb import write_country_db
from support.proc import Mitmdump
from support.servers import TestServer
from support.shipped import copy_shipped_rules

REPO = Path(__file__).resolve().parents[1]


def test_soak_short_run(tmp_path):
    out = tmp_path / "soak.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "soak.py"), "--duration", "30", "--connections", "500",
         "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=400,
    )
    assert out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())
    failed = {k: c["value"] for k, c in r["criteria"].items() if not c["ok"]}
    assert proc.returncode == 0 and r["passed"] and not failed, (failed, proc.stdout[-3000:], proc.stderr[-2000:])

    # No errors other than the blocks, on either side.
    assert r["errors"] == {} and r["geoblock_counts"]["error"] == 0
    ops = r["operations"]
    for kind in ("http allowed 200", "http blocked 451", "https allowed 200", "tls passed through",
                 "connect blocked 451", "connect blocked network 451", "sni blocked alert"):
        assert ops.get(kind, 0) > 0, kind
    # 500 connections held open by the clients, and mitmdump really had them (a client socket plus, for
    # most, an upstream one each).
    assert r["connections"]["client_open"]["median"] >= 500
    assert r["connections"]["mitmdump_fds"]["median"] >= 500
    # Memory: at most 10 % growth from the end of the warm-up to the end of the load.
    rss = r["rss_mib"]
    assert rss["growth_pct"] <= 10.0 and rss["end"] <= rss["after_warmup"] * 1.10
    # Caches used and within their bounds; per-connection state gone once the clients left.
    caches = r["caches"]
    for name in ("names", "rule hits", "dns", "geoip"):
        assert caches[name]["entries"] > 0, name
    for name, c in caches.items():
        assert c["bound"] is None or c["entries"] <= c["bound"], name
    assert caches["connection states"]["entries"] == 0
    assert r["distinct_names"] > 500  # fresh names kept arriving
    # The decision log: one record per decision, by stage and action, none lost.
    log = r["decision_log"]
    assert log["by_stage_action"] == log["expected"] and log["lost"] == 0 and log["lost_before"] == 0
    assert log["written"] == sum(log["expected"].values())
    assert log["expected"]["http allow"] == ops["http allowed 200"]
    assert log["expected"]["tls block"] == ops["sni blocked alert"]
    # Blocked servers were never dialled; allowed upstreams served every allowed request.
    assert set(r["blocked_servers_connections"].values()) == {0}
    served = r["allowed_servers"]
    assert sum(v["requests"] for k, v in served.items() if k.endswith("http")) == ops["http allowed 200"]
    assert sum(v["requests"] for k, v in served.items() if k.endswith("tls")) == ops["https allowed 200"]


def test_keepalive_requests_by_name_are_all_answered(tmp_path):
    """A keep-alive client sends 8 requests by name (absolute-form), where a rule needs the server's
    location so geoblock resolves each name: all are answered, over one upstream connection, with the
    client's Host header. (mitmproxy allows 5 connections per address and client connection: dialling
    each name's judged address on a new connection made the 6th request wait forever.)"""
    server = TestServer("127.0.0.1")
    rules = copy_shipped_rules(tmp_path / "rules")
    (rules / "zz-soak.yaml").write_text(soak.SOAK_RULES)
    (tmp_path / "dns.json").write_text(json.dumps(soak.DNS))
    options = {"geoblock_rules": str(rules), "geoblock_country_db": str(write_country_db(tmp_path / "c.mmdb")),
               "geoblock_asn_db": "", "geoblock_log": "", "soak_dns": str(tmp_path / "dns.json")}

    async def client(port: int) -> list[int]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        statuses = []
        for i in range(8):
            name = "www.allowed.test" if i % 2 else f"n{i}.allowed.test"
            writer.write(f"GET http://{name}:{server.port}/ HTTP/1.1\r\nHost: {name}:{server.port}\r\n\r\n".encode())
            status, _, _ = await asyncio.wait_for(soak.read_response(reader), 10)
            statuses.append(status)
        writer.close()
        return statuses

    try:
        with Mitmdump(tmp_path / "conf", options, extra_args=["-s", str(soak.PROBE)]) as m:
            statuses = asyncio.run(client(m.port))
        assert statuses == [200] * 8
        assert server.connections == 1
        assert [host for host, _ in server.requests] == [
            f"{'www.allowed.test' if i % 2 else f'n{i}.allowed.test'}:{server.port}" for i in range(8)]
    finally:
        server.close()
