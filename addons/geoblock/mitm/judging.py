"""The adapter's side of every judgement: the engine and settings in force, the decision log, the
counters, and the guard that fails closed.

Every hook object (`GeoBlock` and the judges it delegates to: `layers.LayerJudge`,
`httpjudge.HttpJudge`, `dnsjudge.DnsJudge`) shares one `Judging`. A hook observes facts, then calls
`judging.resolve(...)` where a rule needs the server's address, `judging.judge(facts)` (the engine's
verdict), `judging.record(...)` (counted, logged, one decision-log line), and enforces the verdict with
its own refusal when `judging.enforcing(verdict)`.

`guarded(stage, refusal)` wraps a hook: any exception applies the policy's `on_error` verdict (block by
default), recorded with the cause and logged once per cause, enforced on the hook's object by the hook
object's method named `refusal`.
"""

from __future__ import annotations

import datetime as _dt
import functools
import logging
import os
import traceback
from collections.abc import Callable, Coroutine
from typing import Any

from mitmproxy import http

from geoblock.core.model import Facts, Stage, Verdict
from geoblock.core.names import InvalidHost, IPAddress
from geoblock.engine import CannotJudge, Engine
from geoblock.mitm import enforce
from geoblock.mitm.dnsanswers import EchPublicNames
from geoblock.mitm.observe import client_facts, client_of, server_port_of
from geoblock.mitm.options import DEFAULT_BLOCKED_BY, Settings
from geoblock.mitm.sessions import ConnState, Sessions
from geoblock.record import DecisionLog, RecordExtra, make_record

logger = logging.getLogger("geoblock")

Refusal = Callable[[Any, Verdict], None]  # enforces a blocking verdict on a hook's object


def now() -> str:
    """The time now, UTC, to the second, as the block page shows it ("2026-11-30T08:00:00Z")."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class Judging:
    """What every hook shares to judge a flow: the engine, the settings, the decision log and the block
    page in force (all set by `GeoBlock.configure`), the per-connection sessions, the counters."""

    def __init__(self) -> None:
        self.engine: Engine | None = None
        self.settings: Settings | None = None
        self.log: DecisionLog | None = None
        self.page = enforce.PageSet.load()  # the block page in every language (geoblock_block_page[s])
        self._notices: tuple[object, dict[str, str | None]] = (None, {})  # (ruleset, rule id -> its notice)
        self.sessions = Sessions()
        self.ech_names = EchPublicNames()  # ECH public names seen in DNS answers geoblock served
        self.counts = {"allow": 0, "log": 0, "block": 0, "error": 0}
        # For the metrics endpoint (mitm/metrics.py, which copies them when scraped): decisions by
        # (stage, action, rule or ""); verdicts of on_error by (stage, cause: "invalid-input",
        # "incomplete-first-bytes" or the exception's type); of unknown_country by (stage, what was
        # missing); invalid inputs by (stage, field)
        self.decisions: dict[tuple[str, str, str], int] = {}
        self.on_errors: dict[tuple[str, str], int] = {}
        self.unknowns: dict[tuple[str, str], int] = {}
        self.invalids: dict[tuple[str, str], int] = {}
        self.errors_seen: dict[str, int] = {}  # on_error causes, with how often each was met
        self.generation = 0  # +1 with every option change; with the engine's, it dates a verdict (HttpMemo)

    # ------------------------------------------------------------------ judging

    def judge(self, facts: Facts) -> Verdict:
        """The engine's verdict (Engine.judge). Raises CannotJudge when no ruleset is loaded."""
        if self.engine is None:
            raise CannotJudge("no ruleset is loaded")
        return self.engine.judge(facts)

    async def resolve(self, state: ConnState | None, name: str | None, ip: IPAddress | None,
                      names: tuple[str, ...]) -> IPAddress | None:
        """The server's address to judge (Engine.resolve), once per connection."""
        if self.engine is None:
            raise CannotJudge("no ruleset is loaded")
        return await self.engine.resolve(state.session if state else None, name, ip, names)

    def place(self, facts: Facts) -> None:
        """Place the server of a verdict that does not depend on where it is, for its record."""
        if self.engine is not None:
            self.engine.place(facts)

    def verdict_generation(self) -> tuple[int, int]:
        """What a verdict was reached under: the options' generation and the engine's (ruleset, databases)."""
        return self.generation, self.engine.generation if self.engine is not None else -1

    def may_place_later(self, facts: Facts) -> bool:
        """Whether a locator may place this server for a later flow (Engine.may_place_later)."""
        return self.engine is None or self.engine.may_place_later(facts)

    # ------------------------------------------------------------------ settings hooks read

    @property
    def monitor(self) -> bool:
        """geoblock_monitor: record every verdict, enforce none."""
        return self.settings is not None and self.settings.monitor

    @property
    def intercept(self) -> bool:
        """geoblock_intercept: decrypt allowed TLS; answer a blocked tunnel with the page over TLS."""
        return self.settings is not None and self.settings.intercept

    @property
    def blocked_by(self) -> str:
        """The URI of the 451 answers' Link: rel="blocked-by" header (RFC 7725)."""
        return self.settings.blocked_by if self.settings else DEFAULT_BLOCKED_BY

    def notice(self, verdict: Verdict) -> str | None:
        """The basis of a block, for its page: the deciding rule's `notice`, else `geoblock_notice`;
        None when neither says one."""
        engine = self.engine
        notice = None
        if engine is not None and verdict.rule:
            ruleset, notices = self._notices
            if ruleset is not engine.ruleset:  # a reload: index the new ruleset's notices once
                notices = {rule.id: rule.spec.notice for rule in engine.ruleset.rules}
                self._notices = (engine.ruleset, notices)
            notice = notices.get(verdict.rule)
        return notice or (self.settings.notice if self.settings is not None else "") or None

    def block_page(self, verdict: Verdict, host: str, request: http.Request) -> http.Response:
        """The 451 page for a request `verdict` blocks (enforce.block_page): in the language of the
        request's Accept-Language, naming `host`, with the operator, contact and notice in force, dated
        now."""
        settings = self.settings
        return enforce.block_page(verdict, host, self.page, self.blocked_by, now(),
                                  accept_language=request.headers.get("accept-language"),
                                  operator=settings.operator if settings else "",
                                  contact=settings.contact if settings else "", notice=self.notice(verdict))

    def enforcing(self, verdict: Verdict) -> bool:
        """Whether this verdict is enforced: a block, outside monitor mode."""
        return verdict.action == "block" and not self.monitor

    def enforce(self, verdict: Verdict, refusal: Refusal, obj: Any) -> None:
        """Apply `refusal` to the hook's object `obj` when the verdict is enforced."""
        if self.enforcing(verdict):
            refusal(obj, verdict)

    # ------------------------------------------------------------------ recording

    def record(self, facts: Facts, verdict: Verdict, extra: RecordExtra | None = None,
               again: bytes | None = None) -> bytes | None:
        """Count, log and write one decision. `again`: the line of an identical earlier record after its
        timestamp, to write without building it anew. Returns that part of the line written, if any."""
        self.counts[verdict.action] += 1
        key = (facts.stage, verdict.action, verdict.rule or "")
        decisions = self.decisions
        decisions[key] = decisions.get(key, 0) + 1
        if verdict.unknown is not None:
            self._count(self.unknowns, (facts.stage, verdict.unknown))
        if extra is not None and "error" in extra:
            self._count(self.on_errors, (facts.stage, extra["error"].split(" at ", 1)[0]))
        enforced = not self.monitor
        if verdict.action != "allow":
            logger.info(f"geoblock: {verdict.action}{'' if enforced else ' (monitor)'} {facts.stage} "
                        f"{verdict.name or facts.server_ip}: {verdict.reason}")
        log = self.log
        if log is None:
            return None
        if again is not None and log.write_again(again):
            return again
        if self.engine is not None:
            return log.write(self.engine.record_of(facts, verdict, enforced, extra))
        return log.write(make_record(facts, verdict, enforced, None, None, None, extra))

    @staticmethod
    def _count(counter: dict[tuple[str, str], int], key: tuple[str, str]) -> None:
        counter[key] = counter.get(key, 0) + 1

    # ------------------------------------------------------------------ failing closed

    def policy_on_error(self) -> str:
        """The policy's on_error action ("block" while no ruleset is loaded)."""
        return self.engine.ruleset.policy.on_error if self.engine is not None else "block"

    def on_error_verdict(self, why: str) -> Verdict:
        """The policy's on_error verdict, with `why` (Engine.on_error; block while no ruleset is loaded)."""
        if self.engine is not None:
            return self.engine.on_error(why)
        return Verdict(action="block", rule=None, reason=f"{why}; on_error is block", offshore=None, name=None)

    def invalid(self, facts: Facts, exc: InvalidHost, field_name: str) -> Verdict:
        """A name that cannot be normalised: judged by on_error, recorded with the offending value named.
        The caller enforces the verdict returned."""
        self._count(self.invalids, (facts.stage, field_name))
        verdict = self.on_error_verdict(f"{field_name} {exc}")
        self.record(facts, verdict, {"error": "invalid-input"})
        return verdict

    def on_error(self, stage: Stage, obj: Any, exc: Exception, refusal: Refusal) -> None:
        """The guard's verdict for a hook that raised: on_error, logged once per cause, recorded, and
        enforced by `refusal` on the hook's object."""
        action = self.policy_on_error()
        frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        where = f" at {os.path.basename(frame.filename)}:{frame.lineno}" if frame else ""
        cause = f"{type(exc).__name__}{where}"
        seen = self.errors_seen.get(cause, 0)
        self.errors_seen[cause] = seen + 1
        self.counts["error"] += 1
        if seen == 0:
            logger.error(
                f"geoblock: error in the {stage} stage, on_error={action} applies to this flow and to every "
                f"later one with the same cause ({cause}): {exc}",
                exc_info=(type(exc), exc, exc.__traceback__) if not isinstance(exc, CannotJudge) else None,
            )
        verdict = self.on_error_verdict(f"geoblock could not judge this flow ({exc})")
        try:
            facts = client_facts(stage, client_of(obj), server_port_of(obj))
            self.record(facts, verdict, {"error": cause})
        except Exception:  # noqa: BLE001 - recording must not stop enforcement
            pass
        self.enforce(verdict, refusal, obj)


Hook = Callable[..., Coroutine[Any, Any, None]]
SyncHook = Callable[..., None]


def guarded_sync(stage: Stage, refusal: str) -> Callable[[SyncHook], SyncHook]:
    """`guarded` for a hook that never waits (no coroutine made for it: mitmproxy calls it for every
    response of every flow)."""

    def wrap(method: SyncHook) -> SyncHook:
        @functools.wraps(method)
        def hook(self: Any, obj: Any, *args: Any) -> None:
            try:
                method(self, obj, *args)
            except Exception as exc:  # noqa: BLE001 - this is the guard
                self.judging.on_error(stage, obj, exc, getattr(self, refusal))

        return hook

    return wrap


def guarded(stage: Stage, refusal: str) -> Callable[[Hook], Hook]:
    """Run a hook; on any exception, apply on_error for `stage` (fail closed by default), enforced on the
    hook's object by the hook object's method named `refusal` (the hook object has a `judging`)."""

    def wrap(method: Hook) -> Hook:
        @functools.wraps(method)
        async def hook(self: Any, obj: Any, *args: Any) -> None:
            try:
                await method(self, obj, *args)
            except Exception as exc:  # noqa: BLE001 - this is the guard
                self.judging.on_error(stage, obj, exc, getattr(self, refusal))

        return hook

    return wrap
