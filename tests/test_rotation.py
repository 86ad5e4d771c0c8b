"""Rotating the decision log under a running gateway loses and splits no record.

A real mitmdump with geoblock serves a steady stream of plain HTTP requests from several keep-alive
clients (each request with a Host of its own, so that its record can be found, and one client sending the
same request again and again, whose records take the keep-alive memo's path). Meanwhile the log is moved
away, by hand and by logrotate itself with the shipped deploy/logrotate/geoblock (paths rewritten to the
test's directory). Afterwards every request has exactly one record, whole, across the files.
"""

from __future__ import annotations

import grp
import gzip
import http.client
import json
import os
import pwd
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from support.decisions import read
from support.proc import REPO, Mitmdump, geoblock_options
from support.record_schema import check

pytestmark = pytest.mark.e2e

SHIPPED = REPO / "deploy" / "logrotate" / "geoblock"
REPEATED = "same.allowed.test"  # the Host the repeating client sends every time


class Traffic:
    """Clients sending requests through `proxy` to the plain HTTP server `web` until stopped: `unique`
    clients with a new Host per request (`<client>-<n>.allowed.test`), one with the same Host every time.
    A request counts as sent once its answer (200) has come back."""

    def __init__(self, proxy: Mitmdump, web, unique: int = 3) -> None:
        self.proxy, self.web = proxy, web
        self.hosts: list[str] = []  # every request answered, by its Host
        self.problems: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client, args=(f"c{i}", False), daemon=True)
                         for i in range(unique)]
        self._threads.append(threading.Thread(target=self._client, args=("same", True), daemon=True))

    def _client(self, who: str, same: bool) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.proxy.port, timeout=10)
        n = 0
        try:
            while not self._stop.is_set():
                host = REPEATED if same else f"{who}-{n}.allowed.test"
                n += 1
                conn.request("GET", f"http://127.0.0.1:{self.web.port}/", headers={"Host": host})
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    self.problems.append(f"{host}: {response.status}")
                    return
                with self._lock:
                    self.hosts.append(host)
        except OSError as exc:
            self.problems.append(f"{who}: {exc!r}")
        finally:
            conn.close()

    def __enter__(self) -> Traffic:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(20)

    def sent(self) -> int:
        with self._lock:
            return len(self.hosts)

    def wait_for(self, count: int, timeout: float = 30.0) -> None:
        """Until `count` more requests than now have been answered."""
        target = self.sent() + count
        deadline = time.monotonic() + timeout
        while self.sent() < target:
            assert not self.problems, self.problems
            assert time.monotonic() < deadline, f"only {self.sent()} of {target} requests answered"
            time.sleep(0.02)


def records_in(path: Path) -> list[dict]:
    """The records of a log file, plain or gzip-compressed: every line a whole record that fits the schema."""
    if path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8") as f:
            found = [json.loads(line) for line in f.read().splitlines()]
        check(found)
        return found
    return read(path)


def assert_one_record_per_request(traffic: Traffic, files: list[Path]) -> None:
    """Every request answered has exactly one record across `files` (each whole and non-empty), none
    lost, none repeated."""
    time.sleep(0.3)  # the last answers' records (written just before or after the client has them)
    assert not traffic.problems, traffic.problems
    per_file = {f.name: records_in(f) for f in files}
    assert all(per_file.values()), {name: len(recs) for name, recs in per_file.items()}  # each file took records
    recs = [r for found in per_file.values() for r in found]
    assert not [r for r in recs if "lost_before" in r]
    seen: dict[str, int] = {}
    for r in recs:
        seen[r["host"]] = seen.get(r["host"], 0) + 1
    sent: dict[str, int] = {}
    for host in traffic.hosts:
        sent[host] = sent.get(host, 0) + 1
    assert seen == sent, {h: (seen.get(h), sent.get(h)) for h in set(seen) | set(sent) if seen.get(h) != sent.get(h)}
    assert sent[REPEATED] > 10 and len(sent) > 100  # both paths (judged anew, and the memo's) under load


@pytest.fixture
def gateway(tmp_path, rules_dir, geo_dir):
    log = tmp_path / "logs" / "decisions.jsonl"
    m = Mitmdump(tmp_path / "conf", geoblock_options(rules_dir, geo_dir, log))
    m.decisions = log
    with m:
        yield m


def test_moving_the_log_away_under_load_loses_and_splits_no_record(gateway, web):
    log: Path = gateway.decisions
    moved = log.with_name("decisions.jsonl.1")
    with Traffic(gateway, web["cn"]) as traffic:
        traffic.wait_for(200)
        log.rename(moved)  # as logrotate does: records go on into the moved file until geoblock notices
        traffic.wait_for(200)
        time.sleep(1.5)  # past geoblock's check (at most once a second while it writes)
        traffic.wait_for(200)
    assert log.exists()  # geoblock opened a new file at the path itself
    assert_one_record_per_request(traffic, [moved, log])
    assert "cannot write the decision log" not in gateway.output()


def shipped_config(directory: Path, logs: Path) -> Path:
    """deploy/logrotate/geoblock with its paths in `logs` and its `su` user the one running the test."""
    user, group = pwd.getpwuid(os.geteuid()).pw_name, grp.getgrgid(os.getegid()).gr_name
    text = SHIPPED.read_text()
    assert "copytruncate" not in text.replace("# - no copytruncate", "").replace("no copytruncate", "")
    assert "su geoblock geoblock" in text and "/var/log/geoblock/" in text
    text = text.replace("/var/log/geoblock/", f"{logs}/").replace("su geoblock geoblock", f"su {user} {group}")
    conf = directory / "logrotate.conf"
    conf.write_text(text)
    conf.chmod(0o644)  # logrotate ignores a configuration others may write
    return conf


def test_logrotate_with_the_shipped_file_under_load_loses_and_splits_no_record(gateway, web, tmp_path):
    logrotate = shutil.which("logrotate") or ("/usr/sbin/logrotate" if Path("/usr/sbin/logrotate").exists() else None)
    if logrotate is None:
        pytest.skip("logrotate is not installed (Debian package logrotate; .ci/run installs it)")
    log: Path = gateway.decisions
    conf = shipped_config(tmp_path, log.parent)

    def rotate() -> None:
        done = subprocess.run([logrotate, "--force", "--state", str(tmp_path / "logrotate.state"), str(conf)],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr

    with Traffic(gateway, web["cn"]) as traffic:
        traffic.wait_for(200)
        rotate()  # decisions.jsonl -> decisions.jsonl.1, not compressed yet (delaycompress)
        traffic.wait_for(200)
        time.sleep(1.5)
        traffic.wait_for(200)
        rotate()  # decisions.jsonl.1 -> decisions.jsonl.2.gz, decisions.jsonl -> decisions.jsonl.1
        traffic.wait_for(200)
        time.sleep(1.5)
        traffic.wait_for(200)
    files = sorted(p.name for p in log.parent.iterdir())
    assert files == ["decisions.jsonl", "decisions.jsonl.1", "decisions.jsonl.2.gz"], files
    assert_one_record_per_request(traffic, [log.parent / name for name in files])
    assert "cannot write the decision log" not in gateway.output()


def test_an_idle_gateway_lets_go_of_a_moved_log(gateway, web):
    """Moved away while no request comes: geoblock's watcher (every geoblock_reload_interval, 2 s here)
    opens a new file at the path without waiting for a record, and the next record goes there."""
    log: Path = gateway.decisions
    with Traffic(gateway, web["cn"], unique=1) as traffic:
        traffic.wait_for(20)
    time.sleep(0.3)
    moved = log.with_name("decisions.jsonl.1")
    log.rename(moved)
    deadline = time.monotonic() + 10
    while not log.exists():
        assert time.monotonic() < deadline, "geoblock did not open a new log while idle"
        time.sleep(0.05)
    assert log.read_bytes() == b""
    with Traffic(gateway, web["cn"], unique=1) as more:
        more.wait_for(5)
    time.sleep(0.3)
    assert len(read(log)) == len(more.hosts) and len(read(moved)) == len(traffic.hosts)
