"""`geoblock-gateway`: the production runner, a mitmproxy master with only what a gateway needs.

`mitmdump -s addons/block.py` runs geoblock inside mitmdump's DumpMaster: 36 addons, and mitmproxy
passes every event (each connection, layer, TLS hello, request) through every one of them, looking its
hook up on each. A gateway uses a handful. This runner builds a master with:

- the built-ins a gateway needs: termlog (the journal), core (option checks, commands), block
  (block_global, block_private), proxyserver, the script loader (`-s` scripts, run before geoblock),
  dns_resolver and strip_dns_https_records (DNS mode), disable_h2c, next_layer, tlsconfig, errorcheck
  (a start-up error exits with status 1, as mitmdump does); mitmproxy's dumper only when `flow_detail`
  is above 0 (the runner's default is 0: no line per flow);
- geoblock itself (`GeoBlock`), registered after the `-s` scripts, with its --set values checked
  before they are applied (`options.preflight`), as the script glue does;
- quiet per-connection logging: records below `termlog_verbosity` are never made (the root logger's
  level follows it), and mitmproxy's deprecated `add_log` event, which passes every record (debug lines
  included) through every addon, is not emitted.

The options of the built-ins it leaves out (anticache, modify_headers, save_stream_file, ...) are still
known, so a command line written for mitmdump parses; a value other than the default is refused at
start-up with one line naming the option (exit status 1): such a feature needs
`mitmdump -s addons/block.py`. Command line: mitmdump's (`geoblock-gateway --mode transparent
--listen-port 8080 --set geoblock_rules=...`), and modes regular, transparent and dns work as in mitmdump.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from mitmproxy import addons as builtin
from mitmproxy import exceptions, hooks, master, options, optmanager
from mitmproxy.addonmanager import Loader
from mitmproxy.addons import (
    block,
    core,
    disable_h2c,
    dns_resolver,
    dumper,
    errorcheck,
    keepserving,
    next_layer,
    proxyserver,
    readfile,
    script,
    strip_dns_https_records,
    termlog,
    tlsconfig,
)
from mitmproxy.tools import cmdline

from geoblock.mitm.addon import GeoBlock
from geoblock.mitm.dispatch import HookTable
from geoblock.mitm.options import OptionProblem, preflight

__all__ = ["GatewayMaster", "GatewayOptions", "main"]

# The runner's own default for a mitmproxy option (mitmdump's is in brackets): flow_detail [1], one
# line per flow on the terminal; the decision log has every decision.
RUNNER_DEFAULTS: dict[str, Any] = {"flow_detail": 0}

_ATOMS = (bool, int, float, str, bytes, type(None))  # option values that are never copied: immutable


class GatewayOptions(options.Options):
    """mitmproxy's options, read without a copy where a copy changes nothing.

    mitmproxy's `OptManager.__getattr__` returns `copy.deepcopy` of an option's value (of its default
    when unset) on every read, so that no reader can change a list in place; its layers read options
    on every connection (each new layer reads `proxy_debug`, about a dozen layers per connection), which
    cost a passed-through connection about 4 % of its CPU. A value of an immutable type (bool, int,
    float, str, bytes, None) is returned as it is, which is what a deep copy of it gives; every other
    value (lists of hosts, ...) still goes through mitmproxy's copying read."""

    def __getattr__(self, attr: str) -> Any:
        option = self.__dict__.get("_options", {}).get(attr)
        if option is not None:
            value = option.value
            if value is optmanager.unset:
                value = option._default
            if type(value) in _ATOMS:
                return value
        return super().__getattr__(attr)


def _kept() -> list[Any]:
    """The built-ins the runner carries, in mitmdump's order (termlog and errorcheck aside)."""
    return [
        core.Core(),
        block.Block(),
        strip_dns_https_records.StripDnsHttpsRecords(),
        disable_h2c.DisableH2C(),
        proxyserver.Proxyserver(),
        script.ScriptLoader(),
        dns_resolver.DnsResolver(),
        next_layer.NextLayer(),
        tlsconfig.TlsConfig(),
    ]


_KEPT_NAMES = {type(a).__name__ for a in _kept()} | {"TermLog", "ErrorCheck"}


def _left_out() -> list[Any]:
    """mitmdump's other addons (default_addons, dumper, keepserving, readfile): only their options are
    registered."""
    every = [*builtin.default_addons(), dumper.Dumper(), keepserving.KeepServing(), readfile.ReadFileStdin()]
    return [a for a in every if type(a).__name__ not in _KEPT_NAMES]


class _OptionsOnly:
    """A loader for a left-out addon's `load`: its options are added (with the runner's defaults,
    RUNNER_DEFAULTS), its commands are not (they would call an addon that is not loaded)."""

    def __init__(self, loader: Any, owner: str, owners: dict[str, str]) -> None:
        self.loader, self.owner, self.owners = loader, owner, owners
        self.master = loader.master

    def add_option(self, name: str, typespec: type, default: Any, help: str,
                   choices: Sequence[str] | None = None) -> None:
        self.owners[name] = self.owner
        self.loader.add_option(name, typespec, RUNNER_DEFAULTS.get(name, default), help, choices)

    def add_command(self, path: str, func: Callable[..., Any]) -> None:
        pass


class _QuietDumper(dumper.Dumper):
    """mitmproxy's dumper, added when flow_detail > 0; its options are already registered."""

    def load(self, loader: Any) -> None:
        pass


class GatewayMaster(master.Master):
    """A mitmproxy master with only the addons a gateway needs (see the module's docstring).

    `left_out` maps each option of a built-in the runner does not carry to that addon's class name.
    `add_geoblock()` registers geoblock once the command line is parsed."""

    addons: HookTable

    def __init__(self, opts: options.Options, loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(opts, event_loop=loop, with_termlog=False)
        self._legacy_log_events.uninstall()  # no add_log event per log record: no addon here uses it
        self.options.changed.disconnect(self.addons._configure_all)
        self.addons = HookTable(self)  # each event only to the addons that handle it (mitm/dispatch.py)
        self._termlog_addon = termlog.TermLog()
        self.addons.add(self._termlog_addon)
        self.addons.add(*_kept())
        self.left_out: dict[str, str] = {}
        loader = Loader(self)
        for addon in _left_out():
            if hasattr(addon, "load"):
                addon.load(_OptionsOnly(loader, type(addon).__name__, self.left_out))
        self.addons.add(errorcheck.ErrorCheck())
        self.options.changed.connect(self._follow_verbosity)
        self._follow_verbosity({"termlog_verbosity"})

    def _follow_verbosity(self, updated: set[str]) -> None:
        """Records below termlog_verbosity are not made at all (the terminal would drop them)."""
        if "termlog_verbosity" in updated:
            level = logging.getLevelName(self.options.termlog_verbosity.upper())
            logging.getLogger().setLevel(level if isinstance(level, int) else logging.INFO)

    def refused_options(self) -> list[str]:
        """One line for each option of a left-out built-in set to something other than the runner's
        default (a feature the runner does not carry); flow_detail > 0 adds the dumper instead."""
        out = []
        for name, owner in sorted(self.left_out.items()):
            if name == "flow_detail" or not self.options.has_changed(name):
                continue
            out.append(f"geoblock-gateway: option {name} belongs to mitmproxy's {owner} addon, which the "
                       f"gateway runner does not carry; run `mitmdump -s addons/block.py` for it")
        return out

    def add_geoblock(self) -> str | None:
        """Add the dumper when flow_detail > 0, then check geoblock's --set values (preflight) and
        register geoblock (its deferred values applied), each configured with every option as a script is
        when it loads. Returns a refusal (one line), or None."""
        late: list[Any] = [_QuietDumper()] if self.options.flow_detail > 0 else []
        try:
            preflight()
        except OptionProblem as exc:
            return str(exc)
        for addon in late:
            self.addons.add(addon)
        # geoblock goes where mitmdump's scripts are: right after the script loader (and so after the
        # -s scripts, which live inside it), before next_layer and tlsconfig, whose choices it makes first
        geoblock = self.addons.register(GeoBlock())
        self.addons.chain.insert(self.addons.chain.index(self.addons.get("scriptloader")) + 1, geoblock)
        self.addons.forget()
        for addon in [*late, geoblock]:
            self.addons.invoke_addon_sync(addon, hooks.ConfigureHook(set(self.options.keys())))
        own = {id(geoblock), id(self.addons.get("tlsconfig"))}
        geoblock.layers.direct_pass = lambda: all(id(top) in own for top, _ in self.addons.handlers("tls_clienthello"))
        return None


def main(argv: list[str] | None = None) -> None:
    """`geoblock-gateway [mitmdump options]`: serve with GatewayMaster. The command line is mitmdump's;
    a refused option or rule prints one line and exits with status 1; SIGTERM and SIGINT stop it,
    SIGHUP reloads geoblock's rules (geoblock's own handler)."""
    arguments = sys.argv[1:] if argv is None else argv

    async def serve() -> None:
        logging.getLogger("tornado").setLevel(logging.WARNING)
        logging.getLogger("asyncio").setLevel(logging.WARNING)
        logging.getLogger("hpack").setLevel(logging.WARNING)
        logging.getLogger("quic").setLevel(logging.WARNING)
        opts = GatewayOptions()
        gateway = GatewayMaster(opts)
        parser = cmdline.mitmdump(opts)
        parser.prog = "geoblock-gateway"
        args = parser.parse_args(arguments)
        if args.version:
            from mitmproxy.utils import debug

            print(debug.dump_system_info())
            sys.exit(0)
        try:
            opts.set(*args.setoptions, defer=True)
            optmanager.load_paths(opts, os.path.join(opts.confdir, "config.yaml"),
                                  os.path.join(opts.confdir, "config.yml"))
            if args.quiet:
                args.termlog_verbosity, args.flow_detail = "error", 0
            if args.verbose:
                args.termlog_verbosity, args.flow_detail = "debug", 2
            opts.update(**{k: v for k, v in vars(args).items() if k in opts and v is not None})
            problems = gateway.refused_options()
            if getattr(args, "filter_args", None):  # mitmdump's flow filter: for the dumper and -w files
                problems.append(f"geoblock-gateway: a flow filter ({' '.join(args.filter_args)}) is for "
                                f"mitmdump's flow output and saved flows; run `mitmdump -s addons/block.py` for it")
            if problems:
                print("\n".join(problems), file=sys.stderr)
                sys.exit(1)
            refusal = gateway.add_geoblock()
            if refusal:
                print(refusal, file=sys.stderr)
                sys.exit(1)
        except exceptions.OptionsError as exc:
            print(f"geoblock-gateway: {exc}", file=sys.stderr)
            sys.exit(1)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, gateway.shutdown)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        await gateway.run()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
