"""geoblock probe: measures from the client side whether the gateway's blocks hold (docs/probe.md)."""
