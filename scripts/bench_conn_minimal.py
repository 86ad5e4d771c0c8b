"""The benchmark's reference addon (scripts/bench_conn.py): the least a CONNECT blocker does in mitmproxy.

    mitmdump -s scripts/bench_conn_minimal.py --set minimal_list=rules/lists/exchanges.txt

A CONNECT whose target (or a parent domain of it) is on the list (one domain per line, the first word;
`#` comments) is answered 451; every other CONNECT is accepted and its TLS passed through undecrypted.
No decision log, no GeoIP, no SNI check: a yardstick for what mitmproxy itself costs per connection.
"""

from __future__ import annotations

from typing import Any

from mitmproxy import ctx, http


class MinimalBlock:
    name = "minimalblock"

    def __init__(self) -> None:
        self.listed: set[str] = set()

    def load(self, loader: Any) -> None:
        loader.add_option("minimal_list", str, "", "a list file: one domain per line (first word)")

    def configure(self, updated: set[str]) -> None:
        if "minimal_list" in updated and ctx.options.minimal_list:
            with open(ctx.options.minimal_list, encoding="utf-8") as fh:
                self.listed = {line.split()[0].lower() for line in fh if line.strip() and not line.startswith("#")}

    def http_connect(self, flow: http.HTTPFlow) -> None:
        labels = flow.request.host.lower().rstrip(".").split(".")
        if any(".".join(labels[i:]) in self.listed for i in range(len(labels))):
            flow.response = http.Response.make(451, b"blocked\n")
            flow.response.reason = "Unavailable For Legal Reasons"

    def tls_clienthello(self, data: Any) -> None:
        data.ignore_connection = True


addons = [MinimalBlock()]
