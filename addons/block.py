"""geoblock: block or log flows by the domain a client wants and where the server really is.

Run as a mitmproxy script:  mitmdump -s addons/block.py [--set geoblock_rules=rules/ ...]
The engine lives in the `geoblock` package beside this file; this file only registers the addon.
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from mitmproxy import hooks as _hooks  # noqa: E402

from geoblock.mitm.addon import GeoBlock, preflight  # noqa: E402

# mitmproxy looks up each event's name on this module too (a script is an addon), for every event of
# every flow: eight per HTTP request. On Python 3.11 a name that a module lacks costs an AttributeError,
# about 2 µs each time; a name bound to None costs one dictionary lookup, and mitmproxy skips it.
for _hook in _hooks.all_hooks:
    if _hook != "add_log":  # mitmproxy warns about any addon that still defines the removed add_log
        globals().setdefault(_hook, None)

preflight()  # a malformed --set geoblock_... stops mitmdump here instead of dropping geoblock silently
addons = [GeoBlock()]
