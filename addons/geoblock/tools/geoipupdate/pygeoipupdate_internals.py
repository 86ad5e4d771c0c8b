"""The one place geoblock reaches into pygeoipupdate's internals (written for pygeoipupdate 0.1.0).

pygeoipupdate's public API (`Config.from_file`) reads GeoIP.conf and the GEOIPUPDATE_* variables and then
insists on credentials. The updater needs the same values *without* credentials too (`--check`,
`--source dbip`, the database directory and the lock file for both), and needs to know which values
were given at all (to apply geoblock's own defaults only where neither the file nor the environment
has one). So it parses them with pygeoipupdate's own parsers, which 0.1.0 keeps private:

- `pygeoipupdate.config._parse_config_file(path) -> dict`   GeoIP.conf, keys in Config's field names
- `pygeoipupdate.config._parse_environment() -> dict`       the GEOIPUPDATE_* variables, the same keys
- `pygeoipupdate._defaults.get_default_config_file() -> Path` /usr/local/etc/GeoIP.conf on Linux

Reading them through pygeoipupdate keeps the syntax (durations, hosts, proxies, the legacy key names)
exactly the one `Config.from_file` accepts. pyproject.toml pins pygeoipupdate exactly; a release that
renames or removes these fails here, at import, with a message saying so.
"""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path
from typing import Any

WRITTEN_FOR = "0.1.0"
"""The pygeoipupdate release whose internals this module was written against."""

try:
    from pygeoipupdate._defaults import get_default_config_file as _default_config_file
    from pygeoipupdate.config import _parse_config_file, _parse_environment
except ImportError as exc:  # pragma: no cover - only with a pygeoipupdate other than the pinned one
    raise ImportError(
        f"geoblock's GeoIP updater relies on internals of pygeoipupdate {WRITTEN_FOR}; the installed "
        f"pygeoipupdate {version('pygeoipupdate')} lacks them ({exc})"
    ) from exc


def parse_config_file(path: Path) -> dict[str, Any]:
    """The settings in a GeoIP.conf file, keyed by pygeoipupdate.Config's field names
    (`account_id`, `license_key`, `edition_ids`, `database_directory`, `lock_file`, `retry_for`, ...).

    Raises pygeoipupdate.ConfigError for a file that cannot be read or parsed (message without the path).
    """
    return dict(_parse_config_file(path))


def parse_environment() -> dict[str, Any]:
    """The settings in the GEOIPUPDATE_* environment variables, keyed as `parse_config_file`'s.

    Raises pygeoipupdate.ConfigError for a value that cannot be parsed.
    """
    return dict(_parse_environment())


def default_config_file() -> Path:
    """pygeoipupdate's default GeoIP.conf location (/usr/local/etc/GeoIP.conf on Linux); may not exist."""
    return _default_config_file()
