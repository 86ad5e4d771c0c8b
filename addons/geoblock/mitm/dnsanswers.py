"""DNS where geoblock serves it: the names a question or an answer shows, ECH removed from answers, the
blocked answer, and the upstream exchange geoblock makes itself.

Pure functions over mitmproxy's DNS objects, plus `EchPublicNames` (the public names ECH configurations
in answers named) and the two functions that touch mitmproxy's resolver addon. The hooks that judge
are in `geoblock.mitm.addon` (dns_request, dns_response).
"""

from __future__ import annotations

import base64
import logging
from collections import OrderedDict
from typing import Any

from mitmproxy import ctx, dns
from mitmproxy.net.dns import https_records, response_codes
from mitmproxy.net.dns import types as dns_types
from mitmproxy.proxy import mode_specs

from geoblock.core.names import InvalidHost, IPAddress, normalize_host
from geoblock.mitm.observe import InvalidField, ech_config_public_names

logger = logging.getLogger("geoblock")

ECH_NAMES_LIMIT = 4096  # ECH public names learnt from DNS answers, the least recently seen dropped first
DOH_CANARY = "use-application-dns.net"  # Firefox: NXDOMAIN (or no address) here keeps DNS over HTTPS off
# record types whose names lead a client to an address: their owner names and targets are judged
LEADING_TYPES = frozenset({dns_types.A, dns_types.AAAA, dns_types.CNAME, dns_types.DNAME, dns_types.HTTPS,
                           dns_types.SVCB})


def question_names(request: Any) -> list[str]:
    """The host names a DNS request asks about, normalised, in order, without repeats (addresses and
    reverse-lookup names that are no host name are left out). Raises InvalidField ("DNS question") for
    a question name that cannot be normalised."""
    names: list[str] = []
    for question in request.questions:
        try:
            host = normalize_host(question.name)
        except InvalidHost as exc:
            raise InvalidField("DNS question", exc) from None
        if isinstance(host, str) and host not in names:
            names.append(host)
    return names


def qtypes(request: Any) -> list[str]:
    """The record types a DNS request asks for, as text ("A", "HTTPS", ...)."""
    return [dns_types.to_str(q.type) for q in request.questions]


def asked_names(request: Any) -> list[str]:
    """The host names a DNS request's questions ask about, normalised, in order; a question name that does
    not normalise is left out (dns_request judged it)."""
    asked: list[str] = []
    for question in request.questions:
        try:
            host = normalize_host(question.name)
        except InvalidHost:
            continue
        if isinstance(host, str):
            asked.append(host)
    return asked


def answer_chain(response: Any, asked: list[str]) -> list[str]:
    """Every name a DNS answer leads to, in order, for a question that `asked` these names: the owner
    names and targets of the leading records (LEADING_TYPES) of the answer section and, of the additional
    section, those whose owner the answer leads to (an HTTPS target's addresses; a name server's glue is
    not where the client goes). A record whose service binding data cannot be parsed is skipped here
    (strip_ech drops it). Raises InvalidField for an owner name or target that cannot be normalised."""
    chain: list[str] = []
    todo = [rr for rr in response.answers if rr.type in LEADING_TYPES]
    pending = [rr for rr in response.additionals if rr.type in LEADING_TYPES]
    while todo:
        for rr in todo:
            try:
                target = target_of(rr)
            except Exception:  # noqa: BLE001 - malformed service binding data: the record is dropped later
                continue
            for shown, text in (("DNS answer owner name", rr.name), ("DNS answer target", target)):
                if not text or text == ".":
                    continue
                try:
                    host = normalize_host(text)
                except InvalidHost as exc:
                    raise InvalidField(shown, exc) from None
                if isinstance(host, str) and host not in chain:
                    chain.append(host)
        reached = set(chain) | set(asked)
        todo = [rr for rr in pending if owner_of(rr) in reached]
        pending = [rr for rr in pending if rr not in todo]
    return chain


class EchPublicNames:
    """The public names of ECH configurations seen in DNS answers geoblock served: a ClientHello with ECH
    and one of these as its SNI hides its real name (observe.ech_of). At most ECH_NAMES_LIMIT, the least
    recently seen dropped first."""

    def __init__(self, limit: int = ECH_NAMES_LIMIT) -> None:
        self.limit = limit
        self._names: OrderedDict[str, None] = OrderedDict()

    def learn(self, name: str) -> None:
        self._names[name] = None
        self._names.move_to_end(name)
        if len(self._names) > self.limit:
            self._names.popitem(last=False)

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def __len__(self) -> int:
        return len(self._names)


def strip_ech(response: Any, learnt: EchPublicNames) -> None:
    """Remove the ECH configuration from every HTTPS and SVCB record of every section, learning their
    public names; a record whose service binding data cannot be parsed is dropped rather than passed on
    with its ECH."""
    for section in ("answers", "authorities", "additionals"):
        records = getattr(response, section)
        kept = [rr for rr in records if _without_ech(rr, learnt)]
        if len(kept) != len(records):
            setattr(response, section, kept)


def _without_ech(rr: Any, learnt: EchPublicNames) -> bool:
    if rr.type not in (dns_types.HTTPS, dns_types.SVCB):
        return True
    try:
        ech = rr.https_ech
        if ech is None:
            return True
        rr.https_ech = None
    except Exception:  # noqa: BLE001 - malformed service binding data
        return False
    try:
        public_names = ech_config_public_names(base64.b64decode(ech))
    except ValueError:  # binascii.Error too: the record is passed on without it, nothing to learn
        return True
    for text in public_names:
        try:
            name = normalize_host(text)
        except InvalidHost:
            continue
        if isinstance(name, str):
            learnt.learn(name)
    return True


def refuse(flow: Any, sinkhole: IPAddress | None) -> None:
    """Answer a blocked question: the sinkhole address for A/AAAA when set, else NXDOMAIN. Set even when
    mitmproxy's resolver already answered (11.x resolves before script hooks)."""
    request = flow.request
    if sinkhole is not None and request.questions:
        q = request.questions[0]
        if q.type == dns_types.A and sinkhole.version == 4:
            flow.response = request.succeed([dns.ResourceRecord.A(q.name, sinkhole, ttl=60)])
            return
        if q.type == dns_types.AAAA and sinkhole.version == 6:
            flow.response = request.succeed([dns.ResourceRecord.AAAA(q.name, sinkhole, ttl=60)])
            return
    flow.response = request.fail(response_codes.NXDOMAIN)


def nxdomain(flow: Any) -> None:
    """Answer the flow's question with NXDOMAIN."""
    flow.response = flow.request.fail(response_codes.NXDOMAIN)


def servfail(flow: Any) -> None:
    """Answer the flow's question with SERVFAIL (no name server answered)."""
    flow.response = flow.request.fail(response_codes.SERVFAIL)


def owner_of(rr: Any) -> str | None:
    """A DNS record's owner name, normalised, or None when it is not a valid host name."""
    try:
        host = normalize_host(rr.name)
    except InvalidHost:
        return None
    return host if isinstance(host, str) else None


def target_of(rr: Any) -> str | None:
    """The name a DNS record points to: a CNAME's or DNAME's target, an HTTPS or SVCB record's
    TargetName (RFC 9460 section 2.5; "." means the owner name itself), else None."""
    if rr.type in (dns_types.CNAME, dns_types.DNAME):
        return rr.domain_name
    if rr.type in (dns_types.HTTPS, dns_types.SVCB):
        return https_records.unpack(rr.data).target_name
    return None


def resolver_would_answer(flow: Any) -> bool:
    """Whether mitmproxy's DNS resolver would answer this flow by itself, keeping only addresses: the
    conditions of DnsResolver.dns_request and _should_resolve (mitmproxy 11.0.2 and 12.3.1)."""
    request = flow.request
    question = request.question
    mode = flow.client_conn.proxy_mode
    return bool(
        (isinstance(mode, mode_specs.DnsMode)
         or isinstance(mode, mode_specs.WireGuardMode) and flow.server_conn.address == ("10.0.0.53", 53))
        and flow.live and request.query and request.op_code == dns.op_codes.QUERY and question is not None
        and question.class_ == dns.classes.IN and question.type in (dns_types.A, dns_types.AAAA)
    )


def name_servers() -> list[str]:
    """The name servers mitmproxy's resolver uses (`dns_name_servers`, else the system's), or []."""
    try:
        resolver = ctx.master.addons.get("dnsresolver")
        return list(resolver.name_servers()) if resolver is not None else []
    except (AttributeError, RuntimeError):
        return []


def resolver_after(me: Any) -> None:
    """Put mitmproxy's DNS resolver addon behind `me` (geoblock) in the addon chain.

    The resolver answers a DNS question in its dns_request hook unless a response is already set
    (DnsResolver._should_resolve). mitmproxy 11.0.2 lists it before the script loader
    (mitmproxy/addons/__init__.py), so it resolved a question upstream before geoblock could judge it;
    12.x lists it after. This gives 11.0.2 the order of 12.x: the new chain is assigned whole, so an event
    being dispatched over the old list finishes undisturbed. A no-op where the order is already right."""
    try:
        from mitmproxy.addonmanager import traverse
        from mitmproxy.addons.dns_resolver import DnsResolver

        manager = ctx.master.addons
        chain = list(manager.chain)
    except (AttributeError, ImportError):
        return
    resolvers = [i for i, a in enumerate(chain) if isinstance(a, DnsResolver)]
    mine = [i for i, a in enumerate(chain) if any(x is me for x in traverse([a]))]
    if not resolvers or not mine or resolvers[0] > mine[0]:
        return
    resolver = chain.pop(resolvers[0])
    chain.insert(mine[0], resolver)  # the entry holding geoblock moved up by one: insert behind it
    manager.chain = chain
