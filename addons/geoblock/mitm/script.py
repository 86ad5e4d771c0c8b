"""geoblock as a mitmproxy script, inside the installed package: `mitmdump -s <this file>`, or simply
`geoblock-proxy` (geoblock.mitm.entry.main), which passes this file. A source checkout uses
addons/block.py, which does the same."""

from geoblock.mitm.entry import register

register(globals())
