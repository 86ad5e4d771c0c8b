"""`geoblock lists compile`, run as an operator runs it in a build step (the real CLI in a subprocess): a
bad list is refused naming file:line and leaves nothing; a good one leaves its artifact in the cache, and
a proxy started on that cache maps it without compiling it again."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from support.proc import Mitmdump, connect

REPO = Path(__file__).resolve().parents[1]


def geoblock(*args: str, cache: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if cache is not None:
        env["GEOBLOCK_CACHE_DIR"] = str(cache)
    return subprocess.run([sys.executable, "-m", "geoblock.tools.cli", *args], capture_output=True, text=True,
                          timeout=120, cwd=REPO, env=env)


def rules_with_list(directory: Path, lines: list[str]) -> Path:
    """A rules directory whose one block rule takes its names from lists/national.txt (`lines`)."""
    (directory / "lists").mkdir(parents=True)
    (directory / "policy.yaml").write_text("home_countries: [CN]\ndefault: allow\n")
    (directory / "national.yaml").write_text(
        "rules:\n  - {id: national, action: block, domains_from: [lists/national.txt]}\n")
    (directory / "lists" / "national.txt").write_text("".join(line + "\n" for line in lines))
    return directory


def snapshot(cache: Path) -> dict[str, tuple[int, int]]:
    """Every entry of the cache, with the files of each artifact: path -> (inode, mtime ns). The cache's own
    mtime is in it too (a build makes and removes a .build- directory there, changing it)."""
    seen = {".": (cache.stat().st_ino, cache.stat().st_mtime_ns)}
    for path in sorted(cache.rglob("*")):
        if path.name == "meta.json":
            seen[str(path.relative_to(cache))] = (path.stat().st_ino, 0)  # opening it marks it used (utime)
        else:
            seen[str(path.relative_to(cache))] = (path.stat().st_ino, path.stat().st_mtime_ns)
    return seen


def test_a_bad_list_is_refused_naming_its_line_and_leaves_no_artifact(tmp_path: Path) -> None:
    rules = rules_with_list(tmp_path / "rules", ["okx.com", "binance.com", "bad..example.com", "bybit.com"])
    cache = tmp_path / "cache"
    done = geoblock("lists", "compile", str(rules), "--cache", str(cache))
    assert done.returncode == 1, done
    assert f"{rules / 'lists' / 'national.txt'}:3:" in done.stderr
    assert "bad..example.com" in done.stderr
    assert not any(cache.iterdir()), list(cache.iterdir())  # no artifact, no .build- directory left
    as_json = geoblock("lists", "compile", str(rules), "--cache", str(cache), "--json")
    assert as_json.returncode == 1
    assert json.loads(as_json.stdout)["line"] == 3


def test_a_compiled_list_is_mapped_by_the_proxy_without_compiling_it_again(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    names = [f"exchange{i}.example" for i in range(3000)]
    rules = rules_with_list(tmp_path / "rules", names)
    cache = tmp_path / "cache"
    done = geoblock("lists", "compile", str(rules), "--cache", str(cache))
    assert done.returncode == 0, done
    artifacts = [p for p in cache.iterdir()]
    assert len(artifacts) == 1 and (artifacts[0] / "trie.marisa").is_file()
    artifact = artifacts[0]
    listed = rules / "lists" / "national.txt"
    line = done.stdout.splitlines()[0]
    assert line.startswith(f"{listed}: 3000 entries, version ")
    assert f"artifact {artifact}, built in " in line
    assert stat.S_IMODE(artifact.stat().st_mode) & 0o055 == 0o055  # another user (the proxy's) can map it
    again = geoblock("lists", "compile", str(rules), "--cache", str(cache), "--json")
    assert again.returncode == 0, again
    report = json.loads(again.stdout)
    assert [(d["artifact"], d["built"], d["entries"]) for d in report["lists"]] == [(str(artifact), False, 3000)]

    before = snapshot(cache)
    monkeypatch.setenv("GEOBLOCK_CACHE_DIR", str(cache))  # the proxy's cache: the one the build step filled
    with Mitmdump(tmp_path / "conf", {"geoblock_rules": rules, "geoblock_log": tmp_path / "d.jsonl"}) as proxy:
        sock, head = connect(proxy, "www.exchange2999.example:443")
        sock.close()
        assert head.startswith(b"HTTP/1.1 451"), head
    assert snapshot(cache) == before  # nothing built, renamed or removed: the same artifact, mapped
    record = json.loads((tmp_path / "d.jsonl").read_text().splitlines()[-1])
    assert record["ruleset"] == report["ruleset"]

    # the control: without the build step the same rules compile at start (what the step saves)
    fresh = tmp_path / "fresh"
    checked = geoblock("check", str(rules), cache=fresh)
    assert checked.returncode == 0, checked
    assert [p.name for p in fresh.iterdir()] == [artifact.name]


def test_every_list_and_platform_a_rule_names_is_compiled_once(tmp_path: Path) -> None:
    """A list named by two rules, one giving a default platform, is two artifacts (the platform is part of
    what is compiled); both are built by the command itself, and a second run builds nothing."""
    rules = rules_with_list(tmp_path / "rules", ["okx.com", "bybit.com  Bybit"])
    (rules / "more.yaml").write_text("rules:\n  - id: named\n    action: log\n    platform: Regulator list\n"
                                     "    domains_from: [lists/national.txt]\n")
    cache = tmp_path / "cache"
    first = geoblock("lists", "compile", str(rules), "--cache", str(cache))
    assert first.returncode == 0, first
    assert "built while loading the rules" not in first.stdout
    assert first.stdout.splitlines()[-1].endswith("(2 built, 0 already compiled)")
    assert len([p for p in cache.iterdir()]) == 2
    second = geoblock("lists", "compile", str(rules), "--cache", str(cache))
    assert second.stdout.splitlines()[-1].endswith("(0 built, 2 already compiled)"), second.stdout
