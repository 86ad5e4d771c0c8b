"""How mitmproxy loads geoblock: the script glue, and `geoblock-proxy` for an installed package.

mitmproxy loads geoblock as a script (`mitmdump -s FILE`): a file whose `addons` list it registers. Two
files are such scripts, and both call `register(globals())`: addons/block.py in a source checkout, and
`geoblock/mitm/script.py` inside an installed package. `geoblock-proxy [mitmdump options]` runs mitmdump
with the installed one (`script_path()`), so an operator who installed geoblock with pip needs no path.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from mitmproxy import hooks

from geoblock.mitm.addon import GeoBlock, OptionProblem, preflight


def register(namespace: dict[str, Any]) -> None:
    """Make the module whose globals are `namespace` a geoblock script: check the geoblock_* --set values
    (preflight: a malformed one stops mitmdump instead of dropping geoblock silently) and set its `addons`.

    mitmproxy also looks up each event's name on the script module itself (a script is an addon), for
    every event of every flow: eight per HTTP request. On Python 3.11 a name a module lacks costs an
    AttributeError, about 2 µs each time; a name bound to None costs one dictionary lookup, and mitmproxy
    skips it. So every hook name is bound to None here, but `add_log` (mitmproxy warns about any addon
    that still defines that removed hook). A malformed value is logged as one error line (no
    traceback) and no addon is registered: mitmdump's start-up check then exits with status 1."""
    for hook in hooks.all_hooks:
        if hook != "add_log":
            namespace.setdefault(hook, None)
    try:
        preflight()
    except OptionProblem as exc:  # one error line, not a traceback: mitmdump then exits with status 1
        logging.getLogger("geoblock").error(str(exc))
        namespace["addons"] = []
        return
    namespace["addons"] = [GeoBlock()]


def script_path() -> str:
    """The path of the script inside the installed package (geoblock/mitm/script.py)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "script.py")


def main(argv: list[str] | None = None) -> None:
    """`geoblock-proxy [mitmdump options]`: mitmdump with geoblock loaded (`-s script_path()`), the other
    options passed on as given (e.g. `--listen-port 8080 --set geoblock_rules=/etc/geoblock/rules`).
    Exits as mitmdump does."""
    from mitmproxy.tools.main import mitmdump

    args = sys.argv[1:] if argv is None else argv
    mitmdump(["-s", script_path(), *args])
