"""geoblock installed by a plain `pip install .` (not editable) works outside the checkout.

The package is built from a copy of the files a build reads (pyproject.toml, README.md, addons/, rules/)
and installed, without its dependencies, into a fresh virtual environment; the dependencies come from the
environment running the tests (its site-packages is added as a path entry, so the editable install of the
checkout in it is not seen). Then `geoblock check` and `geoblock explain` run from a directory outside the
checkout, with no geoblock variable set: they must use the rules shipped inside the package and say so.
The default locations themselves (checkout, FHS, variables) are checked on `geoblock.paths.defaults`.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from geoblock import paths
from support.proc import free_port
from support.waiting import wait_for

REPO = Path(__file__).resolve().parents[1]
BUILD_INPUTS = ("pyproject.toml", "README.md", "addons", "rules")


def run(argv: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEOBLOCK_") and k != "PYTHONPATH"}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


class Installed:
    """A fresh virtual environment with geoblock installed from a wheel built from this checkout."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.venv = root / "venv"
        self.bin = self.venv / "bin"
        self.elsewhere = root / "elsewhere"  # a working directory outside the checkout
        self.elsewhere.mkdir()

    def build(self) -> None:
        source = self.root / "src"
        source.mkdir()
        for name in BUILD_INPUTS:
            if (REPO / name).is_dir():
                shutil.copytree(REPO / name, source / name,
                                ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc"))
            else:
                shutil.copy2(REPO / name, source / name)
        made = run([sys.executable, "-m", "venv", str(self.venv)], self.root)
        assert made.returncode == 0, made.stderr
        purelib = run([str(self.bin / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                      self.root)
        # the dependencies (mitmproxy, PyYAML, maxminddb, ...) of the environment running the tests
        Path(purelib.stdout.strip(), "test-environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        pip = [str(self.bin / "python"), "-m", "pip", "install", "--no-deps", "--ignore-installed",
               "--disable-pip-version-check", "--quiet", str(source)]
        installed = run(pip, self.root, timeout=300)
        assert installed.returncode == 0, installed.stdout + installed.stderr

    def python(self, code: str) -> str:
        done = run([str(self.bin / "python"), "-c", code], self.elsewhere)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    if os.path.exists(paths.ETC_RULES):
        pytest.skip(f"{paths.ETC_RULES} exists on this machine: an installed geoblock rightly uses it")
    inst = Installed(tmp_path_factory.mktemp("install"))
    inst.build()
    return inst


def test_the_installed_package_is_the_one_imported(installed: Installed) -> None:
    package = Path(installed.python("import geoblock; print(geoblock.__file__)")).parent
    assert package.is_relative_to(installed.venv), package
    assert installed.python("from geoblock import paths; print(paths.LAYOUT)") == "installed"


def test_the_wheel_holds_every_package_and_the_shipped_rules(installed: Installed) -> None:
    package = Path(installed.python("import geoblock; print(geoblock.__file__)")).parent
    source = REPO / "addons" / "geoblock"
    wanted = sorted(str(p.parent.relative_to(source)) for p in source.rglob("__init__.py"))
    found = sorted(str(p.parent.relative_to(package)) for p in package.rglob("__init__.py"))
    assert found == wanted  # pyproject.toml lists the packages: a new one must be added there
    shipped = package / "data" / "rules"
    ours = sorted(p.relative_to(REPO / "rules") for p in (REPO / "rules").rglob("*") if p.is_file())
    assert sorted(p.relative_to(shipped) for p in shipped.rglob("*") if p.is_file()
                  and "__pycache__" not in p.parts) == ours  # the rule files and the list files they name
    for name in ours:
        assert (shipped / name).read_bytes() == (REPO / "rules" / name).read_bytes()
    sample = REPO / "addons" / "geoblock" / "data" / "ordinary-names.txt"  # geoblock check's lint reads it
    assert (package / "data" / sample.name).read_bytes() == sample.read_bytes()
    # the block page's templates (geoblock/mitm/pages.py), one per language
    pages = sorted((source / "data" / "pages").glob("*.html"))
    assert [p.name for p in pages] == ["en.html", "zh-CN.html"]
    for page in pages:
        assert (package / "data" / "pages" / page.name).read_bytes() == page.read_bytes()


def test_check_without_argument_uses_the_shipped_rules(installed: Installed) -> None:
    shipped = installed.python("from geoblock import paths; print(paths.SHIPPED_RULES)")
    done = run([str(installed.bin / "geoblock"), "check"], installed.elsewhere)
    assert done.returncode == 0, done.stderr
    assert done.stderr == (f"geoblock: using {shipped} (the rules shipped with geoblock: "
                           f"{paths.ETC_RULES} does not exist)\n")
    same = run([sys.executable, "-m", "geoblock.tools.cli", "check", str(REPO / "rules")], REPO)
    # the same ruleset (version, rules, domains, files) and lists (entries, platforms, sha256) as the checkout's
    assert done.stdout.splitlines()[0] == same.stdout.splitlines()[0]
    assert [line.split(": ", 1)[1].split(", modified")[0] for line in done.stdout.splitlines()[1:]] == \
        [line.split(": ", 1)[1].split(", modified")[0] for line in same.stdout.splitlines()[1:]]
    assert done.stdout.startswith("ok: ruleset ")


def test_explain_without_rules_uses_the_shipped_rules(installed: Installed) -> None:
    shipped = installed.python("from geoblock import paths; print(paths.SHIPPED_RULES)")
    done = run([str(installed.bin / "geoblock"), "explain", "binance.com"], installed.elsewhere)
    assert done.returncode == 4, done.stderr  # block (tools/cli.py EXPLAIN_EXIT)
    assert f"geoblock: using {shipped} (the rules shipped with geoblock" in done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == ("block: binance.com is listed in rule offshore-crypto-exchanges (list exchanges.txt, "
                        "platform Binance): block")
    assert lines[1].startswith(f"rule offshore-crypto-exchanges is defined at {shipped}/crypto-exchanges.yaml:")
    # no GeoIP database under the FHS directory here: explain says so and still decides on the name
    assert f"note: {paths.VAR_GEOIP_DIR}/GeoLite2-Country.mmdb: no such file" in lines


def test_geoip_update_commands_are_installed(installed: Installed, tmp_path: Path) -> None:
    helped = run([str(installed.bin / "geoblock-geoip-update"), "--help"], installed.elsewhere)
    assert helped.returncode == 0 and "exit codes:" in helped.stdout
    assert f"else {paths.VAR_GEOIP_DIR})" in " ".join(helped.stdout.split())
    checked = run([str(installed.bin / "python"), "-m", "geoblock.tools.geoipupdate", "--check",
                   "--directory", str(tmp_path)], installed.elsewhere)
    assert checked.returncode == 11, checked.stderr
    assert f"GeoLite2-Country.mmdb: missing ({tmp_path}/GeoLite2-Country.mmdb)" in checked.stdout


@pytest.mark.parametrize("command", ["geoblock-proxy", "geoblock-gateway"])
def test_geoblock_proxy_and_gateway_start_with_geoblock_and_block(installed: Installed, tmp_path: Path,
                                                                  command: str) -> None:
    """`geoblock-proxy` (mitmdump with the installed package's own mitmproxy script, no path to find) and
    `geoblock-gateway` (the production runner): each starts with the shipped rules and answers a listed
    name with the 451 page, recorded in the decision log."""
    port, log = free_port(), tmp_path / "decisions.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEOBLOCK_") and k != "PYTHONPATH"}
    proc = subprocess.Popen([str(installed.bin / command), "--listen-host", "127.0.0.1", "--listen-port",
                             str(port), "--set", f"confdir={tmp_path / 'conf'}", "--set", f"geoblock_log={log}",
                             "--set", "geoblock_country_db=", "--set", "geoblock_asn_db="],
                            cwd=installed.elsewhere, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: _listening(port), timeout=60, what=f"{command} listening on {port}")
        done = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-x", f"http://127.0.0.1:{port}",
                               "http://binance.com/"], capture_output=True, text=True, timeout=30)
        assert done.stdout == "451"
        record = json.loads(log.read_text().splitlines()[-1])
        assert (record["action"], record["rule"], record["host"]) == ("block", "offshore-crypto-exchanges", "binance.com")
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0]
    assert "geoblock: ruleset " in output and "data/rules" in output, output  # the shipped rules


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


# --- the defaults themselves ------------------------------------------------------------------------


def test_checkout_defaults_are_the_checkouts_own() -> None:
    found = paths.defaults({}, package_dir=str(REPO / "addons" / "geoblock"))
    assert found.layout == "checkout"
    assert found.rules == str(REPO / "rules") and found.rules_origin == "the source checkout's rules/"
    assert found.country_db == str(REPO / "data" / "geoip" / "GeoLite2-Country.mmdb")
    assert found.asn_db == str(REPO / "data" / "geoip" / "GeoLite2-ASN.mmdb")
    assert found.log == str(REPO / "logs" / "decisions.jsonl")


def test_installed_defaults_are_fhs_paths(tmp_path: Path) -> None:
    package = tmp_path / "site-packages" / "geoblock"
    (package / "data" / "rules").mkdir(parents=True)
    etc = tmp_path / "etc-geoblock-rules"
    shipped = paths.defaults({}, package_dir=str(package), etc_rules=str(etc))
    assert shipped.layout == "installed"
    assert shipped.rules == str(package / "data" / "rules")
    assert shipped.rules_origin == f"the rules shipped with geoblock: {etc} does not exist"
    assert (shipped.geoip_dir, shipped.log) == ("/var/lib/geoblock/geoip", "/var/log/geoblock/decisions.jsonl")
    assert shipped.country_db == "/var/lib/geoblock/geoip/GeoLite2-Country.mmdb"
    etc.mkdir()
    system = paths.defaults({}, package_dir=str(package), etc_rules=str(etc))
    assert (system.rules, system.rules_origin) == (str(etc), "the system rules")


def test_variables_override_either_layout(tmp_path: Path) -> None:
    env = {"GEOBLOCK_RULES": str(tmp_path / "r.yaml"), "GEOBLOCK_GEOIP_DIR": str(tmp_path / "geo"),
           "GEOBLOCK_LOG": str(tmp_path / "d.jsonl")}
    for package in (REPO / "addons" / "geoblock", tmp_path / "site-packages" / "geoblock"):
        found = paths.defaults(env, package_dir=str(package))
        assert (found.rules, found.rules_origin) == (str(tmp_path / "r.yaml"), "$GEOBLOCK_RULES")
        assert found.asn_db == str(tmp_path / "geo" / "GeoLite2-ASN.mmdb")
        assert found.log == str(tmp_path / "d.jsonl")
    empty = paths.defaults({"GEOBLOCK_RULES": "", "GEOBLOCK_LOG": ""}, package_dir=str(REPO / "addons" / "geoblock"))
    assert (empty.rules, empty.log) == (str(REPO / "rules"), str(REPO / "logs" / "decisions.jsonl"))
