"""Real MaxMind-format test databases, written with mmdb-writer.

The loopback addresses the end-to-end tests serve on are placed in different countries:

| address    | country        | ASN   |
|------------|----------------|-------|
| 127.0.0.1  | CN (home)      | 64500 |
| 127.0.0.2  | SG (offshore)  | 64501 |
| 127.0.0.3  | US (offshore)  | 64502 |
| 127.0.0.4  | (not placed)   | -     |
| 127.0.0.5  | SG (offshore)  | 64501 |
| ::1        | CN (home)      | 64500 |

GeoIP answers that are not what they seem (`ODD_PLACES`, in the country database only):

| address    | country record                                        | what geoblock makes of it          |
|------------|-------------------------------------------------------|------------------------------------|
| 127.0.0.20 | country EU, registered_country EU (legacy continent)  | no country; geoip_code EU          |
| 127.0.0.21 | country AP (legacy Asia/Pacific), nothing else        | no country; geoip_code AP          |
| 127.0.0.22 | registered_country US only                            | US, country_source geoip-registered |
| 127.0.0.23 | country SG, registered_country US, traits.is_anycast  | SG, anycast                        |

`build_epoch` (seconds since 1970) stamps a chosen build time, e.g. an old build for freshness checks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmdb_writer import MMDBWriter, MmdbU32
from netaddr import IPSet

PLACES: dict[str, tuple[str, int]] = {
    "127.0.0.1/32": ("CN", 64500),
    "127.0.0.2/32": ("SG", 64501),
    "127.0.0.3/32": ("US", 64502),
    "127.0.0.5/32": ("SG", 64501),
    "::1/128": ("CN", 64500),
}


ODD_PLACES: dict[str, dict[str, Any]] = {
    "127.0.0.20/32": {"country": {"iso_code": "EU", "names": {"en": "Europe"}}, "registered_country": {"iso_code": "EU"}},
    "127.0.0.21/32": {"country": {"iso_code": "AP", "names": {"en": "Asia/Pacific Region"}}},
    "127.0.0.22/32": {"registered_country": {"iso_code": "US", "names": {"en": "United States"}}},
    "127.0.0.23/32": {"country": {"iso_code": "SG", "names": {"en": "Singapore"}},
                      "registered_country": {"iso_code": "US"}, "traits": {"is_anycast": True}},
}


class _Writer(MMDBWriter):
    """MMDBWriter that can stamp a chosen build time (mmdb-writer stamps the time of writing)."""

    def __init__(self, build_epoch: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._build_epoch = build_epoch

    def _build_meta(self) -> dict[str, Any]:
        meta = super()._build_meta()
        if self._build_epoch is not None:
            meta["build_epoch"] = self._build_epoch
        return meta


def write_country_db(path: Path, places: dict[str, tuple[str, int]] = PLACES,
                     edition: str = "GeoLite2-Country", build_epoch: int | None = None,
                     odd: dict[str, dict[str, Any]] = ODD_PLACES) -> Path:
    """A country database: `places` as plain countries, `odd` as the raw records given."""
    writer = _Writer(build_epoch, ip_version=6, ipv4_compatible=True, database_type=edition,
                     languages=["en"], description="geoblock test country database")
    for net, (country, _) in places.items():
        writer.insert_network(IPSet([net]), {
            "country": {"iso_code": country, "names": {"en": country}},
            "registered_country": {"iso_code": country},
        })
    for net, record in odd.items():
        if net not in places:
            writer.insert_network(IPSet([net]), record)
    writer.to_db_file(str(path))
    return path


def write_asn_db(path: Path, places: dict[str, tuple[str, int]] = PLACES,
                 edition: str = "GeoLite2-ASN", build_epoch: int | None = None) -> Path:
    writer = _Writer(build_epoch, ip_version=6, ipv4_compatible=True, database_type=edition,
                     languages=["en"], description="geoblock test ASN database")
    for net, (_, asn) in places.items():
        writer.insert_network(IPSet([net]), {
            "autonomous_system_number": MmdbU32(asn),
            "autonomous_system_organization": f"Test AS{asn}",
        })
    writer.to_db_file(str(path))
    return path
