"""The regional Internet registries' delegation data: the country of last resort, offline.

The five registries (AFRINIC, APNIC, ARIN, LACNIC, RIPE NCC) publish every day which country each
address block is delegated to. The `iptocc` package carries those files compiled into its wheel, so a
lookup reads no file and asks no network (about 130 ns, docs/geoip.md). The country it gives is where
the block is REGISTERED, not where a server is: a block registered in one country may serve from
another. geoblock therefore asks it only for a public address the GeoIP databases did not place (or when
there are none), before RDAP (`enrich.locate.chain`); a country found here has the source "rir".

The data is as recent as the installed `iptocc` release: `BUILD` names it ("iptocc 3.3.170, data of
2026-10-27"), and a decision record placed from it carries that in `rir_build`.
"""

from __future__ import annotations

import json
from importlib import metadata

import iptocc

from geoblock.core.countries import ISO_3166_ALPHA2
from geoblock.core.model import CountrySource
from geoblock.core.names import IPAddress
from geoblock.enrich.rdap import lookupable

SOURCE: CountrySource = "rir"  # the Facts.country_source value for countries found here


def _build() -> str:
    """The installed iptocc release and the date its data was built (from the SBOM in its wheel:
    "iptocc 3.3.170, data of 2026-10-27"); just the release when the wheel carries no date."""
    try:
        dist = metadata.distribution("iptocc")
    except metadata.PackageNotFoundError:  # pragma: no cover - a dependency, always installed
        return "iptocc"
    text = f"iptocc {dist.version}"
    for path in dist.files or ():
        if path.name.endswith(".cyclonedx.json"):
            try:
                stamp = json.loads(path.read_text(encoding="utf-8"))["metadata"]["timestamp"]
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if isinstance(stamp, str) and len(stamp) >= 10:
                return f"{text}, data of {stamp[:10]}"
    return text


BUILD: str = _build()
"""What the registries' data is: the iptocc release and its build date, e.g. "iptocc 3.3.170, data of
2026-10-27"."""


def country(addr: IPAddress) -> str | None:
    """The ISO 3166-1 alpha-2 country the registries delegated `addr`'s block to, or None: an address
    that is not public (`rdap.lookupable`), a block no registry delegated, or a code that is not a
    country (the registries' "EU" and "ZZ"). Never raises for an address object."""
    if not lookupable(addr):
        return None
    code = iptocc.country_code(str(addr))
    if code is None:
        return None
    code = code.upper()
    return code if code in ISO_3166_ALPHA2 else None

