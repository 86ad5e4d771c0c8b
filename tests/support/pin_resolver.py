"""A mitmproxy script for tests: geoblock's resolver answers 127.0.0.3 for every name, while mitmproxy's
own resolution (the system's) still answers 127.0.0.1 for `localhost`. It stands for DNS that answers
differently from one query to the next, to show which address mitmproxy dials."""

import ipaddress

from mitmproxy import ctx


class PinResolver:
    def running(self) -> None:
        geoblock = ctx.master.addons.get("geoblock")

        async def resolve(name: str):
            return ipaddress.ip_address("127.0.0.3")

        geoblock.engine.resolver.resolve = resolve


addons = [PinResolver()]
