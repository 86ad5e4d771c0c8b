"""geoblock: block or log flows by the domain a client wants and where the server really is.

The public names: `Engine` (judges facts: `Engine.open(rules, country_db, asn_db).judge(facts)`),
`Facts` and `Verdict` (what a judgement reads and gives), `GeoblockError` (the root of every error
geoblock raises). The mitmproxy addon is `geoblock.mitm.addon.GeoBlock`, registered by addons/block.py.
"""

from geoblock.core.model import Facts, Verdict
from geoblock.engine import Engine
from geoblock.errors import GeoblockError

__all__ = ["Engine", "Facts", "GeoblockError", "Verdict"]
__version__ = "0.1.0"
