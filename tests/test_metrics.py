"""The status and metrics endpoint (geoblock_metrics) of a real mitmdump with geoblock: /metrics in the
Prometheus text format, /status as JSON, /healthz, and the `geoblock status` command, read after real
blocked and allowed flows (curl through the proxy to local servers the test GeoIP database places:
127.0.0.1 in CN = home, 127.0.0.4 nowhere).

Each proxy asks for port 0 (any free port) and the test reads the address geoblock logs
("geoblock: metrics at http://127.0.0.1:PORT/metrics"), so tests running at once never share a port.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from support.decisions import read
from support.geodb import write_asn_db, write_country_db
from support.proc import Mitmdump, free_port
from support.waiting import wait_for

POLICY = "home_countries: [CN]\ndefault: allow\nunknown_country: block\non_error: block\n"
RULES = ("rules:\n  - {id: crypto, action: block, domains: [binance.com]}\n"
         "  - {id: offshore, action: block, domains: [offshore-only.test], offshore: true}\n")
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Gateway:
    """A mitmdump with geoblock (rules above, the test databases, a decision log under `tmp`) and its
    metrics endpoint on `metrics` (default: a free port chosen by the system, read from the log)."""

    def __init__(self, tmp: Path, metrics: str = "127.0.0.1:0") -> None:
        self.tmp = tmp
        rules = tmp / "rules"
        rules.mkdir(parents=True)
        (rules / "policy.yaml").write_text(POLICY)
        (rules / "rules.yaml").write_text(RULES)
        geo = tmp / "geo"
        geo.mkdir()
        write_country_db(geo / "GeoLite2-Country.mmdb")
        write_asn_db(geo / "GeoLite2-ASN.mmdb")
        self.log = tmp / "decisions.jsonl"
        self.m = Mitmdump(tmp / "conf", {
            "geoblock_rules": rules, "geoblock_country_db": geo / "GeoLite2-Country.mmdb",
            "geoblock_asn_db": geo / "GeoLite2-ASN.mmdb", "geoblock_log": self.log,
            "geoblock_metrics": metrics,
        })
        self.endpoint = ""

    def __enter__(self) -> Gateway:
        self.m.start(timeout=60)
        found = wait_for(lambda: re.search(r"geoblock: metrics at (http://\S+)/metrics", self.m.output()),
                         15, "the metrics endpoint's address in the log")
        self.endpoint = found.group(1)  # type: ignore[union-attr]
        return self

    def __exit__(self, *exc: object) -> None:
        self.m.stop()

    def curl(self, url: str, host: str) -> int:
        """The HTTP status of a GET of `url` through the proxy with this Host header (0: no answer)."""
        r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "20",
                            "-x", self.m.url, "-H", f"Host: {host}", url], capture_output=True, text=True, timeout=40)
        return int(r.stdout or 0)

    def get(self, path: str) -> tuple[int, str, str]:
        """(status, Content-Type, body) of a GET of `path` at the endpoint."""
        try:
            with DIRECT.open(self.endpoint + path, timeout=10) as answer:
                return answer.status, answer.headers["Content-Type"], answer.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers["Content-Type"], exc.read().decode()

    def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample of /metrics, parsed by prometheus_client's own parser: (name, sorted labels) -> value."""
        code, ctype, body = self.get("/metrics")
        assert code == 200 and ctype.startswith("text/plain; version="), (code, ctype)
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(body) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


@pytest.fixture
def gw(tmp_path, web):
    with Gateway(tmp_path) as g:
        g.web = web
        yield g


def test_metrics_status_and_health_follow_blocked_and_allowed_flows(gw):
    home = gw.web["cn"]
    url = f"http://{home.host}:{home.port}/"
    before = gw.samples()
    assert value(before, "geoblock_rules_loaded") == 1
    assert value(before, "geoblock_decision_log_writable") == 1
    assert value(before, "geoblock_decision_log_records_written_total") == 0
    version = read_version(gw)
    assert value(before, "geoblock_ruleset_info", version=version) == 1
    assert value(before, "geoblock_ruleset_rules", action="block") == 2
    assert value(before, "geoblock_database_info", database="country", edition="GeoLite2-Country",
                 build=time.strftime("%Y-%m-%d", time.gmtime(value(before, "geoblock_database_build_timestamp_seconds",
                                                                  database="country")))) == 1
    assert value(before, "geoblock_cache_bound", cache="geoip") == 65536
    assert not [k for k in before if k[0] == "geoblock_decisions_total"]

    assert gw.curl(url, "allowed.test") == 200
    assert gw.curl(url, "allowed.test") == 200
    assert gw.curl(url, "binance.com") == 451
    assert gw.curl(url, "api.binance.com") == 451
    # a rule that needs the server's country, for a server the database does not place: unknown_country
    assert gw.curl("http://127.0.0.4:9/", "offshore-only.test") == 451
    assert gw.curl(url, "a..b") == 451  # not a host name: on_error

    after = gw.samples()
    assert value(after, "geoblock_decisions_total", stage="http", action="allow", rule="") == 2
    assert value(after, "geoblock_decisions_total", stage="http", action="block", rule="crypto") == 2
    assert value(after, "geoblock_decisions_total", stage="http", action="block", rule="offshore") == 1
    assert value(after, "geoblock_decisions_total", stage="http", action="block", rule="") == 1
    assert value(after, "geoblock_unknown_country_verdicts_total", stage="http", cause="country") == 1
    assert value(after, "geoblock_on_error_verdicts_total", stage="http", cause="invalid-input") == 1
    assert value(after, "geoblock_invalid_inputs_total", stage="http", field="Host") == 1
    assert value(after, "geoblock_decision_log_records_written_total") == 6 == len(read(gw.log))
    assert value(after, "geoblock_decision_log_records_lost_total") == 0
    assert value(after, "process_resident_memory_bytes")
    # bounded labels: no name or address anywhere in the exposition
    _, _, text = gw.get("/metrics")
    for secret in ("binance.com", "allowed.test", "127.0.0.1", "127.0.0.4"):
        assert secret not in text

    code, ctype, body = gw.get("/status")
    status = json.loads(body)
    assert code == 200 and ctype == "application/json"
    assert status["healthy"] is True and status["health"] == "ok"
    assert status["ruleset"]["version"] == version and status["ruleset"]["rules"] == 2
    assert status["decisions"] == {"allow": 2, "log": 0, "block": 4, "error": 0}
    assert status["decision_log"] == {"path": str(gw.log), "written": 6, "lost": 0, "problem": None}
    assert status["databases"]["country"]["edition"] == "GeoLite2-Country"
    assert status["reloads"]["failures"] == {"rules": 0, "databases": 0}
    assert status["caches"]["geoip"]["bound"] == 65536
    assert any(line.startswith(f"ruleset {version}: 2 rules") for line in status["summary"])

    assert gw.get("/healthz") == (200, "text/plain; charset=utf-8", "ok\n")
    assert gw.get("/nothing")[0] == 404


def read_version(gw: Gateway) -> str:
    found = re.search(r"geoblock: ruleset (\w+):", gw.m.output())
    assert found, gw.m.output()
    return found.group(1)


def test_healthz_is_503_while_the_decision_log_cannot_be_written(gw):
    home = gw.web["cn"]
    url = f"http://{home.host}:{home.port}/"
    assert gw.curl(url, "allowed.test") == 200
    gw.log.rename(gw.log.with_name("decisions.jsonl.1"))  # moved away (rotation) ...
    gw.log.mkdir()  # ... and its path can no longer be opened as a file, not even by root
    # geoblock notices a moved log within a second; each decision until then still goes to the moved file
    wait_for(lambda: gw.curl(url, "allowed.test") == 200 and gw.get("/healthz")[0] == 503, 15,
             "/healthz to say 503")
    code, _, reason = gw.get("/healthz")
    assert code == 503
    assert f"the decision log {gw.log} is not writable: Is a directory" in reason
    assert gw.curl(url, "binance.com") == 451  # still enforcing
    samples = gw.samples()
    assert value(samples, "geoblock_decision_log_writable") == 0
    lost = value(samples, "geoblock_decision_log_records_lost_total")
    assert lost is not None and lost >= 2
    status = json.loads(gw.get("/status")[2])
    assert status["healthy"] is False and status["decision_log"]["problem"] == "Is a directory"
    # fixed: the next record is written and the gateway is healthy again
    gw.log.rmdir()
    assert gw.curl(url, "allowed.test") == 200
    assert gw.get("/healthz") == (200, "text/plain; charset=utf-8", "ok\n")
    assert read(gw.log)[0]["lost_before"] == lost


def test_a_metrics_address_that_cannot_be_bound_keeps_the_proxy_enforcing(tmp_path, web):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        g = Gateway(tmp_path, metrics=f"127.0.0.1:{port}")
        with g.m:
            wait_for(lambda: f"cannot serve metrics at 127.0.0.1:{port}" in g.m.output(), 15, "the bind error")
            assert "Address already in use" in g.m.output()
            home = web["cn"]
            url = f"http://{home.host}:{home.port}/"
            assert g.curl(url, "binance.com") == 451
            assert g.curl(url, "allowed.test") == 200
            assert [r["action"] for r in read(g.log)] == ["block", "allow"]


def geoblock_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "geoblock.tools.cli", *args], capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).resolve().parents[1] / "addons")


def test_geoblock_status_prints_what_a_running_gateway_says(gw):
    home = gw.web["cn"]
    assert gw.curl(f"http://{home.host}:{home.port}/", "binance.com") == 451
    r = geoblock_cli("status", "--url", gw.endpoint)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"geoblock at {gw.endpoint}: healthy"
    assert f"ruleset {read_version(gw)}: 2 rules (0 allow, 0 log, 2 block)" in r.stdout
    assert "decisions: 0 allow, 0 log, 1 block, 0 errors" in r.stdout
    assert f"decision log {gw.log}: 1 written, 0 lost" in r.stdout
    r = geoblock_cli("status", "--url", gw.endpoint, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["decisions"]["block"] == 1


def test_geoblock_status_says_clearly_when_nothing_answers():
    port = free_port()  # nothing listens there
    r = geoblock_cli("status", "--url", f"http://127.0.0.1:{port}")
    assert r.returncode == 2 and r.stdout == ""
    assert f"geoblock: no geoblock status at http://127.0.0.1:{port}/status: [Errno 111] Connection refused" \
        in r.stderr
    assert "geoblock_metrics" in r.stderr


# --- Prometheus itself: promtool on the shipped rules and the live endpoint, a real server scraping --------

ALERTS = Path(__file__).resolve().parents[1] / "deploy" / "prometheus" / "geoblock-alerts.yml"
DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "geoblock-dashboard.json"


def dashboard_queries() -> list[str]:
    """Every PromQL expression of the shipped Grafana dashboard, its $instance variable set to all."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    assert len(exprs) >= 17
    return [e.replace("$instance", ".*") for e in exprs]


def test_every_metric_the_dashboard_and_the_alerts_use_is_served(gw):
    home = gw.web["cn"]
    url = f"http://{home.host}:{home.port}/"
    # flows that give every labelled counter a series: a block, an invalid name, an unknown country
    assert gw.curl(url, "binance.com") == gw.curl(url, "a..b") == gw.curl("http://127.0.0.4:9/", "offshore-only.test")
    exprs = dashboard_queries() + [line.split("expr:", 1)[1] for line in ALERTS.read_text().splitlines()
                                   if line.strip().startswith("expr:")]
    used = set(re.findall(r"\b((?:geoblock|process)_\w+)", " ".join(exprs)))
    served = {name for name, _ in gw.samples()}
    assert used and used <= served, used - served


def need(tool: str) -> str:
    found = shutil.which(tool)
    if found is None:
        pytest.skip(f"{tool} is not installed (apt-get install prometheus; .ci/run and scripts/test.sh do it as root)")
    return found


def test_the_shipped_alert_rules_pass_promtool():
    r = subprocess.run([need("promtool"), "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 7 rules found" in r.stdout


def test_the_live_metrics_pass_promtool_check_metrics(gw):
    promtool = need("promtool")
    home = gw.web["cn"]
    assert gw.curl(f"http://{home.host}:{home.port}/", "binance.com") == 451
    assert gw.curl(f"http://{home.host}:{home.port}/", "a..b") == 451
    _, _, text = gw.get("/metrics")
    r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout + r.stderr == "", r.stdout + r.stderr


class Prometheus:
    """A real Prometheus server on loopback scraping `target` (host:port) every second as job "geoblock",
    with its database in `tmp`, and the alert rules shipped in deploy/ loaded."""

    def __init__(self, tmp: Path, target: str) -> None:
        self.port = free_port()
        tmp.mkdir(parents=True, exist_ok=True)
        config = tmp / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            f"rule_files: ['{ALERTS}']\n"
            f"scrape_configs:\n  - job_name: geoblock\n    static_configs: [{{targets: ['{target}']}}]\n")
        self.log = tmp / "prometheus.log"
        self.args = [need("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={tmp / 'tsdb'}",
                     f"--web.listen-address=127.0.0.1:{self.port}"]
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Prometheus:
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT)
        wait_for(lambda: self.ready(), 60, f"prometheus ready on {self.port}:\n{self.log.read_text()}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def ready(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, self.log.read_text()
        try:
            with DIRECT.open(f"http://127.0.0.1:{self.port}/-/ready", timeout=5) as answer:
                return answer.status == 200
        except OSError:
            return False

    def query(self, promql: str) -> list[dict]:
        """The result vector of an instant query through Prometheus's HTTP API."""
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with DIRECT.open(url, timeout=10) as answer:
            body = json.load(answer)
        assert body["status"] == "success", body
        return body["data"]["result"]

    def value(self, promql: str) -> float | None:
        result = self.query(promql)
        return float(result[0]["value"][1]) if len(result) == 1 else None


def test_a_real_prometheus_scrapes_the_counters_of_blocked_and_allowed_flows(gw, tmp_path):
    target = gw.endpoint.removeprefix("http://")
    with Prometheus(tmp_path / "prometheus", target) as prom:
        wait_for(lambda: prom.value('up{job="geoblock"}') == 1, 30, "prometheus scraping geoblock")
        home = gw.web["cn"]
        url = f"http://{home.host}:{home.port}/"
        for host in ("allowed.test", "binance.com", "www.binance.com", "allowed.test", "binance.com"):
            gw.curl(url, host)
        wait_for(lambda: prom.value('geoblock_decisions_total{action="block",rule="crypto",stage="http"}') == 3,
                 30, "the block counter in prometheus")
        assert prom.value('sum(geoblock_decisions_total{action="allow"})') == 2
        assert prom.value("geoblock_decision_log_records_written_total") == 5
        assert prom.value("geoblock_rules_loaded") == 1
        assert prom.value('geoblock_ruleset_info{version="%s"}' % read_version(gw)) == 1
        # the shipped alerts are evaluated against it and none fires on a healthy gateway
        assert prom.query('ALERTS{alertstate="firing"}') == []
        # every query of the shipped dashboard is valid PromQL (query() asserts Prometheus's "success")
        for expr in dashboard_queries():
            prom.query(expr)


def test_the_endpoint_follows_its_option_while_serving(gb):
    """Set while serving, geoblock_metrics (re)binds the endpoint at once; empty turns it off. (The addon
    in mitmproxy's test context; `serving` stands for its running hook having run.)"""
    gb.serving = True
    try:
        gb.tctx.configure(gb, geoblock_metrics="127.0.0.1:0")
        first = gb.endpoint.url
        with DIRECT.open(first + "/healthz", timeout=10) as answer:
            assert answer.read() == b"ok\n"
        gb.tctx.configure(gb, geoblock_metrics="[::1]:0")
        assert gb.endpoint.url.startswith("http://[::1]:")
        with DIRECT.open(gb.endpoint.url + "/status", timeout=10) as answer:
            assert json.load(answer)["healthy"] is True
        with pytest.raises(urllib.error.URLError):
            DIRECT.open(first + "/healthz", timeout=10)  # the old address is closed
        gb.tctx.configure(gb, geoblock_metrics="")
        assert gb.endpoint is None
    finally:
        if gb.endpoint is not None:
            gb.endpoint.stop()


@pytest.mark.parametrize("bad", ["9464", "localhost:9464", "127.0.0.1:65536", "127.0.0.1:", ":9464"])
def test_a_malformed_metrics_address_is_refused_naming_the_option(gb, bad):
    from mitmproxy import exceptions
    with pytest.raises(exceptions.OptionsError, match="geoblock_metrics"):
        gb.tctx.configure(gb, geoblock_metrics=bad)


def test_idle_and_surplus_connections_to_the_endpoint_are_closed():
    """Found by a review: connections to the endpoint that never finish a request held a thread each,
    without a limit or a timeout. A silent one is now closed after CLIENT_TIMEOUT seconds, and past
    MAX_CLIENTS at once a new one is closed without being served."""
    from geoblock.mitm import metrics

    class Quiet:
        judging = None

    server = metrics.MetricsServer.__new__(metrics.MetricsServer)
    server.addon, server.address, server.registry = Quiet(), ("127.0.0.1", 0), metrics.CollectorRegistry()
    server._server = server._thread = None
    server.start()
    try:
        host, port = server._server.server_address[:2]
        idle = [socket.create_connection((host, port), timeout=10) for _ in range(metrics.MAX_CLIENTS)]
        for s in idle:
            s.sendall(b"GET /metrics HTTP/1.1\r\n")  # and nothing more
        surplus = socket.create_connection((host, port), timeout=10)
        surplus.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
        assert surplus.recv(100) == b""  # closed unserved: every slot is held
        started = time.monotonic()
        assert all(s.recv(100) == b"" for s in idle)  # each closed by the endpoint once it stayed silent
        assert metrics.CLIENT_TIMEOUT - 1 <= time.monotonic() - started <= metrics.CLIENT_TIMEOUT + 5
        with socket.create_connection((host, port), timeout=10) as again:  # the slots are free again
            again.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            assert again.recv(12).startswith(b"HTTP/1.0 200")
    finally:
        server.stop()
