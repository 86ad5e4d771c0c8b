"""`geoblock lists import` and `geoblock lists update`, run as an operator runs them (the real CLI in a
subprocess), with a local stand-in for a list feed's web server."""

from __future__ import annotations

import gzip
import http.server
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from geoblock.core.lists import read_list
from geoblock.core.ruleset import Ruleset

REPO = Path(__file__).resolve().parents[1]


def geoblock(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "geoblock.tools.cli", *args], capture_output=True, text=True,
                          input=stdin, timeout=60, cwd=REPO)


class Feeds:
    """A local web server answering each path with the body (or status) the test sets."""

    def __init__(self) -> None:
        self.bodies: dict[str, tuple[int, bytes, int | None]] = {}
        self.extra: dict[str, dict[str, object]] = {}
        feeds = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                status, body, length = feeds.bodies.get(self.path, (404, b"no such feed", None))
                extra = feeds.extra.get(self.path, {})
                self.send_response(status)
                if "location" in extra:
                    self.send_header("Location", str(extra["location"]))
                if length != -1:  # -1: no Content-Length, the body ends when the connection closes
                    self.send_header("Content-Length", str(len(body) if length is None else length))
                self.end_headers()
                if extra.get("drip"):
                    for i in range(len(body)):
                        self.wfile.write(body[i:i + 1])
                        self.wfile.flush()
                        time.sleep(0.1)
                else:
                    self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False  # a dripping answer the client gave up on does not hold the test
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def set(self, path: str, body: str | bytes, status: int = 200, length: int | None = None, **extra: object) -> str:
        """Answer `path` with `body`; `length`: a Content-Length other than the body's (a body cut short),
        -1 for none; `extra`: `location` (a Location header), `drip` (one byte every 0.1 s)."""
        self.bodies[path] = (status, body.encode() if isinstance(body, str) else body, length)
        self.extra[path] = extra
        return self.url + path


@pytest.fixture
def feeds() -> Iterator[Feeds]:
    f = Feeds()
    yield f
    f.server.shutdown()
    f.server.server_close()


HOSTS = """# a hosts-format blocklist
0.0.0.0 localhost
0.0.0.0 binance.com
0.0.0.0 www.binance.com
0.0.0.0 BINANCE.com
0.0.0.0 bad_name-.com
0.0.0.0 okx.com
"""


def test_import_a_hosts_file_normalises_deduplicates_and_says_what_it_refused(tmp_path):
    src = tmp_path / "blocklist.txt"
    src.write_text(HOSTS)
    out = tmp_path / "rules" / "lists" / "imported.txt"
    done = geoblock("lists", "import", str(src), "--platform", "Imported", "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert f"refused: {src}:6: 'bad_name-.com': not a valid domain" in done.stderr
    assert "1 duplicate entry kept once (e.g. 'BINANCE.com' on line 5 repeats line 3)" in done.stderr
    assert done.stderr.rstrip().endswith(f"3 entries, 1 platform(s), 1 refused, 1 duplicate(s): wrote {out}")
    listed = read_list(out)  # strict: what was written is a valid list
    assert [(e.name, e.platform) for e in listed.entries] == [
        ("binance.com", "Imported"), ("www.binance.com", "Imported"), ("okx.com", "Imported")]
    assert listed.source == str(src) and listed.retrieved and listed.format == "plain"


@pytest.mark.parametrize("fmt, text, names", [
    ("adblock", "[Adblock Plus 2.0]\n! comment\n||bybit.com^\n||kucoin.com^$important\n", ["bybit.com"]),
    ("csv", "platform,url\nBinance,https://www.binance.com/en\nOKX,okx.com\n", ["binance.com", "okx.com"]),
    ("plain", "binance.com Binance\nhttps://okx.com/path OKX\n", ["binance.com", "okx.com"]),
])
def test_import_each_format_from_stdin(fmt, text, names):
    done = geoblock("lists", "import", "-", "--format", fmt, stdin=text)
    assert done.returncode == 0, done.stderr
    written = [line.split()[0] for line in done.stdout.splitlines() if line and not line.startswith("#")]
    assert written == names
    if fmt == "adblock":
        assert "'||kucoin.com^$important': adblock modifiers ($important) are not supported" in done.stderr


def test_import_from_a_url_and_nothing_usable_is_an_error(feeds):
    url = feeds.set("/list.txt", "binance.com Binance\n")
    done = geoblock("lists", "import", url)
    assert done.returncode == 0 and f"# source: {url}" in done.stdout and "binance.com  Binance" in done.stdout
    done = geoblock("lists", "import", feeds.set("/empty.txt", "# nothing\n"))
    assert done.returncode == 2 and "no usable entry" in done.stderr
    done = geoblock("lists", "import", feeds.url + "/missing.txt")
    assert done.returncode == 2 and "HTTP 404" in done.stderr


def write_feeds(tmp_path: Path, url: str, **extra: object) -> Path:
    rules = tmp_path / "rules"
    (rules / "lists").mkdir(parents=True, exist_ok=True)
    (rules / "policy.yaml").write_text("default: allow\n")
    (rules / "feed.yaml").write_text("rules:\n  - {id: feed, action: block, domains_from: [lists/feed.txt]}\n")
    keys = "".join(f"    {k}: {v}\n" for k, v in extra.items())
    conf = tmp_path / "feeds.yaml"
    conf.write_text(f"feeds:\n  - name: regulator\n    url: {url}\n    output: rules/lists/feed.txt\n{keys}")
    return conf


def big(n: int, start: int = 0) -> str:
    return "".join(f"site{i}.example  Platform {i % 7}\n" for i in range(start, start + n))


def test_update_installs_a_verified_feed_and_keeps_the_last_good_one_on_every_failure(tmp_path, feeds):
    url = feeds.set("/feed.txt", big(100))
    conf = write_feeds(tmp_path, url, min_entries=50, max_shrink=0.2)
    target = tmp_path / "rules" / "lists" / "feed.txt"
    done = geoblock("lists", "update", str(conf))
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"feed regulator: wrote {target}: 100 entries, 0 refused\n"
    rs = Ruleset.load(str(tmp_path / "rules"))  # the rules that name it load it
    assert rs.domain_count == 100 and rs.source.lists[0].source == url
    good = target.read_bytes()

    assert geoblock("lists", "update", str(conf)).stdout == "feed regulator: unchanged (100 entries)\n"
    whole = big(100).encode()
    failures = [
        (big(70), None, "it would remove 30 of the 100 entries in place (site70.example, site71.example, "),
        (big(75) + big(25, start=500), None, "it would remove 25 of the 100 entries in place"),  # as many, others
        (whole[:-5], len(whole), f"the download was cut short: {len(whole) - 5} of {len(whole)} bytes"),
        (big(40), None, "40 entries, fewer than min_entries 50"),
        (big(80) + "bad_-.com\n" * 10, None, "10 of 90 entries refused (max_refused 0.05"),
        (b"\xff\xfe" + b"binance.com\n" * 80, None, "not UTF-8 text; keeping the list in place"),
        ("Service temporarily unavailable\nPlease retry later\nError 503 upstream\n", None,
         "0 entries, fewer than min_entries 50"),  # an error page served as the list: single words refused
        (gzip.compress(b"garbage") [:-4], None, "a broken gzip body"),
    ]
    for body, length, why in failures:
        feeds.set("/feed.txt", body, length=length)
        done = geoblock("lists", "update", str(conf))
        assert done.returncode == 1 and why in done.stderr, (why, done.stderr)
        assert target.read_bytes() == good  # the last good list stays, untouched
    feeds.set("/feed.txt", gzip.compress(whole))  # a .gz feed: the same list
    assert geoblock("lists", "update", str(conf)).stdout == "feed regulator: unchanged (100 entries)\n"
    feeds.set("/feed.txt", "down", status=503)
    done = geoblock("lists", "update", str(conf))
    assert done.returncode == 1 and f"{url}: HTTP 503" in done.stderr and target.read_bytes() == good

    feeds.set("/feed.txt", big(100) + big(5, start=100))
    done = geoblock("lists", "update", str(conf))
    assert done.returncode == 0 and "105 entries, was 100" in done.stdout
    assert (target.parent / "feed.txt.bak").read_bytes() == good  # the previous list, kept beside it
    assert not [p for p in target.parent.iterdir() if p.name.endswith(".new")]
    feeds.set("/feed.txt", big(10))
    assert geoblock("lists", "update", str(conf)).returncode == 1
    done = geoblock("lists", "update", str(conf), "--force")
    assert done.returncode == 1 and "fewer than min_entries" in done.stderr  # --force lifts max_shrink only


@pytest.mark.parametrize("text, message", [
    ("feeds:\n  - name: a\n    url: ftp://x/\n    output: l.txt\n", ":2: feed 'a': url must be http(s) or file:"),
    ("feeds:\n  - name: a\n    url: http://x/\n", ":2: a feed needs output"),
    ("feeds:\n  - name: a\n    url: http://x/\n    output: l.txt\n    shrink: 1\n", ":2: unknown feed key 'shrink'"),
    ("feeds:\n  - name: a\n    url: http://x/\n    output: l.txt\n    max_shrink: 2\n",
     ":2: feed 'a': max_shrink is a share between 0 and 1"),
    ("lists: []\n", ":1: a feeds file holds one key, feeds"),
])
def test_a_bad_feeds_file_is_refused_naming_file_and_line(tmp_path, text, message):
    conf = tmp_path / "feeds.yaml"
    conf.write_text(text)
    done = geoblock("lists", "update", str(conf))
    assert done.returncode == 2 and f"geoblock: {conf}{message}" in done.stderr, done.stderr


def test_the_feed_timer_units_run_the_update(tmp_path):
    service = (REPO / "deploy" / "systemd" / "geoblock-lists.service").read_text()
    timer = (REPO / "deploy" / "systemd" / "geoblock-lists.timer").read_text()
    assert "ExecStart=/opt/geoblock/.venv-run-3.11/bin/geoblock lists update /etc/geoblock/feeds.yaml" in service
    assert "OnCalendar=" in timer and "Unit=geoblock-lists.service" in timer
    assert os.path.exists(REPO / "deploy" / "feeds.example.yaml")
    conf = tmp_path / "feeds.yaml"
    conf.write_text((REPO / "deploy" / "feeds.example.yaml").read_text())
    from geoblock.tools.lists import load_feeds

    assert [f.name for f in load_feeds(conf)]  # the example parses


def test_an_error_page_never_becomes_a_first_list_and_a_write_error_spares_the_other_feeds(tmp_path, feeds):
    prose = feeds.set("/down.txt", "Service temporarily unavailable\nPlease retry later\n")
    good = feeds.set("/good.txt", "binance.com  Binance\n")
    (tmp_path / "blocker").write_text("a file where a directory should be")
    conf = tmp_path / "feeds.yaml"
    conf.write_text(f"feeds:\n  - {{name: down, url: {prose}, output: lists/down.txt}}\n"
                    f"  - {{name: unwritable, url: {good}, output: blocker/x.txt}}\n"
                    f"  - {{name: good, url: {good}, output: lists/good.txt}}\n")
    done = geoblock("lists", "update", str(conf))
    assert done.returncode == 1, done.stderr
    assert f"feed down: 0 entries, fewer than min_entries 1; {tmp_path}/lists/down.txt is not installed" in done.stderr
    assert "feed unwritable: cannot write" in done.stderr and "Traceback" not in done.stderr
    assert done.stdout == f"feed good: wrote {tmp_path}/lists/good.txt: 1 entries, 0 refused\n"
    assert not (tmp_path / "lists" / "down.txt").exists()


def test_found_in_the_second_review_feeds_that_wear_a_list_down_or_end_early_are_refused(tmp_path, feeds):
    """A feed losing just under max_shrink at every run drained the list (the limit compared with the
    list in place only); a body ended by closing the connection, cut mid-line, put `binance.co` in
    force; a dripping feed held up every feed after it; a redirect went to another scheme; a feed's
    platform the proxy refuses was installed."""
    url = feeds.set("/feed.txt", big(100))
    conf = write_feeds(tmp_path, url)  # max_shrink 0.1 (the default)
    target = tmp_path / "rules" / "lists" / "feed.txt"
    assert geoblock("lists", "update", str(conf)).returncode == 0
    feeds.set("/feed.txt", big(91))
    assert geoblock("lists", "update", str(conf)).returncode == 0  # 9 % less: within max_shrink
    feeds.set("/feed.txt", big(83))
    done = geoblock("lists", "update", str(conf))  # 8.8 % less than the list in place, 17 % less than the baseline
    assert done.returncode == 1 and "83 entries against a baseline of 100 verified before" in done.stderr
    assert len(read_list(target).entries) == 91
    assert geoblock("lists", "update", str(conf), "--force").returncode == 0  # the operator accepts it
    assert "# baseline: 83" in target.read_text()

    feeds.set("/feed.txt", big(83) + "binance.co", length=-1)
    done = geoblock("lists", "update", str(conf))
    assert done.returncode == 1 and "ends in the middle of a line and has no Content-Length" in done.stderr
    feeds.set("/feed.txt", big(83) + "binance.com  Binance\n", length=-1)
    assert geoblock("lists", "update", str(conf)).returncode == 0  # whole lines: fine without a length

    from geoblock.tools.lists import FeedError, fetch

    with pytest.raises(FeedError, match=r"not downloaded within 1 s"):
        fetch(feeds.set("/drip.txt", "a.example\n" * 3, drip=True), total=1)
    with pytest.raises(FeedError, match=r"redirected to 'ftp://127.0.0.1/list.txt', which is not http\(s\)"):
        fetch(feeds.set("/moved.txt", "", status=302, location="ftp://127.0.0.1/list.txt"))

    other = tmp_path / "f2.yaml"
    bare = feeds.set("/bare.txt", "a.example\nb.example\n")  # entries that name no platform: the feed's
    other.write_text(f"feeds:\n  - {{name: c, url: {bare}, output: rules/lists/c.txt, platform: community.list}}\n")
    done = geoblock("lists", "update", str(other))
    assert done.returncode == 1 and "the list would be refused where it goes" in done.stderr
    assert not (tmp_path / "rules" / "lists" / "c.txt").exists()
