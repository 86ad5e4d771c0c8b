"""The fixtures every test module shares. Helpers live in tests/support (imported as `support`: pytest's
`pythonpath` in pyproject.toml holds addons/ and tests/).

- data: `geo_dir` (the test GeoIP databases, support.geodb), `rules_dir` (the shipped rules plus
  tests/rules/extra.yaml), `rs` and `geo` (those compiled and opened), `pki` (a test CA and certificate);
- the addon in-process: `gb` (support.harness.geoblock_in_context with the above and a decision log);
- servers on loopback: `servers` (HTTP and HTTPS, placed by the test databases; counters reset before
  each test) and `web` (plain HTTP at home and offshore).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from geoblock.core.ruleset import Ruleset
from geoblock.enrich.geo import Geo
from support.geodb import write_asn_db, write_country_db
from support.harness import geoblock_in_context
from support.servers import TestServer, make_pki
from support.shipped import copy_shipped_rules

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent

SHIPPED_RULES = REPO / "rules"

# Some tests need root (namespaces, nftables, mounts, port 53) and skip, saying why, where it is missing.
# Where every test must run (CI, any run as root: scripts/test.sh sets this), a skip is a failure.
REQUIRE_ALL = os.environ.get("GEOBLOCK_REQUIRE_ALL") == "1"

# Compiled lists (core/listindex.py) go to a cache of this run, not the checkout's .cache/ (the proxies
# and tools the tests start inherit it); tests of the cache itself set their own.
_CACHE = tempfile.mkdtemp(prefix="geoblock-test-cache-")
os.environ["GEOBLOCK_CACHE_DIR"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if REQUIRE_ALL and report.skipped:
        why = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped, but GEOBLOCK_REQUIRE_ALL=1 says every test must run here: {why}"


@pytest.fixture(scope="session")
def geo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("geoip")
    write_country_db(d / "GeoLite2-Country.mmdb")
    write_asn_db(d / "GeoLite2-ASN.mmdb")
    return d


@pytest.fixture(scope="session")
def rules_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped rules plus tests/rules/extra.yaml."""
    d = copy_shipped_rules(tmp_path_factory.mktemp("rules"))
    shutil.copy(TESTS / "rules" / "extra.yaml", d / "zz-extra.yaml")
    return d


@pytest.fixture(scope="module")
def rs(rules_dir: Path) -> Ruleset:
    """The ruleset of `rules_dir`, compiled."""
    return Ruleset.load(str(rules_dir))


@pytest.fixture(scope="module")
def geo(geo_dir: Path):
    """The test GeoIP databases of `geo_dir`, open (support.geodb: 127.0.0.1 = CN home, .2 = SG,
    .3 = US AS64502, .4 = not placed, .5 = SG)."""
    g = Geo(str(geo_dir / "GeoLite2-Country.mmdb"), str(geo_dir / "GeoLite2-ASN.mmdb"))
    assert not g.problems
    yield g
    g.close()


@pytest.fixture
def gb(tmp_path: Path, rules_dir: Path, geo_dir: Path):
    """geoblock's addon in mitmproxy's test context (support.harness): `rules_dir`, the test databases and
    a decision log in tmp_path. `gb.tctx` reconfigures it; `support.harness.logged(gb)` reads its log."""
    with geoblock_in_context(rules_dir, geo_dir, tmp_path / "decisions.jsonl") as addon:
        yield addon


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def servers(pki):
    """HTTP(S) servers on loopback addresses the test database places: 127.0.0.1 in CN (home),
    127.0.0.2 in SG (offshore), 127.0.0.5 in a blocked network, ::1. Counters are reset before each test."""
    made = {
        "https1": TestServer("127.0.0.1", pki),
        "https2": TestServer("127.0.0.2", pki),
        "https5": TestServer("127.0.0.5", pki),
        "http1": TestServer("127.0.0.1"),
        "http2": TestServer("127.0.0.2"),
        "http5": TestServer("127.0.0.5"),
        "http6": TestServer("::1"),
    }
    yield made
    for s in made.values():
        s.close()


@pytest.fixture(scope="module")
def web():
    """Plain HTTP servers at home (127.0.0.1, "cn") and offshore (127.0.0.2, "sg"), for the tests that
    run their own mitmdump."""
    made = {"cn": TestServer("127.0.0.1"), "sg": TestServer("127.0.0.2")}
    yield made
    for s in made.values():
        s.close()


@pytest.fixture(autouse=True)
def _reset_servers(request):
    if "servers" in request.fixturenames:
        for s in request.getfixturevalue("servers").values():
            s.reset()
