"""Offline tools over the same engine: the CLI, replay and the GeoIP database updater."""
