"""The compiled form of a list file: what a rule's `domains_from` becomes, at any list size.

A list of a million names cannot be a million Python objects in the proxy (they cost hundreds of MB and
seconds of a held interpreter lock to build). A list file compiles instead into an *index artifact*, a
directory of three files, and the proxy maps it:

- ``trie.marisa``: a marisa-trie (a static succinct trie, memory-mapped) over one key per entry: its mode
  (``T`` name and subdomains, ``E`` the name only, ``B`` subdomains only) then the name reversed
  character by character with a trailing dot (``binance.com`` -> ``Tmoc.ecnanib.``). A subdomain's key
  has the entry's key as a prefix at a label boundary, so one ``iter_prefixes_with_ids`` call finds every
  entry that covers a name. marisa-trie was chosen by measurement over a Python set and DAWG2
  (scripts/bench_trie.py, docs/performance.md): it maps from disk (a set cannot, and holds every name
  as an object), builds 6x faster than the DAWG, and answers in about 0.6 µs;
- ``entries.u64``: per trie key id, one 64-bit word (native byte order): the entry's line in the file
  (bits 0-31), how it was written (bits 32-33: 0 as in the plain notation, 1 with Squid's leading dot,
  2 otherwise: the text is in the meta file) and its platform (bits 34-63: an index into the meta
  file's table, 0 for none). One word, not an array per field: a decision on a listed name reads them
  with one memory access instead of three (about 0.2 µs at 1,000,000 entries, scripts/bench_biglist.py);
- ``meta.json``: the list's provenance (the ListFile fields), the platform table, duplicates, and the
  SHA-256 of the two other files, checked when the artifact is opened.

Artifacts live in a cache directory (`cache_dir`), named by the list's SHA-256 and a digest of all
else its reading depends on (`_artifact_name`: the default platform, a `.csv` name, the artifact format,
the parser's code and library versions), so that the proxy, its workers and the offline tools share one
per list version and a restart maps it without compiling. A list larger than `CHILD_BYTES` compiles in
an isolated child process (`python -I`, `_main`): the proxy waits for it without holding its
interpreter, so a reload of a national list delays no request (docs/performance.md: 0.06 s at most
for 1,000,000 names), and the memory the compile needs goes back to the system when the child exits.
A bad list raises RuleError naming the file and line, as a small one does.
"""

from __future__ import annotations

import array
import hashlib
import importlib.metadata
import json
import mmap
import operator
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from itertools import compress, repeat
from pathlib import Path
from typing import Any, Literal, NoReturn

import marisa_trie

from geoblock.core.lists import Columns, DomainMode, Entry, ListFile, read_columns, read_file
from geoblock.watch import stamp_of

__all__ = ["CHILD_BYTES", "FORMAT", "ListIndex", "cache_dir", "compile_list", "open_list"]

FORMAT = 2  # the artifact layout; a change makes new artifacts (old ones are pruned)
CHILD_BYTES = 1 << 20  # list files larger than this (bytes) compile in a child process
KEEP_DAYS = 7  # artifacts not opened for this long are removed when a new one is built
ENV_CACHE = "GEOBLOCK_CACHE_DIR"
_MODE_CHAR: dict[DomainMode, str] = {"tree": "T", "exact": "E", "below": "B"}
_CHAR_MODE: dict[str, DomainMode] = {c: m for m, c in _MODE_CHAR.items()}
_WRITTEN: dict[DomainMode, str] = {"tree": "", "exact": "=", "below": "*."}  # the plain notation's prefixes
_FILES = ("trie.marisa", "entries.u64")
_LINE_MASK, _NOTATION_SHIFT, _PLATFORM_SHIFT = 0xFFFFFFFF, 32, 34  # the fields of an entries.u64 word
_PLATFORMS_MAX = (1 << 30) - 1  # distinct platforms one list may name (bits 34-63)


def cache_dir() -> str:
    """Where index artifacts are kept: $GEOBLOCK_CACHE_DIR, else systemd's $CACHE_DIRECTORY (the units'
    `CacheDirectory=`), else `.cache/lists` of a source checkout, else $XDG_CACHE_HOME/geoblock/lists or
    ~/.cache/geoblock/lists. Not created here."""
    from geoblock.paths import checkout_root

    for env in (ENV_CACHE, "CACHE_DIRECTORY"):
        value = os.environ.get(env, "").split(":")[0]
        if value:
            return os.path.join(value, "lists") if env == "CACHE_DIRECTORY" else value
    root = checkout_root()
    if root is not None:
        return os.path.join(root, ".cache", "lists")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "geoblock", "lists")


class ListIndex:
    """One compiled list, mapped from its artifact: `count` entries; `hits(name)` answers which cover a
    name; `entry(key_id)` rebuilds one entry for an explanation. Immutable and safe to share between
    threads (the trie and the entry words are read-only maps)."""

    __slots__ = ("_below", "_entries", "_exact", "_maps", "_meta", "_platform_names", "_texts", "_trie",
                 "count", "path")

    def __init__(self, directory: str) -> None:
        """Map the artifact in `directory`. Raises OSError or ValueError when it is missing, truncated or
        does not match its meta file's digests (the caller then compiles the list again)."""
        with open(os.path.join(directory, "meta.json"), encoding="utf-8") as f:
            meta = json.load(f)
        if meta.get("format") != FORMAT:
            raise ValueError(f"artifact format {meta.get('format')!r}, expected {FORMAT}")
        for name in _FILES:
            with open(os.path.join(directory, name), "rb") as f:
                if hashlib.file_digest(f, "sha256").hexdigest() != meta["digests"][name]:
                    raise ValueError(f"{name} does not match its digest")
        self.path = directory
        self._meta: dict[str, Any] = meta
        self._trie = marisa_trie.Trie()
        self._trie.mmap(os.path.join(directory, "trie.marisa"))
        self._maps: list[mmap.mmap] = []
        self._entries = self._map(directory, "entries.u64", "Q")
        self.count: int = meta["count"]
        if len(self._trie) != self.count or len(self._entries) != self.count:
            raise ValueError("artifact counts disagree")
        self._exact = "exact" in meta["modes"]
        self._below = "below" in meta["modes"]
        self._texts: dict[str, str] = meta["texts"]
        self._platform_names: list[str] = meta["platforms"]

    def _map(self, directory: str, name: str, code: Literal["Q"]) -> memoryview:
        with open(os.path.join(directory, name), "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                return memoryview(array.array(code))
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self._maps.append(mapped)
        return memoryview(mapped).cast(code)

    def hits(self, name: str) -> list[tuple[int, int, int]]:
        """The entries covering `name` (normalised), most specific first, as (rank, length, key id): rank 0
        an exact entry of the name, 1 a name-and-subdomains entry, 2 a subdomains-only entry; length the
        entry name's length (a longer one is more specific). The ruleset orders them among its other
        hits by (-length, rank)."""
        key = "T" + name[::-1] + "."
        trie = self._trie
        found = [(1, len(p) - 2, kid) for p, kid in trie.iter_prefixes_with_ids(key)]
        if len(found) > 1:
            found.reverse()  # the trie gives shorter (less specific) prefixes first
        if self._below:
            found.extend((2, len(p) - 2, kid) for p, kid in trie.iter_prefixes_with_ids("B" + key[1:])
                         if len(p) - 2 < len(name))
            found.sort(key=lambda h: (-h[1], h[0]))
        if self._exact:
            kid = trie.get("E" + key[1:])
            if kid is not None:
                found.insert(0, (0, len(name), kid))
        return found

    def entry(self, kid: int) -> Entry:
        """The entry of trie key id `kid`: name, mode, text as written, platform, line."""
        key = self._trie.restore_key(kid)
        mode, name = _CHAR_MODE[key[0]], key[-2:0:-1]
        return Entry(name, mode, *self.describe(kid, name, mode))

    def describe(self, kid: int, name: str, mode: DomainMode) -> tuple[str, str | None, int]:
        """(text as written, platform or None, line) of the entry of key id `kid`, whose name and mode
        the caller knows (from `hits`: the entry's name is the last `length` characters of the name
        asked about; rank 0/1/2 is mode exact/tree/below)."""
        word = self._entries[kid]
        notation = (word >> _NOTATION_SHIFT) & 3
        if notation == 0:
            text = name if mode == "tree" else _WRITTEN[mode] + name
        elif notation == 1:
            text = "." + name
        else:
            text = self._texts[str(kid)]
        owner = word >> _PLATFORM_SHIFT
        return text, self._platform_names[owner - 1] if owner else None, word & _LINE_MASK

    def entries(self) -> Iterator[Entry]:
        """Every entry, in file order (for lint, discover and check; not for the hot path)."""
        words = self._entries
        for kid in sorted(range(self.count), key=lambda kid: words[kid] & _LINE_MASK):
            yield self.entry(kid)

    def touch(self) -> None:
        """Mark the artifact used now (artifacts unused for KEEP_DAYS are pruned)."""
        try:
            os.utime(os.path.join(self.path, "meta.json"))
        except OSError:
            pass


def _write_artifact(cols: Columns, directory: str) -> None:
    """Write the artifact of `cols` into the existing, empty `directory`."""
    # Column at a time where it can be (maps of C functions, not a Python loop per entry): at a million
    # entries each loop turned into maps saves about 0.1 s of the compile (scripts/bench_biglist.py).
    reversed_names = map(operator.itemgetter(slice(None, None, -1)), cols.names)
    if all(mode == "tree" for mode in set(cols.modes)):  # the usual list: one mode, one prefix
        keys = list(map("T{}.".format, reversed_names))
    else:
        keys = [_MODE_CHAR[m] + r + "." for r, m in zip(reversed_names, cols.modes, strict=True)]
    trie = marisa_trie.Trie(keys, num_tries=1)  # num_tries=1: 2x faster to build (scripts/bench_trie.py)
    count = len(keys)
    ids = list(map(trie.__getitem__, keys))  # entry i -> its key id (ids are the trie's, not file order)
    del keys
    table: dict[str | None, int] = {None: 0}
    for owner in dict.fromkeys(cols.platforms):  # the distinct platforms, in order of first use
        if owner:
            table[owner] = len(table)
    if len(table) - 1 > _PLATFORMS_MAX:
        raise ValueError(f"{cols.info.path}: {len(table) - 1:,} platforms; a list may name at most {_PLATFORMS_MAX:,}")
    words = array.array("Q", bytes(8 * count))
    shifted = map(operator.lshift, map(table.__getitem__, cols.platforms), repeat(_PLATFORM_SHIFT))
    for kid, word in zip(ids, map(operator.or_, shifted, cols.lines), strict=True):
        words[kid] = word
    del table[None]
    texts: dict[str, str] = {}
    for i in compress(range(count), map(operator.is_not, cols.texts, cols.names)):
        kid, text, name, mode = ids[i], cols.texts[i], cols.names[i], cols.modes[i]
        if text == _WRITTEN[mode] + name:
            continue  # as the plain notation writes it (nothing stored)
        if text == "." + name and mode == "tree":
            words[kid] |= 1 << _NOTATION_SHIFT
        else:
            words[kid] |= 2 << _NOTATION_SHIFT
            texts[str(kid)] = text
    trie.save(os.path.join(directory, "trie.marisa"))
    with open(os.path.join(directory, "entries.u64"), "wb") as f:
        words.tofile(f)
    digests = {}
    for name in _FILES:
        with open(os.path.join(directory, name), "rb") as f:
            digests[name] = hashlib.file_digest(f, "sha256").hexdigest()
    info = cols.info
    meta = {
        "format": FORMAT, "count": count, "digests": digests, "platforms": list(table),
        "modes": sorted(set(cols.modes)), "texts": texts,
        "list": {"path": info.path, "sha256": info.sha256, "mtime": info.mtime, "size": info.size,
                 "source": info.source, "retrieved": info.retrieved, "format": info.format,
                 "platform": info.platform, "duplicates": [list(d) for d in info.duplicates]},
    }
    with open(os.path.join(directory, "meta.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f)


def _code_version() -> str:
    """A digest of what decides how a list file reads: the parser and name normaliser's source, this
    module's, and the versions of the libraries they use (idna, marisa-trie). Another geoblock release
    with another parser gets other artifacts, never the old release's reading of the same file."""
    digest = hashlib.sha256()
    here = os.path.dirname(os.path.abspath(__file__))
    for module in ("lists.py", "names.py", "listindex.py"):
        with open(os.path.join(here, module), "rb") as f:
            digest.update(f.read())
    for dist in ("idna", "marisa-trie"):
        digest.update(f"\0{dist}={importlib.metadata.version(dist)}".encode())
    return digest.hexdigest()[:16]


_CODE = _code_version()


def _artifact_name(sha256: str, platform: str | None, path: str) -> str:
    """The artifact's directory name: the list's SHA-256, then a digest of everything else its reading
    depends on: the artifact format, the code (_CODE), the rule's default platform, and whether the file
    name makes it CSV (lists.read_columns reads a `.csv` file as CSV, any other line by line)."""
    csv_by_name = path.lower().endswith(".csv")
    salt = hashlib.sha256(f"{FORMAT}\0{_CODE}\0{platform or ''}\0{csv_by_name}".encode()).hexdigest()[:12]
    return f"{sha256}-{salt}"


def compile_list(path: str, platform: str | None, directory: str) -> None:
    """Read the list file at `path` strictly and write its artifact into the empty `directory`.
    Raises RuleError naming file:line for a bad entry or an unreadable file (lists.read_list's rules)."""
    stat, text, digest = read_file(path)
    cols = read_columns(path, text, digest=digest, mtime=stat.st_mtime, size=stat.st_size, platform=platform)
    _write_artifact(cols, directory)


def _compile_in_child(path: str, platform: str | None, directory: str) -> None:
    """compile_list in a child process (same interpreter, this package on its path). Raises RuleError."""
    from geoblock.core.rules import RuleError

    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    # -I: isolated (no current directory, user site or PYTHON* variables on the path: a `marisa_trie.py`
    # in the directory an operator runs `geoblock check` from is never imported); the package's own
    # root is put on the path explicitly
    code = (f"import sys; sys.path.insert(0, {package_root!r}); "
            "from geoblock.core.listindex import _main; _main(sys.argv[1:])")
    cmd = [sys.executable, "-I", "-c", code, path, directory]
    if platform is not None:
        cmd += ["--platform", platform]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuleError(path, None, f"compiling the list failed: {exc}") from None
    if done.returncode == 0:
        return
    try:
        err = json.loads(done.stdout.strip().splitlines()[-1])
        where, line, message = str(err["file"]), err["line"], str(err["message"])
    except (ValueError, IndexError, KeyError, TypeError):
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuleError(path, None, f"compiling the list failed (exit {done.returncode}): {tail}") from None
    raise RuleError(where, line if isinstance(line, int) else None, message)


def _prune(cache: str, keep: str) -> None:
    limit = time.time() - KEEP_DAYS * 86400
    try:
        names = os.listdir(cache)
    except OSError:
        return
    for name in names:
        if name == keep:
            continue
        full = os.path.join(cache, name)
        try:
            if name.startswith(".build-") or os.stat(os.path.join(full, "meta.json")).st_mtime < limit:
                if name.startswith(".build-") and os.stat(full).st_mtime > time.time() - 3600:
                    continue  # another process may be building it now
                shutil.rmtree(full, ignore_errors=True)
        except OSError:
            shutil.rmtree(full, ignore_errors=True)


def open_list(path: str | os.PathLike[str], platform: str | None = None, *, cache: str | None = None) -> ListFile:
    """The list file at `path` compiled and mapped: a ListFile (provenance, no `entries`) whose `index` is
    a ListIndex. `platform` is the platform of entries that name none (a rule's `platform`). The artifact
    is reused from `cache` (default `cache_dir()`) when one exists for the file's content, else compiled
    (in a child process for files over CHILD_BYTES) and kept there; where the cache cannot be written, it
    is compiled into a temporary directory that is removed once mapped. Raises RuleError (read_list's)."""
    from geoblock.core.rules import RuleError

    p = Path(path)
    try:
        stat = p.stat()  # before reading: a change after it makes the stamp stale, never the content
        with p.open("rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
    except OSError as exc:
        raise RuleError(p, None, f"cannot read list file: {exc.strerror}") from None
    cache = cache or cache_dir()
    name = _artifact_name(digest, platform, str(path))
    final = os.path.join(cache, name)
    index: ListIndex | None = None
    try:
        index = ListIndex(final)
        index.touch()
    except (OSError, ValueError, KeyError, TypeError):
        index = None
    if index is None:
        try:
            os.makedirs(cache, exist_ok=True)
            build = tempfile.mkdtemp(prefix=".build-", dir=cache)
            temporary = False
        except OSError:
            build = tempfile.mkdtemp(prefix="geoblock-list-")
            temporary = True
        built = False
        try:
            if stat.st_size > CHILD_BYTES:
                _compile_in_child(str(path), platform, build)
            else:
                compile_list(str(path), platform, build)
            with open(os.path.join(build, "meta.json"), encoding="utf-8") as f:
                built_sha = json.load(f)["list"]["sha256"]
            os.chmod(build, 0o755)  # readable by other users of a shared cache (mkdtemp makes it 0700)
            if not temporary:
                final = os.path.join(cache, _artifact_name(built_sha, platform, str(path)))  # what was read
                if os.path.isdir(final) and not _opens(final):
                    shutil.rmtree(final, ignore_errors=True)  # damaged (truncated, edited): replaced
                try:
                    os.rename(build, final)
                except OSError:  # another process built the same one first: use theirs
                    shutil.rmtree(build, ignore_errors=True)
                build = final
                _prune(cache, os.path.basename(final))
            index = ListIndex(build)
            built = True
        except RuleError:
            raise
        except (OSError, ValueError, KeyError) as exc:
            raise RuleError(p, None, f"cannot compile the list: {exc}") from None
        finally:
            if temporary or not built:  # a failed build leaves nothing behind in the cache
                shutil.rmtree(build, ignore_errors=True)  # mapped pages stay valid once the files are gone
    return _as_listfile(str(path), index, stat)


def _opens(directory: str) -> bool:
    try:
        ListIndex(directory)
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return True


def _as_listfile(path: str, index: ListIndex, stat: os.stat_result) -> ListFile:
    meta = index._meta["list"]
    return replace(
        ListFile(path=path, sha256=meta["sha256"], mtime=meta["mtime"], size=meta["size"], entries=(),
                 source=meta["source"], retrieved=meta["retrieved"], format=meta["format"],
                 platform=meta["platform"], duplicates=tuple(tuple(d) for d in meta["duplicates"]),
                 platforms=frozenset(index._meta["platforms"]), count=index.count),
        stamp=stamp_of(path, stat), index=index)


def _main(argv: list[str]) -> NoReturn:
    """The child process's work: arguments `LIST OUTDIR [--platform P]`. Exits 0 when written; 2 with a
    JSON line {"file", "line", "message"} on stdout for a bad list.

    The child runs without the cyclic collector (its millions of list columns hold no cycle, and full
    collections would scan them again and again) and ends with os._exit once its files are closed and
    its output flushed: freeing those objects one by one at exit cost about 0.2 s of a million-name
    compile, for memory the system takes back whole."""
    import argparse
    import gc

    from geoblock.core.rules import RuleError

    gc.disable()
    parser = argparse.ArgumentParser(prog="geoblock list compiler")
    parser.add_argument("list")
    parser.add_argument("out")
    parser.add_argument("--platform", default=None)
    args = parser.parse_args(argv)
    status = 0
    try:
        stat, text, digest = read_file(args.list)
        cols = read_columns(args.list, text, digest=digest, mtime=stat.st_mtime, size=stat.st_size,
                            platform=args.platform)
        _write_artifact(cols, args.out)  # its files are written and closed when it returns
    except RuleError as exc:
        print(json.dumps({"file": exc.path, "line": exc.line, "message": exc.message}))
        status = 2
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)  # with `cols` still alive: see above

