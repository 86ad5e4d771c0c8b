"""Enrichment: where a server is (GeoIP, RDAP) and what a name resolves to."""
