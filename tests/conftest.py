from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
sys.path.insert(0, str(REPO / "addons"))
sys.path.insert(0, str(TESTS))

from support.geodb import write_asn_db, write_country_db  # noqa: E402
from support.servers import make_pki  # noqa: E402

SHIPPED_RULES = REPO / "rules"


@pytest.fixture(scope="session")
def geo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("geoip")
    write_country_db(d / "GeoLite2-Country.mmdb")
    write_asn_db(d / "GeoLite2-ASN.mmdb")
    return d


@pytest.fixture(scope="session")
def rules_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped rules plus tests/rules/extra.yaml."""
    d = tmp_path_factory.mktemp("rules")
    for f in SHIPPED_RULES.glob("*.yaml"):
        shutil.copy(f, d / f.name)
    shutil.copy(TESTS / "rules" / "extra.yaml", d / "zz-extra.yaml")
    return d


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory):
    return make_pki(tmp_path_factory.mktemp("pki"))
