"""The GeoIP databases as geoip2 reads them (enrich/geo.py): what an operator sees when a database is of the
wrong type or corrupt, and explain's account of what the country database holds. The real `geoblock
explain` runs in a subprocess; the databases are built by tests/support/geodb.py."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from pathlib import Path

import pytest

from geoblock.enrich.geo import Geo, GeoError, open_database
from support.geodb import write_asn_db, write_country_db

RULES = "home_countries: [CN]\ndefault: allow\nunknown_country: log\nrules:\n" \
        "  - {id: offshore-exchanges, action: block, offshore: true, domains: [exchange.example]}\n"


def explain(tmp_path: Path, country_db: Path, asn_db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    return subprocess.run([sys.executable, "-m", "geoblock.tools.cli", "explain", *args, "--rules", str(rules),
                           "--country-db", str(country_db), "--asn-db", str(asn_db)],
                          capture_output=True, text=True, timeout=60)


def corrupt_tree(path: Path) -> Path:
    """A database whose metadata reads well but whose search tree points past the data: the first KiB of
    the tree overwritten."""
    data = bytearray(path.read_bytes())
    data[:1024] = b"\xff" * 1024
    path.write_bytes(bytes(data))
    return path


def test_an_asn_database_given_as_the_country_database_is_named_and_refused(tmp_path, geo_dir):
    asn = geo_dir / "GeoLite2-ASN.mmdb"
    r = explain(tmp_path, asn, asn, "exchange.example", "--server", "127.0.0.2")
    assert r.returncode == 3, r.stdout + r.stderr  # log: unknown_country, as without a country database
    assert (f"note: {asn}: expected a Country or City database (GeoLite2-Country, GeoLite2-City, GeoIP2-Country, "
            f"GeoIP2-City, DB-IP's Country or City Lite), found a GeoLite2-ASN database") in r.stdout, r.stdout
    assert "server 127.0.0.2: no known country, AS64501" in r.stdout  # the ASN database still answers


def test_a_country_database_given_as_the_asn_database_is_named_and_refused(tmp_path, geo_dir):
    country = geo_dir / "GeoLite2-Country.mmdb"
    r = explain(tmp_path, country, country, "exchange.example", "--server", "127.0.0.2")
    assert r.returncode == 4, r.stdout + r.stderr  # SG: offshore, blocked
    assert (f"note: {country}: expected an ASN database (GeoLite2-ASN, or DB-IP's ASN Lite in its GeoLite2-ASN "
            f"format), found a GeoLite2-Country database") in r.stdout, r.stdout


def test_a_file_that_is_no_database_is_named(tmp_path, geo_dir):
    junk = tmp_path / "GeoLite2-Country.mmdb"
    junk.write_bytes(b"<html>not a database</html>\n" * 50)
    r = explain(tmp_path, junk, geo_dir / "GeoLite2-ASN.mmdb", "exchange.example", "--server", "127.0.0.2")
    assert r.returncode == 3, r.stdout + r.stderr
    assert f"note: {junk}: not a readable MaxMind database, or a corrupt one (" in r.stdout, r.stdout


def test_a_database_with_a_corrupt_search_tree_is_named(tmp_path, geo_dir):
    broken = corrupt_tree(write_country_db(tmp_path / "GeoLite2-Country.mmdb"))
    r = explain(tmp_path, broken, geo_dir / "GeoLite2-ASN.mmdb", "exchange.example", "--server", "127.0.0.2")
    assert r.returncode == 3, r.stdout + r.stderr
    assert f"note: {broken}: database is corrupt (" in r.stdout, r.stdout


def test_explain_says_what_the_country_database_holds(tmp_path, geo_dir):
    r = explain(tmp_path, geo_dir / "GeoLite2-Country.mmdb", geo_dir / "GeoLite2-ASN.mmdb", "exchange.example",
                "--server", "127.0.0.2")
    assert r.returncode == 4, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert "server 127.0.0.2: SG (geoip), AS64501" in lines, r.stdout
    said = next(line for line in lines if line.startswith("country database: "))
    assert said.startswith("country database: GeoLite2-Country built ")
    assert said.endswith(": network 127.0.0.2/32, country SG, registered country SG"), said
    r = explain(tmp_path, geo_dir / "GeoLite2-Country.mmdb", geo_dir / "GeoLite2-ASN.mmdb", "exchange.example",
                "--server", "127.0.0.23")
    assert ": network 127.0.0.23/32, country SG, registered country US, anycast\n" in r.stdout, r.stdout
    r = explain(tmp_path, geo_dir / "GeoLite2-Country.mmdb", geo_dir / "GeoLite2-ASN.mmdb", "exchange.example",
                "--server", "127.0.0.4")
    assert "country database: GeoLite2-Country built " in r.stdout and ": does not hold 127.0.0.4" in r.stdout


def test_a_city_database_places_servers(tmp_path):
    """geoip2 reads a City database with its city() lookup (country() refuses one): it places as a Country one."""
    city = write_country_db(tmp_path / "GeoLite2-City.mmdb", edition="GeoLite2-City")
    geo = Geo(str(city), None)
    try:
        assert geo.problems == []
        assert geo.lookup(ipaddress.ip_address("127.0.0.2")) == ("SG", None)
    finally:
        geo.close()


@pytest.mark.parametrize("want, edition", [("country", "GeoLite2-ASN"), ("asn", "GeoLite2-Country"),
                                           ("asn", "GeoIP2-ISP")])
def test_open_database_refuses_the_wrong_type(tmp_path, want, edition):
    path = (write_asn_db if "Country" not in edition else write_country_db)(tmp_path / "x.mmdb", edition=edition)
    with pytest.raises(GeoError, match=f"^{path}: expected .*, found a {edition} database$"):
        open_database(str(path), want)


def test_explain_says_a_record_that_cannot_be_read_is_not_a_missing_one(tmp_path: Path) -> None:
    """A country database holding a malformed record (a country that is not a map) says so in explain,
    rather than "does not hold" (found by a review); the server's country is unknown there."""
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    writer = MMDBWriter(ip_version=6, database_type="GeoLite2-Country", ipv4_compatible=True)
    writer.insert_network(IPSet(["198.51.100.0/24"]), {"country": "SG"})  # not a map: geoip2 refuses it
    writer.insert_network(IPSet(["203.0.113.0/24"]), {"country": {"iso_code": "SG"}})
    path = tmp_path / "GeoLite2-Country.mmdb"
    writer.to_db_file(str(path))
    geo = Geo(str(path), None)
    odd = geo.country_network(ipaddress.ip_address("198.51.100.7"))
    assert odd is not None and "holds a record for 198.51.100.7 that cannot be read" in odd
    assert geo.country_answer(ipaddress.ip_address("198.51.100.7")) is None
    missing = geo.country_network(ipaddress.ip_address("192.0.2.1"))
    assert missing is not None and missing.endswith("does not hold 192.0.2.1")
    good = geo.country_network(ipaddress.ip_address("203.0.113.5"))
    assert good is not None and "country SG" in good
