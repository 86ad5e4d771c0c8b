"""A real headless Chromium (Debian's `chromium`) for the browser tests, through an explicit proxy.

`visit(url, ...)` runs one Chromium with its own profile directory, loads one page and returns what a
user would see: the page's DOM as text (`--dump-dom`) and a rendered screenshot (`--screenshot`, PNG).
Chromium trusts only the certificates whose public keys the test names
(`--ignore-certificate-errors-spki-list`, which Chromium honours only with its own `--user-data-dir`):
a page loads over HTTPS only if the certificate offered is one of them, so a test can tell the server's
own certificate from mitmproxy's.

Chromium resolves no name itself (`--host-resolver-rules`): with a proxy it sends every name to the
proxy, and anything else fails instead of reaching the network. Its background services (updates,
sync, safe browsing) are switched off.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

# Chromium takes a few seconds to start on two shared cores; a page that does not come in this time is a
# failure (the process group is killed), never retried.
VISIT_TIMEOUT = 120.0


def spki_hash(cert_pem: Path) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo)) of a PEM certificate's key: the form
    `--ignore-certificate-errors-spki-list` takes (the same as an HPKP pin, RFC 7469 section 2.4)."""
    cert = x509.load_pem_x509_certificate(cert_pem.read_bytes())
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


@dataclass
class Visit:
    """What one page load showed: `dom` is the serialised DOM after load (Chromium's own error page
    when the load failed), `png` the screenshot's bytes (b"" when none was written), `log` Chromium's
    stderr."""

    url: str
    returncode: int
    dom: str
    png: bytes
    log: str

    @property
    def problems(self) -> str:
        """Chromium's log without its complaints about the missing desktop bus (none in a container)."""
        return "\n".join(line for line in self.log.splitlines() if "dbus" not in line)

    @property
    def title(self) -> str:
        start = self.dom.find("<title>")
        end = self.dom.find("</title>", start)
        return self.dom[start + 7:end] if start >= 0 and end > start else ""


def visit(url: str, proxy_url: str, profile: Path, trust: Sequence[Path] = (), timeout: float = VISIT_TIMEOUT,
          extra: Sequence[str] = ()) -> Visit:
    """Load `url` in a fresh headless Chromium through the HTTP proxy `proxy_url`, with `profile` as its
    user data directory (created; one per visit, so visits are independent). `trust`: PEM certificates
    whose keys Chromium accepts for any name. `extra`: more Chromium switches (e.g. `--enable-logging=stderr`:
    the page's console messages go to the log as `INFO:CONSOLE` lines). Raises RuntimeError (with Chromium's log) when Chromium is
    missing or does not finish within `timeout` seconds."""
    if CHROMIUM is None:
        raise RuntimeError("chromium is not installed (apt-get install chromium)")
    profile.mkdir(parents=True, exist_ok=True)
    shot = profile / "screenshot.png"
    args = [
        CHROMIUM, "--headless=new", f"--user-data-dir={profile}",
        f"--proxy-server={proxy_url}", "--proxy-bypass-list=<-loopback>",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-default-apps", "--disable-extensions",
        "--disable-client-side-phishing-detection", "--disable-domain-reliability", "--metrics-recording-only",
        "--disable-gpu", "--disable-dev-shm-usage", "--window-size=800,600",
        f"--screenshot={shot}", "--dump-dom", *extra,
    ]
    if trust:
        args.append("--ignore-certificate-errors-spki-list=" + ",".join(spki_hash(p) for p in trust))
    if os.geteuid() == 0:
        args.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
    args.append(url)
    log_path = profile / "chromium.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise RuntimeError(f"chromium did not finish loading {url} in {timeout:.0f} s:\n"
                               f"{log_path.read_text(errors='replace')[-4000:]}") from None
        finally:
            _kill_group(proc)  # its helper processes (zygote, GPU, network service) too
    return Visit(url, proc.returncode, out.decode("utf-8", "replace"),
                 shot.read_bytes() if shot.exists() else b"", log_path.read_text(errors="replace"))


def _kill_group(proc: "subprocess.Popen[bytes]") -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def png_pixels(png: bytes) -> tuple[int, int, list[bytes]]:
    """Decode an 8-bit RGB or RGBA, non-interlaced PNG (what Chromium writes) into (width, height,
    rows of raw pixel bytes). Follows the PNG specification (ISO/IEC 15948): IHDR, IDAT, the five
    filter types. Raises ValueError for anything else."""
    if png[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG file")
    pos, idat, header = 8, b"", None
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos:pos + 4])
        kind, body = png[pos + 4:pos + 8], png[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
    if header is None:
        raise ValueError("PNG without IHDR")
    width, height, depth, colour, _, _, interlace = header
    if depth != 8 or colour not in (2, 6) or interlace:
        raise ValueError(f"PNG of a kind not decoded here (depth {depth}, colour type {colour}, interlace {interlace})")
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + b) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        rows.append(bytes(line))
        prev = line
    return width, height, rows


def dark_pixels(png: bytes) -> int:
    """How many pixels of a screenshot are dark (each of R, G, B below 96): text on a page. A blank
    page has none."""
    width, height, rows = png_pixels(png)
    bpp = len(rows[0]) // width if rows else 3
    return sum(1 for row in rows for i in range(0, len(row), bpp) if max(row[i:i + 3]) < 96)


class Listener:
    """A TCP listener on loopback that only counts the connections made to it (the proxy Chromium is
    given: a page that fetched anything would show here)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.requests: list[bytes] = []
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.settimeout(2)
            try:
                self.requests.append(conn.recv(200).split(b"\r\n")[0])
            except OSError:
                self.requests.append(b"")
            conn.close()

    def close(self) -> None:
        self.sock.close()


# Chromium's own background services, which it asks through the proxy whatever the page (network time,
# component updates, accounts) despite --disable-background-networking: not the page's requests.
CHROMIUM_OWN = (b"clients2.google.com", b"accounts.google.com", b"update.googleapis.com")


def page_requests(requests: list[bytes]) -> list[bytes]:
    """The first lines of the requests a page made through the proxy (Chromium's own left out)."""
    return [r for r in requests if not any(host in r for host in CHROMIUM_OWN)]
