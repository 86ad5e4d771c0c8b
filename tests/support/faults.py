"""Faults for end-to-end tests: a DNS stub that answers, fails or stays silent on demand, a resolver
configuration seen only by one process (a private mount namespace), an upstream that refuses or resets,
and a small tmpfs that can be filled.

Everything here lives on loopback or inside the test's own temporary directories; nothing touches the
machine's real resolver configuration or other processes.
"""

from __future__ import annotations

import random
import socket
import struct
import subprocess
import threading
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rrset


# --- DNS -------------------------------------------------------------------------------------------

class DnsStub:
    """A DNS server on a random loopback address, port 53 (glibc's resolver only speaks to port 53).

    `mode`: "answer" (A records from `names`, NXDOMAIN for others), "servfail", "silent" (never answers:
    the client waits for its own timeout), or "slow" (answers after `delay` seconds). Questions are
    counted in `seen`.
    """

    def __init__(self, names: dict[str, str]) -> None:
        self.names = dict(names)
        self.mode = "answer"
        self.delay = 0.0
        self.seen: list[str] = []
        self.lock = threading.Lock()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for _ in range(20):
            self.host = f"127.{random.randint(64, 250)}.{random.randint(1, 250)}.{random.randint(2, 250)}"
            try:
                self.sock.bind((self.host, 53))
                break
            except OSError as exc:
                if isinstance(exc, PermissionError):
                    self.sock.close()
                    raise
        else:
            self.sock.close()
            raise OSError("no free loopback address for the DNS stub")
        self.thread = threading.Thread(target=self._serve, daemon=True, name="dns-stub")
        self.thread.start()

    def resolv_conf(self, path: Path, timeout: int = 1, attempts: int = 1) -> Path:
        path.write_text(f"nameserver {self.host}\noptions timeout:{timeout} attempts:{attempts}\n")
        return path

    def set_mode(self, mode: str, delay: float = 0.0) -> None:
        assert mode in ("answer", "servfail", "silent", "slow"), mode
        with self.lock:
            self.mode, self.delay = mode, delay

    def questions(self, name: str) -> int:
        with self.lock:
            return sum(1 for n in self.seen if n == name)

    def _serve(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            try:
                query = dns.message.from_wire(data)
            except Exception:  # noqa: BLE001 - not DNS: ignore
                continue
            name = str(query.question[0].name).rstrip(".").lower()
            with self.lock:
                self.seen.append(name)
                mode, delay = self.mode, self.delay
            if mode == "silent":
                continue
            if mode == "slow":
                timer = threading.Timer(delay, self._answer, (query, name, peer))
                timer.daemon = True  # a late answer never holds up the test run's exit
                timer.start()
                continue
            self._answer(query, name, peer, servfail=mode == "servfail")

    def _answer(self, query: dns.message.Message, name: str, peer: tuple, servfail: bool = False) -> None:
        answer = dns.message.make_response(query)
        answer.flags |= dns.flags.RA
        address = self.names.get(name)
        if servfail:
            answer.set_rcode(dns.rcode.SERVFAIL)
        elif address is None:
            answer.set_rcode(dns.rcode.NXDOMAIN)
        elif query.question[0].rdtype == 1:  # A; AAAA and others: an empty answer (NODATA)
            answer.answer.append(dns.rrset.from_text(query.question[0].name, 5, "IN", "A", address))
        try:
            self.sock.sendto(answer.to_wire(), peer)
        except OSError:
            pass

    def close(self) -> None:
        self.sock.close()


def with_resolv_conf(args: list[str], resolv_conf: Path) -> list[str]:
    """`args` run in a private mount namespace where /etc/resolv.conf is `resolv_conf`.

    Only that process (and its children) sees it; the namespace goes away with the process, and the pid
    stays the program's own (sh execs it), so stopping the process stops the program.
    """
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            'mount --bind "$0" /etc/resolv.conf && exec "$@"', str(resolv_conf), *args]


def private_mounts_unavailable() -> str | None:
    """Why a private mount namespace with a bind mount cannot be made here, or None."""
    try:
        r = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                            "mount --bind /etc/hostname /etc/hostname"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare is not usable here ({exc})"
    if r.returncode != 0:
        return f"a private mount namespace with a bind mount is refused here: {r.stderr.strip()}"
    return None


# --- upstream faults -------------------------------------------------------------------------------

class RefusingPort:
    """A loopback port bound but never listening: every connection to it is refused (RST), and no other
    program can take the port while the test runs."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.sock = socket.socket()
        self.sock.bind((host, 0))
        self.port = self.sock.getsockname()[1]

    def close(self) -> None:
        self.sock.close()


class ResettingServer:
    """Accepts TCP connections, reads what comes within a moment, then resets (SO_LINGER 0 close).

    `connections` counts accepted connections: a blocked flow must leave it at 0.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._serve, daemon=True, name="resetting-server")
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
            threading.Thread(target=self._reset, args=(conn,), daemon=True).start()

    @staticmethod
    def _reset(conn: socket.socket) -> None:
        conn.settimeout(1.0)
        try:
            conn.recv(65536)  # let the request arrive, so the reset hits a request in progress
        except OSError:
            pass
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()

    def reset(self) -> None:
        with self.lock:
            self.connections = 0

    def close(self) -> None:
        self.sock.close()


# --- a small file system -------------------------------------------------------------------------

class Tmpfs:
    """A tmpfs of `size` mounted on `path` (needs root); `fill()` takes all its free space."""

    def __init__(self, path: Path, size: str = "64k") -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
                           capture_output=True, text=True, timeout=20)
        if r.returncode != 0:
            raise PermissionError(r.stderr.strip() or f"mount exited with {r.returncode}")
        self.filler = path / "filler"

    def fill(self) -> None:
        """Write a filler file until the file system is full (pages first, then single bytes)."""
        with open(self.filler, "ab", buffering=0) as f:
            for chunk in (b"\0" * 4096, b"\0"):
                try:
                    while True:
                        f.write(chunk)
                except OSError:
                    pass

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def close(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True, timeout=20)
