"""The decision log: one JSON object per line per decision.

Each record is written with a single write(2) on a file opened O_APPEND, so a crash of the proxy loses
at most the line being written, and several workers may share one file. The file is reopened when it
is moved away (log rotation). A failed write is counted, reported once per cause, and retried on the
next record; the first record written after a loss carries `"lost_before": N`, the number of records
lost since the one before it, so the log itself says where records are missing and how many. A write
cut short by a full disk is taken back (the file is truncated to where the line began), so a partial
line never glues itself to the next record.

What a record holds, field by field: `DecisionRecord` (built by `make_record`), and docs/decision-log.md.
"""

# No `from __future__ import annotations` here: TypedDict reads NotRequired from evaluated annotations.
import json
import logging
import os
import socket
import time
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, Literal, NotRequired, TypedDict

import orjson

from geoblock.core.model import Action, CountrySource, Facts, Stage, Verdict
from geoblock.core.names import EmbeddedIPv4
from geoblock.enrich import rir as _rir

logger = logging.getLogger("geoblock")

_CHECK_EVERY = 1.0  # seconds between checks that the file is still the one at the path

OBSERVER_HOSTNAME: str = socket.gethostname()
"""The host name of the machine deciding (ECS observer.hostname), read once at start: every record's
`observer_hostname`."""


_second: int = -1
_second_text = ""


def _timestamp() -> str:
    """ISO 8601 UTC with milliseconds; the date and time part is formatted once per second."""
    global _second, _second_text
    now = time.time()
    second = int(now)
    if second != _second:
        _second, _second_text = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return f"{_second_text}.{int((now - second) * 1000):03d}Z"


@lru_cache(maxsize=16384)
def _text(addr: Any) -> str:
    return str(addr)


_LINE = orjson.OPT_APPEND_NEWLINE


def encode_line(record: Mapping[str, Any]) -> bytes:
    """One record as one line of compact UTF-8 JSON (orjson: about a tenth of the json module's time).
    Text that is not valid Unicode (a lone surrogate from a peer's bytes) cannot be UTF-8: such a record
    is written by the json module instead, the character escaped as \\udcXX, rather than lost."""
    try:
        return orjson.dumps(record, default=str, option=_LINE)
    except TypeError:  # orjson.JSONEncodeError: surrogates, or a value `default` cannot turn into text
        return (json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=str) + "\n").encode(
            "utf-8", "backslashreplace"
        )


_TS_OPEN = b'{"ts":"'


def stamped(rest: bytes) -> bytes:
    """A record's line again, at the time now: `rest` is what DecisionLog.write returned for it."""
    return _TS_OPEN + _timestamp().encode("ascii") + rest


def cache_sizes() -> dict[str, tuple[int, int | None]]:
    """(entries, bound) of this module's cache, for geoblock.status."""
    info = _text.cache_info()
    return {"record addresses": (info.currsize, info.maxsize)}


class RecordExtra(TypedDict, total=False):
    """The fields a caller of `make_record` adds for some records only (its `extra`). Each is absent
    unless its case applies (docs/decision-log.md):

    - `error`: the cause, when the policy's `on_error` decided (the flow could not be judged): e.g.
      "invalid-input", "incomplete-first-bytes", or the exception's type and message;
    - `qtype`: DNS records only: the question's types, as text ("A", "AAAA", "HTTPS", ...);
    - `chain`: a DNS answer judged beyond its question: every name it leads to, in order (the question,
      then CNAME targets, ...);
    - `first_bytes`: stage "stream" only: the stream's first 16 bytes, hex;
    - `transport`: stage "stream" only: "tcp" or "udp";
    - `upgrade`: a refused protocol switch (HTTP 101): the protocol the server switched to;
    - `blocked_at`: a request inside a tunnel blocked at "connect" or "tls" and ended by geoblock: that
      stage (the request takes the tunnel's verdict);
    - `file`, `flow`, `flow_id`: records of `geoblock-replay --json`: the flow file, the flow's index in
      it (from 0) and mitmproxy's id of the flow.
    """

    error: str
    qtype: list[str]
    chain: list[str]
    first_bytes: str
    transport: Literal["tcp", "udp"]
    upgrade: str
    blocked_at: Stage
    file: str
    flow: int
    flow_id: str


class DecisionRecord(RecordExtra):
    """One line of the decision log, as `make_record` builds it (and `DecisionLog` writes it, "ts"
    first). Every field below without NotRequired is present in every record; null (None) where unknown.
    The same fields, for operators: docs/decision-log.md.

    - `ts`: when the decision was made: ISO 8601, UTC, milliseconds ("2026-11-24T14:11:10.383Z");
    - `stage`: where in the connection the flow was judged (model.Stage);
    - `connection_id`: mitmproxy's id of the client connection (a UUID), the same for every record of
      one connection (its CONNECT, TLS, HTTP requests, ...), or None where no connection is known (a
      record of `geoblock explain`);
    - `client`: the client's address as it connected (an IPv6 address stays IPv6), or None;
    - `client_port`: the client's port (0-65535), or None where `client` is;
    - `sni`, `host`: the TLS server name and the Host header (or CONNECT target) as the client sent them;
    - `name`: the normalised name the verdict is about (the strictest of the flow's names), or None;
    - `server_ip`: the server's address as judged (for an IPv6 address that carries an IPv4 address: the
      IPv4 address), or None when not known (a name rule decided, nothing was resolved);
    - `server_port`: the port the flow goes to (the CONNECT target's, the request's, the transparent
      destination's, the server address of the TLS or stream layer), or None (DNS, not known);
    - `country`: ISO 3166-1 alpha-2 of the server, or None; `country_source`: where it came from
      (model.CountrySource), None without a country; `asn`: its autonomous system number, or None;
    - `offshore`: the country is not a home country; None when the country is not known;
    - `action`: the verdict (model.Action); `enforced`: whether it was carried out (false in monitor mode
      and in replay); `rule`: the deciding rule's id, "policy:<key>", or None; `reason`: one sentence;
    - `platform`: the platform the deciding entry belongs to (a list line's, or its rule's `platform`),
      or None: how a regulator counts blocked attempts per platform;
    - `ruleset`: the version of the ruleset (a hash of its files), None when none is loaded;
    - `geoip_build`, `asn_build`: the build dates (YYYY-MM-DD) of the country and ASN databases, or None;
    - `rir_build`: only when the registries' delegation data placed the server (`country_source` "rir"):
      which data, e.g. "iptocc 3.3.170, data of 2026-10-27" (enrich.rir.BUILD);
    - `observer_hostname`: the host name of the machine that decided (the gateway; for geoblock-replay
      and explain, the machine that ran them), read once at start;
    - `server_ipv6`, `server_ipv6_form`: only for a server reached through an IPv6 address that carries
      an IPv4 address: that IPv6 address, and its form (names.EMBEDDING_FORMS);
    - `geoip_code`: only when the country database gave a code that is not a country ("EU", "AP");
    - `anycast`, `ech`, `ech_grease`: only when true: the network is anycast; the ClientHello hides its
      name with encrypted SNI; it carries a placeholder ECH extension that hides nothing;
    - `mismatch`: only when the flow's names differ: "SNI a ≠ Host b";
    - `lost_before`: only on the first record written after records were lost: how many were lost;
    - `list`, `list_version`: only when an entry of a list file decided: the list file's name and its
      version (the first 12 hex digits of its sha256; `geoblock check` prints it);
    - and the fields of RecordExtra.
    """

    ts: str
    stage: Stage
    connection_id: str | None
    client: str | None
    client_port: int | None
    sni: str | None
    host: str | None
    name: str | None
    server_ip: str | None
    server_port: int | None
    country: str | None
    country_source: CountrySource | None
    asn: int | None
    offshore: bool | None
    action: Action
    enforced: bool
    rule: str | None
    reason: str
    platform: str | None
    ruleset: str | None
    geoip_build: str | None
    asn_build: str | None
    observer_hostname: str
    server_ipv6: NotRequired[str]
    server_ipv6_form: NotRequired[str]
    rir_build: NotRequired[str]
    geoip_code: NotRequired[str]
    anycast: NotRequired[bool]
    ech: NotRequired[bool]
    ech_grease: NotRequired[bool]
    mismatch: NotRequired[str]
    lost_before: NotRequired[int]
    list: NotRequired[str]
    list_version: NotRequired[str]


def make_record(
    facts: Facts,
    verdict: Verdict,
    enforced: bool,
    ruleset: str | None,
    geoip_build: str | None = None,
    asn_build: str | None = None,
    extra: RecordExtra | None = None,
) -> DecisionRecord:
    """The decision record (one log line) of `verdict` on `facts`, stamped now.

    `enforced`: whether the verdict is carried out (False in monitor mode); `ruleset`: the ruleset's
    version; `geoip_build`, `asn_build`: the databases' build dates; `extra`: fields only some records
    have (RecordExtra). Every field: DecisionRecord."""
    record: DecisionRecord = {
        "ts": _timestamp(),
        "stage": facts.stage,
        "connection_id": facts.connection_id,
        "client": None if facts.client_ip is None else _text(facts.client_ip),
        "client_port": facts.client_port,
        "sni": facts.sni,
        "host": facts.host,
        "name": verdict.name,
        "server_ip": None if facts.server_ip is None else _text(facts.server_ip),
        "server_port": facts.server_port,
        "country": facts.country,
        "country_source": facts.country_source if facts.country is not None else None,
        "asn": facts.asn,
        "offshore": verdict.offshore,
        "action": verdict.action,
        "enforced": enforced,
        "rule": verdict.rule,
        "reason": verdict.reason,
        "platform": verdict.platform,
        "ruleset": ruleset,
        "geoip_build": geoip_build,
        "asn_build": asn_build,
        "observer_hostname": OBSERVER_HOSTNAME,
    }
    server_ip = facts.server_ip
    if isinstance(server_ip, EmbeddedIPv4):  # both forms: the IPv4 judged, the IPv6 address that carried it
        record["server_ipv6"] = _text(server_ip.ipv6)
        record["server_ipv6_form"] = server_ip.form
    if facts.country_source == "rir" and facts.country is not None:  # which registries' data placed it
        record["rir_build"] = _rir.BUILD
    if facts.geoip_code is not None:  # what the database said where it named no country
        record["geoip_code"] = facts.geoip_code
    if facts.anycast:
        record["anycast"] = True
    if facts.ech:
        record["ech"] = True
    elif facts.ech_grease:
        record["ech_grease"] = True
    if facts.mismatch:
        record["mismatch"] = facts.mismatch
    if verdict.list is not None:
        record["list"] = verdict.list
        record["list_version"] = verdict.list_version or ""
    if extra:
        record.update(extra)
    return record


class DecisionLog:
    """The decision log file at `path` (its directory is created), opened for appending at once (an
    OSError if it cannot be). `written` and `lost` count the records written and lost so far."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: int | None = None
        self.written = 0
        self.lost = 0
        self._gap = 0  # records lost since the last one written
        self._inode: int | None = None
        self._checked = 0.0
        self._last_error: str | None = None
        self._open()

    def _open(self) -> None:
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o640)
        if self.fd is not None:
            os.close(self.fd)
        self.fd = fd
        self._inode = os.fstat(fd).st_ino
        self._checked = time.monotonic()

    def _rotated(self) -> bool:
        try:
            return os.stat(self.path).st_ino != self._inode
        except OSError:
            return True

    def reopen_if_moved(self) -> bool:
        """Open a new file at the path when the path no longer names the open file (moved away by log
        rotation, or removed): what a write does by itself at most once a second, for a log that has had no
        record for a while, so that it lets go of the rotated file. Called by the addon's watcher. Returns
        whether it reopened; a path that cannot be opened is left to the next write, which counts and
        reports the record it cannot write."""
        if self.fd is None or not self._rotated():
            return False
        try:
            self._open()
        except OSError:
            return False
        return True

    def write(self, record: DecisionRecord) -> bytes | None:
        """Write one record (made by make_record, "ts" first). Returns what follows the timestamp in the
        line written, for `write_again`; None when the line was not written or carried `lost_before`."""
        gap = self._gap
        if gap:
            record = {**record, "lost_before": gap}
        line = encode_line(record)
        if not self._write_line(line) or gap:
            return None
        head = _TS_OPEN + record["ts"].encode("ascii")
        return line[len(head):] if line.startswith(head) else None

    def write_again(self, rest: bytes) -> bool:
        """Write a record that differs from one written before only in its time. Returns False, writing
        nothing, when the next line must say how many records were lost (call `write` instead). A failed
        write returns True: the record is counted lost here, and must not be written (or lost) twice."""
        if self._gap:
            return False
        self._write_line(stamped(rest))
        return True

    def _write_line(self, line: bytes) -> bool:
        try:
            now = time.monotonic()
            if self.fd is None or (now - self._checked > _CHECK_EVERY and self._rotated()):
                self._open()
            elif now - self._checked > _CHECK_EVERY:
                self._checked = now
            assert self.fd is not None
            written = os.write(self.fd, line)
            if written != len(line):
                self._finish(line, written)
        except OSError as exc:
            self.lost += 1
            self._gap += 1
            cause = exc.strerror or str(exc)
            if cause != self._last_error:
                self._last_error = cause
                logger.error(f"geoblock: cannot write the decision log {self.path}: {cause}; "
                             f"{self.lost} record(s) lost so far, retrying on the next decision")
            if self.fd is not None:
                try:
                    os.close(self.fd)
                except OSError:
                    pass
                self.fd = None
            return False
        self.written += 1
        self._gap = 0
        if self._last_error is not None:
            logger.warning(f"geoblock: decision log {self.path} writable again; {self.lost} record(s) were lost")
            self._last_error = None
        return True

    def _finish(self, line: bytes, written: int) -> None:
        """After a short write: write the rest, which usually fails with the cause (a full disk). Then
        the start of the line is taken back (the file is truncated to where it began), so the next record
        starts on a line of its own, and the cause is the system's, the same for every record lost."""
        assert self.fd is not None
        try:
            rest = os.write(self.fd, line[written:])
        except OSError:
            self._take_back(written)
            raise
        if rest != len(line) - written:
            self._take_back(written + rest)
            raise OSError(0, "short write (is the disk full?)")

    def _take_back(self, written: int) -> None:
        assert self.fd is not None
        try:
            size = os.fstat(self.fd).st_size
            if written > 0 and size >= written:
                os.ftruncate(self.fd, size - written)
        except OSError:
            pass

    @property
    def problem(self) -> str | None:
        """Why the last write failed (the system's words, e.g. "No space left on device"), or None when it
        succeeded (or nothing was written yet). Cleared by the next record written."""
        return self._last_error

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
