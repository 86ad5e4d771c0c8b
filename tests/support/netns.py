"""Network namespaces for the gateway tests (root only): a client, a gateway and server namespaces on
documentation address ranges, joined by veth pairs, with routes through the gateway.

- `Topology` creates and removes the namespaces; every name starts with a per-run prefix
  (``gb-<random>``), so parallel runs never collide, and `close()` ends every process left inside them
  before deleting them (a namespace's processes are ours: we created it).
- `inside(name)` moves the calling thread into a namespace for a moment, so the test process itself
  can open sockets there (servers that count connections, a UDP echo, Python ssl clients): a socket
  stays in the namespace it was created in.
- `NsServer` / `UdpEcho`: HTTP(S) and UDP servers on fixed ports inside a namespace, counting what
  reached them; `NsDnsStub`: a tiny DNS resolver (UDP port 53) answering A questions.
- `NsMitmdump`: a real `mitmdump --mode transparent` with geoblock in the gateway namespace, started
  with every capability dropped (the gateway needs none: see deploy/systemd/geoblock.service); a DNS
  mode on port 53 keeps only CAP_NET_BIND_SERVICE (`caps`).
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import re
import secrets
import shlex
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import dns.message
import dns.rdatatype
import dns.rrset

from .proc import REPO, LoggedProcess, mitmdump_path
from .servers import TestPKI, TestServer

GATEWAY_SH = REPO / "scripts" / "gateway.sh"
PREFIX = "gb-"

_libc = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWNET = 0x40000000


def sh(*cmd: str, check: bool = True, timeout: float = 30, **kw) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip() or r.stdout.strip()}")
    return r


def namespaces() -> list[str]:
    out = sh("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def unavailable() -> str | None:
    """Why namespaces cannot be used here (the only reasons a gateway test may skip), or None."""
    if os.geteuid() != 0:
        return "the gateway tests need root (network namespaces, nftables, sysctls)"
    name = f"{PREFIX}probe-{secrets.token_hex(3)}"
    try:
        r = sh("ip", "netns", "add", name, check=False)
    except FileNotFoundError:
        return "cannot create network namespaces: the ip command (iproute2) is missing"
    if r.returncode != 0:
        return f"cannot create network namespaces: ip netns add: {r.stderr.strip()}"
    sh("ip", "netns", "del", name, check=False)
    return None


@contextlib.contextmanager
def inside(netns: str) -> Iterator[None]:
    """Run the calling thread in network namespace `netns` for the duration of the block."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
        try:
            if _libc.setns(target, _CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns({netns}): {os.strerror(err)}")
        finally:
            os.close(target)
        try:
            yield
        finally:
            if _libc.setns(own, _CLONE_NEWNET) != 0:  # pragma: no cover - would leave the thread astray
                err = ctypes.get_errno()
                raise OSError(err, f"setns back: {os.strerror(err)}")
    finally:
        os.close(own)


# ------------------------------------------------------------------------------------------ topology

# Addresses (documentation ranges only; they exist only inside the namespaces).
CLIENT4, CLIENT6 = "192.0.2.2", "2001:db8:1::2"
GW_IN4, GW_IN6 = "192.0.2.1", "2001:db8:1::1"
HOME4, HOME6 = "198.51.100.10", "2001:db8:a::10"  # CN (home) in the test database
OFFSHORE4, OFFSHORE6 = "203.0.113.10", "2001:db8:b::10"  # SG (offshore)
BLOCKED4, BLOCKED6 = "203.0.113.99", "2001:db8:b::99"  # SG, and a network rule blocks it

GEO_PLACES: dict[str, tuple[str, int]] = {
    "198.51.100.0/24": ("CN", 64500),
    "2001:db8:a::/48": ("CN", 64500),
    "203.0.113.0/24": ("SG", 64501),
    "2001:db8:b::/48": ("SG", 64501),
}

GW_IN_IFACE = "gb-in"  # the gateway's client-facing interface


@dataclass
class Topology:
    """Namespaces `<prefix>-<role>`; `close()` removes them (and whatever runs inside) for sure."""

    prefix: str = field(default_factory=lambda: f"{PREFIX}{secrets.token_hex(3)}")
    roles: list[str] = field(default_factory=list)

    def ns(self, role: str) -> str:
        return f"{self.prefix}-{role}"

    def add(self, role: str) -> str:
        name = self.ns(role)
        sh("ip", "netns", "add", name)
        self.roles.append(role)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def link(self, a: str, a_if: str, b: str, b_if: str) -> None:
        sh("ip", "-n", self.ns(a), "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", self.ns(b))
        sh("ip", "-n", self.ns(a), "link", "set", a_if, "up")
        sh("ip", "-n", self.ns(b), "link", "set", b_if, "up")

    def addr(self, role: str, iface: str, *cidrs: str) -> None:
        for cidr in cidrs:
            extra = ["nodad"] if ":" in cidr else []  # usable at once, no duplicate address detection wait
            sh("ip", "-n", self.ns(role), "addr", "add", cidr, "dev", iface, *extra)

    def default_route(self, role: str, via4: str, via6: str) -> None:
        sh("ip", "-n", self.ns(role), "route", "add", "default", "via", via4)
        sh("ip", "-n", self.ns(role), "-6", "route", "add", "default", "via", via6)

    def exec_args(self, role: str, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns(role), *cmd]

    def run(self, role: str, *cmd: str, check: bool = False, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return sh(*self.exec_args(role, *cmd), check=check, timeout=timeout)

    def pids(self) -> list[int]:
        out: list[int] = []
        for role in self.roles:
            r = sh("ip", "netns", "pids", self.ns(role), check=False)
            out += [int(p) for p in r.stdout.split()]
        return out

    def close(self) -> list[str]:
        """Kill what runs inside, delete the namespaces; returns problems (empty when all went)."""
        problems = []
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = self.pids()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 5
            while pids and time.monotonic() < deadline and self.pids():
                time.sleep(0.05)
        if self.pids():
            problems.append(f"processes left in {self.prefix}-*: {self.pids()}")
        for role in reversed(self.roles):
            r = sh("ip", "netns", "del", self.ns(role), check=False)
            if r.returncode != 0:
                problems.append(f"ip netns del {self.ns(role)}: {r.stderr.strip()}")
        self.roles.clear()
        left = [n for n in namespaces() if n.startswith(self.prefix + "-")]
        if left:
            problems.append(f"namespaces left: {left}")
        return problems


def gateway_topology(servers: tuple[str, ...] = ("home", "off")) -> Topology:
    """client --(gb-in)-- gw --+-- home (198.51.100.0/24, 2001:db8:a::/64)
                               +-- off  (203.0.113.0/24,  2001:db8:b::/64)
    The caller must `close()` it, also when this raises (it closes itself then)."""
    topo = Topology()
    try:
        topo.add("cli")
        topo.add("gw")
        topo.link("cli", "eth0", "gw", GW_IN_IFACE)
        topo.addr("cli", "eth0", f"{CLIENT4}/24", f"{CLIENT6}/64")
        topo.addr("gw", GW_IN_IFACE, f"{GW_IN4}/24", f"{GW_IN6}/64")
        topo.default_route("cli", GW_IN4, GW_IN6)
        nets = {"home": (("198.51.100.1/24", "2001:db8:a::1/64"), (HOME4, HOME6)),
                "off": (("203.0.113.1/24", "2001:db8:b::1/64"), (OFFSHORE4, OFFSHORE6, BLOCKED4, BLOCKED6))}
        for role in servers:
            (gw4, gw6), addrs = nets[role]
            topo.add(role)
            topo.link("gw", f"gb-{role}", role, "eth0")
            topo.addr("gw", f"gb-{role}", gw4, gw6)
            topo.addr(role, "eth0", *(f"{a}/{64 if ':' in a else 24}" for a in addrs))
            topo.default_route(role, gw4.split("/")[0], gw6.split("/")[0])
    except BaseException:
        topo.close()
        raise
    return topo


def gateway_sh(topo: Topology, *args: str, state: Path | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The project's own scripts/gateway.sh, run for the gateway namespace (--netns)."""
    extra = ["--state", str(state)] if state is not None else []
    return sh("bash", str(GATEWAY_SH), *args, "--netns", topo.ns("gw"), *extra, check=check)


# ------------------------------------------------------------------------------------------ servers

class NsServer(TestServer):
    """An HTTP(S) server on host:port inside a namespace; counts accepted TCP connections, TLS
    handshakes that failed, and requests (Host, path): a TestServer bound inside `netns`."""

    __test__ = False

    def __init__(self, netns: str, host: str, port: int, pki: TestPKI | None = None) -> None:
        self.netns = netns
        super().__init__(host, pki, port)

    def _binding(self) -> contextlib.AbstractContextManager[None]:
        return inside(self.netns)


class _NsUdpServer:
    """A UDP server on host:port inside a namespace; subclasses answer in `handle`."""

    def __init__(self, netns: str, host: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with inside(netns):
            self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((host, port))
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            reply = self.handle(data, peer)
            if reply is not None:
                with contextlib.suppress(OSError):
                    self.sock.sendto(reply, peer)

    def handle(self, data: bytes, peer: tuple) -> bytes | None:
        raise NotImplementedError

    def close(self) -> None:
        self._stop.set()
        self.thread.join(2)
        self.sock.close()


class UdpEcho(_NsUdpServer):
    """A UDP echo on host:port inside a namespace; `datagrams` counts what arrived."""

    def __init__(self, netns: str, host: str, port: int) -> None:
        self.datagrams = 0
        self.peers: list[str] = []  # source address of each datagram
        super().__init__(netns, host, port)

    def handle(self, data: bytes, peer: tuple) -> bytes | None:
        self.datagrams += 1
        self.peers.append(peer[0])
        return data

    def reset(self) -> None:
        self.datagrams = 0
        self.peers.clear()


class NsDnsStub(_NsUdpServer):
    """A stub DNS resolver on host:53 (UDP) inside a namespace: every A question gets `answer`, other
    types an empty NOERROR; `seen` lists the names asked."""

    def __init__(self, netns: str, host: str, answer: str) -> None:
        self.answer = answer
        self.seen: list[str] = []
        super().__init__(netns, host, 53)

    def handle(self, data: bytes, peer: tuple) -> bytes | None:
        try:
            query = dns.message.from_wire(data)
        except Exception:  # noqa: BLE001 - not a DNS message: no answer
            return None
        question = query.question[0]
        self.seen.append(str(question.name).rstrip("."))
        reply = dns.message.make_response(query)
        if question.rdtype == dns.rdatatype.A:
            reply.answer.append(dns.rrset.from_text(question.name, 60, "IN", "A", self.answer))
        return reply.to_wire()

    def reset(self) -> None:
        self.seen.clear()


def udp_exchange(netns: str, host: str, port: int, payload: bytes = b"ping", timeout: float = 1.0) -> bytes | None:
    """Send one datagram from inside `netns`; the answer, or None when none came in `timeout`."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with inside(netns):
        sock = socket.socket(family, socket.SOCK_DGRAM)
    with sock:
        sock.settimeout(timeout)
        sock.sendto(payload, (host, port))
        try:
            return sock.recv(2048)
        except (TimeoutError, socket.timeout):
            return None


def tcp_connect(netns: str, host: str, port: int, timeout: float = 5.0) -> socket.socket:
    """A TCP connection opened from inside `netns` (the socket stays there)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with inside(netns):
        sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


# ------------------------------------------------------------------------------------------ mitmdump

def capabilities(pid: int) -> dict[str, int]:
    caps = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Cap"):
            key, value = line.split(":", 1)
            caps[key] = int(value.strip(), 16)
    return caps


def seccomp_mode(pid: int) -> int:
    """The process's seccomp mode (/proc/PID/status): 0 none, 1 strict, 2 a filter."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Seccomp:"):
            return int(line.split(":", 1)[1])
    raise AssertionError(f"no Seccomp line for process {pid}")


UNITS = REPO / "deploy" / "systemd"


def unit_command(unit: str, workdir: Path, rules: Path, instance: str = "", key: str = "ExecStart") -> list[str]:
    """The command line of `key` in deploy/systemd/<unit>, with the unit's installed paths mapped into
    this repository and `workdir` (state, logs), `%i` = `instance`, each bare $VAR (the operator's
    $GEOBLOCK_OPTS) left out and ${VAR} the value of the unit's own Environment=VAR=... line."""
    text = (UNITS / unit).read_text().replace("\\\n", " ")
    lines = [line for line in text.splitlines() if line.startswith(f"{key}=")]
    assert len(lines) == 1, f"{unit}: expected one {key}= line"
    env = [line.removeprefix("Environment=").split("=", 1) for line in text.splitlines()
           if line.startswith("Environment=") and "=" in line.removeprefix("Environment=")]
    mapping = [(f"${{{name}}}", value) for name, value in env] + [
        ("/opt/geoblock/.venv-run-3.11/bin/", str(Path(mitmdump_path()).parent) + "/"),
        ("/opt/geoblock/", f"{REPO}/"),
        ("/var/lib/geoblock", str(workdir / "state")),
        ("/var/log/geoblock", str(workdir / "log")),
        ("/etc/geoblock/rules", str(rules)),
        ("%i", instance),
    ]
    argv = []
    for arg in shlex.split(lines[0].split("=", 1)[1]):
        if re.fullmatch(r"\$[A-Z_]+", arg):  # $GEOBLOCK_OPTS, $GEOBLOCK_DNS_OPTS: the operator's, empty
            continue
        for old, new in mapping:
            arg = arg.replace(old, new)
        argv.append(arg)
    (workdir / "state").mkdir(parents=True, exist_ok=True)
    (workdir / "log").mkdir(parents=True, exist_ok=True)
    return argv


def unit_capabilities(unit: str) -> tuple[str, ...]:
    """The capabilities deploy/systemd/<unit> gives its process (AmbientCapabilities=), in setpriv's
    spelling: ("net_bind_service",) for CAP_NET_BIND_SERVICE; () for none."""
    caps: list[str] = []
    for line in (UNITS / unit).read_text().splitlines():
        if line.startswith("AmbientCapabilities="):
            caps += [c.removeprefix("CAP_").lower() for c in line.split("=", 1)[1].split()]
    return tuple(caps)


class NsMitmdump(LoggedProcess):
    """`mitmdump --mode transparent` with geoblock inside a namespace, listening on every address of it,
    started with no capabilities at all (setpriv: empty bounding set, no new privileges), like the
    systemd unit's unprivileged service. `argv` is its command line (e.g. a unit's, see
    `unit_command`); `options` are added as --set; `caps` are kept (setpriv's names); `seccomp` is a
    prefix from support.sandbox.seccomp_prefix (the unit's system call filter) or None."""

    def __init__(self, topo: Topology, role: str, port: int, workdir: Path, argv: list[str],
                 options: dict[str, object] | None = None, quiet_until: Path | None = None,
                 caps: tuple[str, ...] = (), seccomp: list[str] | None = None) -> None:
        self.topo = topo
        self.role = role
        self.port = port
        self.workdir = workdir
        self.log_path = workdir / f"mitmdump-{port}.log"
        self.quiet_until = quiet_until
        args = list(argv)
        # "listening at" (how start() knows it is ready) is an info line; with `quiet_until` (a file
        # geoblock creates when configured, e.g. its decision log) the command line's verbosity stays
        # and readiness is: that file exists and the port listens.
        extra = {} if quiet_until else {"termlog_verbosity": "info"}
        for key, value in {**extra, **(options or {})}.items():
            if isinstance(value, bool):
                value = "true" if value else "false"
            given = [i for i, a in enumerate(args) if a.startswith(f"{key}=") and i > 0 and args[i - 1] == "--set"]
            if given:  # mitmdump refuses an option given twice: replace the command line's value
                args[given[0]] = f"{key}={value}"
            else:
                args += ["--set", f"{key}={value}"]
        # `caps` (e.g. "net_bind_service" for DNS on port 53) are the only ones kept, like a unit's
        # AmbientCapabilities=; by default none
        keep = "".join(f",+{c}" for c in caps)
        drop = ["setpriv", "--no-new-privs", f"--inh-caps=-all{keep}", f"--bounding-set=-all{keep}", "--"]
        # `seccomp`: a command prefix that applies a unit's system call filter (support.sandbox)
        self.args = topo.exec_args(role, *drop, *(seccomp or []), *args)
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = None

    def start(self, timeout: float = 30.0) -> "NsMitmdump":
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"mitmdump exited with {self.proc.returncode}:\n{self.output()}")
            if self.quiet_until is None and "listening at" in self.output():
                return self
            if self.quiet_until is not None and self.quiet_until.exists() and self._listening():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mitmdump did not listen on {self.port}:\n{self.output()}")

    def _listening(self) -> bool:
        r = self.topo.run(self.role, "ss", "-Hltn", f"sport = :{self.port}")
        return "LISTEN" in r.stdout

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid



def curl(topo: Topology, role: str, *args: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    """curl inside a namespace; -D - prints the answer's head on stdout."""
    cmd = ["curl", "-sS", "--max-time", str(timeout), "-D", "-", "-o", "-", *args]
    return sh(*topo.exec_args(role, *cmd), check=False, timeout=timeout + 10)


def ip_literal(host: str) -> str:
    return f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
