"""Locked installs (docs/install.md): `scripts/bootstrap.sh --runtime` and `make run` on a fresh copy.

The files a fresh clone has for this (pyproject.toml, README.md, Makefile, addons/, rules/, scripts/,
requirements/) are copied into a temporary directory, and the real `scripts/bootstrap.sh --runtime <ver>`
builds the runtime environment there, for the Python version running the tests (3.11 with mitmproxy
11.0.2, 3.12 with 12.x: each pairing checks its own lock). pip's own cache makes the downloads cheap after
the first time; a build takes up to about a minute. The tests of this module share that one build and run
in file order: the last one changes a lock.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from support.proc import free_port
from support.waiting import wait_for

REPO = Path(__file__).resolve().parents[1]
VER = f"{sys.version_info.major}.{sys.version_info.minor}"
FRESH_CLONE = ("pyproject.toml", "README.md", "Makefile", "addons", "rules", "scripts", "requirements")
TEST_TOOLS = ("pytest", "hypothesis", "atheris", "ruff", "mypy", "mmdb-writer")


def run(argv: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """`argv` in `cwd` with the environment less geoblock's variables and PYTHONPATH (as a user's shell)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEOBLOCK_") and k != "PYTHONPATH"}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def normalised(name: str) -> str:
    """A distribution's name as PEP 503 compares them (PyYAML -> pyyaml, ruamel.yaml -> ruamel-yaml)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def locked(lock: Path) -> dict[str, str]:
    """The packages a lock file pins: normalised name -> version."""
    return {normalised(m[1]): m[2] for m in re.finditer(r"^([A-Za-z0-9._-]+)==(\S+)", lock.read_text(), re.M)}


class Clone:
    """A copy of the checkout as a fresh clone has it (no environment), in `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        for name in FRESH_CLONE:
            if (REPO / name).is_dir():
                shutil.copytree(REPO / name, root / name,
                                ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc"))
            else:
                shutil.copy2(REPO / name, root / name)
        self.venv = root / f".venv-run-{VER}"
        self.lock = root / "requirements" / f"run-{VER}.txt"

    def bootstrap(self) -> subprocess.CompletedProcess[str]:
        return run(["scripts/bootstrap.sh", "--runtime", VER], self.root)

    def installed(self) -> dict[str, str]:
        """What the runtime environment holds: normalised name -> version (pip list)."""
        done = run([str(self.venv / "bin" / "pip"), "list", "--format", "json", "--disable-pip-version-check"],
                   self.root)
        assert done.returncode == 0, done.stderr
        return {normalised(p["name"]): p["version"] for p in json.loads(done.stdout)}


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> tuple[Clone, subprocess.CompletedProcess[str]]:
    c = Clone(tmp_path_factory.mktemp("clone"))
    return c, c.bootstrap()


def test_runtime_environment_holds_the_runtime_lock_and_no_test_tools(clone) -> None:
    c, built = clone
    assert built.returncode == 0, built.stderr
    assert built.stdout == f".venv-run-{VER}\n"  # the path, for the scripts that call it
    # it says what it is doing while it installs (make run is otherwise silent for a minute)
    assert f"bootstrap: creating .venv-run-{VER} with " in built.stderr
    assert "from the runtime lock ..." in built.stderr
    assert re.search(r"bootstrap: installing \d+ locked packages, each checked against its hash", built.stderr)
    assert f"bootstrap: .venv-run-{VER} ready (" in built.stderr

    have = c.installed()
    want = locked(c.lock)
    assert have.pop("geoblock") == "0.1.0"
    have.pop("pip")  # the venv's own
    assert have == want  # exactly the lock: nothing more, nothing less, the locked versions
    assert have["mitmproxy"] == ("11.0.2" if VER == "3.11" else "12.3.1")
    for tool in TEST_TOOLS:
        assert tool not in have, tool
    no_pytest = run([str(c.venv / "bin" / "python"), "-c", "import pytest"], c.root)
    assert "No module named 'pytest'" in no_pytest.stderr

    # geoblock works from it: the CLI on the shipped rules
    checked = run([str(c.venv / "bin" / "geoblock"), "check", "rules/"], c.root)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith("ok: ruleset ")


def test_make_run_starts_the_proxy_from_the_runtime_environment(clone, tmp_path: Path) -> None:
    c, built = clone
    assert built.returncode == 0, built.stderr
    port = free_port()
    log = tmp_path / "make-run.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEOBLOCK_") and k != "PYTHONPATH"}
    env["GEOBLOCK_PORT"] = str(port)
    env["GEOBLOCK_PYTHON"] = VER  # make run's Python (3.11 unless said): the one the fixture built for
    args = f"--set confdir={tmp_path / 'conf'} --set geoblock_metrics= --set geoblock_log={tmp_path / 'd.jsonl'}"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["make", "run", f"ARGS={args}"], cwd=c.root, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: "listening at" in log.read_text() or proc.poll() is not None, timeout=120,
                 what="make run to listen")
        assert proc.poll() is None, log.read_text()
        # nothing was installed: the environment was there, and its stamp matched
        assert "bootstrap:" not in log.read_text()
        refused = subprocess.run(["curl", "-sS", "--max-time", "10", "-x", f"http://127.0.0.1:{port}",
                                  "https://binance.com/"], capture_output=True, text=True, timeout=30)
        assert "CONNECT tunnel failed, response 451" in refused.stderr
        # the mitmdump serving is the runtime environment's (make's child: run-proxy.sh execs it)
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert len(children) == 1, children
        cmdline = Path(f"/proc/{children[0]}/cmdline").read_bytes().split(b"\0")
        assert cmdline[1] == str(c.venv / "bin" / "mitmdump").encode(), cmdline
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def test_rerun_installs_nothing_and_a_lock_with_a_wrong_hash_is_refused(clone) -> None:
    c, built = clone
    assert built.returncode == 0, built.stderr
    again = c.bootstrap()
    assert again.returncode == 0 and again.stdout == f".venv-run-{VER}\n"
    assert again.stderr == ""  # the stamp matched: nothing to say, nothing installed

    # one hash of idna changed: the lock changed (so the environment is rebuilt), and the file pip gets
    # for idna is not one the lock names
    text = c.lock.read_text()
    entry = re.search(r"^idna==\S+ \\\n((?:    --hash=sha256:[0-9a-f]{64}(?: \\)?\n)+)", text, re.M)
    assert entry is not None
    wrong = "    --hash=sha256:" + "0" * 64 + "\n"
    c.lock.write_text(text.replace(entry[1], wrong))
    refused = c.bootstrap()
    assert refused.returncode == 1
    assert refused.stdout == ""
    assert f"bootstrap: pyproject.toml or a lock changed: rebuilding .venv-run-{VER}" in refused.stderr
    assert "THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS FILE" in refused.stderr
    assert "idna" in refused.stderr and "0" * 64 in refused.stderr
    assert f"bootstrap: refused: pip did not install requirements/run-{VER}.txt" in refused.stderr
    assert not (c.venv / ".geoblock-stamp").exists()  # so the next run starts again (and is refused again)
    assert not (c.venv / "bin" / "mitmdump").exists()  # pip installed nothing from the lock
