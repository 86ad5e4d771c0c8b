"""Hook dispatch for the gateway runner: each event goes only to the addons that handle it.

mitmproxy's AddonManager, for every event of every connection (client_connected, next_layer,
tls_clienthello, http_connect, requestheaders, ..., and an `update` event after each flow event), walks
the whole addon tree with a generator and looks the hook's name up on every addon, whether or not it has
one. `HookTable` does that walk once per event name and keeps the result: (top-level addon, its hook
functions) for the addons that define the hook, in chain order. Calling them is unchanged: one
`safecall` per top-level addon (an exception is logged as "Addon error" and the others still run),
`AddonHalt` stops the event, an awaitable result is awaited.

The table is dropped whenever the tree can change: an addon registered, added or removed (which is how
the script loader loads, reloads and unloads `-s` scripts), and any option change (the script loader
reorders scripts in its configure). Callers that edit `chain` themselves call `forget()`.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable
from typing import Any

from mitmproxy import addonmanager, exceptions, flow, hooks

__all__ = ["HookTable"]

Handlers = list[tuple[Any, list[Callable[..., Any]]]]


class HookTable(addonmanager.AddonManager):
    """An AddonManager whose event dispatch looks hooks up once per event name (see the module)."""

    def __init__(self, master: Any) -> None:
        super().__init__(master)
        self._table: dict[str, Handlers] = {}

    def forget(self) -> None:
        """Drop the table: the next event of each name walks the addon tree again."""
        self._table.clear()

    def _configure_all(self, updated: Any) -> None:
        self._table.clear()  # the script loader may reorder its scripts in configure
        super()._configure_all(updated)
        self._table.clear()

    def register(self, addon: Any) -> Any:
        self._table.clear()
        return super().register(addon)

    def add(self, *addons: Any) -> None:
        super().add(*addons)
        self._table.clear()

    def remove(self, addon: Any) -> None:
        self._table.clear()
        super().remove(addon)

    def clear(self) -> None:
        super().clear()
        self._table.clear()

    def handlers(self, name: str) -> Handlers:
        """[(top-level addon, [its and its children's `name` hooks, in tree order])] for the top-level
        addons that have at least one, in chain order. AddonManagerError for a hook attribute that is
        neither callable nor a module (as mitmproxy raises)."""
        found = self._table.get(name)
        if found is None:
            found = []
            for top in self.chain:
                funcs = []
                for a in addonmanager.traverse([top]):
                    func = getattr(a, name, None)
                    if not func or isinstance(func, types.ModuleType):
                        continue  # mitmproxy skips a module imported under a hook's name
                    if not callable(func):
                        raise exceptions.AddonManagerError(f"Addon handler {name} ({a}) not callable")
                    funcs.append(func)
                if funcs:
                    found.append((top, funcs))
            self._table[name] = found
        return found

    async def trigger_event(self, event: hooks.Hook) -> None:
        """Call `event`'s hooks of every addon that has one, in chain order (see the module)."""
        table = self.handlers(event.name)
        if not table:
            return
        args = event.args()
        for _, funcs in table:
            try:
                with addonmanager.safecall():
                    for func in funcs:
                        res = func(*args)
                        if res is not None and inspect.isawaitable(res):
                            await res
            except exceptions.AddonHalt:
                return

    async def handle_lifecycle(self, event: hooks.Hook) -> None:
        """The event, then `update` for its flow (only when some addon has an `update` hook)."""
        await self.trigger_event(event)
        if self.handlers("update"):
            message = event.args()[0]
            if isinstance(message, flow.Flow):
                await self.trigger_event(hooks.UpdateHook([message]))
