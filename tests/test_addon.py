"""The addon's hooks, driven with mitmproxy's own test helpers and real ClientHello bytes."""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import logging
import os
import re
import shutil
import weakref

import pytest
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.proxy import commands, context, events, layer
from mitmproxy.proxy.layers import modes, tls
from mitmproxy.test import tflow, tutils

import geoblock.engine as engine_mod
from support import tls_bytes as et
from support.harness import logged
from support.tls_bytes import client_hello, client_hello_with
from geoblock.mitm.relay import WatchHello
from geoblock.mitm import enforce
from geoblock.mitm import heap
from geoblock.mitm import hold



def tls_goes_on(chosen: object) -> bool:
    """mitmproxy's own TLS layer is in place (the handshake is not refused), inside geoblock's watch for a
    second ClientHello where the connection is passed through (mitm/relay.py)."""
    inner = chosen.child if isinstance(chosen, WatchHello) else chosen
    return isinstance(inner, tls.ServerTLSLayer)

def run(coro):
    """Run a hook's result: a coroutine, or None when the hook finished at once (requestheaders may)."""
    return asyncio.run(coro) if coro is not None else None


def next_layer_for(gb, sni, server=("127.0.0.2", 443), data=None):
    client = tflow.tclient_conn()
    client.peername = ("127.0.0.1", 50000)
    ctx = context.Context(client, gb.tctx.options)
    ctx.server.address = server
    modes.TransparentProxy(ctx)  # the layer below a layer choice (mitmproxy's choice reads the stack)
    nl = layer.NextLayer(ctx)
    nl.events.append(events.DataReceived(client, data if data is not None else client_hello(sni)))
    return nl


def test_loading_sets_lazy_connections(gb):
    assert gb.tctx.options.connection_strategy == "lazy"
    gb.tctx.configure(gb, connection_strategy="eager")
    assert gb.tctx.options.connection_strategy == "lazy"


@pytest.mark.parametrize("sni", ["binance.com", "API.BINANCE.COM", "api.binance.com.", "bücher.example"])
def test_blocked_sni_gets_a_tls_alert_layer(gb, sni):
    nl = next_layer_for(gb, sni)
    run(gb.next_layer(nl))
    assert isinstance(nl.layer, enforce.DenyTLS)
    cmds = list(nl.layer.handle_event(events.Start()))
    assert isinstance(cmds[0], commands.SendData) and cmds[0].data == bytes.fromhex("15030300020231")
    assert isinstance(cmds[1], commands.CloseConnection)
    rec = logged(gb)[-1]
    assert rec["stage"] == "tls" and rec["action"] == "block" and rec["enforced"] is True
    # the client puts the A-label (punycode) form of an IDN on the wire
    assert rec["sni"].lower().rstrip(".") == sni.lower().rstrip(".").encode("idna").decode()
    assert rec["server_ip"] == "127.0.0.2" and rec["country"] == "SG"


def test_allowed_sni_passes_through_undecrypted(gb):
    nl = next_layer_for(gb, "allowed.test", server=("127.0.0.1", 443))
    run(gb.next_layer(nl))
    # mitmproxy's own layer choice, put in place by geoblock inside its watch for a second ClientHello
    # (mitm/relay.py: a HelloRetryRequest must not let another name through)
    assert isinstance(nl.layer, WatchHello) and isinstance(nl.layer.child, tls.ServerTLSLayer)
    data = tls.ClientHelloData(nl.context, tls.parse_client_hello(client_hello("allowed.test")))
    run(gb.tls_clienthello(data))
    assert data.ignore_connection is True
    rec = logged(gb)[-1]
    assert (rec["action"], rec["country"], rec["offshore"]) == ("allow", "CN", False)


def test_intercept_option_decrypts_allowed_tls(gb):
    gb.tctx.configure(gb, geoblock_intercept=True)
    nl = next_layer_for(gb, "allowed.test", server=("127.0.0.1", 443))
    run(gb.next_layer(nl))
    data = tls.ClientHelloData(nl.context, tls.parse_client_hello(client_hello("allowed.test")))
    run(gb.tls_clienthello(data))
    assert data.ignore_connection is False


def test_no_sni_is_judged_on_the_destination(gb):
    nl = next_layer_for(gb, None, server=("127.0.0.5", 443))  # blocked-network
    run(gb.next_layer(nl))
    assert isinstance(nl.layer, enforce.DenyTLS)
    assert logged(gb)[-1]["rule"] == "blocked-network" and logged(gb)[-1]["sni"] is None


def test_partial_client_hello_waits_for_more(gb):
    hello = client_hello("binance.com")
    nl = next_layer_for(gb, None, data=hello[:20])
    run(gb.next_layer(nl))
    # held by geoblock (mitmproxy would otherwise pick its TLS layer on these bytes); nothing decided yet
    assert isinstance(nl.layer, hold.HoldFirstBytes)
    assert not gb.log_path.exists() or logged(gb) == []
    # once whole, the bytes go to a fresh NextLayer, whose hook decides
    whole = hold.Replayed(nl.context, expired=False)
    whole.events.append(events.DataReceived(nl.context.client, hello))
    run(gb.next_layer(whole))
    assert isinstance(whole.layer, enforce.DenyTLS)


FIRST_BYTES = [
    client_hello("binance.com"), client_hello("allowed.test"), client_hello(None),
    b"GET / HTTP/1.1\r\nHost: binance.com\r\n\r\n", b"\r\nGET / HTTP/1.1\r\nHost: binance.com\r\n\r\n",
    b"G", b"SSH-2.0-OpenSSH_9.2\r\n", b"\x00\x01\x02", bytes(range(256)), b"\x17\x03\x03\x00\x05hello",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
]


@pytest.mark.parametrize("server", [("127.0.0.2", 443), ("127.0.0.5", 80)], ids=["allowed-address", "blocked-address"])
@pytest.mark.parametrize("data", FIRST_BYTES, ids=lambda d: repr(d[:12]))
def test_every_layer_choice_is_judged_first(gb, data, server):
    """Whatever the first bytes, the layer choice ends in one of: held (nothing relayed yet), refused,
    or a layer whose content a later hook judges (HTTP, DNS, another layer choice) or that was judged
    here and recorded (a ClientHello: stage tls; anything else: stage stream)."""
    from geoblock.mitm.choose import judged_later

    nl = next_layer_for(gb, None, server=server, data=data)
    before = len(logged(gb)) if gb.log_path.exists() else 0
    run(gb.next_layer(nl))
    new = logged(gb)[before:] if gb.log_path.exists() else []
    if isinstance(nl.layer, hold.HoldFirstBytes):
        assert new == []
    elif isinstance(nl.layer, (enforce.DenyTLS, enforce.DenyStream)):
        assert new and new[-1]["action"] == "block"
    else:
        assert nl.layer is not None
        assert judged_later(nl.layer) or [r["stage"] for r in new] in (["tls"], ["stream"]), (nl.layer, new)
        assert judged_later(nl.layer) or server[0] != "127.0.0.5", f"a stream to a blocked address got {nl.layer!r}"


def test_a_layer_mitmproxy_adds_later_is_judged_as_a_stream(gb, monkeypatch):
    """The guarantee does not list mitmproxy's layers one by one: a layer type geoblock has never seen
    is judged (and refused here, under unreadable: block) before it is put in place."""

    class FutureLayer(layer.Layer):
        def _handle_event(self, event):
            yield from ()

    monkeypatch.setattr(gb.layers.chooser, "choose", lambda context, data, server_data: FutureLayer(context))
    gb.tctx.configure(gb, geoblock_rules=str(_rules_with(gb, "unreadable: block")))
    nl = next_layer_for(gb, None, server=("127.0.0.2", 443), data=b"SSH-2.0-OpenSSH_9.2\r\n")
    run(gb.next_layer(nl))
    assert isinstance(nl.layer, enforce.DenyStream)
    rec = logged(gb)[-1]
    assert (rec["stage"], rec["action"], rec["rule"]) == ("stream", "block", "policy:unreadable")


def _rules_with(gb, line: str):
    """A copy of the test rules with one policy line changed (e.g. "unreadable: block")."""
    rules = gb.log_path.parent / "rules-changed"
    shutil.copytree(gb.tctx.options.geoblock_rules, rules)
    key = line.split(":")[0]
    text = (rules / "policy.yaml").read_text()
    old = next(x for x in text.splitlines() if x.startswith(f"{key}:"))
    (rules / "policy.yaml").write_text(text.replace(old, line))
    return rules


def test_malformed_client_hello_fails_closed(gb):
    bad = bytes.fromhex("160301000a") + bytes.fromhex("01000006") + b"\x03\x03" + b"\xff" * 4
    nl = next_layer_for(gb, None, data=bad)
    run(gb.next_layer(nl))
    assert isinstance(nl.layer, enforce.DenyTLS)
    rec = logged(gb)[-1]
    assert rec["action"] == "block" and "ClientHello" in rec["reason"]


def test_connect_to_blocked_name_is_answered_451(gb):
    f = tflow.tflow(req=tutils.treq(method=b"CONNECT", host="binance.com", port=443, path=b"", authority=b"binance.com:443"))
    run(gb.http_connect(f))
    assert f.response.status_code == 451
    assert f.response.reason == "Unavailable For Legal Reasons"
    assert f.response.headers["link"] == '<https://geoblock.invalid/>; rel="blocked-by"'
    assert logged(gb)[-1]["stage"] == "connect"


def test_connect_to_blocked_ip_is_answered_451(gb):
    f = tflow.tflow(req=tutils.treq(method=b"CONNECT", host="127.0.0.5", port=443, path=b"", authority=b"127.0.0.5:443"))
    run(gb.http_connect(f))
    assert f.response.status_code == 451 and logged(gb)[-1]["rule"] == "blocked-network"


def http_flow(host_header, host="127.0.0.1", port=80):
    f = tflow.tflow(req=tutils.treq(host=host, port=port, headers=((b"host", host_header.encode()),)))
    f.client_conn.peername = ("127.0.0.1", 50000)
    f.client_conn.sni = None
    return f


@pytest.mark.parametrize("host_header", ["binance.com", "BINANCE.COM.", "binance.com:8080", "xn--bcher-kva.example"])
def test_blocked_host_gets_the_451_page(gb, host_header):
    f = http_flow(host_header)
    run(gb.requestheaders(f))
    r = f.response
    assert r.status_code == 451 and r.reason == "Unavailable For Legal Reasons"
    assert 'rel="blocked-by"' in r.headers["link"]
    assert r.headers["content-type"].startswith("text/html")
    rule = logged(gb)[-1]["rule"]
    assert f"<code>{rule}</code>" in r.text


def test_allowed_host_passes(gb):
    f = http_flow("allowed.test")
    run(gb.requestheaders(f))
    assert f.response is None
    assert logged(gb)[-1]["action"] == "allow"


def test_ipv6_literal_host(gb):
    f = http_flow("[::1]:8080", host="::1")
    run(gb.requestheaders(f))
    assert f.response is None
    assert logged(gb)[-1]["server_ip"] == "::1" and logged(gb)[-1]["country"] == "CN"


def test_invalid_host_header_fails_closed(gb):
    f = http_flow("bad..name")
    run(gb.requestheaders(f))
    assert f.response.status_code == 451
    rec = logged(gb)[-1]
    assert rec["action"] == "block" and "'bad..name'" in rec["reason"] and rec["error"] == "invalid-input"


def test_monitor_mode_blocks_nothing_and_records_everything(gb):
    gb.tctx.configure(gb, geoblock_monitor=True)
    f = http_flow("binance.com")
    run(gb.requestheaders(f))
    assert f.response is None
    nl = next_layer_for(gb, "binance.com")
    run(gb.next_layer(nl))
    assert tls_goes_on(nl.layer)  # not refused: the TLS goes on
    recs = logged(gb)[-2:]
    assert [(r["action"], r["enforced"]) for r in recs] == [("block", False), ("block", False)]


def on_same_connection(first, host_header, host="127.0.0.1"):
    """Another request on `first`'s client connection (a keep-alive client)."""
    f = http_flow(host_header, host)
    f.client_conn = first.client_conn
    return f


def without_time(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != "ts"}


def test_each_keep_alive_request_is_judged_recorded_and_enforced(gb):
    first = http_flow("allowed.test")
    hosts = ["allowed.test", "allowed.test", "binance.com", "binance.com", "allowed.test", "okx.com"]
    flows = [first] + [on_same_connection(first, h) for h in hosts[1:]]
    for f in flows:
        run(gb.requestheaders(f))
    assert [f.response.status_code if f.response else None for f in flows] == [None, None, 451, 451, None, 451]
    recs = logged(gb)
    assert [(r["host"], r["action"]) for r in recs] == [
        ("allowed.test", "allow"), ("allowed.test", "allow"), ("binance.com", "block"), ("binance.com", "block"),
        ("allowed.test", "allow"), ("okx.com", "block")]
    # A repeated request is a whole record of its own: the same fields as the first, its own time.
    assert without_time(recs[1]) == without_time(recs[0]) and without_time(recs[3]) == without_time(recs[2])
    assert recs[5]["rule"] == "offshore-crypto-exchanges" and recs[5]["name"] == "okx.com"
    assert (gb.judging.counts["allow"], gb.judging.counts["block"]) == (3, 3)


def test_the_uri_authority_of_a_later_request_is_judged(gb):
    first = http_flow("allowed.test")
    run(gb.requestheaders(first))
    second = on_same_connection(first, "allowed.test")
    second.request.authority = "binance.com"  # absolute-form target naming another host, same Host header
    run(gb.requestheaders(second))
    assert first.response is None and second.response.status_code == 451


def test_a_rules_change_applies_to_the_next_request_on_an_open_connection(gb, rules_dir, tmp_path):
    rules = tmp_path / "rules"
    shutil.copytree(rules_dir, rules)
    gb.tctx.configure(gb, geoblock_rules=str(rules))
    first = http_flow("allowed.test")
    run(gb.requestheaders(first))
    assert first.response is None
    (rules / "zzz-new.yaml").write_text("rules:\n  - id: new-block\n    action: block\n    domains: [allowed.test]\n")
    assert "rules reloaded" in run(gb.reload())
    second = on_same_connection(first, "allowed.test")
    run(gb.requestheaders(second))
    assert second.response.status_code == 451 and logged(gb)[-1]["rule"] == "new-block"


def test_monitor_mode_switched_on_applies_to_the_next_request(gb):
    first = http_flow("binance.com")
    run(gb.requestheaders(first))
    gb.tctx.configure(gb, geoblock_monitor=True)
    second = on_same_connection(first, "binance.com")
    run(gb.requestheaders(second))
    assert first.response.status_code == 451 and second.response is None
    assert [r["enforced"] for r in logged(gb)] == [True, False]


def test_a_record_lost_between_repeats_is_counted_in_the_next_line(gb):
    first = http_flow("allowed.test")
    run(gb.requestheaders(first))
    full = os.open("/dev/full", os.O_WRONLY)  # every write fails with ENOSPC
    os.close(gb.judging.log.fd)
    gb.judging.log.fd = full
    flows = [on_same_connection(first, "allowed.test") for _ in range(3)]
    for f in flows:
        run(gb.requestheaders(f))
    recs = logged(gb)
    assert len(recs) == 3 and gb.judging.log.lost == 1  # the second request's record went to the full device
    assert recs[1]["lost_before"] == 1 and "lost_before" not in recs[2]
    assert without_time(recs[2]) == without_time(recs[0])
    assert {k: v for k, v in without_time(recs[1]).items() if k != "lost_before"} == without_time(recs[0])


def test_custom_block_page(gb, tmp_path):
    page = tmp_path / "page.html"
    page.write_text("<p>$host is blocked by $rule</p>")
    gb.tctx.configure(gb, geoblock_block_page=str(page))
    f = http_flow("okx.com")
    run(gb.requestheaders(f))
    assert f.response.text == "<p>okx.com is blocked by offshore-crypto-exchanges</p>"


def test_bad_block_page_template_is_refused(gb, tmp_path):
    page = tmp_path / "page.html"
    page.write_text("<p>$unknown</p>")
    from mitmproxy import exceptions
    with pytest.raises(exceptions.OptionsError, match="page.html"):
        gb.tctx.configure(gb, geoblock_block_page=str(page))


def test_an_exception_applies_on_error_and_is_logged_once(gb, monkeypatch, caplog):
    def broken(facts, rs):
        raise RuntimeError("injected failure")
    monkeypatch.setattr(engine_mod, "decide", broken)
    caplog.set_level(logging.ERROR, logger="geoblock")
    flows = [http_flow("allowed.test") for _ in range(3)]
    for f in flows:
        run(gb.requestheaders(f))
    assert all(f.response is not None and f.response.status_code == 451 for f in flows)
    nl = next_layer_for(gb, "allowed.test", server=("127.0.0.1", 443))
    run(gb.next_layer(nl))
    assert isinstance(nl.layer, enforce.DenyTLS)
    c = tflow.tflow(req=tutils.treq(method=b"CONNECT", host="allowed.test", port=443, path=b"", authority=b"allowed.test:443"))
    run(gb.http_connect(c))
    assert c.response.status_code == 451
    errors = [r for r in caplog.records if "injected failure" in r.getMessage()]
    assert len(errors) == 1  # once per cause, not once per flow or per stage
    recs = logged(gb)
    assert len(recs) == 5 and all(r["action"] == "block" and r["error"] for r in recs)


def test_on_error_allow_is_honoured(gb, monkeypatch, tmp_path, rules_dir):
    d = tmp_path / "rules"
    d.mkdir()
    (d / "policy.yaml").write_text("on_error: allow\n")
    (d / "r.yaml").write_text("rules:\n  - {id: b, action: block, domains: [b.test]}\n")
    gb.tctx.configure(gb, geoblock_rules=str(d))
    monkeypatch.setattr(engine_mod, "decide", lambda facts, rs: 1 / 0)
    f = http_flow("b.test")
    run(gb.requestheaders(f))
    assert f.response is None
    assert logged(gb)[-1]["action"] == "allow"


def test_server_connect_refuses_a_blocked_connection(gb):
    nl = next_layer_for(gb, "binance.com")
    run(gb.next_layer(nl))

    class Data:
        client = nl.context.client
        server = nl.context.server
    data = Data()
    run(gb.server_connect(data))
    assert data.server.error and "offshore-crypto-exchanges" in data.server.error


def test_bad_rules_are_refused_and_the_old_ruleset_stays(gb, tmp_path):
    from mitmproxy import exceptions
    before = gb.engine.ruleset
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "r.yaml").write_text("rules:\n  - id: x\n    action: block\n    countries: [ZZ]\n")
    with pytest.raises(exceptions.OptionsError, match=r"r.yaml:4: .*'ZZ'"):
        gb.tctx.configure(gb, geoblock_rules=str(bad))
    # mitmproxy rolls the option back; the same rules stay in force
    assert gb.tctx.options.geoblock_rules != str(bad)
    assert gb.engine.ruleset.version == before.version and len(gb.engine.ruleset.rules) == len(before.rules)


def test_status_shows_ruleset_version_counts_and_database_builds(gb):
    run(gb.requestheaders(http_flow("binance.com")))
    text = gb.tctx.master.commands.execute("geoblock.status")
    rs = gb.engine.ruleset
    assert f"ruleset {rs.version}: {len(rs.rules)} rules (" in text
    assert f"{rs.domain_count} domains" in text
    assert "country database: GeoLite2-Country built " in text and "ASN database: GeoLite2-ASN built " in text
    assert "decisions: 0 allow, 0 log, 1 block, 0 errors" in text


def test_status_lists_every_cache_with_its_bound(gb):
    flow = http_flow("allowed.test")  # kept: its client's connection state lives as long as the client
    run(gb.requestheaders(flow))
    sizes = gb.caches()
    assert set(sizes) == {"names", "addresses", "unicode names", "record addresses", "rdap lookupable", "rule hits",
                          "geoip", "dns", "dns in flight", "ech public names", "error causes",
                          "connection states"}  # RDAP is off
    assert sizes["rule hits"][0] >= 1 and sizes["names"][0] >= 1 and sizes["geoip"] == (1, 65536)
    assert sizes["connection states"] == (1, None)
    text = gb.tctx.master.commands.execute("geoblock.status")
    assert "caches (entries/bound): names " in text and ", dns 0/65536, " in text and "geoip 1/65536" in text
    assert "connection states: 1" in text
    assert flow.client_conn is not None


def test_forced_reload_reports_what_it_did(gb, tmp_path):
    said = run(gb.reload(force=True))
    assert "rules reloaded: ruleset" in said and "databases reloaded" in said
    assert run(gb.reload()) == "nothing changed"


def test_encrypted_client_hello_is_recorded_and_logged(gb):
    hello = client_hello_with("cloudflare-ech.com", (0xFE0D, b"\x00" * 32))
    assert tls.parse_client_hello(hello).sni == "cloudflare-ech.com"  # still a valid ClientHello
    nl = next_layer_for(gb, None, server=("127.0.0.1", 443), data=hello)
    run(gb.next_layer(nl))
    assert tls_goes_on(nl.layer)  # policy ech: log (the shipped default)
    rec = logged(gb)[-1]
    assert rec["ech"] is True and (rec["action"], rec["rule"]) == ("log", "policy:ech")
    assert "Encrypted Client Hello" in rec["reason"] and "cloudflare-ech.com" in rec["reason"]


def test_encrypted_client_hello_can_be_blocked_by_policy(gb, tmp_path, rules_dir):
    d = tmp_path / "rules"
    d.mkdir()
    (d / "policy.yaml").write_text("home_countries: [CN]\nech: block\nech_public_names: [public.example]\n")
    (d / "r.yaml").write_text("rules:\n  - {id: b, action: block, domains: [b.test]}\n")
    gb.tctx.configure(gb, geoblock_rules=str(d))
    nl = next_layer_for(gb, None, server=("127.0.0.1", 443),
                        data=client_hello_with("public.example", (0xFE0D, b"\x01" * 16)))
    run(gb.next_layer(nl))
    assert isinstance(nl.layer, enforce.DenyTLS)
    assert logged(gb)[-1]["rule"] == "policy:ech"
    plain = next_layer_for(gb, "public.example", server=("127.0.0.1", 443))
    run(gb.next_layer(plain))
    assert tls_goes_on(plain.layer)  # without ECH the same name passes


def ech_policy(gb, tmp_path, rules_dir, extra: str = "") -> None:
    """The test rules with `ech: block` (and `extra` policy lines)."""
    d = tmp_path / "ech-rules"
    shutil.copytree(rules_dir, d)
    lines = ["ech: block", *extra.splitlines()]
    keys = tuple(line.split(":", 1)[0] + ":" for line in lines)
    text = (d / "policy.yaml").read_text()
    (d / "policy.yaml").write_text("\n".join([*(l for l in text.splitlines() if not l.startswith(keys)), *lines, ""]))
    gb.tctx.configure(gb, geoblock_rules=str(d))


def test_ech_placeholder_beside_an_ordinary_sni_hides_no_name(gb, tmp_path, rules_dir):
    """GREASE ECH (what Chromium sends to every site without an ECH configuration) is recorded as such
    and passes under ech: block."""
    ech_policy(gb, tmp_path, rules_dir)
    nl = next_layer_for(gb, None, data=client_hello_with("allowed.test", (et.EXT_ECH, et.ech_outer_body())))
    run(gb.next_layer(nl))
    assert tls_goes_on(nl.layer)  # mitmproxy's own choice: not refused
    rec = logged(gb)[-1]
    assert rec["ech_grease"] is True and "ech" not in rec and rec["action"] == "allow"


@pytest.mark.parametrize("sni", [None, "cloudflare-ech.com", "edge.cloudflare-ech.com", "front.example"])
def test_ech_without_sni_or_behind_a_public_name_hides_a_name(gb, tmp_path, rules_dir, sni):
    ech_policy(gb, tmp_path, rules_dir, "ech_public_names: [cloudflare-ech.com, front.example]\n")
    nl = next_layer_for(gb, None, data=client_hello_with(sni, (et.EXT_ECH, et.ech_outer_body())))
    run(gb.next_layer(nl))
    assert isinstance(nl.layer, enforce.DenyTLS)
    rec = logged(gb)[-1]
    assert (rec["ech"], rec["rule"], rec["action"]) == (True, "policy:ech", "block") and "ech_grease" not in rec


@pytest.mark.parametrize("ext", [et.EXT_ESNI, 0xFE08, et.EXT_ECH_DRAFT_10, 0xFE0C], ids=lambda e: f"0x{e:04x}")
@pytest.mark.parametrize("sni", ["allowed.test", None])
def test_older_encrypted_sni_code_points_hide_a_name(gb, tmp_path, rules_dir, ext, sni):
    """Encrypted SNI (0xffce) and the ECH draft code points, with a cover SNI or none: refused under
    ech: block like ECH."""
    ech_policy(gb, tmp_path, rules_dir)
    nl = next_layer_for(gb, None, data=client_hello_with(sni, (ext, et.esni_body() if ext == et.EXT_ESNI
                                                             else et.ech_outer_body())))
    run(gb.next_layer(nl))
    assert isinstance(nl.layer, enforce.DenyTLS)
    rec = logged(gb)[-1]
    assert (rec["ech"], rec["rule"]) == (True, "policy:ech") and f"0x{ext:04x}" in rec["reason"]


# A real ClientHello of Chromium 156 (Debian), captured through a proxy that answered CONNECT
# update.googleapis.com:443 and read the first bytes: extension 0xfe0d beside the real name as SNI.
CHROMIUM_HELLO = os.path.join(os.path.dirname(__file__), "flows", "chromium-156-clienthello.bin")
CHROMIUM_HELLO_ADDRESS = os.path.join(os.path.dirname(__file__), "flows", "chromium-156-clienthello-address.bin")


def test_chromium_clienthello_is_a_placeholder_unless_its_sni_fronts_ech(gb, tmp_path, rules_dir):
    ech_policy(gb, tmp_path, rules_dir)
    with open(CHROMIUM_HELLO, "rb") as f:
        sent = f.read()
    parsed = et.Hello.parse(sent)
    assert et.EXT_ECH in [t for t, _ in parsed.extensions]
    nl = next_layer_for(gb, None, server=("127.0.0.1", 443), data=sent)
    run(gb.next_layer(nl))
    assert tls_goes_on(nl.layer)  # mitmproxy's own choice: not refused
    rec = logged(gb)[-1]
    assert (rec["sni"], rec["action"], rec["ech_grease"]) == ("update.googleapis.com", "allow", True)
    assert "ech" not in rec
    fronted = parsed.with_server_name(et.server_name_body(b"cloudflare-ech.com")).records()
    nl = next_layer_for(gb, None, server=("127.0.0.1", 443), data=fronted)
    run(gb.next_layer(nl))
    assert isinstance(nl.layer, enforce.DenyTLS) and logged(gb)[-1]["ech"] is True


def test_chromium_to_an_address_url_sends_ech_without_sni_which_counts(gb, tmp_path, rules_dir):
    """Chromium sends its placeholder also to https://192.0.2.1/, with no SNI (captured as above). Without
    an outer SNI a placeholder cannot be told from a real ECH hiding its name, so under ech: block it is
    refused: the documented cost of that policy (README, docs/evasion.md)."""
    ech_policy(gb, tmp_path, rules_dir)
    with open(CHROMIUM_HELLO_ADDRESS, "rb") as f:
        sent = f.read()
    assert et.EXT_SERVER_NAME not in [t for t, _ in et.Hello.parse(sent).extensions]
    nl = next_layer_for(gb, None, server=("127.0.0.1", 443), data=sent)
    run(gb.next_layer(nl))
    assert isinstance(nl.layer, enforce.DenyTLS)
    rec = logged(gb)[-1]
    assert (rec["sni"], rec["ech"], rec["rule"]) == (None, True, "policy:ech")


def dns_answer(question: str, *sections: list[str]):
    """A mitmproxy DNS flow for an A question and its answer: `sections` are the answer, authority and
    additional sections in zone-file text (dnspython builds the wire form, mitmproxy parses it)."""
    import dns.message
    import dns.rrset
    from mitmproxy import dns as mdns

    message = getattr(mdns, "DNSMessage", None) or mdns.Message
    query = dns.message.make_query(question, "A")
    answer = dns.message.make_response(query)
    for section, lines in zip((answer.answer, answer.authority, answer.additional), sections, strict=False):
        for line in lines:
            name, rdtype, rdata = line.split(" ", 2)
            section.append(dns.rrset.from_text(name, 60, "IN", rdtype, rdata))
    return tflow.tdnsflow(req=message.unpack(query.to_wire()), resp=message.unpack(answer.to_wire()))


def test_ech_public_names_are_learnt_from_dns_answers_in_every_section(gb, tmp_path, rules_dir):
    ech_policy(gb, tmp_path, rules_dir)
    sent = client_hello_with("front.example", (et.EXT_ECH, et.ech_outer_body()))
    before = next_layer_for(gb, None, data=sent)
    run(gb.next_layer(before))
    assert tls_goes_on(before.layer)  # not yet known to front ECH: a placeholder
    config = base64.b64encode(et.ech_config_list("front.example")).decode()
    flow = dns_answer("allowed.test", ["allowed.test. A 127.0.0.1"], [f'allowed.test. HTTPS 1 . ech="{config}"'],
                      [f'svc.allowed.test. SVCB 1 . alpn="h2" ech="{config}"'])
    run(gb.dns_response(flow))
    kept = [*flow.response.authorities, *flow.response.additionals]
    assert len(kept) == 2 and all(rr.https_ech is None for rr in kept)  # removed in every section
    after = next_layer_for(gb, None, data=sent)
    run(gb.next_layer(after))
    assert isinstance(after.layer, enforce.DenyTLS)
    assert logged(gb)[-1]["ech"] is True and "front.example" in logged(gb)[-1]["reason"]


def test_a_cname_chain_to_a_blocked_name_gets_the_blocked_answer(gb):
    flow = dns_answer("alias.example", ["alias.example. CNAME mid.example.", "mid.example. CNAME api.binance.com.",
                                        "api.binance.com. A 127.0.0.2"])
    run(gb.dns_response(flow))
    assert flow.response.response_code == 3 and not flow.response.answers  # NXDOMAIN
    rec = logged(gb)[-1]
    assert (rec["stage"], rec["action"], rec["name"]) == ("dns", "block", "api.binance.com")
    assert rec["chain"] == ["alias.example", "mid.example", "api.binance.com"]
    allowed = dns_answer("alias.example", ["alias.example. CNAME allowed.test.", "allowed.test. A 127.0.0.1"])
    run(gb.dns_response(allowed))
    assert [str(rr.ipv4_address) for rr in allowed.response.answers if rr.type == 1] == ["127.0.0.1"]


def test_additional_records_count_where_the_answer_leads_to_them(gb):
    """An HTTPS target's addresses in the additional section are judged (the answer leads there); a name
    server's glue is not where the client goes: it used to turn an allowed answer into NXDOMAIN."""
    glue = dns_answer("glue.example", ["glue.example. A 127.0.0.1"], ["glue.example. NS ns1.binance.com."],
                      ["ns1.binance.com. A 127.0.0.5"])
    run(gb.dns_response(glue))
    assert glue.response.response_code == 0 and [rr.type for rr in glue.response.answers] == [1]
    led = dns_answer("svc.example", ["svc.example. HTTPS 1 api.binance.com. alpn=h2"], [],
                     ["api.binance.com. A 127.0.0.2"])
    run(gb.dns_response(led))
    assert led.response.response_code == 3
    assert logged(gb)[-1]["chain"] == ["svc.example", "api.binance.com"]


def test_sni_host_mismatch_is_recorded(gb):
    f = http_flow("www.example.org")
    f.client_conn.sni = "allowed.test"
    run(gb.requestheaders(f))
    assert f.response is None
    rec = logged(gb)[-1]
    assert rec["mismatch"] == "Host www.example.org ≠ SNI allowed.test"
    assert (rec["action"], rec["rule"]) == ("log", "policy:name-mismatch")


def test_mismatch_with_a_blocked_name_is_blocked_by_the_name(gb):
    f = http_flow("binance.com")
    f.client_conn.sni = "allowed.test"  # domain fronting: an allowed SNI, a blocked Host
    run(gb.requestheaders(f))
    assert f.response.status_code == 451
    rec = logged(gb)[-1]
    assert rec["rule"] == "offshore-crypto-exchanges" and rec["mismatch"]


@pytest.mark.parametrize("target", ["0x7f000005", "2130706437", "0177.0.0.5", "127.5", "[::ffff:127.0.0.5]"])
def test_every_form_of_a_blocked_address_is_blocked(gb, target):
    c = tflow.tflow(req=tutils.treq(method=b"CONNECT", host=target, port=443, path=b"",
                                    authority=f"{target}:443".encode()))
    run(gb.http_connect(c))
    assert c.response is not None and c.response.status_code == 451, target
    assert logged(gb)[-1]["server_ip"] == "127.0.0.5"
    f = http_flow(target, host=target)  # GET http://<target>/ through the explicit proxy
    run(gb.requestheaders(f))
    assert f.response is not None and f.response.status_code == 451
    assert logged(gb)[-1]["rule"] == "blocked-network"


@pytest.mark.parametrize("target, ipv6, form", [
    ("[64:ff9b::7f00:5]", "64:ff9b::7f00:5", "nat64"), ("[2002:7f00:5::]", "2002:7f00:5::", "6to4"),
    ("[2001:0:4136:e378:8000:63bf:80ff:fffa]", "2001:0:4136:e378:8000:63bf:80ff:fffa", "teredo"),
    ("[::127.0.0.5]", "::7f00:5", "ipv4-compatible"), ("[64:ff9b:1::7f00:5]", "64:ff9b:1::7f00:5", "nat64-local"),
])
def test_an_ipv6_address_that_carries_a_blocked_address_is_blocked_and_recorded_in_both_forms(gb, target, ipv6, form):
    c = tflow.tflow(req=tutils.treq(method=b"CONNECT", host=target.strip("[]"), port=443, path=b"",
                                    authority=f"{target}:443".encode()))
    run(gb.http_connect(c))
    assert c.response is not None and c.response.status_code == 451, target
    rec = logged(gb)[-1]
    assert (rec["rule"], rec["server_ip"], rec["server_ipv6"], rec["server_ipv6_form"]) == (
        "blocked-network", "127.0.0.5", ipv6, form)
    assert (rec["country"], rec["asn"]) == ("SG", 64501)
    f = http_flow("allowed.test", host=target.strip("[]"))  # GET http://<target>/ with an allowed Host
    run(gb.requestheaders(f))
    assert f.response is not None and f.response.status_code == 451
    assert (logged(gb)[-1]["rule"], logged(gb)[-1]["server_ipv6"]) == ("blocked-network", ipv6)


def resolving_to(gb, answer):
    """Make geoblock's resolver answer every name with `answer` (as the system resolver would, e.g. DNS64)."""
    gb.engine.resolver._lookup = lambda name: [answer]


def test_a_name_resolved_to_a_nat64_address_is_placed_by_the_ipv4_address(gb):
    """offshore-only.test needs its server's country; DNS64 answers 64:ff9b::7f00:2, which reaches
    127.0.0.2 (SG): blocked as offshore, the record showing both forms."""
    resolving_to(gb, "64:ff9b::7f00:2")
    f = http_flow("offshore-only.test", host="offshore-only.test")
    run(gb.requestheaders(f))
    assert f.response is not None and f.response.status_code == 451
    rec = logged(gb)[-1]
    assert (rec["rule"], rec["country"], rec["offshore"]) == ("offshore-only", "SG", True)
    assert (rec["server_ip"], rec["server_ipv6"], rec["server_ipv6_form"]) == ("127.0.0.2", "64:ff9b::7f00:2", "nat64")


def test_an_allowed_name_resolved_to_a_nat64_address_is_dialled_at_the_ipv6_address(gb):
    """Judged where 127.0.0.1 (CN, home) is, but the request still goes to the NAT64 address: on an
    IPv6-only network that is the only way to reach it."""
    resolving_to(gb, "64:ff9b::7f00:1")
    f = http_flow("offshore-only.test", host="offshore-only.test")
    f.client_conn.proxy_mode = ProxyMode.parse("regular")
    run(gb.requestheaders(f))
    assert f.response is None
    assert (f.request.host, f.request.host_header) == ("64:ff9b::7f00:1", "offshore-only.test")
    rec = logged(gb)[-1]
    assert (rec["action"], rec["country"], rec["server_ipv6"]) == ("allow", "CN", "64:ff9b::7f00:1")


def test_a_record_line_is_compact_json_and_keeps_text_that_is_not_unicode():
    from geoblock.record import encode_line

    record = {"ts": "2026-11-24T00:00:00.000Z", "host": "bücher.example", "asn": 64500, "offshore": None}
    line = encode_line(record)
    assert line == (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
    odd = {"sni": "a\udcffb", "n": 1}  # a lone surrogate (undecodable bytes from a peer): not UTF-8
    line = encode_line(odd)
    assert line.endswith(b"\n") and line.count(b"\n") == 1 and json.loads(line) == odd


def count_decisions(gb, monkeypatch) -> list:
    judged = []
    real = gb.judging.judge

    def spy(facts):
        judged.append(facts.host)
        return real(facts)
    monkeypatch.setattr(gb.judging, "judge", spy)
    return judged


def test_with_rdap_on_a_server_it_cannot_place_keeps_the_judgement_and_one_it_may_place_does_not(gb, monkeypatch):
    # nothing answers; 8.8.8.8 is left to RDAP (the registries' delegation data would place it)
    gb.tctx.configure(gb, geoblock_rdap=True, geoblock_rdap_url="http://127.0.0.1:9/", geoblock_rir=False)
    judged = count_decisions(gb, monkeypatch)
    for target in ("192.0.2.1", "8.8.8.8"):  # documentation range (never looked up); a public address
        first = http_flow("allowed.test", host=target)
        run(gb.requestheaders(first))
        run(gb.requestheaders(on_same_connection(first, "allowed.test", host=target)))
    assert [r["country"] for r in logged(gb)] == [None] * 4
    assert len(judged) == 3  # 192.0.2.1 once; 8.8.8.8 twice: RDAP's answer may place it for the second


def test_a_change_while_a_name_is_resolved_leaves_no_judgement_to_reuse(gb, monkeypatch):
    judged = count_decisions(gb, monkeypatch)

    async def reload_meanwhile(state, name, ip, names):
        gb.judging.generation += 1  # what a reload or an option change does while the resolver is waited for
        return ip
    monkeypatch.setattr(gb.judging, "resolve", reload_meanwhile)
    first = http_flow("allowed.test")
    run(gb.requestheaders(first))
    run(gb.requestheaders(on_same_connection(first, "allowed.test")))
    assert len(judged) == 2 and len(logged(gb)) == 2


def test_start_up_heap_leaves_the_collectors_scans_and_a_reload_frees_the_old_rules(gb):
    """geoblock_gc_freeze (default on): after running(), what is alive (code, compiled rules, readers)
    is frozen out of full collections; a reload unfreezes, collects and freezes again, so a replaced
    ruleset is freed even when it sits in a reference cycle."""

    async def serve_then_reload():
        gb.running()
        frozen = heap.frozen()
        assert frozen > 10_000  # mitmproxy's and geoblock's loaded code and data
        assert not any(o is gb.engine.ruleset for o in gc.get_objects())  # out of the collector's scans
        text = gb.tctx.master.commands.execute("geoblock.status")
        shown = re.search(r"objects kept out of the collector's scans: (\d+)\n?", text)
        assert shown and int(shown[1]) > 10_000
        old = gb.engine.ruleset
        old.cycle = old  # a cycle: only the collector can free it, never while it is frozen
        gone = weakref.ref(old)
        del old
        said = await gb.reload(force=True)
        assert "rules reloaded" in said
        assert gone() is None and gb.engine.ruleset is not None
        assert not any(o is gb.engine.ruleset for o in gc.get_objects())  # the new ruleset is frozen in turn

    try:
        asyncio.run(serve_then_reload())
    finally:
        heap.release()


def test_gc_freeze_off_leaves_the_collector_alone_and_switching_it_releases(gb):
    async def serve():
        heap.release()
        base = heap.frozen()
        gb.tctx.configure(gb, geoblock_gc_freeze=False)
        gb.running()
        assert heap.frozen() == base
        assert "(geoblock_gc_freeze is off)" in gb.tctx.master.commands.execute("geoblock.status")
        gb.tctx.configure(gb, geoblock_gc_freeze=True)  # switched on while serving: applied at once
        assert heap.frozen() > base + 10_000
        gb.tctx.configure(gb, geoblock_gc_freeze=False)  # and off: everything goes back to the collector
        assert heap.frozen() == base

    try:
        asyncio.run(serve())
    finally:
        heap.release()
