"""Where a flow geoblock judged is dialled: the address it was judged on.

When a rule needed a name's location, geoblock resolved the name itself (Engine.resolve) and judged the
address it got. mitmproxy would resolve the name again when dialling and could get another answer
(round-robin DNS, a short TTL, a server that answers differently on purpose); these functions make it
dial the judged address, with the TLS server name kept as the name.
"""

from __future__ import annotations

from mitmproxy import connection, http
from mitmproxy.proxy import mode_specs

from geoblock.core.names import InvalidHost, IPAddress, as_written, normalize_host
from geoblock.mitm.sessions import ConnState


def send_to_judged_address(flow: http.HTTPFlow, addr: IPAddress, state: ConnState) -> None:
    """HTTP (plain, or decrypted inside a tunnel) to a name geoblock resolved: the request goes to the
    address judged, its Host header unchanged; for HTTPS the upstream TLS server name stays the name
    (set in server_connect). mitmproxy then pools upstream connections by that address, as for a
    request target given as an address. (Pinning each connection in server_connect instead leaves
    mitmproxy's pool keyed by the name: each request opened a new upstream connection, and a
    keep-alive client's 6th request by name could wait forever.)"""
    request = flow.request
    if not isinstance(flow.client_conn.proxy_mode, mode_specs.RegularMode):
        return  # other modes choose their server themselves
    dial = str(as_written(addr))  # an IPv4 address carried in IPv6 (DNS64) is dialled as the IPv6 address
    if request.scheme == "https":
        state.server_names[(dial, request.port)] = request.host
    elif request.scheme != "http":
        return
    host_header = request.host_header
    request.host = dial  # mitmproxy rewrites the Host header with it: put the client's back
    if host_header is not None:
        request.host_header = host_header


def pin(state: ConnState, server: connection.Server, client: connection.Client) -> None:
    """Dial the address geoblock judged. When a rule needed a name's location, geoblock resolved
    the name itself; mitmproxy would resolve it again when dialling and could get another answer
    (round-robin DNS, a short TTL, a server that answers differently on purpose). The server is
    dialled at the judged address instead; the TLS server name stays the name."""
    address = server.address
    if not address or server.via is not None or not isinstance(address[0], str):
        return
    try:
        name = normalize_host(address[0])
    except InvalidHost:
        return
    pinned = state.resolved.get(name) if isinstance(name, str) else None
    if pinned is None:
        return
    if server.sni is None:
        server.sni = client.sni or address[0]  # what mitmproxy would have sent
    server.address = (str(as_written(pinned)), address[1])
