"""A mitmproxy script for tests: a hosts file for the proxy, so a real browser can ask for
`https://allowed.test/` and reach a local test server.

`--set test_name_map=NAME:PORT=ADDRESS:PORT,...` maps a name and port, as the client asked for them (the
CONNECT target, or the absolute-form URL of plain HTTP), to a loopback server. mitmproxy dials the
mapped address (the TLS server name stays the name), and geoblock's resolver answers the mapped address
for the name, as a DNS server would. As the test servers listen on ports of their own, the address
geoblock judged with the port asked for (where geoblock sends a request it resolved itself) is mapped
to the same server. Any other destination is refused before it is dialled: test
traffic never leaves the machine (a browser's own background requests included).

Load it before geoblock (`-s tests/support/name_map.py -s addons/block.py`): mitmproxy runs hooks in
the order the scripts were given, so the address is mapped first, and geoblock's server_connect (which
refuses a connection it judged blocked) has the last word.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from mitmproxy import ctx


def parse_map(text: str) -> dict[tuple[str, int], tuple[str, int]]:
    """`"a.test:443=127.0.0.1:8443"` -> {("a.test", 443): ("127.0.0.1", 8443), ("127.0.0.1", 443): ("127.0.0.1", 8443)}.
    Raises ValueError naming the entry that is not NAME:PORT=ADDRESS:PORT, or an address and port that
    would stand for two servers."""
    out: dict[tuple[str, int], tuple[str, int]] = {}
    for entry in filter(None, (e.strip() for e in text.split(","))):
        try:
            left, right = entry.split("=")
            name, port = left.rsplit(":", 1)
            address, to_port = right.rsplit(":", 1)
            ipaddress.ip_address(address)
            out[(name.lower(), int(port))] = (address, int(to_port))
        except ValueError:
            raise ValueError(f"test_name_map: {entry!r} is not NAME:PORT=ADDRESS:PORT") from None
    for (_, port), (address, to_port) in list(out.items()):
        if out.setdefault((address, port), (address, to_port)) != (address, to_port):
            raise ValueError(f"test_name_map: {address}:{port} would stand for two servers")
    return out


class NameMap:
    def __init__(self) -> None:
        self.map: dict[tuple[str, int], tuple[str, int]] = {}
        self.names: dict[str, str] = {}

    def load(self, loader: Any) -> None:
        loader.add_option("test_name_map", str, "", "tests: NAME:PORT=ADDRESS:PORT,... (tests/support/name_map.py)")

    def configure(self, updated: set[str]) -> None:
        if "test_name_map" in updated:
            self.map = parse_map(ctx.options.test_name_map)
            self.names = {name: address for (name, _), (address, _) in self.map.items() if name != address}

    def running(self) -> None:
        geoblock = ctx.master.addons.get("geoblock")
        names = self.names

        async def resolve(name: str) -> Any:
            address = names.get(name)
            return None if address is None else ipaddress.ip_address(address)

        geoblock.engine.resolver.resolve = resolve

    def server_connect(self, data: Any) -> None:
        server = data.server
        if not server.address:
            return
        host, port = server.address
        target = self.map.get((str(host).lower(), port))
        if target is not None:
            if server.sni is None:
                server.sni = str(host)
            server.address = target
            return
        try:
            if ipaddress.ip_address(host).is_loopback:
                return  # a test server addressed directly
        except ValueError:
            pass
        server.error = f"test_name_map: {host}:{port} is not a test destination; nothing leaves the machine"


addons = [NameMap()]
