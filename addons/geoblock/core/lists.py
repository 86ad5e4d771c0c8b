"""List files: the names a rule takes from outside its YAML (`domains_from: [lists/exchanges.txt]`).

YAML stays the policy language; a list of thousands of names lives in a list file, one entry per line,
in one of these formats (docs/lists.md):

- "plain": `name [Platform name]`: a domain entry as in YAML (`name` = the name and its subdomains,
  `=name` = the name only, `*.name` = its subdomains only; a leading `.` as in Squid's dstdomain means
  the name and its subdomains), then optionally the platform it belongs to (the rest of the line);
- "hosts": hosts-file lines, `0.0.0.0 name [name ...]` (any address; the names count as entries);
  `localhost` and the other names hosts files carry for themselves are skipped;
- "adblock": adblock network rules `||name^` (the name and its subdomains); `!` comments and the
  `[Adblock Plus 2.0]` header are skipped; an exception (`@@`), a path or a `$modifier` is refused,
  since geoblock judges names only;
- "csv": RFC 4180 CSV with a header row naming a `domain` column (also `host`, `hostname`, `name`,
  `url`, `website`, `site`, and `name` when no other is there) and optionally a `platform` column (also
  `brand`, `company`, `entity`, `operator`, or `name` when it is not the domain column).

`#` starts a comment (at the start of a line, or after whitespace). Header comments at the top of a
file carry its provenance and may declare its format: `# source: URL`, `# retrieved: 2026-11-20`,
`# format: hosts`, `# platform: Name` (the platform of entries that name none). Without a declared
format a `.csv` file is CSV and any other file is read line by line, each line in whichever of plain,
hosts or adblock it is written.

`read_list` reads one file strictly (the first bad entry raises RuleError naming file:line: a list in
force must mean what it says) or leniently (bad entries are collected as `Refused`, for `geoblock lists
import`). Duplicates are kept once (the first) and reported. Nothing here imports mitmproxy.
"""

from __future__ import annotations

import csv
import hashlib
import io
import ipaddress
import operator
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from functools import cached_property
from itertools import compress, repeat
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args
from urllib.parse import urlsplit

from geoblock.core.names import MAX_NAME, InvalidHost, normalize_host
from geoblock.errors import GeoblockError
from geoblock.watch import FileStamp, stamp_of

if TYPE_CHECKING:
    from geoblock.core.listindex import ListIndex

__all__ = ["FORMATS", "Columns", "Entry", "ListFile", "ListFormat", "Refused", "parse_entry", "read_columns",
           "read_file", "read_list", "read_list_text", "write_list"]

ListFormat = Literal["plain", "hosts", "adblock", "csv"]
FORMATS: tuple[ListFormat, ...] = get_args(ListFormat)

DomainMode = Literal["tree", "exact", "below"]

# names a hosts file carries for the machine itself (/etc/hosts conventions), never a blocked service
_HOSTS_SELF = frozenset({"localhost", "localhost.localdomain", "local", "broadcasthost", "ip6-localhost",
                         "ip6-loopback", "ip6-localnet", "ip6-mcastprefix", "ip6-allnodes", "ip6-allrouters",
                         "ip6-allhosts", "0.0.0.0"})
# the domain column: the first of these the header has (`name` last: in "Name,Website" it is the platform's)
_DOMAIN_COLUMNS = ("domain", "domains", "hostname", "host", "url", "website", "site", "name")
_PLATFORM_COLUMNS = ("platform", "brand", "company", "entity", "operator")
_LINES = re.compile(r"\r\n|\r|\n")
_HEADER = re.compile(r"#\s*([A-Za-z_-]+)\s*:\s*(.*?)\s*\Z")
_HEADER_KEYS = ("source", "retrieved", "format", "platform")
_COMMENT = re.compile(r"(?:^|\s)#")
_PLATFORM = re.compile(r"[^\x00-\x1f\x7f]{1,100}\Z")


class ListError(GeoblockError, ValueError):
    """Base of the list module's errors (a RuleError is raised for bad files: see read_list)."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One entry of a list: `name` (normalised, names.normalize_host), `mode` ("tree": the name and its
    subdomains; "exact": the name only; "below": its subdomains only), `text` as written, `platform`
    (None: not named) and `line` (1-based) in its file."""

    name: str
    mode: DomainMode
    text: str
    platform: str | None
    line: int

    def written(self) -> str:
        """The entry in the plain format's notation (`name`, `=name`, `*.name`)."""
        return {"tree": "", "exact": "=", "below": "*."}[self.mode] + self.name


@dataclass(frozen=True, slots=True)
class Refused:
    """An entry a lenient read left out: its line (1-based), the text, and why."""

    line: int
    text: str
    why: str


@dataclass(frozen=True)
class ListFile:
    """One list file as read: its entries (first occurrence of each name and mode, file order) and its
    provenance.

    - `path`: as given; `sha256`: of the file's bytes (hex); `version`: its first 12 hex digits, the
      `list_version` of decision records; `mtime`: modification time (seconds since the epoch);
      `size`: bytes;
    - `source`, `retrieved`: the header comments `# source:` and `# retrieved:`, or None;
    - `format`: the declared format, or None (detected per line); `platform`: the header's default;
    - `duplicates`: (line, text, first line) of entries that repeat an earlier one (kept once);
    - `refused`: entries a lenient read left out (always empty after a strict read);
    - `platforms`: the platforms its entries name;
    - `stamp`: the file's (path, inode, mtime in ns, size, ctime in ns) as read, for noticing a change (watch.py);
    - `count`: how many entries were read, where a rule keeps the file's provenance without its entries;
    - `index`: the compiled entries (core/listindex.py) of a list a rule uses, else None.
    """

    path: str
    sha256: str
    mtime: float
    size: int
    entries: tuple[Entry, ...]
    source: str | None = None
    retrieved: str | None = None
    format: ListFormat | None = None
    platform: str | None = None
    duplicates: tuple[tuple[int, str, int], ...] = ()
    refused: tuple[Refused, ...] = field(default=())
    platforms: frozenset[str] = frozenset()  # the platforms its entries name
    stamp: FileStamp | None = None  # (path, inode, mtime ns, size, ctime ns) when read (watch.py)
    count: int = -1  # entries read (kept when `entries` is dropped to save memory); -1: len(entries)
    index: ListIndex | None = field(default=None, compare=False, repr=False)  # compiled (core/listindex.py)

    @property
    def entry_count(self) -> int:
        return len(self.entries) if self.count < 0 else self.count

    @cached_property
    def version(self) -> str:
        """The first 12 hex digits of `sha256` (the records' `list_version`)."""
        return self.sha256[:12]

    @cached_property
    def name(self) -> str:
        """The file's name without its directory (what decision records call the list)."""
        return os.path.basename(self.path)


    def describe(self) -> str:
        """One line for `geoblock check`: entries, platforms, version, source, retrieved, mtime."""
        parts = [f"{self.entry_count} entries"]
        if self.platforms:
            parts.append(f"{len(self.platforms)} platforms")
        parts.append(f"sha256 {self.version}")
        parts.append("modified " + time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(self.mtime)))
        if self.source:
            parts.append(f"source {self.source}")
        if self.retrieved:
            parts.append(f"retrieved {self.retrieved}")
        if self.duplicates:
            parts.append(f"{len(self.duplicates)} duplicates")
        return f"{self.path}: " + ", ".join(parts)


class _Bad(ListError):
    """An entry that cannot be used (internal: becomes a RuleError or a Refused)."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def parse_entry(text: str) -> tuple[str, DomainMode]:
    """A domain entry of YAML (`name`, `=name`, `*.name`, `.name`) as (normalised name, mode); a single
    label (`no`: the .no top-level domain) is allowed there, not in a list file. Raises ListError with the
    reason when it is not a domain (an IP address, a port, a path, a wildcard elsewhere)."""
    try:
        return _parse_entry(text)
    except _Bad as exc:
        raise ListError(f"{text!r}: {exc.why}") from None


def _parse_entry(text: str, single_label: bool = False) -> tuple[str, DomainMode]:
    mode: DomainMode = "tree"
    name = text
    if name.startswith("="):
        mode, name = "exact", name[1:]
    elif name.startswith("*."):
        mode, name = "below", name[2:]
    elif name.startswith(".") and not name.startswith(".."):
        name = name[1:]  # Squid's dstdomain `.example.com`: the name and its subdomains
    if "://" in name or "/" in name or (":" in name and not _is_ip(name)):
        raise _Bad("must be a bare domain (no scheme, port or path)")
    if "*" in name or "?" in name:
        raise _Bad("a wildcard is allowed only as a leading `*.`; put name patterns under a rule's patterns")
    try:
        host = normalize_host(name)
    except InvalidHost as exc:
        raise _Bad(f"not a valid domain ({exc.why})") from None
    if not isinstance(host, str):
        raise _Bad("an IP address; put it under a rule's networks")
    if host.rsplit(".", 1)[-1].isdigit():
        raise _Bad("its last label is all digits, which no domain's is (RFC 3696 section 2): an address "
                   "written wrong?")
    if single_label and "." not in host:
        raise _Bad("a single label, not a domain: an entry is a domain such as binance.com, and a platform's "
                   "name goes after it (`binance.com  Binance`); a top-level domain belongs in a rule's domains")
    return host, mode


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return False
    return True


def _host_of_url(text: str) -> str:
    """The site a URL-looking entry names, for lenient reads: its host without a leading `www.`
    (`https://www.x.com/path` -> x.com, which covers www.x.com, the API and the rest of the site)."""
    parts = urlsplit(text if "://" in text else "//" + text)
    host = parts.hostname or text
    return host[4:] if host.startswith("www.") and host.count(".") >= 2 else host


def _platform(text: str) -> str | None:
    text = " ".join(text.split())
    if not text:
        return None
    if not _PLATFORM.match(text):
        raise _Bad(f"platform name {text[:40]!r}: at most 100 printable characters")
    return text


_DOTS = re.compile("[.\u3002\uff0e\uff61]")  # the dots IDNA reads as label separators (UTS 46)
_WRAPPING = "\"'`()[]{}<>,;:!?|^=*"


def _hidden_name(platform: str, listed: set[str]) -> str | None:
    """A domain name one of the platform's words spells (`okx.com`, `https://okx.com/`, `OKX.COM`,
    `ＯＫＸ.com`, `=okx.com`) that `listed` does not hold, or None. A platform named like its own
    domain (`Crypto.com` beside `crypto.com`) holds a listed name."""
    for word in platform.split():
        if not _DOTS.search(word):
            continue  # no dot of any kind: no domain name (and no normalising, which costs)
        if "://" in word:
            word = urlsplit(word).hostname or word
        word = word.split("/", 1)[0].strip(_WRAPPING).removeprefix("*.").removeprefix(".").strip(_WRAPPING)
        if not word:
            continue
        try:
            host = normalize_host(word)
        except (InvalidHost, ValueError):
            continue
        if isinstance(host, str) and "." in host.strip(".") and host not in listed:
            return host
    return None


def _strip_comment(line: str) -> str:
    match = _COMMENT.search(line)
    return (line[: match.start()] if match else line).strip()


def _line_items(raw: str, fmt: ListFormat | None, lenient: bool) -> Iterator[tuple[str, str | None]]:
    """(entry text, platform or None) for each entry one line of a line-based list holds."""
    stripped = raw.strip()
    if not stripped or stripped.startswith("#"):
        return
    if fmt in (None, "adblock") and (stripped.startswith("!") or stripped.startswith("[Adblock")):
        return  # adblock comment / header
    body = _strip_comment(raw)
    if not body:
        return
    if fmt == "adblock" or (fmt is None and (body.startswith("||") or body.startswith("@@"))):
        yield _adblock(body), None
        return
    first, _, rest = body.partition(" ")
    first, _, tab_rest = first.partition("\t")
    rest = (tab_rest + " " + rest).strip()
    if fmt == "hosts" or (fmt is None and _is_ip(first) and rest):
        if not _is_ip(first):
            raise _Bad(f"a hosts line starts with an address (0.0.0.0 name), not {first!r}")
        for name in rest.split():
            if name.lower() not in _HOSTS_SELF:
                yield name, None
        return
    if fmt == "plain" or fmt is None:
        if lenient and ("://" in first or "/" in first):
            first = _host_of_url(first)
        yield first, rest or None  # the platform, checked by the caller (_platform)
        return
    raise _Bad(f"format {fmt} is not line based")  # pragma: no cover - csv is read by _csv_items


def _adblock(body: str) -> str:
    if body.startswith("@@"):
        raise _Bad("an adblock exception rule (@@); put the name in an allow rule instead")
    if not body.startswith("||"):
        raise _Bad("not an adblock network rule of the form ||name^")
    rule, dollar, modifiers = body[2:].partition("$")
    if dollar:
        raise _Bad(f"adblock modifiers (${modifiers}) are not supported: geoblock blocks the whole name")
    name = rule[:-1] if rule.endswith("^") else rule
    if "^" in name or "/" in name or "|" in name:
        raise _Bad("an adblock rule with a path or separator inside; geoblock judges names only")
    return name


def _csv_items(text: str, lenient: bool) -> Iterator[tuple[int, str, str | None]]:
    """(line, entry text, platform) from CSV text with a header row."""
    rows = csv.reader(io.StringIO(text))
    header: list[str] | None = None
    domain_col = platform_col = -1
    for row in rows:
        line = rows.line_num
        if not row or all(not c.strip() for c in row):
            continue
        if header is None and row[0].lstrip().startswith("#"):
            continue  # header comments (provenance) before the header row; after it every row is data
        if header is None:
            header = [c.strip().lower() for c in row]
            domain_col = next((header.index(c) for c in _DOMAIN_COLUMNS if c in header), -1)
            platform_col = next((header.index(c) for c in (*_PLATFORM_COLUMNS, "name")
                                 if c in header and header.index(c) != domain_col), -1)
            if domain_col < 0:
                raise _HeaderError(line, f"no domain column in the header row {row!r} (one of "
                                         f"{', '.join(_DOMAIN_COLUMNS)})")
            if header.count(header[domain_col]) > 1:
                raise _HeaderError(line, f"the header row names the domain column {header[domain_col]!r} twice: "
                                         "one domain per row")
            continue
        if len(row) > len(header) and any(cell.strip() for cell in row[len(header):]):
            raise _HeaderError(line, f"a row of {len(row)} cells under a header of {len(header)}: a cell "
                                     "past the header's columns would be ignored (one domain per row)")
        value = row[domain_col].strip() if domain_col < len(row) else ""
        platform = row[platform_col] if 0 <= platform_col < len(row) else ""
        if lenient and ("://" in value or "/" in value):
            value = _host_of_url(value)
        yield line, value, platform


class _HeaderError(ListError):
    def __init__(self, line: int, why: str) -> None:
        super().__init__(why)
        self.line, self.why = line, why


def read_list(path: str | os.PathLike[str], *, fmt: ListFormat | None = None, lenient: bool = False,
              platform: str | None = None) -> ListFile:
    """Read the list file at `path` (see the module). `fmt` overrides the declared or detected format;
    `platform` is the platform of entries that name none when the file's header does not set one (a
    rule's `platform`). Strict (the default): raises RuleError naming file:line for the first bad entry,
    and for a missing or unreadable file or text that is not UTF-8. Lenient: bad entries are returned in
    `refused` instead (file-level problems still raise)."""
    stat, text, digest = read_file(path)
    listed = read_list_text(str(path), text, digest=digest, mtime=stat.st_mtime, size=stat.st_size, fmt=fmt,
                            lenient=lenient, platform=platform)
    return replace(listed, stamp=stamp_of(str(path), stat))


def read_file(path: str | os.PathLike[str]) -> tuple[os.stat_result, str, str]:
    """A list file's (stat taken before reading, its text decoded as UTF-8 (a BOM dropped), the SHA-256 of
    its bytes in hex). Raises RuleError for a missing or unreadable file, and naming the line of the first
    byte that is not UTF-8."""
    from geoblock.core.rules import RuleError  # rules imports this module

    p = Path(path)
    try:
        stat = p.stat()  # before reading: a change after it makes the stamp stale, never the content
        data = p.read_bytes()
    except OSError as exc:
        raise RuleError(p, None, f"cannot read list file: {exc.strerror}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise RuleError(p, data[: exc.start].count(b"\n") + 1, "not UTF-8 text") from None
    return stat, text, hashlib.sha256(data).hexdigest()


def read_list_text(path: str, text: str, *, digest: str | None = None, mtime: float = 0.0, size: int | None = None,
                   fmt: ListFormat | None = None, lenient: bool = False, platform: str | None = None) -> ListFile:
    """read_list on text already read (`path` names it in messages). Raises RuleError (strict)."""
    cols = read_columns(path, text, digest=digest, mtime=mtime, size=size, fmt=fmt, lenient=lenient,
                        platform=platform)
    return replace(cols.info, entries=tuple(cols.entries()), count=-1)


@dataclass
class Columns:
    """The entries of a list file as parallel columns (what a national-scale list compiles from without
    one object per entry): for entry i, `names[i]` (normalised), `modes[i]` ("tree", "exact", "below"),
    `texts[i]` (as written), `platforms[i]` (or None) and `lines[i]` (1-based). `info` is the file's
    ListFile without entries (provenance, duplicates, refused, platforms, count)."""

    info: ListFile
    names: list[str]
    modes: list[DomainMode]
    texts: list[str]
    platforms: list[str | None]
    lines: list[int]

    def entries(self) -> Iterator[Entry]:
        """The entries as `Entry` objects, in file order."""
        return map(Entry, self.names, self.modes, self.texts, self.platforms, self.lines)


# A plain line that is already in normal form: a lower-case ASCII name of two or more labels whose last
# label starts with a letter (so no address form: names.normalize_host), optionally followed by blanks
# and a platform without `#`. Such a line is read without the general parser, to the same result
# (tests/test_lists.py compares the two); every other line takes the general path.
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_FAST_NAME = rf"(?:{_LABEL}\.)+[a-z](?:[a-z0-9_-]{{0,61}}[a-z0-9_])?"
# every line of a text without CR: (name, platform text) for a line in normal form, ("", "") for another
_FAST_LINES = re.compile(rf"^(?:({_FAST_NAME})(?:[ \t]+([^#\n]*))?|[^\n]*)$", re.M)
FAST_PATH = True  # tests switch it off to compare with the general parser
_FIRST, _SECOND = operator.itemgetter(0), operator.itemgetter(1)
_UNSEEN: Any = object()  # not yet in platform_of


def _bulk(pre: list[tuple[str, str]], lines: list[str], default_platform: str | None
          ) -> tuple[list[str], list[str], list[str | None], list[int], set[str]] | None:
    """The columns (names, texts, platforms, lines) of a list whose every line the fast path read (`pre`,
    from _FAST_LINES) or is blank or a comment, built a column at a time; None when any line is
    another (a bad entry, another notation), a name repeats, a name is too long or a platform is bad:
    the per-line loop reads those, and says why. The same result as that loop (tests/test_listindex.py).
    The fifth column is the set of the names."""
    for i in compress(range(len(pre)), map(operator.not_, map(_FIRST, pre))):  # the lines without an entry
        stripped = lines[i].strip()
        if stripped and not stripped.startswith("#"):
            return None
    # the entry lines' columns by maps of C functions (a comment or blank line has the name ""), not a
    # Python loop per line: about 0.1 s less at a million lines (scripts/bench_biglist.py)
    names = list(filter(None, map(_FIRST, pre)))
    tails = list(compress(map(_SECOND, pre), map(_FIRST, pre)))
    numbers = list(compress(range(1, len(pre) + 1), map(_FIRST, pre)))
    distinct = set(names)
    if not names or max(map(len, names)) > MAX_NAME or len(distinct) != len(names):
        return None
    platform_of: dict[str, str | None] = {"": None}
    for tail in set(tails):
        if tail:
            try:
                platform_of[tail] = _platform(tail)
            except _Bad:
                return None
    if default_platform is None:  # a platform read is a name or None: `or None` changes nothing
        owners = list(map(platform_of.__getitem__, tails))
    else:
        owners = [platform_of[tail] or default_platform for tail in tails]
    return names, list(names), owners, numbers, distinct


def read_columns(path: str, text: str, *, digest: str | None = None, mtime: float = 0.0, size: int | None = None,
                 fmt: ListFormat | None = None, lenient: bool = False, platform: str | None = None) -> Columns:
    """read_list_text's work, returning the entries as `Columns`. Raises RuleError (strict)."""
    from geoblock.core.rules import RuleError

    headers: dict[str, str] = {}
    header_lines: dict[str, int] = {}
    # CR, LF, CRLF: as editors count lines (not U+2028 and the like); without CR, a plain split says the same
    lines = _LINES.split(text) if "\r" in text else text.split("\n")
    for number, raw in enumerate(lines, 1):
        stripped = raw.strip()
        if not stripped:
            continue
        if not stripped.startswith("#"):
            break
        match = _HEADER.match(stripped)
        if match and match.group(1).lower() in _HEADER_KEYS:
            key = match.group(1).lower()
            if key == "format" and match.group(2) not in FORMATS:
                raise RuleError(path, number, f"format {match.group(2)!r} is not one of {', '.join(FORMATS)}")
            headers[key] = match.group(2)
            header_lines[key] = number
    declared = fmt or headers.get("format") or ("csv" if path.lower().endswith(".csv") else None)
    try:
        default_platform = _platform(headers["platform"]) if "platform" in headers else platform
    except _Bad as exc:
        raise RuleError(path, header_lines.get("platform"), exc.why) from None
    names: list[str] = []
    modes: list[DomainMode] = []
    texts: list[str] = []
    owners: list[str | None] = []
    numbers: list[int] = []
    refused: list[Refused] = []
    duplicates: list[tuple[int, str, int]] = []
    first_line: dict[DomainMode, dict[str, int]] = {"tree": {}, "exact": {}, "below": {}}  # mode: name -> line
    platform_of: dict[str, str | None] = {}  # platform text as written -> checked platform (the same few recur)

    def add(line: int, written: str, named: str | None) -> None:
        try:
            name, mode = _parse_entry(written, single_label=True)
            owner = _platform(named) if named else None
        except _Bad as exc:
            if not lenient:
                raise RuleError(path, line, f"{written!r}: {exc.why}") from None
            refused.append(Refused(line, written, exc.why))
            return
        seen = first_line[mode]
        if name in seen:
            duplicates.append((line, written, seen[name]))
            return
        seen[name] = line
        names.append(name)
        modes.append(mode)
        texts.append(written)
        owners.append(owner or default_platform)
        numbers.append(line)

    bulk_names: set[str] | None = None  # the names, where the lines were read a column at a time
    if declared == "csv":
        try:
            for line, written, named in _csv_items(text, lenient):
                if not written:
                    if not lenient:
                        raise RuleError(path, line, "the domain column is empty")
                    refused.append(Refused(line, "", "the domain column is empty"))
                    continue
                add(line, written, named)
        except _HeaderError as exc:
            raise RuleError(path, exc.line, exc.why) from None
        except csv.Error as exc:
            raise RuleError(path, None, f"bad CSV: {exc}") from None
    else:
        line_fmt: ListFormat | None = declared  # type: ignore[assignment]
        # the fast path's reading of every line at once (one pass in C), or None where it does not apply:
        # per line, (name, platform text) when the line is in normal form, else ("", "")
        pre: list[tuple[str, str]] | None = None
        if FAST_PATH and line_fmt in (None, "plain") and "\r" not in text:
            pre = _FAST_LINES.findall(text)
            if len(pre) != len(lines):  # never seen; the per-line reading is the reference
                pre = None
        bulk = _bulk(pre, lines, default_platform) if pre is not None else None
        if bulk is not None:  # every line in normal form, a comment or blank: the columns at once
            names, texts, owners, numbers, bulk_names = bulk
            modes = ["tree"] * len(names)
            pre = []  # nothing left for the loop below
            lines = []
        tree_seen = first_line["tree"]
        add_name, add_mode, add_text, add_owner, add_number = (
            names.append, modes.append, texts.append, owners.append, numbers.append)
        for number, raw, (name, tail) in zip(range(1, len(lines) + 1), lines, pre or repeat(("", "")), strict=False):
            if name and len(name) <= MAX_NAME:
                owner = None
                if tail:
                    owner = platform_of.get(tail, _UNSEEN)
                    if owner is _UNSEEN:
                        try:
                            owner = platform_of[tail] = _platform(tail)
                        except _Bad:
                            add(number, name, tail)  # the general path refuses it, naming why
                            continue
                if name in tree_seen:
                    duplicates.append((number, name, tree_seen[name]))
                    continue
                tree_seen[name] = number
                add_name(name)
                add_mode("tree")
                add_text(name)
                add_owner(owner or default_platform)
                add_number(number)
                continue
            try:
                items = list(_line_items(raw, line_fmt, lenient))
            except _Bad as exc:
                if not lenient:
                    raise RuleError(path, number, f"{raw.strip()!r}: {exc.why}") from None
                refused.append(Refused(number, raw.strip(), exc.why))
                continue
            for written, named in items:
                add(number, written, named)
    # platforms that spell a name the list does not hold: checked once per distinct platform, and the
    # entries walked only when one does
    hidden_of: dict[str | None, str | None] = dict.fromkeys(set(owners))
    suspects = [owner for owner in hidden_of if owner and owner != default_platform and _DOTS.search(owner)]
    if suspects:
        listed = bulk_names if bulk_names is not None else (
            first_line["tree"].keys() | first_line["exact"].keys() | first_line["below"].keys())
        for owner in suspects:
            hidden_of[owner] = _hidden_name(owner, listed)
    bad: list[int] = []
    for i, owner in enumerate(owners) if any(hidden_of.values()) else ():
        hidden = hidden_of[owner]
        if hidden is None:
            continue
        why = (f"platform {owner!r} holds the name {hidden}, which this list does not list: a second "
               "entry on the line? One entry per line (a hosts line takes several names after an address); a "
               "platform named like a domain is accepted when that domain is listed too")
        if not lenient:
            raise RuleError(path, numbers[i], f"{texts[i]!r}: {why}")
        refused.append(Refused(numbers[i], f"{texts[i]} {owner}", why))
        bad.append(i)
    if bad:
        drop = set(bad)
        keep = [i for i in range(len(names)) if i not in drop]
        names = [names[i] for i in keep]
        modes = [modes[i] for i in keep]
        texts = [texts[i] for i in keep]
        owners = [owners[i] for i in keep]
        numbers = [numbers[i] for i in keep]
    info = ListFile(
        path=path,
        sha256=digest or hashlib.sha256(text.encode("utf-8")).hexdigest(),
        mtime=mtime,
        size=len(text.encode("utf-8")) if size is None else size,
        entries=(),
        source=headers.get("source") or None,
        retrieved=headers.get("retrieved") or None,
        format=declared,  # type: ignore[arg-type]
        platform=default_platform,
        duplicates=tuple(duplicates),
        refused=tuple(refused),
        platforms=frozenset(p for p in (owners if bad else hidden_of) if p),
        count=len(names),
    )
    return Columns(info, names, modes, texts, owners, numbers)


def write_list(entries: list[Entry] | tuple[Entry, ...], *, source: str | None = None, retrieved: str | None = None,
               title: str | None = None, baseline: int | None = None) -> str:
    """The text of a plain list file holding `entries` (their notation and platform, one per line,
    names aligned, at least two spaces before a platform), with provenance header comments (and
    `# baseline: N`, the feed updater's high-water mark). Reading it back gives the same entries
    (tools/lists.py checks that before it installs one)."""
    head = []
    if title:
        head.append(f"# {title}")
    if source:
        head.append(f"# source: {source}")
    if retrieved:
        head.append(f"# retrieved: {retrieved}")
    if baseline is not None:
        head.append(f"# baseline: {baseline}")
    head.append("# format: plain")
    width = min(max((len(e.written()) for e in entries), default=0), 46)
    body = [f"{e.written():<{width}}  {e.platform}" if e.platform else e.written() for e in entries]
    return "\n".join(head + body) + "\n"
