"""geoblock: a policy engine for mitmproxy that blocks or logs flows by name and server location.

The decision core (names, rules, ruleset, decide, geo, resolve, record) imports nothing from mitmproxy;
`addon` and `enforce` are the only mitmproxy-facing modules.
"""

__version__ = "0.1.0"
