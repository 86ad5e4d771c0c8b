"""A local update server on 127.0.0.1 for the GeoIP refresh tests.

It speaks MaxMind's update protocol as pygeoipupdate uses it:

- ``GET /geoip/updates/metadata?edition_id=E`` -> ``{"databases": [{"edition_id", "date", "md5"}]}``
- ``GET /geoip/databases/E/download?date=YYYYMMDD&suffix=tar.gz`` -> a tar.gz holding
  ``E_YYYYMMDD/E.mmdb`` (plus COPYRIGHT.txt and LICENSE.txt, like MaxMind's archives)

both behind HTTP Basic auth (account ID : license key), and serves DB-IP-style monthly files under
``/dbip/<name>-YYYY-MM.mmdb.gz`` (404 for months it does not have).

`failure` makes it misbehave: "429" (download limit), "bad-md5" (metadata announces a wrong MD5),
"corrupt" (download is not gzip), "truncated" (half an archive), "hang" (download never answers),
"500". Every request is counted in `hits` ("metadata", "download", "dbip:<file>").
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.server
import io
import json
import tarfile
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

FAILURES = ("429", "bad-md5", "corrupt", "truncated", "hang", "500")


@dataclass
class Published:
    mmdb: bytes
    date: str  # YYYY-MM-DD

    @property
    def md5(self) -> str:
        return hashlib.md5(self.mmdb).hexdigest()


def make_archive(edition: str, date: str, mmdb: bytes) -> bytes:
    """A tar.gz laid out like MaxMind's: <edition>_<YYYYMMDD>/<edition>.mmdb."""
    folder = f"{edition}_{date.replace('-', '')}"
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in (("COPYRIGHT.txt", b"test data\n"), ("LICENSE.txt", b"test licence\n"),
                           (f"{edition}.mmdb", mmdb)):
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue())


class UpdateServer:
    """MaxMind updates and DB-IP monthly files on 127.0.0.1:<port>, in a thread."""

    def __init__(self, account_id: int = 424242, license_key: str = "test-licence-key") -> None:
        self.account_id = account_id
        self.license_key = license_key
        self.editions: dict[str, Published] = {}
        self.dbip: dict[str, bytes] = {}  # "dbip-country-lite-2026-11.mmdb.gz" -> gzip bytes
        self.failure: str | None = None
        self.hits: Counter[str] = Counter()
        self._release = threading.Event()
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def publish(self, edition: str, mmdb: bytes, date: str) -> Published:
        self.editions[edition] = Published(mmdb, date)
        return self.editions[edition]

    def publish_dbip(self, name: str, month: str, mmdb: bytes) -> None:
        self.dbip[f"{name}-{month}.mmdb.gz"] = gzip.compress(mmdb)

    def __enter__(self) -> UpdateServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._release.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    # --- request handling ---------------------------------------------------------------------------

    def _authorised(self, header: str | None) -> bool:
        token = base64.b64encode(f"{self.account_id}:{self.license_key}".encode()).decode()
        return header == f"Basic {token}"

    def _metadata(self, query: dict[str, list[str]]) -> tuple[int, bytes, str]:
        self.hits["metadata"] += 1
        edition = query.get("edition_id", [""])[0]
        published = self.editions.get(edition)
        if published is None:
            return 404, b'{"code":"NOT_FOUND","error":"unknown edition"}', "application/json"
        md5 = "0" * 31 + "1" if self.failure == "bad-md5" else published.md5
        body = {"databases": [{"edition_id": edition, "date": published.date, "md5": md5}]}
        return 200, json.dumps(body).encode(), "application/json"

    def _download(self, edition: str, query: dict[str, list[str]]) -> tuple[int, bytes, str]:
        self.hits["download"] += 1
        published = self.editions.get(edition)
        if published is None or query.get("date", [""])[0] != published.date.replace("-", ""):
            return 404, b"no such database", "text/plain"
        if self.failure == "hang":
            self._release.wait(60)
            return 503, b"", "text/plain"
        if self.failure in ("429", "500"):
            return int(self.failure), b'{"code":"LIMIT","error":"failure"}', "application/json"
        archive = make_archive(edition, published.date, published.mmdb)
        if self.failure == "corrupt":
            archive = b"this is not a gzip file\n" * 40
        elif self.failure == "truncated":
            archive = archive[: len(archive) // 2]
        return 200, archive, "application/gzip"

    def _dbip(self, name: str) -> tuple[int, bytes, str]:
        self.hits[f"dbip:{name}"] += 1
        if self.failure == "hang":
            self._release.wait(60)
        if self.failure in ("429", "500"):
            return int(self.failure), b"failure", "text/plain"
        data = self.dbip.get(name)
        if data is None:
            return 404, b"not found", "text/plain"
        if self.failure == "corrupt":
            data = data[: len(data) // 2]
        return 200, data, "application/gzip"

    def answer(self, path: str, auth: str | None) -> tuple[int, bytes, str]:
        parts = urlsplit(path)
        query = parse_qs(parts.query)
        segments = [unquote(s) for s in parts.path.strip("/").split("/")]
        if segments[:1] == ["dbip"] and len(segments) == 2:
            return self._dbip(segments[1])
        if not self._authorised(auth):
            self.hits["unauthorised"] += 1
            return 401, b'{"code":"AUTHORIZATION_INVALID","error":"invalid credentials"}', "application/json"
        if segments == ["geoip", "updates", "metadata"]:
            return self._metadata(query)
        if len(segments) == 4 and segments[:2] == ["geoip", "databases"] and segments[3] == "download":
            return self._download(segments[2], query)
        return 404, b"not found", "text/plain"

    def _handler_class(self) -> type[http.server.BaseHTTPRequestHandler]:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            disable_nagle_algorithm = True

            def do_GET(self) -> None:
                status, body, ctype = server.answer(self.path, self.headers.get("Authorization"))
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(body)))
                    self.send_header("Last-Modified", "Fri, 20 Nov 2026 10:00:00 GMT")
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
