"""geoblock: block or log flows by the domain a client wants and where the server really is.

Run as a mitmproxy script:  mitmdump -s addons/block.py [--set geoblock_rules=rules/ ...]
The engine lives in the `geoblock` package beside this file; this file only registers the addon
(geoblock.mitm.entry.register). An installed package has the same script inside it: `geoblock-proxy`.
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from geoblock.mitm.entry import register  # noqa: E402

register(globals())  # a malformed --set geoblock_... stops mitmdump here instead of dropping geoblock silently
