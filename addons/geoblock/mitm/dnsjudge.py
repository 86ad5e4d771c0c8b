"""DNS where geoblock serves it: each question judged before anything answers it, each answer judged on
every name it leads to and cleaned of ECH before the client gets it (mitm/dnsanswers.py reads them).
"""

from __future__ import annotations

import logging
import struct
from typing import Any

from geoblock.core.model import Verdict
from geoblock.mitm import dnsanswers, dnsforward
from geoblock.mitm.judging import Judging, guarded
from geoblock.mitm.observe import InvalidField, client_facts
from geoblock.record import RecordExtra

logger = logging.getLogger("geoblock")


class DnsJudge:
    """The `dns_request` and `dns_response` hooks, over the adapter's shared `Judging`."""

    def __init__(self, judging: Judging) -> None:
        self.judging = judging
        self._dns_problem: str | None = None  # the last upstream DNS failure logged

    @guarded("dns", "refuse")
    async def dns_request(self, flow: Any) -> None:
        """Judge a DNS question before anything answers it: a blocked name gets the blocked answer and never
        goes upstream; Firefox's DNS-over-HTTPS canary gets NXDOMAIN under `doh_canary: nxdomain`.
        mitmproxy's resolver only resolves questions still without an answer
        (dns_resolver.DnsResolver._should_resolve, 11.0.2 and 12.3.1); on 11.0.2 it would run first, so
        geoblock moves it behind itself (dnsanswers.resolver_after)."""
        request = flow.request
        facts = client_facts("dns", flow.client_conn)
        try:
            names = dnsanswers.question_names(request)
        except InvalidField as exc:
            facts.host = exc.cause.value  # type: ignore[assignment]
            return self.judging.enforce(self.judging.invalid(facts, exc.cause, exc.field), self.refuse, flow)
        if not names:
            return  # reverse lookups of addresses and the like: nothing to judge by name
        facts.host = request.questions[-1].name
        facts.names = tuple(names)
        qtype = RecordExtra(qtype=dnsanswers.qtypes(request))
        engine = self.judging.engine
        canary_off = engine is not None and engine.ruleset.policy.doh_canary == "nxdomain"
        if dnsanswers.DOH_CANARY in names and canary_off:
            verdict = Verdict(action="block", rule="policy:doh-canary", offshore=None, name=dnsanswers.DOH_CANARY,
                              reason=f"{dnsanswers.DOH_CANARY} is Firefox's canary: NXDOMAIN keeps its DNS over "
                                     f"HTTPS off, so it uses this DNS (blocked names, ECH removed); the policy for "
                                     f"doh_canary is nxdomain")
            self.judging.record(facts, verdict, qtype)
            return self.judging.enforce(verdict, lambda f, v: dnsanswers.nxdomain(f), flow)
        verdict = self.judging.judge(facts)
        self.judging.record(facts, verdict, qtype)
        if self.judging.enforcing(verdict):
            self.refuse(flow, verdict)
        else:
            await self._ask_upstream(flow)

    async def _ask_upstream(self, flow: Any) -> None:
        """Ask the name server the question mitmproxy's resolver would answer by itself (A and AAAA in DNS
        mode): the resolver keeps only the addresses of the final name and drops the CNAME chain, which
        dns_response must judge. The client's message is sent as it came (dnsforward.ask) to mitmproxy's
        name servers (`dns_name_servers`, else the system's), and the whole answer is set as the flow's
        response, so the resolver leaves it alone and dns_response judges what the client will get.
        No name server answering gives SERVFAIL, as mitmproxy's resolver does. Without known name servers
        mitmproxy answers from the hosts file (getaddrinfo), which shows no chain."""
        if flow.response is not None or flow.error is not None or not dnsanswers.resolver_would_answer(flow):
            return
        servers = dnsanswers.name_servers()
        if not servers:
            return
        request = flow.request
        timeout = self.judging.settings.dns_timeout if self.judging.settings else 2.0
        try:
            wire = await dnsforward.ask(request.packed, servers, timeout)
            flow.response = type(request).unpack(wire)
        except (dnsforward.NoAnswer, struct.error, ValueError) as exc:
            problem = f"geoblock: DNS question {request.question.name if request.question else ''} not answered: {exc}"
            if problem != self._dns_problem:
                self._dns_problem = problem
                logger.warning(problem)
            dnsanswers.servfail(flow)

    @guarded("dns", "refuse")
    async def dns_response(self, flow: Any) -> None:
        """Judge and clean a DNS answer before the client gets it.

        Every name the answer leads to is judged, not only the question (dnsanswers.answer_chain): a
        question for an allowed alias whose CNAME chain ends at a blocked name gets the blocked answer,
        recorded with the chain. Encrypted Client Hello configurations are then removed from HTTPS and
        SVCB records in every section, so clients send a readable SNI (mitmproxy's own strip_ech, which
        geoblock turns off, covers HTTPS answers only, and would remove them before geoblock reads
        them); their public names are kept as names that front ECH (observe.ech_of)."""
        response = flow.response
        if response is None:
            return
        facts = client_facts("dns", flow.client_conn)
        asked = dnsanswers.asked_names(flow.request)
        facts.host = asked[0] if asked else None
        try:
            chain = dnsanswers.answer_chain(response, asked)
        except InvalidField as exc:
            return self.judging.enforce(self.judging.invalid(facts, exc.cause, exc.field), self.refuse, flow)
        if any(name not in asked for name in chain):  # beyond the question, which dns_request judged
            facts.names = tuple(dict.fromkeys([*asked, *chain]))
            verdict = self.judging.judge(facts)
            extra = RecordExtra(qtype=dnsanswers.qtypes(flow.request), chain=list(facts.names))
            self.judging.record(facts, verdict, extra)
            if self.judging.enforcing(verdict):
                return self.refuse(flow, verdict)
        dnsanswers.strip_ech(response, self.judging.ech_names)

    def refuse(self, flow: Any, verdict: Verdict) -> None:
        """A DNS question: the blocked answer (NXDOMAIN, or the sinkhole address)."""
        dnsanswers.refuse(flow, self.judging.settings.sinkhole if self.judging.settings else None)
