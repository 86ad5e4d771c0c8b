"""`geoblock`: a command line over the decision core, for operators.

    geoblock check [RULES] [--strict]            validate and compile rules; print a summary and lint
                                                 warnings (docs/lint.md)
    geoblock explain NAME|IP [--server IP] ...   the verdict a flow would get, and why
    geoblock status [--url URL] [--json]         what a running gateway says at its /status endpoint
    geoblock report LOG... [-o report.html]      what the decision logs say happened (tools/report.py)
    geoblock lists import|update|compile ...     import lists; keep feeds current; compile lists into
                                                 the artifact cache (tools/lists.py)
    geoblock discover LOG... [--list-out F]      platforms the logs point at, not listed yet (tools/discover.py)
    geoblock probe NAMES [--proxy H:P] ...        try to reach listed services from the client side; JSON lines
                                                 evidence; exit 1 on a leak (probe/cli.py)
    geoblock probe-verify FILE.jsonl             check a probe's evidence against its SHA-256 sidecar; exit 1
                                                 on a mismatch (probe/evidence.py)

Exit codes: 0 ok, 1 rules refused (check --strict: or any warning, docs/lint.md; status: the gateway is
unhealthy), 2 usage or input error (status: nothing answers at the URL). `explain` says its verdict in
its exit code (`EXPLAIN_EXIT`):

    0  allow        3  log          4  block
    1  rules refused                2  usage or input error (a malformed name or address)

`check --json` on rules that do not load prints {"ok": false, "error": ..., "file": ..., "line": ...}
(line null when the problem is the whole file) and exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.request
from pathlib import Path
from typing import cast

from geoblock.core.decide import Facts, server_text
from geoblock.core.lint import DEFAULT_MAX_LIFTED, DEFAULT_MAX_SHARE, lint
from geoblock.core.model import Action
from geoblock.core.names import InvalidHost, as_written, normalize_host, normalize_ip
from geoblock.core.rules import RuleError
from geoblock.core.ruleset import Ruleset
from geoblock.engine import Engine
from geoblock.enrich.geo import Geo
from geoblock.paths import DEFAULT_ASN_DB, DEFAULT_COUNTRY_DB, DEFAULT_RULES, DEFAULT_RULES_ORIGIN
from geoblock.probe import cli as probe_cli
from geoblock.probe import evidence as probe_evidence
from geoblock.tools import discover, lists, report

DEFAULT_METRICS = "127.0.0.1:9464"  # the default of the proxy's geoblock_metrics option


EXPLAIN_EXIT: dict[Action, int] = {"allow": 0, "log": 3, "block": 4}
"""`geoblock explain`'s exit code for each verdict (1 and 2 are taken: rules refused, input error)."""


def _load(rules: str, as_json: bool = False) -> Ruleset:
    """The compiled rules; when they do not load, the error (on stderr, or with `as_json` as a JSON
    object on stdout: {"ok": false, "error", "file", "line"}) and SystemExit(1)."""
    try:
        return Ruleset.load(rules)
    except RuleError as exc:
        if as_json:
            print(json.dumps({"ok": False, "error": exc.message, "file": exc.path, "line": exc.line}))
        else:
            print(f"geoblock: rules refused: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


def cmd_check(args: argparse.Namespace) -> int:
    if args.max_lifted < 0 or not 0 <= args.max_share <= 100:
        print("geoblock: --max-lifted must be 0 or more and --max-share a percentage (0 to 100)", file=sys.stderr)
        return 2
    rs = _load(args.rules, args.json)
    summary = rs.summary()
    texts = {}
    for path in rs.source.files:  # for lint's emptied-file check: the files load_rules just read
        try:
            texts[path] = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeError):
            continue
    warnings = lint(rs.source, max_lifted=args.max_lifted, max_share=args.max_share / 100, texts=texts,
                    ruleset=rs)
    if args.json:
        summary["warnings"] = [w.as_dict() for w in warnings]
        summary["load_warnings"] = list(rs.source.warnings)
        print(json.dumps({"ok": True, **summary}))
    else:
        by_action = cast("dict[str, int]", summary["by_action"])
        by = ", ".join(f"{n} {a}" for a, n in by_action.items())
        print(f"ok: ruleset {rs.version}: {summary['rules']} rules ({by}), {summary['domains']} domains, "
              f"{len(rs.source.files)} files")
        for listed in rs.source.lists:
            print(f"list {listed.describe()}")
        for warning in rs.source.warnings:
            print(f"warning: {warning}")
        for found in warnings:
            print(f"warning: {found}")
    return 1 if args.strict and (warnings or rs.source.warnings) else 0


def cmd_explain(args: argparse.Namespace) -> int:
    """The verdict a flow would get, and why; the exit code says it (EXPLAIN_EXIT)."""
    rs = _load(args.rules, args.json)
    engine = Engine(rs, Geo(args.country_db or None, args.asn_db or None), rules_path=args.rules)
    try:
        names: list[str] = []
        server = normalize_ip(args.server) if args.server else None
        for value in args.names:
            host = normalize_host(value)
            if isinstance(host, str):
                names.append(host)
            elif server is None:
                server = host
        client = as_written(normalize_ip(args.client)) if args.client else None
    except InvalidHost as exc:
        print(f"geoblock: {exc}", file=sys.stderr)
        return 2
    facts = Facts(args.stage, names=tuple(dict.fromkeys(names)), client_ip=client, server_ip=server)
    verdict = engine.judge(facts)
    if args.json:
        out: dict[str, object] = {"action": verdict.action, "rule": verdict.rule, "reason": verdict.reason,
               "offshore": verdict.offshore, "country": facts.country, "country_source": facts.country_source,
               "asn": facts.asn, "ruleset": rs.version,
               # the matching domain entry ("file:line", in a list file or YAML) and its platform
               "entry": verdict.entry, "platform": verdict.platform}
        # the fields a decision record adds for the server (record.make_record), when present
        record = engine.record_of(facts, verdict, True)
        out.update({k: record[k] for k in ("server_ip", "server_ipv6", "server_ipv6_form", "geoip_code", "anycast",
                                           "rir_build", "list", "list_version") if k in record})
        print(json.dumps(out))
    else:
        print(f"{verdict.action}: {verdict.reason}")
        if server is not None:
            print(f"server {server_text(server)}: {_place(facts)}")
            said = engine.geo.country_network(facts.server_ip or server) if engine.geo else None
            if said is not None:  # the country database's own answer (geoip2's model), placed or not
                print(f"country database: {said}")
        if verdict.rule:
            spec = next((r.spec for r in rs.rules if r.id == verdict.rule), None)
            if spec is not None:  # else a policy key decided ("policy:ech", ...)
                print(f"rule {spec.id} is defined at {spec.source}")
        entry, platform = verdict.entry, verdict.platform
        if entry:  # the domain entry that matched, in a list file or the YAML
            print(f"matching entry at {entry}")
        if platform:
            print(f"platform: {platform}")
        for problem in engine.geo.problems if engine.geo else ():
            print(f"note: {problem}")
    engine.close()
    return EXPLAIN_EXIT[verdict.action]


def cmd_status(args: argparse.Namespace) -> int:
    """Read /status from a running gateway (its geoblock_metrics endpoint) and print it for a person (or
    as it came, with --json). Exit 2 when nothing answers there; 1 when the gateway says it is unhealthy."""
    url = args.url.rstrip("/") + "/status"
    try:
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via $http_proxy
        with direct.open(url, timeout=args.timeout) as answer:
            body = answer.read()
        status = json.loads(body)
    except (OSError, ValueError) as exc:  # URLError, refused, timed out; not JSON
        why = getattr(exc, "reason", None) or exc
        print(f"geoblock: no geoblock status at {url}: {why}. Is the gateway running, and is geoblock_metrics "
              f"set to this address (default {DEFAULT_METRICS})?", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(status, indent=1))
    else:
        health = "healthy" if status.get("healthy") else f"UNHEALTHY: {status.get('health')}"
        print(f"geoblock at {args.url}: {health}")
        for line in status.get("summary", []):
            print(line)
    return 0 if status.get("healthy") else 1


def _place(facts: Facts) -> str:
    """Where the server is, as the decision record says it (country and its source, ASN, anycast)."""
    if facts.country is not None:
        where = f"{facts.country} ({facts.country_source})"
    elif facts.geoip_code is not None:
        where = f"no known country (the GeoIP database says {facts.geoip_code}, which is not a country)"
    else:
        where = "no known country"
    if facts.asn is not None:
        where += f", AS{facts.asn}"
    if facts.anycast:
        where += ", anycast"
    return where


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="geoblock",
                                     description="geoblock rules: check and explain; a running gateway's "
                                                 "status; decision logs: report")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="validate and compile rules")
    check.add_argument("rules", nargs="?", help=f"a rules file or directory (default: {DEFAULT_RULES})")
    check.add_argument("--json", action="store_true")
    check.add_argument("--strict", action="store_true", help="exit 1 when there is any warning (docs/lint.md)")
    check.add_argument("--max-lifted", type=int, default=DEFAULT_MAX_LIFTED, metavar="N",
                       help="warn about an allow rule lifting more than N block entries "
                            f"(default {DEFAULT_MAX_LIFTED})")
    check.add_argument("--max-share", type=float, default=DEFAULT_MAX_SHARE * 100, metavar="PERCENT",
                       help="warn about a pattern matching more than PERCENT of the sample of ordinary names "
                            f"(default {DEFAULT_MAX_SHARE * 100:g})")
    check.set_defaults(func=cmd_check)
    explain = sub.add_parser("explain", help="the verdict a flow would get, and why")
    explain.add_argument("names", nargs="+", help="names (SNI, Host, CONNECT target) or an IP literal")
    explain.add_argument("--server", help="the server's IP address")
    explain.add_argument("--client", help="the client's IP address")
    explain.add_argument("--stage", default="tls", choices=["connect", "tls", "http", "dns", "ip", "stream"])
    explain.add_argument("--rules", help=f"a rules file or directory (default: {DEFAULT_RULES})")
    explain.add_argument("--country-db", default=str(DEFAULT_COUNTRY_DB))
    explain.add_argument("--asn-db", default=str(DEFAULT_ASN_DB))
    explain.add_argument("--json", action="store_true")
    explain.set_defaults(func=cmd_explain)
    status = sub.add_parser("status", help="what a running gateway says at its status endpoint")
    status.add_argument("--url", default=f"http://{DEFAULT_METRICS}",
                        help=f"the gateway's geoblock_metrics endpoint (default: http://{DEFAULT_METRICS})")
    status.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for an answer")
    status.add_argument("--json", action="store_true", help="print the /status JSON as it came")
    status.set_defaults(func=cmd_status, rules="")
    report.add_parser(sub)
    lists.add_parser(sub)
    discover.add_parser(sub)
    probe_cli.add_parser(sub)
    probe_evidence.add_parser(sub)
    args = parser.parse_args(argv)
    # say which rules a bare command judges with (geoblock.paths: checkout, /etc, shipped)
    if getattr(args, "rules", "") is None:
        args.rules = DEFAULT_RULES
        print(f"geoblock: using {DEFAULT_RULES} ({DEFAULT_RULES_ORIGIN})", file=sys.stderr)
    try:
        return int(args.func(args))
    except BrokenPipeError:  # `geoblock check | head -1`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
