"""Where geoblock looks for its rules, GeoIP databases and decision log when no option names them.

Two layouts, told apart by where this package sits:

- **A source checkout**: the package is ``addons/geoblock/`` of a repository whose ``rules/`` directory is
  beside ``addons/``. The defaults are the checkout's own ``rules/``, ``data/geoip/`` and
  ``logs/decisions.jsonl``: what ``make run``, the tests and the systemd units (which run the checkout
  at /opt/geoblock) use.
- **An installed package** (``pip install .``, anywhere else): the FHS locations ``/etc/geoblock/rules``,
  ``/var/lib/geoblock/geoip`` and ``/var/log/geoblock/decisions.jsonl``. When ``/etc/geoblock/rules``
  does not exist, the rules shipped inside the package are used instead (``geoblock/data/rules/``:
  the repository's ``rules/``, installed as package data by pyproject.toml), so ``geoblock check``
  works right after installation.

In either layout an environment variable, when set and not empty, wins:

============================  ==============================================================
``GEOBLOCK_RULES``            the rules file or directory
``GEOBLOCK_GEOIP_DIR``        the directory of GeoLite2-Country.mmdb and GeoLite2-ASN.mmdb
``GEOBLOCK_LOG``              the decision log (JSON lines)
============================  ==============================================================

The module constants below are computed once, when this module is first imported, from the environment
of that moment; `defaults()` computes them for any environment and layout. All paths are absolute
strings; nothing here checks that the GeoIP databases or the log exist or can be written (the addon and
the tools report that when they use them).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
"""The directory of the `geoblock` package itself."""
SHIPPED_RULES = os.path.join(PACKAGE_DIR, "data", "rules")
"""The rules installed with the package (present in an installed package, not in a checkout)."""

ETC_RULES = "/etc/geoblock/rules"
VAR_GEOIP_DIR = "/var/lib/geoblock/geoip"
VAR_LOG = "/var/log/geoblock/decisions.jsonl"
COUNTRY_DB_NAME = "GeoLite2-Country.mmdb"
ASN_DB_NAME = "GeoLite2-ASN.mmdb"

ENV_RULES = "GEOBLOCK_RULES"
ENV_GEOIP_DIR = "GEOBLOCK_GEOIP_DIR"
ENV_LOG = "GEOBLOCK_LOG"

Layout = Literal["checkout", "installed"]


def checkout_root(package_dir: str = PACKAGE_DIR) -> str | None:
    """The repository root when `package_dir` is ``<root>/addons/geoblock`` and ``<root>/rules`` is a
    directory (a source checkout); else None (an installed package)."""
    addons = os.path.dirname(package_dir)
    root = os.path.dirname(addons)
    if os.path.basename(addons) == "addons" and os.path.isdir(os.path.join(root, "rules")):
        return root
    return None


@dataclass(frozen=True)
class Defaults:
    """The default locations for one environment and layout.

    Attributes:
        layout: "checkout" (a source checkout's paths) or "installed" (FHS paths).
        rules: the rules file or directory.
        rules_origin: why `rules` was picked, in words for a message, e.g. "$GEOBLOCK_RULES",
            "the source checkout's rules/", "the rules shipped with geoblock: /etc/geoblock/rules
            does not exist".
        geoip_dir: the GeoIP database directory.
        country_db: ``<geoip_dir>/GeoLite2-Country.mmdb``.
        asn_db: ``<geoip_dir>/GeoLite2-ASN.mmdb``.
        log: the decision log.
    """

    layout: Layout
    rules: str
    rules_origin: str
    geoip_dir: str
    country_db: str
    asn_db: str
    log: str


def defaults(environ: Mapping[str, str] | None = None, package_dir: str = PACKAGE_DIR,
             etc_rules: str = ETC_RULES) -> Defaults:
    """The default locations for `environ` (default: os.environ) with the package at `package_dir`;
    `etc_rules` is the system rules directory looked for in the installed layout. Never raises."""
    env = os.environ if environ is None else environ
    root = checkout_root(package_dir)
    if root is not None:
        layout: Layout = "checkout"
        rules, origin = os.path.join(root, "rules"), "the source checkout's rules/"
        geoip_dir = os.path.join(root, "data", "geoip")
        log = os.path.join(root, "logs", "decisions.jsonl")
    else:
        layout = "installed"
        geoip_dir, log = VAR_GEOIP_DIR, VAR_LOG
        shipped = os.path.join(package_dir, "data", "rules")
        if os.path.exists(etc_rules):
            rules, origin = etc_rules, "the system rules"
        elif os.path.isdir(shipped):
            rules, origin = shipped, f"the rules shipped with geoblock: {etc_rules} does not exist"
        else:
            rules, origin = etc_rules, "the system rules (missing; this installation ships none)"
    if env.get(ENV_RULES):
        rules, origin = os.path.abspath(env[ENV_RULES]), f"${ENV_RULES}"
    if env.get(ENV_GEOIP_DIR):
        geoip_dir = os.path.abspath(env[ENV_GEOIP_DIR])
    if env.get(ENV_LOG):
        log = os.path.abspath(env[ENV_LOG])
    return Defaults(layout, rules, origin, geoip_dir, os.path.join(geoip_dir, COUNTRY_DB_NAME),
                    os.path.join(geoip_dir, ASN_DB_NAME), log)


_DEFAULTS = defaults()
LAYOUT: Layout = _DEFAULTS.layout
""""checkout" or "installed": which set of defaults applies to this process."""
REPO = checkout_root()
"""The source checkout's root directory, or None for an installed package."""
DEFAULT_RULES = _DEFAULTS.rules
DEFAULT_RULES_ORIGIN = _DEFAULTS.rules_origin
"""Why DEFAULT_RULES was picked (for a message: "using <DEFAULT_RULES> (<DEFAULT_RULES_ORIGIN>)")."""
DEFAULT_GEOIP_DIR = _DEFAULTS.geoip_dir
DEFAULT_COUNTRY_DB = _DEFAULTS.country_db
DEFAULT_ASN_DB = _DEFAULTS.asn_db
DEFAULT_LOG = _DEFAULTS.log
