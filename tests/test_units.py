"""The shipped systemd units (deploy/systemd/), checked by systemd's own tools in a subprocess:

- `systemd-analyze security --offline=true UNIT`: each service's exposure score is at or under the score
  docs/systemd.md gives it (the "exposure now" column), and every shipped service is in that table;
- `systemd-analyze verify UNIT`: no unknown directive, every program it starts exists (the unit's
  /opt/geoblock/ paths mapped into this repository, in a scratch copy);

and the download units' jobs under their own system call filters (support.sandbox): `geoblock lists
update` under geoblock-lists.service's, HTTPS with urllib and aiohttp under both update units'. The other
units' filters are applied in tests/test_gateway.py and tests/test_geoip_update.py.

None needs systemd to be running. Without systemd-analyze (or one too old for --offline, before systemd
250) or python3-seccomp the tests skip, saying so; under GEOBLOCK_REQUIRE_ALL=1 (CI) a skip fails the run.
"""

from __future__ import annotations

import http.server
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from support import sandbox

REPO = Path(__file__).resolve().parents[1]
UNITS = REPO / "deploy" / "systemd"
DOC = REPO / "docs" / "systemd.md"
SERVICES = sorted(p.name for p in UNITS.glob("*.service"))


def analyze() -> str:
    """The systemd-analyze program; skips the test when it is missing or has no --offline."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    version = subprocess.run([tool, "--version"], capture_output=True, text=True, check=False).stdout
    m = re.match(r"systemd (\d+)", version)
    if not m or int(m.group(1)) < 250:
        pytest.skip(f"systemd-analyze too old for security --offline (needs systemd 250): {version[:40]!r}")
    return tool


def documented_scores() -> dict[str, float]:
    """docs/systemd.md's table: unit file name -> the exposure it is held to (the last column)."""
    scores = {}
    for line in DOC.read_text().splitlines():
        m = re.match(r"\| `([\w@.-]+\.service)` \|.*\| (\d+\.\d) [A-Z]+ \|$", line)
        if m:
            scores[m.group(1)] = float(m.group(2))
    return scores


def exposure(tool: str, unit: Path) -> tuple[float, str]:
    """(overall exposure 0.0-10.0, the whole report) of `systemd-analyze security --offline=true unit`."""
    r = subprocess.run([tool, "security", "--offline=true", "--no-pager", str(unit)],
                       capture_output=True, text=True, check=False, timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d)", r.stdout + r.stderr)
    assert m, f"no score for {unit.name} (exit {r.returncode}):\n{r.stdout}\n{r.stderr}"
    return float(m.group(1)), r.stdout


def test_every_service_is_in_the_documented_table() -> None:
    assert sorted(documented_scores()) == SERVICES


@pytest.mark.parametrize("name", SERVICES)
def test_exposure_is_no_higher_than_documented(name: str) -> None:
    tool = analyze()
    score, report = exposure(tool, UNITS / name)
    limit = documented_scores()[name]
    assert score <= limit, f"{name}: exposure {score}, documented {limit} (docs/systemd.md)\n{report}"


def test_the_check_fails_a_unit_that_loses_its_sandbox(tmp_path: Path) -> None:
    """The gateway unit with its hardening lines removed scores what it did before (9.6 UNSAFE): above
    the documented limit, so the test above would fail."""
    tool = analyze()
    text = (UNITS / "geoblock-gateway.service").read_text()
    bare = text[:text.index("# Hardening")]
    (tmp_path / "geoblock-gateway.service").write_text(bare)
    score, _ = exposure(tool, tmp_path / "geoblock-gateway.service")
    assert score > documented_scores()["geoblock-gateway.service"] and score >= 9.0


@pytest.mark.parametrize("name", sorted(p.name for p in UNITS.iterdir()))
def test_unit_verifies(name: str, tmp_path: Path) -> None:
    tool = analyze()
    # the units run from the runtime environment (.venv-run-3.11, docs/install.md); the tests run in the
    # test environment, which holds the same commands
    venv_bin = Path(sys.executable).parent
    text = (UNITS / name).read_text().replace("/opt/geoblock/.venv-run-3.11/bin/", f"{venv_bin}/")
    text = text.replace("/opt/geoblock/", f"{REPO}/")
    copy = tmp_path / name.replace("@.", "@8080.")  # a template is verified as one of its instances
    copy.write_text(text)
    r = subprocess.run([tool, "verify", "--no-pager", copy.name], cwd=tmp_path, capture_output=True, text=True,
                       check=False, timeout=60)
    assert r.returncode == 0 and r.stdout == "" and r.stderr == "", (r.returncode, r.stdout, r.stderr)


def test_lists_update_under_the_units_system_call_filter(tmp_path: Path) -> None:
    """`geoblock lists update` (geoblock-lists.service's job) under that unit's SystemCallFilter= and
    RestrictAddressFamilies=: it downloads a feed from a local server and installs the list."""
    if reason := sandbox.unavailable():
        pytest.skip(reason)
    body = b"binance.com  Binance\nokx.com  OKX\n"

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        (tmp_path / "lists").mkdir()
        conf = tmp_path / "feeds.yaml"
        conf.write_text(f"feeds:\n  - name: regulator\n    url: http://127.0.0.1:{server.server_port}/list.txt\n"
                        "    output: lists/feed.txt\n    min_entries: 1\n")
        cmd = [*sandbox.seccomp_prefix("geoblock-lists.service"), sys.executable, "-m", "geoblock.tools.cli",
               "lists", "update", str(conf)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=REPO, check=False,
                           env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO / "addons")})
    finally:
        server.shutdown()
        server.server_close()
    assert r.returncode == 0, r.stderr
    assert [line.split()[0] for line in (tmp_path / "lists" / "feed.txt").read_text().splitlines()
            if line and not line.startswith("#")] == ["binance.com", "okx.com"]


HTTPS_CLIENTS = """
import asyncio, http.server, ssl, sys, threading, urllib.request
import aiohttp
cert, key, ca = sys.argv[1:4]
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
threading.Thread(target=server.serve_forever, daemon=True).start()
url = f"https://localhost:{server.server_port}/"
client = ssl.create_default_context(cafile=ca)
print("urllib", urllib.request.urlopen(url, context=client, timeout=10).read().decode())
async def fetch():
    async with aiohttp.ClientSession() as session:
        async with session.get(url, ssl=client) as response:
            return await response.text()
print("aiohttp", asyncio.run(fetch()))
"""


@pytest.mark.parametrize("unit", ["geoblock-geoip-update.service", "geoblock-lists.service"])
def test_https_downloads_work_under_the_update_units_filter(unit: str, pki) -> None:  # noqa: ANN001 (fixture)
    """The download units' filters (MemoryDenyWriteExecute= among them) leave HTTPS working: Python's ssl
    with urllib (the list feeds, DB-IP) and aiohttp (pygeoipupdate, MaxMind), against a local TLS server
    in the same filtered process. (The mitmdump units cannot have MemoryDenyWriteExecute=: pyOpenSSL's
    callbacks need writable and executable memory, which the gateway tests showed.)"""
    if reason := sandbox.unavailable():
        pytest.skip(reason)
    assert sandbox.unit_filter(unit)["mdwe"] is True
    cmd = [*sandbox.seccomp_prefix(unit), sys.executable, "-c", HTTPS_CLIENTS,
           str(pki.cert_pem), str(pki.key_pem), str(pki.ca_pem)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert (r.returncode, r.stdout) == (0, "urllib ok\naiohttp ok\n"), r.stderr
