"""Running a real mitmdump with geoblock for tests, benchmarks and recording scripts."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BLOCK_PY = REPO / "addons" / "block.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mitmdump_path() -> str:
    return str(Path(sys.executable).with_name("mitmdump"))


def gateway_path() -> str:
    """The production runner of this environment (`geoblock-gateway`, geoblock/mitm/run.py)."""
    return str(Path(sys.executable).with_name("geoblock-gateway"))


def runner_wanted() -> bool:
    """GEOBLOCK_RUNNER=1: the tests' mitmdumps with geoblock run as `geoblock-gateway` instead of
    `mitmdump -s addons/block.py` (the same command line, geoblock built in)."""
    return os.environ.get("GEOBLOCK_RUNNER", "") not in ("", "0")


def as_runner(args: list[str]) -> list[str]:
    """A `mitmdump ... -s addons/block.py ...` command line as the runner's: `geoblock-gateway` with the
    same arguments, less the `-s` of addons/block.py (geoblock is built in; other -s scripts stay and run
    before geoblock, as they do when given before it)."""
    out = [gateway_path()]
    rest = args[1:]
    i = 0
    while i < len(rest):
        if rest[i] == "-s" and i + 1 < len(rest) and rest[i + 1] == str(BLOCK_PY):
            i += 2
            continue
        out.append(rest[i])
        i += 1
    return out


def geoblock_options(rules: Path, geo_dir: Path, log: Path, **extra: object) -> dict[str, object]:
    """mitmdump options (name -> value, for `Mitmdump`) that run geoblock on the rules directory `rules`,
    the test databases in `geo_dir` (GeoLite2-Country.mmdb, GeoLite2-ASN.mmdb) and the decision log file
    `log`, plus any `extra` option by name."""
    return {
        "geoblock_rules": rules,
        "geoblock_country_db": geo_dir / "GeoLite2-Country.mmdb",
        "geoblock_asn_db": geo_dir / "GeoLite2-ASN.mmdb",
        "geoblock_log": log,
        **extra,
    }


def curl(proxy: "Mitmdump", url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """curl `url` through `proxy` (10 s at most), with `args` before the URL; stdout holds the response
    head (-D -) then the body, stderr curl's own errors (e.g. "CONNECT tunnel failed, response 451")."""
    cmd = ["curl", "-sS", "--max-time", "10", "-x", proxy.url, "-D", "-", "-o", "-", *args, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


def connect(proxy: "Mitmdump", authority: bytes | str) -> tuple[socket.socket, bytes]:
    """A CONNECT to `proxy` with exactly this authority (sent as given, also as the Host header): the
    connected socket (TCP_NODELAY, 10 s timeouts) and the proxy's answer head, up to its blank line (what
    came before the proxy closed, if it did)."""
    if isinstance(authority, str):
        authority = authority.encode()
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(b"CONNECT " + authority + b" HTTP/1.1\r\nHost: " + authority + b"\r\n\r\n")
    head = b""
    sock.settimeout(10)
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    return sock, head


def tunnel(proxy: "Mitmdump", authority: str) -> socket.socket:
    """A tunnel through `proxy` to `authority`: `connect`, asserting that the proxy answered 200."""
    sock, head = connect(proxy, authority)
    assert head.startswith(b"HTTP/1.1 200"), head
    return sock


class LoggedProcess:
    """A child process whose output goes to `log_path`: read it, stop it (terminate, then kill)."""

    proc: "subprocess.Popen[bytes] | None" = None
    log_path: Path
    _log = None

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


class Mitmdump(LoggedProcess):
    """`mitmdump` as a child process on 127.0.0.1:<port>; `with_geoblock=False` runs it bare. With
    `runner=True` (default: GEOBLOCK_RUNNER=1 in the environment) a mitmdump with geoblock runs as the
    production runner `geoblock-gateway` instead, with the same options."""

    def __init__(self, confdir: Path, options: dict[str, object] | None = None, with_geoblock: bool = True,
                 extra_args: list[str] | None = None, port: int | None = None, runner: bool | None = None) -> None:
        self.port = port or free_port()
        self.confdir = confdir
        self.args = [mitmdump_path(), "--listen-host", "127.0.0.1", "-p", str(self.port),
                     "--set", f"confdir={confdir}", "--set", "termlog_verbosity=info"]
        if with_geoblock:
            self.args += ["-s", str(BLOCK_PY)]
        options = dict(options or {})
        if (with_geoblock or str(BLOCK_PY) in (extra_args or [])) and "geoblock_metrics" not in options:
            # many mitmdumps run at once in the tests: the endpoint's default port would collide; off
            # unless a test asks for it
            options["geoblock_metrics"] = ""
        for key, value in options.items():
            if isinstance(value, bool):
                value = "true" if value else "false"
            self.args += ["--set", f"{key}={value}"]
        self.args += extra_args or []
        if (with_geoblock or str(BLOCK_PY) in self.args) and (runner_wanted() if runner is None else runner):
            self.args = as_runner(self.args)
        self.log_path = confdir / f"mitmdump-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> "Mitmdump":
        self.confdir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mitmdump exited with {self.proc.returncode}:\n{self.output()}")
            # mitmproxy 12 accepts TCP before its scripts are configured (the connection waits), so
            # "ready" is its own "listening" line, after the scripts have loaded: one line for each mode's
            # server (with --mode regular --mode dns@PORT, the DNS server may bind a moment after the
            # first, and a UDP question sent before that is lost).
            if self.output().count("listening at") >= max(1, self.args.count("--mode")):
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=2):
                        return self
                except OSError as exc:
                    self.stop()  # never leave a process behind
                    raise RuntimeError(f"mitmdump is not answering on {self.port} ({exc}):\n{self.output()}") from None
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mitmdump did not listen on {self.port}:\n{self.output()}")


    def __enter__(self) -> "Mitmdump":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


NAME_MAP_PY = REPO / "tests" / "support" / "name_map.py"


def with_names(confdir: Path, names: dict[str, tuple[str, int]], options: dict[str, object] | None = None,
               extra_args: list[str] | None = None) -> Mitmdump:
    """A Mitmdump with geoblock that reaches `names` ({"NAME:PORT": (address, port)}) at local servers, as
    if DNS said so, and nothing else off the machine (tests/support/name_map.py, loaded before geoblock)."""
    mapping = ",".join(f"{name}={address}:{port}" for name, (address, port) in names.items())
    return Mitmdump(confdir, {**(options or {}), "test_name_map": mapping}, with_geoblock=False,
                    extra_args=["-s", str(NAME_MAP_PY), "-s", str(BLOCK_PY), *(extra_args or [])])
