"""The status and metrics endpoint: `/metrics` (Prometheus), `/status` (JSON) and `/healthz`, served by a
small HTTP server in a daemon thread of the proxy (option `geoblock_metrics`, "host:port", "" = off).

Nothing is counted here: the hooks keep their counters in plain dicts (`judging.Judging.counts`,
`.decisions`, `.on_errors`, `.unknowns`, `.invalids`, one increment per decision) and the engine, the
decision log, the resolver and RDAP keep theirs. A scrape reads them all at that moment (`GeoblockCollector`,
a prometheus_client custom collector on a registry of its own), copying each dict first: the event loop
goes on changing them while the server's thread reads (a dict copy is one step under the GIL).

- `/metrics`: the Prometheus text format (prometheus_client.generate_latest), `geoblock_*` metrics plus
  the process's own (`process_*`: CPU, memory, open files); labels are bounded: stage, action, rule id,
  cause, cache name, database; never a name or an address.
- `/status`: one JSON object, what a person asks of a running gateway (`status_of`): ruleset, databases,
  decisions, decision log, reloads, last problem, RDAP, resolver, caches, health, and the same lines as
  the `geoblock.status` command (`summary`). `geoblock status` (tools/cli.py) prints it.
- `/healthz`: 200 `ok` while a ruleset is loaded and the decision log's last write succeeded (or the log
  is off); 503 with the reason otherwise (`health_of`).

A port that cannot be bound does not stop the proxy: `MetricsServer.start` raises OSError, which the addon
logs (naming the address) before it goes on enforcing.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from geoblock.core.names import InvalidHost, normalize_ip
from geoblock.mitm import heap

if TYPE_CHECKING:
    from geoblock.mitm.addon import GeoBlock

logger = logging.getLogger("geoblock")

DEFAULT_ADDRESS = "127.0.0.1:9464"


def parse_address(text: str) -> tuple[str, int] | None:
    """The (host, port) of a `geoblock_metrics` value: "host:port", "[v6 address]:port"; "" is None (off).
    The host is an IP address (a name would be resolved at every start); port 0 = any free port.
    Raises ValueError saying what is wrong."""
    text = text.strip()
    if not text:
        return None
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"geoblock_metrics must be host:port (e.g. {DEFAULT_ADDRESS}) or empty, not {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        normalize_ip(host)
    except InvalidHost as exc:
        raise ValueError(f"geoblock_metrics: the host must be an IP address, not {host!r} ({exc})") from None
    return host, int(port_text)


def _label(name: str) -> str:
    """A cache's name as a label value: "record addresses" -> "record_addresses"."""
    return name.replace(" ", "_")


def health_of(addon: GeoBlock) -> tuple[bool, str]:
    """(healthy, reason): healthy while a ruleset is loaded and the decision log's last write succeeded
    (or the log is off). The reason is "ok" or a sentence for a person."""
    if addon.judging.engine is None:
        return False, "no ruleset is loaded"
    log = addon.judging.log
    if log is not None and log.problem is not None:
        return False, (f"the decision log {log.path} is not writable: {log.problem} "
                       f"({log.lost} record(s) lost so far)")
    return True, "ok"


def _iso(epoch: float) -> str:
    return _dt.datetime.fromtimestamp(epoch, _dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def status_of(addon: GeoBlock) -> dict[str, Any]:
    """What a running gateway shows a person, as one JSON-ready dict:

    - `healthy` (bool), `health` (the reason, `health_of`); `monitor` (geoblock_monitor);
    - `ruleset`: {version, rules, by_action {action: rules}, domains, files, path} or None;
    - `databases`: {"country"|"asn": {edition, build (YYYY-MM-DD), path} or None}; `database_problems`;
    - `decisions`: {allow, log, block, error}: counts since start;
    - `decision_log`: {path, written, lost, problem} or None (off);
    - `reloads`: {rules, databases, failures {rules, databases}, last_ok, last_good_load (ISO 8601 UTC)};
    - `last_problem`: the last reload refusal, or None;
    - `rdap`: RdapLocator.stats() or None (off); `resolver`: Resolver.stats();
    - `caches`: {name: {entries, bound (None: none)}}; `frozen_objects`: objects out of the GC's scans;
    - `summary`: the lines of the `geoblock.status` command."""
    judging = addon.judging
    engine = judging.engine
    healthy, reason = health_of(addon)
    out: dict[str, Any] = {"healthy": healthy, "health": reason, "monitor": judging.monitor,
                           "ruleset": None, "databases": {"country": None, "asn": None}, "database_problems": [],
                           "decisions": dict(judging.counts), "decision_log": None, "reloads": None,
                           "last_problem": None, "rdap": None, "resolver": None}
    if engine is not None:
        rs = engine.ruleset
        s = rs.summary()
        out["ruleset"] = {"version": rs.version, "rules": s["rules"], "by_action": s["by_action"],
                          "domains": s["domains"], "files": len(rs.source.files), "path": engine.rules_path}
        geo = engine.geo
        if geo is not None:
            for key, info in (("country", geo.country_info), ("asn", geo.asn_info)):
                if info is not None:
                    out["databases"][key] = {"edition": info.edition, "build": f"{info.build:%Y-%m-%d}",
                                             "path": info.path}
            out["database_problems"] = list(geo.problems)
        out["reloads"] = {"rules": engine.reloads, "databases": engine.database_reloads,
                          "failures": dict(engine.reload_failures), "last_ok": engine.last_reload_ok,
                          "last_good_load": _iso(engine.last_good_load)}
        out["last_problem"] = engine.last_problem
        out["rdap"] = engine.lookups.stats() if engine.lookups is not None else None
        out["resolver"] = dict(engine.resolver.stats)
    log = judging.log
    if log is not None:
        out["decision_log"] = {"path": log.path, "written": log.written, "lost": log.lost, "problem": log.problem}
    out["caches"] = {name: {"entries": n, "bound": bound} for name, (n, bound) in addon.caches().items()}
    out["frozen_objects"] = heap.frozen()
    out["summary"] = addon.status().splitlines()
    return out


class GeoblockCollector(Collector):
    """geoblock's metrics, read from the addon's state at each scrape (see the module's documentation)."""

    def __init__(self, addon: GeoBlock) -> None:
        self.addon = addon

    def collect(self) -> Iterator[Metric]:  # noqa: C901 - one metric family after another
        judging = self.addon.judging
        engine = judging.engine

        yield _counted("geoblock_decisions", "Decisions by stage, action and deciding rule (rule: a rule id, "
                       "policy:<key>, or empty: the default or on_error).", ["stage", "action", "rule"],
                       judging.decisions)
        yield _counted("geoblock_on_error_verdicts", "Verdicts of the policy's on_error (a flow geoblock could not "
                       "judge), by stage and cause.", ["stage", "cause"], judging.on_errors)
        yield _counted("geoblock_unknown_country_verdicts", "Verdicts of the policy's unknown_country (a rule needed "
                       "the server's location), by stage and what was missing (country, ASN, address).",
                       ["stage", "cause"], judging.unknowns)
        yield _counted("geoblock_invalid_inputs", "Names that could not be normalised (judged by on_error), by "
                       "stage and field.", ["stage", "field"], judging.invalids)

        log = judging.log
        if log is not None:
            yield CounterMetricFamily("geoblock_decision_log_records_written", "Decision records written.",
                                      value=log.written)
            yield CounterMetricFamily("geoblock_decision_log_records_lost", "Decision records that could not be "
                                      "written (each counted; the next record written says how many).",
                                      value=log.lost)
            yield GaugeMetricFamily("geoblock_decision_log_writable", "1 when the decision log's last write "
                                    "succeeded, 0 when it failed.", value=0 if log.problem else 1)

        yield GaugeMetricFamily("geoblock_rules_loaded", "1 while a ruleset is loaded.",
                                value=1 if engine is not None else 0)
        yield GaugeMetricFamily("geoblock_monitor_mode", "1 in monitor mode (geoblock_monitor: nothing enforced).",
                                value=1 if judging.monitor else 0)
        if engine is not None:
            yield from self._engine(engine)

        caches = self.addon.caches()
        entries = GaugeMetricFamily("geoblock_cache_entries", "Entries in each of geoblock's caches.",
                                    labels=["cache"])
        bounds = GaugeMetricFamily("geoblock_cache_bound", "The most entries each bounded cache keeps.",
                                   labels=["cache"])
        for name, (n, bound) in caches.items():
            if name == "connection states":
                continue
            entries.add_metric([_label(name)], n)
            if bound is not None:
                bounds.add_metric([_label(name)], bound)
        yield entries
        yield bounds
        yield GaugeMetricFamily("geoblock_connection_states", "Per-connection states held (open connections "
                                "geoblock has seen).", value=caches["connection states"][0])

    def _engine(self, engine: Any) -> Iterator[Metric]:
        rs = engine.ruleset
        summary = rs.summary()
        yield InfoMetricFamily("geoblock_ruleset", "The ruleset in force (version: a hash of its files).",
                               value={"version": rs.version})
        rules = GaugeMetricFamily("geoblock_ruleset_rules", "Rules in the ruleset in force, by action.",
                                  labels=["action"])
        for action, n in summary["by_action"].items():
            rules.add_metric([action], n)
        yield rules
        yield GaugeMetricFamily("geoblock_ruleset_domains", "Domains listed in the ruleset in force.",
                                value=summary["domains"])
        geo = engine.geo
        info = InfoMetricFamily("geoblock_database", "Each GeoIP database in force: its edition and build date.",
                                labels=["database"])
        build = GaugeMetricFamily("geoblock_database_build_timestamp_seconds", "When each GeoIP database in force "
                                  "was built (Unix time).", labels=["database"])
        if geo is not None:
            for key, db in (("country", geo.country_info), ("asn", geo.asn_info)):
                if db is not None:
                    info.add_metric([key], {"edition": db.edition, "build": f"{db.build:%Y-%m-%d}"})
                    build.add_metric([key], db.build.timestamp())
        yield info
        yield build
        reloads = CounterMetricFamily("geoblock_reloads", "Reloads that swapped in new rules or databases.",
                                      labels=["what"])
        reloads.add_metric(["rules"], engine.reloads)
        reloads.add_metric(["databases"], engine.database_reloads)
        yield reloads
        failures = CounterMetricFamily("geoblock_reload_failures", "Changes a reload refused (the last good one "
                                       "kept), by what.", labels=["what"])
        for what, n in dict(engine.reload_failures).items():
            failures.add_metric([what], n)
        yield failures
        yield GaugeMetricFamily("geoblock_reload_last_successful", "1 when the last reload loaded everything it "
                                "tried, 0 when it refused something.", value=1 if engine.last_reload_ok else 0)
        yield GaugeMetricFamily("geoblock_reload_last_success_timestamp_seconds", "When the rules and databases "
                                "last all loaded (start-up or reload; Unix time).", value=engine.last_good_load)
        st = dict(engine.resolver.stats)
        for key, text in (("lookups", "Name resolutions started (a rule needed a server's place)."),
                          ("timeouts", "Name resolutions that timed out (geoblock_dns_timeout)."),
                          ("failures", "Name resolutions that failed."),
                          ("shed", "Name resolutions not started: too many in flight.")):
            yield CounterMetricFamily(f"geoblock_resolver_{key}", text, value=st.get(key, 0))
        if engine.lookups is not None:
            rd = engine.lookups.stats()
            for key, name, text in (("lookups", "lookups", "RDAP lookups started."),
                                    ("negatives", "failures", "RDAP lookups that gave no country."),
                                    ("shed", "shed", "RDAP lookups not started: the queue was full.")):
                yield CounterMetricFamily(f"geoblock_rdap_{name}", text, value=rd.get(key, 0))
            yield GaugeMetricFamily("geoblock_rdap_in_flight", "RDAP lookups queued or running.",
                                    value=rd.get("in_flight", 0))


def registry_of(addon: GeoBlock) -> CollectorRegistry:
    """A registry of its own (not prometheus_client's global one) with geoblock's collector and the
    process's (process_* metrics)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GeoblockCollector(addon))
    ProcessCollector(registry=registry)
    return registry


# The endpoint shares the proxy's process: a client that opens many connections, or leaves them idle, must
# not take its threads, file handles or CPU (found by a review: 3,000 idle connections held 3,000 threads
# and slowed the proxy for a minute and a half). At most MAX_CLIENTS are served at once, the rest are
# closed at once; a connection that sends nothing for CLIENT_TIMEOUT seconds is closed.
MAX_CLIENTS = 8
CLIENT_TIMEOUT = 5.0  # seconds


def _counted(name: str, documentation: str, labels: list[str], counts: dict[Any, int]) -> CounterMetricFamily:
    """A counter family from one of Judging's counting dicts (label values tuple -> count), copied first:
    the event loop's thread goes on counting while a scrape reads."""
    family = CounterMetricFamily(name, documentation, labels=labels)
    for values, n in counts.copy().items():
        family.add_metric(list(values), n)
    return family


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self._slots = threading.BoundedSemaphore(MAX_CLIENTS)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # too many at once: closed, nothing read
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server_version = "geoblock"
    disable_nagle_algorithm = True
    timeout = CLIENT_TIMEOUT  # seconds a connection may stay silent (socket timeout, socketserver)
    endpoint: MetricsServer  # set on the class made for each server

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path = self.path.split("?", 1)[0]
        endpoint = self.endpoint
        try:
            if path == "/metrics":
                body, ctype, code = generate_latest(endpoint.registry), CONTENT_TYPE_LATEST, 200
            elif path == "/status":
                body = json.dumps(status_of(endpoint.addon), indent=1).encode() + b"\n"
                ctype, code = "application/json", 200
            elif path == "/healthz":
                healthy, reason = health_of(endpoint.addon)
                body, ctype, code = reason.encode() + b"\n", "text/plain; charset=utf-8", 200 if healthy else 503
            else:
                body = b"geoblock: /metrics, /status, /healthz\n"
                ctype, code = "text/plain; charset=utf-8", 404
        except Exception as exc:  # noqa: BLE001 - a scrape must never take the proxy down
            logger.error(f"geoblock: metrics endpoint: {path}: {type(exc).__name__}: {exc}")
            body, ctype, code = f"error: {exc}\n".encode(), "text/plain; charset=utf-8", 500
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        pass  # scrapes are not worth a log line each


class MetricsServer:
    """The endpoint on `address` (host, port) for `addon`, served from a daemon thread.
    `start()` binds (raises OSError when the address cannot be bound); `stop()` closes it."""

    def __init__(self, addon: GeoBlock, address: tuple[str, int]) -> None:
        self.addon = addon
        self.address = address
        self.registry = registry_of(addon)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """http://host:port of the bound server (the port chosen when 0 was asked for)."""
        host, port = (str(self._server.server_address[0]), int(self._server.server_address[1])) if self._server \
            else self.address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def start(self) -> None:
        host = self.address[0]
        handler = type("Handler", (_Handler,), {"endpoint": self})
        server_class: type[_Server] = _Server6 if ":" in host else _Server
        self._server = server_class(self.address, handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.5},
                                        name="geoblock-metrics", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        self._thread = None
