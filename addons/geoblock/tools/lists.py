"""`geoblock lists`: bring lists from elsewhere into geoblock's list format, and keep feeds current.

    geoblock lists import SRC [--format F] [--platform P] [-o OUT] [--source TEXT]
    geoblock lists update FEEDS [--only NAME] [--force]
    geoblock lists compile [RULES] [--cache DIR] [--json]

`import` reads SRC (a file, `-` for stdin, or an http(s) URL) in one of the list formats (core/lists.py:
plain, hosts, adblock, csv; detected when not given), normalises every entry, keeps each name once, says
on stderr what it refused and why (line, text, reason), and writes a plain list file with the entries'
platforms and a provenance header (`# source:`, `# retrieved:`) to OUT (stdout without -o). A URL in a
plain or CSV entry gives its host. The file is written aside and renamed over OUT, so a rule that names
OUT never reads half a list.

`update` keeps the feeds of a feeds file (YAML, docs/lists.md) current, the way pfBlockerNG and AdGuard
Home refresh their lists: each feed is downloaded (bounded in size and time), read as its format, and
verified: complete (its Content-Length), at least `min_entries` entries, at most `max_refused` of its
entries refused, and removing at most `max_shrink` of the entries in place (a download cut short or
emptied, or an error page served as the list, is the usual failure).
A verified feed replaces its list file atomically, the previous one kept beside it as NAME.bak; a feed
that fails keeps the list in place (the last good one) and is reported. A running proxy notices the
replaced list and reloads it (its rules name it in `domains_from`). Run it from a timer
(deploy/systemd/geoblock-lists.timer).

`compile` compiles every list file the rules name (`domains_from`) into its index artifact
(core/listindex.py) in the artifact cache (`--cache`, default the one the proxy uses: $GEOBLOCK_CACHE_DIR,
systemd's $CACHE_DIRECTORY, ...), so that a build step (CI, an image build) compiles each list version
once and every box and worker maps the same artifact instead of compiling it at start. Per list it prints
the path, its entries, its version (the first 12 hex digits of its SHA-256, the records' `list_version`),
the artifact directory, and the seconds taken, saying whether it was built or already in the cache; then
the whole rules are loaded from that cache as the proxy loads them, and the ruleset version printed.
A proxy started with the same cache (GEOBLOCK_CACHE_DIR=DIR) maps these artifacts and compiles nothing.

Exit codes: 0 done (update: every feed current or unchanged), 1 a feed failed verification or could not
be fetched (the others are still updated); compile: a list or the rules refused, with file:line, 2 usage
or input error (no such file, no entry at all; compile: the cache cannot be written).
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import io
import json
import os
import re
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from geoblock import __version__ as _version
from geoblock.core.listindex import ENV_CACHE, cache_dir, open_list
from geoblock.core.lists import FORMATS, Entry, ListFile, ListFormat, read_list, read_list_text, write_list
from geoblock.core.rules import RuleError, rule_files
from geoblock.core.ruleset import Ruleset
from geoblock.errors import GeoblockError

MAX_BYTES = 64 * 1024 * 1024  # the largest download accepted (bytes): a national list is a few MB
TIMEOUT = 60.0  # seconds for a download to start and for each read
TOTAL = 300.0  # seconds for a whole download: a feed that drips is cut off, the next feeds still run
FEED_KEYS = ("name", "url", "format", "output", "platform", "min_entries", "max_refused", "max_shrink")


class FeedError(GeoblockError):
    """A feed that cannot be used: not fetched, or not verified. `str()` says which feed and why."""


@dataclass(frozen=True)
class Feed:
    """One feed of a feeds file: where it comes from, how to read it, where it goes, and its checks.

    `output` is the list file (relative paths are relative to the feeds file's directory);
    `min_entries`: the fewest entries a good download has (default 1); `max_refused`: the largest share
    (0-1) of refused entries (default 0.05); `max_shrink`: the largest share (0-1) of the entries in
    place the new list may remove (default 0.1: a list cut short loses its tail)."""

    name: str
    url: str
    output: Path
    format: ListFormat | None = None
    platform: str | None = None
    min_entries: int = 1
    max_refused: float = 0.05
    max_shrink: float = 0.1


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects to http(s) only: a feed redirected to file: or ftp: is refused."""

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> urllib.request.Request | None:
        if not newurl.lower().startswith(("http://", "https://")):
            raise urllib.error.URLError(f"redirected to {newurl!r}, which is not http(s)")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def fetch(url: str, *, max_bytes: int = MAX_BYTES, timeout: float = TIMEOUT, total: float = TOTAL) -> bytes:
    """The body of `url` (http, https or file), gunzipped when it is gzip (by its magic bytes: a `.gz`
    feed, or `Content-Encoding: gzip`). Raises FeedError naming the URL: an HTTP error status, no answer,
    a body cut short (fewer bytes than its Content-Length: urllib does not raise on that, RFC 9112
    section 6.3 says the message is incomplete), a broken gzip stream, or a body larger than
    `max_bytes` (before or after gunzipping). Never through $http_proxy: a gateway fetches directly.
    `timeout` is per socket operation (seconds); `total` bounds the whole download (seconds)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _HttpOnlyRedirects())
    request = urllib.request.Request(url, headers={"User-Agent": f"geoblock/{_version} (lists)"})
    deadline = time.monotonic() + total
    try:
        with opener.open(request, timeout=timeout) as answer:
            chunks: list[bytes] = []
            size = 0
            while size <= max_bytes:
                chunk = answer.read(min(65536, max_bytes + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if time.monotonic() > deadline:
                    raise FeedError(f"{url}: not downloaded within {total:g} s ({size} bytes so far)")
            body = b"".join(chunks)
            length = answer.headers.get("Content-Length") if answer.headers is not None else None
    except urllib.error.HTTPError as exc:
        raise FeedError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except http.client.IncompleteRead as exc:  # a chunked body cut short
        raise FeedError(f"{url}: the download was cut short after {len(exc.partial)} bytes") from None
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
        raise FeedError(f"{url}: {getattr(exc, 'reason', None) or exc}") from None
    if len(body) > max_bytes:
        raise FeedError(f"{url}: larger than {max_bytes} bytes")
    if length is not None and length.isdigit() and len(body) != int(length):
        raise FeedError(f"{url}: the download was cut short: {len(body)} of {int(length)} bytes (Content-Length)")
    if length is None and body and body[:2] != b"\x1f\x8b" and not body.endswith((b"\n", b"\r")):
        # no length to check against (a body ended by closing the connection): a last line without its
        # line break may be one cut short (binance.co for binance.com)
        raise FeedError(f"{url}: the download ends in the middle of a line and has no Content-Length: cut short?")
    if body[:2] == b"\x1f\x8b":
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(body)) as unzipped:
                body = unzipped.read(max_bytes + 1)
        except (OSError, EOFError) as exc:
            raise FeedError(f"{url}: a broken gzip body ({exc})") from None
        if len(body) > max_bytes:
            raise FeedError(f"{url}: larger than {max_bytes} bytes once gunzipped")
    return body


def read_source(src: str, fmt: ListFormat | None, platform: str | None) -> ListFile:
    """Read SRC (a path, `-`, or an http(s) URL) leniently. Raises RuleError (a file that cannot be read,
    not UTF-8) or FeedError (a URL that cannot be fetched)."""
    if src == "-":
        return read_list_text("<stdin>", sys.stdin.read(), fmt=fmt, lenient=True, platform=platform)
    if src.startswith(("http://", "https://")):
        data = fetch(src)
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise RuleError(src, data[: exc.start].count(b"\n") + 1, "not UTF-8 text") from None
        name = src.rsplit("?", 1)[0]
        return read_list_text(name, text, fmt=fmt, lenient=True, platform=platform)
    return read_list(src, fmt=fmt, lenient=True, platform=platform)


_BASELINE = re.compile(r"^# baseline: (\d+)\s*$", re.MULTILINE)


def reads_back(path: str, text: str, entries: tuple[Entry, ...]) -> str | None:
    """Why the list `text` (about to be written to `path`) would not put `entries` in force, or None:
    it is read back as the proxy reads it (strictly) and compared entry by entry."""
    try:
        again = read_list_text(path, text)
    except RuleError as exc:
        return f"the list would be refused where it goes: {exc.message} (line {exc.line})"
    if [(e.name, e.mode, e.platform) for e in again.entries] != [(e.name, e.mode, e.platform) for e in entries]:
        return "the list does not read back as the entries it was written from"
    return None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def write_atomically(path: Path, text: str, keep: bool = False) -> None:
    """Write `text` to `path` through a file beside it, flushed to disk, then renamed over `path` (readers
    see the old file or the new one, never a part). `keep`: the file replaced stays as `path`.bak."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".new", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        if keep and path.exists():
            backup = path.with_name(path.name + ".bak")
            os.replace(path, backup)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _report(listed: ListFile, out: Any) -> None:
    for refused in listed.refused:
        print(f"refused: {listed.path}:{refused.line}: {refused.text!r}: {refused.why}", file=out)
    if listed.duplicates:
        line, text, first = listed.duplicates[0]
        print(f"{len(listed.duplicates)} duplicate entr{'y' if len(listed.duplicates) == 1 else 'ies'} kept once "
              f"(e.g. {text!r} on line {line} repeats line {first})", file=out)


def cmd_import(args: argparse.Namespace) -> int:
    try:
        listed = read_source(args.src, args.format, args.platform)
    except (RuleError, FeedError) as exc:
        print(f"geoblock: {exc}", file=sys.stderr)
        return 2
    _report(listed, sys.stderr)
    if not listed.entries:
        print(f"geoblock: {args.src}: no usable entry", file=sys.stderr)
        return 2
    text = write_list(listed.entries, source=args.source or listed.source or args.src,
                      retrieved=listed.retrieved or _now(), title=args.title)
    problem = reads_back(args.output or "<stdout>", text, listed.entries)
    if problem:
        print(f"geoblock: {args.src}: {problem}; nothing written", file=sys.stderr)
        return 2
    if args.output:
        write_atomically(Path(args.output), text)
    else:
        sys.stdout.write(text)
    print(f"{len(listed.entries)} entries, {len(listed.platforms)} platform(s), {len(listed.refused)} refused, "
          f"{len(listed.duplicates)} duplicate(s)" + (f": wrote {args.output}" if args.output else ""),
          file=sys.stderr)
    return 0


def load_feeds(path: Path) -> list[Feed]:
    """The feeds of a feeds file (`feeds:` a list of mappings with FEED_KEYS). Raises RuleError naming
    the file and line of a bad one."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RuleError(path, None, f"cannot read feeds file: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise RuleError(path, mark.line + 1 if mark else None, f"bad YAML: {exc}") from None
    if not isinstance(root, yaml.MappingNode) or [k.value for k, _ in root.value] != ["feeds"]:
        raise RuleError(path, 1, "a feeds file holds one key, feeds: a list of feeds")
    seq = root.value[0][1]
    if not isinstance(seq, yaml.SequenceNode) or not seq.value:
        raise RuleError(path, seq.start_mark.line + 1, "feeds must be a non-empty list")
    feeds: list[Feed] = []
    for node in seq.value:
        line = node.start_mark.line + 1
        if not isinstance(node, yaml.MappingNode):
            raise RuleError(path, line, "a feed is a mapping (name, url, output, ...)")
        raw = {k.value: v for k, v in node.value}
        for key in raw:
            if key not in FEED_KEYS:
                raise RuleError(path, line, f"unknown feed key {key!r} (allowed: {', '.join(FEED_KEYS)})")
        for key in ("name", "url", "output"):
            if key not in raw:
                raise RuleError(path, line, f"a feed needs {key}")
        values = {k: v.value if isinstance(v, yaml.ScalarNode) else None for k, v in raw.items()}
        if not str(values["url"]).startswith(("http://", "https://", "file:")):
            raise RuleError(path, line, f"feed {values['name']!r}: url must be http(s) or file:, not {values['url']!r}")
        fmt = values.get("format")
        if fmt is not None and fmt not in FORMATS:
            raise RuleError(path, line, f"feed {values['name']!r}: format must be one of {', '.join(FORMATS)}")
        try:
            kwargs: dict[str, Any] = {}
            if "min_entries" in values:
                kwargs["min_entries"] = int(str(values["min_entries"]))
            for key in ("max_refused", "max_shrink"):
                if key in values:
                    kwargs[key] = float(str(values[key]))
                    if not 0 <= kwargs[key] <= 1:
                        raise ValueError(f"{key} is a share between 0 and 1")
        except ValueError as exc:
            raise RuleError(path, line, f"feed {values['name']!r}: {exc}") from None
        output = Path(str(values["output"]))
        feeds.append(Feed(name=str(values["name"]), url=str(values["url"]),
                          output=output if output.is_absolute() else path.parent / output,
                          format=fmt, platform=values.get("platform"), **kwargs))
    return feeds


def update_feed(feed: Feed, force: bool = False) -> str:
    """Download, verify and install one feed (see the module). Returns what was done, for a person.
    Raises FeedError (not fetched, not verified: the list in place stays) or RuleError (not UTF-8)."""
    data = fetch(feed.url)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise FeedError(f"feed {feed.name}: {feed.url}: line {line}: not UTF-8 text; keeping the list in "
                        "place") from None
    new = read_list_text(feed.url, text, fmt=feed.format, lenient=True, platform=feed.platform)
    count, refused = len(new.entries), len(new.refused)
    keeping = f"; keeping {feed.output}" if feed.output.exists() else f"; {feed.output} is not installed"
    if count < feed.min_entries:
        raise FeedError(f"feed {feed.name}: {count} entries, fewer than min_entries {feed.min_entries}{keeping}")
    if refused > feed.max_refused * (count + refused):
        first = new.refused[0]
        raise FeedError(f"feed {feed.name}: {refused} of {count + refused} entries refused (max_refused "
                        f"{feed.max_refused:g}; line {first.line}: {first.text!r}: {first.why}){keeping}")
    old: ListFile | None = None
    old_text = ""
    if feed.output.exists():
        try:
            old_text = feed.output.read_text(encoding="utf-8-sig")
            old = read_list_text(str(feed.output), old_text, lenient=True)
        except (OSError, UnicodeDecodeError, RuleError):
            old = None  # a list in place that is no longer readable is replaced by a verified one
    baseline = count
    if old is not None and not force:
        before = len(old.entries)
        now = {(e.name, e.mode) for e in new.entries}
        lost = [e.written() for e in old.entries if (e.name, e.mode) not in now]
        if before and len(lost) > before * feed.max_shrink:
            shown = ", ".join(lost[:5]) + (", ..." if len(lost) > 5 else "")
            raise FeedError(f"feed {feed.name}: it would remove {len(lost)} of the {before} entries in place "
                            f"({shown}), more than max_shrink {feed.max_shrink:g} allows (use --force if that "
                            f"is right){keeping}")
        marked = _BASELINE.search(old_text)
        highest = max(int(marked.group(1)) if marked else before, before)
        if count < highest * (1 - feed.max_shrink):
            raise FeedError(f"feed {feed.name}: {count} entries against a baseline of {highest} verified before: "
                            f"it lost more than max_shrink {feed.max_shrink:g} since (a list worn down a step at "
                            f"a time; use --force if that is right, which sets the baseline anew){keeping}")
        baseline = max(highest, count)
        if [(e.name, e.mode, e.platform) for e in old.entries] == [(e.name, e.mode, e.platform) for e in new.entries]:
            return f"feed {feed.name}: unchanged ({count} entries)"
    text = write_list(new.entries, source=feed.url, retrieved=_now(), title=f"feed {feed.name}", baseline=baseline)
    problem = reads_back(str(feed.output), text, new.entries)
    if problem:
        raise FeedError(f"feed {feed.name}: {problem}{keeping}")
    write_atomically(feed.output, text, keep=True)
    was = f", was {len(old.entries)}" if old is not None else ""
    return f"feed {feed.name}: wrote {feed.output}: {count} entries{was}, {refused} refused"


def cmd_update(args: argparse.Namespace) -> int:
    try:
        feeds = load_feeds(Path(args.feeds))
    except RuleError as exc:
        print(f"geoblock: {exc}", file=sys.stderr)
        return 2
    if args.only:
        feeds = [f for f in feeds if f.name in args.only]
        if not feeds:
            print(f"geoblock: no feed named {', '.join(args.only)} in {args.feeds}", file=sys.stderr)
            return 2
    failed = 0
    for feed in feeds:
        try:
            print(update_feed(feed, force=args.force))
        except (FeedError, RuleError) as exc:
            failed += 1
            print(f"geoblock: {exc}", file=sys.stderr)
        except OSError as exc:  # writing the list: a full disk, a read-only or wrong path
            failed += 1
            print(f"geoblock: feed {feed.name}: cannot write {feed.output}: {exc.strerror or exc}; the list in "
                  "place is kept", file=sys.stderr)
    return 1 if failed else 0


def named_lists(rules: str) -> list[tuple[Path, str | None]]:
    """The list files the rules at `rules` name, as (path, platform of the naming rule or None), each once,
    in the order the rules name them. A best effort over the YAML alone: what does not read (bad YAML, a
    list that does not exist) is left out here, and Ruleset.load reports it with its file and line."""
    found: dict[tuple[Path, str | None], None] = {}
    try:
        files = rule_files(rules)
    except RuleError:
        return []
    for path in files:
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        rule_list = doc.get("rules") if isinstance(doc, dict) else None
        for rule in rule_list if isinstance(rule_list, list) else ():
            if not isinstance(rule, dict) or not isinstance(rule.get("domains_from"), list):
                continue
            platform = rule.get("platform")
            for name in rule["domains_from"]:
                target = path.parent / str(name)
                if isinstance(name, str) and target.is_file() and (platform is None or isinstance(platform, str)):
                    found[(target, platform)] = None
    return list(found)


def cmd_compile(args: argparse.Namespace) -> int:
    cache = os.path.abspath(args.cache or cache_dir())
    try:
        os.makedirs(cache, exist_ok=True)
        probe = tempfile.mkdtemp(prefix=".probe-", dir=cache)
        os.rmdir(probe)
    except OSError as exc:
        why = "not a directory" if os.path.exists(cache) and not os.path.isdir(cache) else (exc.strerror or exc)
        print(f"geoblock: cannot write the artifact cache {cache}: {why}", file=sys.stderr)
        return 2
    os.environ[ENV_CACHE] = cache  # Ruleset.load below (and anything it starts) uses this cache
    done: list[dict[str, Any]] = []
    for path, platform in named_lists(args.rules):
        before = set(os.listdir(cache))
        started = time.perf_counter()
        try:
            listed = open_list(path, platform, cache=cache)
        except RuleError as exc:
            for name in set(os.listdir(cache)) - before:  # open_list leaves its .build- directory on a bad list
                if name.startswith(".build-"):
                    shutil.rmtree(os.path.join(cache, name), ignore_errors=True)
            _refused(args, "list", exc)
            return 1
        seconds = time.perf_counter() - started
        artifact = listed.index.path if listed.index is not None else ""  # open_list always gives one
        done.append({"path": str(path), "platform": platform, "entries": listed.entry_count,
                     "sha256": listed.sha256, "version": listed.version, "artifact": artifact,
                     "built": os.path.basename(artifact) not in before, "seconds": round(seconds, 3)})
        if done[-1]["built"]:
            _readable(artifact)
        if not args.json:
            print(f"{path}: {listed.entry_count} entries, version {listed.version} (sha256 {listed.sha256}), "
                  f"artifact {artifact}, " + (f"built in {seconds:.3f} s" if done[-1]["built"]
                                              else f"already compiled (opened in {seconds:.3f} s)"), flush=True)
    try:
        rs = Ruleset.load(args.rules)  # the whole rules, as the proxy loads them, from the cache just filled
    except RuleError as exc:
        _refused(args, "rules", exc)
        return 1
    compiled = {d["artifact"] for d in done}
    for listed in rs.source.lists:
        if listed.index is not None and listed.index.path not in compiled:  # named in a way the walk missed
            compiled.add(listed.index.path)
            done.append({"path": listed.path, "platform": listed.platform, "entries": listed.entry_count,
                         "sha256": listed.sha256, "version": listed.version, "artifact": listed.index.path,
                         "built": True, "seconds": None})
            if not args.json:
                print(f"{listed.path}: {listed.entry_count} entries, version {listed.version} (sha256 "
                      f"{listed.sha256}), artifact {listed.index.path}, built while loading the rules")
    if args.json:
        print(json.dumps({"ok": True, "ruleset": rs.version, "cache": cache, "lists": done}))
    else:
        built = sum(1 for d in done if d["built"])
        print(f"ok: ruleset {rs.version}: {len(done)} list(s) in {cache} ({built} built, {len(done) - built} "
              "already compiled)")
    return 0


def _readable(directory: str) -> None:
    """Give an artifact directory built here the umask's permissions (it is made private, 0700): a
    build step run as one user (root in an image build) leaves an artifact the proxy's user can map."""
    mask = os.umask(0)
    os.umask(mask)
    try:
        os.chmod(directory, 0o777 & ~mask)
    except OSError:
        pass


def _refused(args: argparse.Namespace, what: str, exc: RuleError) -> None:
    """Say why `what` ("list" or "rules") was refused: "file:line: message" on stderr, or with --json
    {"ok": false, "error", "file", "line"} on stdout (as `geoblock check --json`)."""
    if args.json:
        print(json.dumps({"ok": False, "error": exc.message, "file": exc.path, "line": exc.line}))
    else:
        print(f"geoblock: {what} refused: {exc}", file=sys.stderr)


def add_parser(sub: Any) -> None:
    """The `lists` subcommand (import, update, compile) on the `geoblock` parser's subparsers `sub`."""
    p = sub.add_parser("lists", help="import lists into geoblock's list format; keep feeds current",
                       description="Import a list (plain, hosts, adblock, CSV) as a geoblock list file, or "
                                   "update the feeds of a feeds file. docs/lists.md.")
    lists = p.add_subparsers(dest="lists_command", required=True)
    imp = lists.add_parser("import", help="normalise a list into a plain list file, saying what was refused")
    imp.add_argument("src", help="a list file, - for stdin, or an http(s) URL")
    imp.add_argument("--format", choices=FORMATS, help="the source's format (default: declared or detected)")
    imp.add_argument("--platform", help="the platform of entries that name none")
    imp.add_argument("--source", help="the provenance to record (default: SRC)")
    imp.add_argument("--title", help="a first comment line for the list file")
    imp.add_argument("-o", "--output", help="the list file to write (default: stdout)")
    imp.set_defaults(func=cmd_import, rules="")
    upd = lists.add_parser("update", help="download, verify and install the feeds of a feeds file")
    upd.add_argument("feeds", help="the feeds file (YAML; docs/lists.md)")
    upd.add_argument("--only", action="append", metavar="NAME", help="only this feed (repeatable)")
    upd.add_argument("--force", action="store_true", help="install even a feed that shrank more than max_shrink")
    upd.set_defaults(func=cmd_update, rules="")
    comp = lists.add_parser("compile", help="compile the lists the rules name into the artifact cache (a build step)")
    comp.add_argument("rules", nargs="?", help="a rules file or directory (default: the one the proxy uses)")
    comp.add_argument("--cache", metavar="DIR",
                      help=f"the artifact cache to fill (default: ${ENV_CACHE}, else the proxy's default)")
    comp.add_argument("--json", action="store_true", help="print one JSON object: ruleset, cache, lists")
    comp.set_defaults(func=cmd_compile)
