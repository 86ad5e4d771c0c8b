"""Offline replay and explanation: judge recorded flows (mitmproxy .mitm files) under a ruleset, or ask
"what if" of decision logs.

    python -m geoblock.tools.replay FILE.mitm [--rules DIR] [--country-db X] [--asn-db Y] [--json]
    geoblock-replay FILE.mitm ...
    geoblock-replay LOG.jsonl[.gz]|- --rules NEW [--baseline OLD] [--relocate] [--json]

Decision logs (told from flow files by their content: tools/whatif.py `looks_like_log`; `-` is standard
input) are re-judged under `--rules` and compared with the recorded verdicts (or `--baseline`'s): see
`geoblock.tools.whatif` and docs/whatif.md. Exit codes there: 0 = no verdict changes, 3 = some action
changes, 2 = unusable input (bad rules or databases, an unreadable log, a line that cannot be rebuilt
beyond `--max-bad`).

Each HTTP flow of the file is judged the way the addon's `requestheaders` hook judges it live (stage
"http": the Host header, the request target and the client's SNI are the names) and printed with its
verdict, the rule and the reason; a summary counts the verdicts per action. With `--json`, each flow
is printed as the decision-log record the addon would write (`enforced: false`) and the summary goes
to stderr, so stdout stays one JSON object per line.

The replay is offline: nothing is resolved and nothing is dialled. The server's address is the one
mitmproxy actually dialled when the flow was recorded (`server_conn.peername`), else the request
target when it is an IP literal; otherwise it is unknown and rules that need the server's location
follow `unknown_country`.

Exit codes: 0 = the file was judged (whatever the verdicts), 2 = unusable input (an unreadable or
corrupt flow file, bad rules, an unusable GeoIP database given on the command line).

This module imports `mitmproxy.io` and `mitmproxy.http` only (to read flows); the verdict is the engine's
(`geoblock.engine.Engine.judge`), the same the addon asks for.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from mitmproxy import exceptions as mexceptions
from mitmproxy import http
from mitmproxy import io as mio

from geoblock.core.model import Facts, Verdict
from geoblock.core.names import InvalidHost, IPAddress, normalize_host, normalize_ip, unicode_name
from geoblock.core.rules import RuleError
from geoblock.core.ruleset import SEVERITY, Ruleset
from geoblock.engine import Engine
from geoblock.enrich.geo import Geo
from geoblock.errors import GeoblockError
from geoblock.mitm.observe import InvalidField, client_facts, http_target, uri_authority
from geoblock.paths import DEFAULT_ASN_DB, DEFAULT_COUNTRY_DB, DEFAULT_RULES
from geoblock.tools import whatif


class ReplayError(GeoblockError):
    """A flow file that cannot be read. The message names the file."""

    def __init__(self, path: str, why: str) -> None:
        self.path = path
        self.why = why
        super().__init__(f"{path}: {why}")


class InvalidFlow(GeoblockError, ValueError):
    """A flow with a name that cannot be normalised; the addon judges such a flow by `on_error`."""

    def __init__(self, facts: Facts, field_name: str, cause: InvalidHost) -> None:
        self.facts = facts
        self.field_name = field_name
        self.cause = cause
        super().__init__(f"{field_name} {cause}")


# --------------------------------------------------------------------------------------------
# Facts from a recorded flow



def _dialled_ip(flow: http.HTTPFlow) -> IPAddress | None:
    """The address mitmproxy dialled for this flow, else the request target if it is an IP literal."""
    server = flow.server_conn
    peer = getattr(server, "peername", None) if server is not None else None
    if peer:
        try:
            return normalize_ip(peer[0])
        except (InvalidHost, TypeError, IndexError):
            pass
    if flow.request.host:
        try:
            target = normalize_host(flow.request.host)
        except InvalidHost:
            return None
        if not isinstance(target, str):
            return target
    return None


def facts_from_flow(flow: http.HTTPFlow) -> Facts:
    """Stage "http" facts for a recorded flow, built as the addon's `requestheaders` builds them.

    Names, in order and without repeats: the request target (`request.host`), the Host header (or
    HTTP/2 :authority), the client's SNI; IP literals are not names. `server_ip` is the IP actually dialled
    (see `_dialled_ip`), `client_ip` the client's address. Where the server is, is the engine's to find
(`Engine.judge` places it).
    A CONNECT flow gives stage "connect" facts, as the addon's `http_connect` builds them.

    Raises `InvalidFlow` (carrying the facts gathered so far) for a name that cannot be normalised.
    """
    request = flow.request
    if request.method == "CONNECT":
        facts = client_facts("connect", flow.client_conn, request.port)
        try:
            target = normalize_host(request.host)
        except InvalidHost as exc:
            raise InvalidFlow(facts, "CONNECT target", exc) from None
        if isinstance(target, str):
            facts.names = (target,)
            facts.host = target
        else:
            facts.host = request.host  # the address as the client spelt it, as the addon records it
    else:
        facts = client_facts("http", flow.client_conn, request.port)
        raw_host = request.host_header
        facts.host = raw_host
        facts.sni = flow.client_conn.sni
        try:
            shown = http_target(request.host, raw_host, flow.client_conn.sni, uri_authority(request))
        except InvalidField as exc:
            raise InvalidFlow(facts, exc.field, exc.cause) from None
        facts.names = shown.names
        facts.mismatch = shown.mismatch
    facts.server_ip = _dialled_ip(flow)
    return facts


def judge(flow: http.HTTPFlow, engine: Engine) -> tuple[Facts, Verdict]:
    """Facts and verdict for one flow, by the engine the proxy judges with (`Engine.judge`); an invalid
    name gets the policy's on_error, as in the addon."""
    try:
        facts = facts_from_flow(flow)
    except InvalidFlow as exc:
        return exc.facts, engine.on_error(str(exc))
    return facts, engine.judge(facts)


# --------------------------------------------------------------------------------------------
# Reading and replaying


def read_flows(path: str | os.PathLike[str]) -> Iterator[http.HTTPFlow]:
    """The HTTP flows of a .mitm (or HAR) file, in file order. Other flow types are skipped.

    Raises `ReplayError` naming the file when it cannot be opened or is not a valid flow file (flows
    before the damage have already been yielded).
    """
    name = os.fspath(path)
    try:
        fo = open(name, "rb")
    except OSError as exc:
        raise ReplayError(name, f"cannot open: {exc.strerror or exc}") from None
    with fo:
        reader = mio.FlowReader(fo)
        try:
            for flow in reader.stream():
                if isinstance(flow, http.HTTPFlow):
                    yield flow
        except mexceptions.FlowReadException as exc:
            raise ReplayError(name, f"not a valid mitmproxy flow file ({exc})") from None
        except (OSError, EOFError) as exc:
            raise ReplayError(name, f"cannot read: {exc}") from None
        except (KeyError, AttributeError, TypeError, ValueError, UnicodeError) as exc:
            # Structurally damaged flows that slip past FlowReader's own checks.
            raise ReplayError(name, f"not a valid mitmproxy flow file ({type(exc).__name__}: {exc})") from None


def replay(path: str | os.PathLike[str], engine: Engine) -> Iterator[tuple[http.HTTPFlow, Facts, Verdict]]:
    """(flow, facts, verdict) for every HTTP flow of the file, in order, judged by `engine`. Raises
    `ReplayError`."""
    for flow in read_flows(path):
        facts, verdict = judge(flow, engine)
        yield flow, facts, verdict


# --------------------------------------------------------------------------------------------
# Command line


@dataclass
class _Summary:
    counts: dict[str, int]

    def line(self, path: str) -> str:
        total = sum(self.counts.values())
        parts = " ".join(f"{action}={self.counts[action]}" for action in SEVERITY)
        return f"{path}: {total} flow{'s' if total != 1 else ''}: {parts}"


def format_line(index: int, flow: http.HTTPFlow, facts: Facts, verdict: Verdict) -> str:
    """One human-readable line: index, action, rule, what was asked, where the server is, why."""
    request = flow.request
    subject = unicode_name(verdict.name) if verdict.name else (facts.host or request.host or "?")
    where = "server ?"
    if facts.server_ip is not None:
        where = f"server {facts.server_ip}"
        where += f" {facts.country}" if facts.country else " (no country)"
        if facts.asn is not None:
            where += f" AS{facts.asn}"
    return (
        f"#{index} {verdict.action.upper():5} {verdict.rule or '-'} {request.method} "
        f"{subject} ({where}): {verdict.reason}"
    )


def _count(text: str) -> int:
    """A whole number from 0 up, for argparse (which names the option when it is not one)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is below 0")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="geoblock-replay",
        description="Judge the flows of a recorded mitmproxy file (.mitm) offline with geoblock's rules "
        "and explain each verdict; or re-judge decision logs under other rules and say what would change "
        "(exit 0: nothing, 3: some verdicts change, 2: unusable input).",
    )
    p.add_argument("files", nargs="+", metavar="FILE",
                   help="flow files written by mitmdump -w, or decision logs (JSON lines, plain or .gz; "
                        "'-' for standard input), told apart by their content")
    p.add_argument("--rules", default=DEFAULT_RULES, help="rules file or directory (default: %(default)s)")
    p.add_argument(
        "--country-db",
        default=None,
        help=f"GeoIP2/GeoLite2 Country or City database; '' for none (default: {DEFAULT_COUNTRY_DB} if present)",
    )
    p.add_argument(
        "--asn-db",
        default=None,
        help=f"GeoLite2-ASN database; '' for none (default: {DEFAULT_ASN_DB} if present)",
    )
    p.add_argument("--json", action="store_true",
                   help="flows: one decision record (JSON) per flow; decision logs: one JSON object per changed "
                        "record, then a summary object")
    w = p.add_argument_group("decision logs (what if)")
    w.add_argument("--baseline", metavar="OLD_RULES",
                   help="compare with the verdicts of these rules on the same facts, not with the recorded ones "
                        "(logs written under several rule versions)")
    w.add_argument("--relocate", action="store_true",
                   help="place servers again with the GeoIP databases (--country-db, --asn-db) instead of "
                        "judging the recorded country and ASN")
    w.add_argument("--examples", type=_count, default=5, metavar="N", help="example names per group (default: 5)")
    w.add_argument("--max-bad", type=_count, default=0, metavar="N",
                   help="lines that cannot be rebuilt before the exit status is 2 (default: 0); each is named")
    return p


def _open_geo(country: str | None, asn: str | None) -> Geo:
    """The GeoIP databases: ones named on the command line must work; absent defaults are skipped."""
    explicit = {"country": country, "asn": asn}
    if country is None:
        country = DEFAULT_COUNTRY_DB if os.path.exists(DEFAULT_COUNTRY_DB) else ""
    if asn is None:
        asn = DEFAULT_ASN_DB if os.path.exists(DEFAULT_ASN_DB) else ""
    geo = Geo(country or None, asn or None)
    named = [path for path in explicit.values() if path]
    refused = [p for p in geo.problems if any(p.startswith(f"{path}:") for path in named)]
    if refused:
        geo.close()
        raise ValueError("; ".join(refused))
    return geo


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status (0 judged, 2 unusable input, 1 output pipe closed)."""
    args = _parser().parse_args(argv)
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")  # names may be Unicode; never die printing them
    try:
        return _main(args)
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop quietly, as command-line tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


def _main(args: argparse.Namespace) -> int:
    err = sys.stderr
    try:
        logs = [whatif.is_log_path(path) for path in args.files]
    except whatif.LogError as exc:
        print(f"geoblock-replay: {exc}", file=err)
        return 2
    if any(logs):
        if not all(logs):
            flows = [path for path, is_log in zip(args.files, logs, strict=True) if not is_log]
            print(f"geoblock-replay: decision logs and flow files cannot be mixed in one run; flow files: "
                  f"{', '.join(flows)}", file=err)
            return 2
        return _what_if(args)
    if args.baseline or args.relocate:
        print("geoblock-replay: --baseline and --relocate apply to decision logs only", file=err)
        return 2
    try:
        ruleset = Ruleset.load(args.rules)
    except RuleError as exc:
        print(f"geoblock-replay: rules refused: {exc}", file=err)
        return 2
    try:
        geo = _open_geo(args.country_db, args.asn_db)
    except ValueError as exc:
        print(f"geoblock-replay: GeoIP database refused: {exc}", file=err)
        return 2
    for problem in geo.problems:
        print(f"geoblock-replay: warning: {problem}", file=err)
    for warning in ruleset.source.warnings:
        print(f"geoblock-replay: warning: {warning}", file=err)
    if geo.country_info is None and ruleset.needs_country:
        print("geoblock-replay: warning: no country database: public servers are placed by the registries' "
              "delegation data (where their blocks are registered); rules that need the country of any other "
              f"give unknown_country={ruleset.policy.unknown_country}", file=err)
    engine = Engine(ruleset, geo, rules_path=args.rules)
    out = sys.stdout
    status = 0
    try:
        for path in args.files:
            summary = _Summary({action: 0 for action in SEVERITY})
            try:
                for index, (flow, facts, verdict) in enumerate(replay(path, engine)):
                    summary.counts[verdict.action] += 1
                    if args.json:
                        record = engine.record_of(facts, verdict, False,
                                                  extra={"file": path, "flow": index, "flow_id": flow.id})
                        out.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
                    else:
                        out.write(format_line(index, flow, facts, verdict) + "\n")
            except ReplayError as exc:
                out.flush()
                print(f"geoblock-replay: {exc}", file=err)
                status = 2
                continue
            out.flush()
            print(summary.line(path), file=err if args.json else out)
    finally:
        engine.close()
    return status


def _load(path: str, what: str) -> Ruleset | None:
    try:
        ruleset = Ruleset.load(path)
    except RuleError as exc:
        print(f"geoblock-replay: {what} refused: {exc}", file=sys.stderr)
        return None
    for warning in ruleset.source.warnings:
        print(f"geoblock-replay: warning: {what}: {warning}", file=sys.stderr)
    return ruleset


def _what_if(args: argparse.Namespace) -> int:
    """Decision logs re-judged under --rules (geoblock.tools.whatif): 0 no change, 3 changes, 2 unusable
    input."""
    err, out = sys.stderr, sys.stdout
    ruleset = _load(args.rules, "rules")
    baseline_rules = _load(args.baseline, "baseline rules") if args.baseline else None
    if ruleset is None or (args.baseline and baseline_rules is None):
        return 2
    geo: Geo | None = None
    if args.relocate:
        try:
            geo = _open_geo(args.country_db, args.asn_db)
        except ValueError as exc:
            print(f"geoblock-replay: GeoIP database refused: {exc}", file=err)
            return 2
        if geo.country_info is None and geo.asn_info is None:
            geo.close()
            print("geoblock-replay: --relocate needs a GeoIP database (--country-db, --asn-db)", file=err)
            return 2
        for problem in geo.problems:
            print(f"geoblock-replay: warning: {problem}", file=err)
    # Without --relocate the recorded location is judged: no locator may add a country to a record that
    # had none (the registries' data would); with it, the server is placed as the proxy would place it now.
    engine = Engine(ruleset, geo, rules_path=args.rules, registries=args.relocate)
    # The baseline shares the databases; Engine.close closes them once, with `engine`.
    baseline = (Engine(baseline_rules, geo, rules_path=args.baseline, registries=args.relocate)
                if baseline_rules is not None else None)
    stdin = getattr(sys.stdin, "buffer", None)
    try:
        result = whatif.compare(whatif.read_logs(args.files, stdin), engine, baseline, args.relocate)
    except whatif.LogError as exc:
        print(f"geoblock-replay: {exc}", file=err)
        return 2
    finally:
        if baseline is not None:
            baseline.geo = None  # shared with `engine`, which closes it
            baseline.close()
        engine.close()
    status = 2 if len(result.bad) > args.max_bad else 3 if result.action_changes else 0
    against = (f"baseline ruleset {baseline_rules.version} ({args.baseline})" if baseline_rules
               else "the recorded verdicts")
    where = "servers placed again by GeoIP" if args.relocate else "servers where they were recorded"
    if baseline_rules is None and len(result.versions) > 1:
        versions = ", ".join(f"{v} ({n})" for v, n in result.versions.most_common())
        print(f"geoblock-replay: warning: the records were judged under {len(result.versions)} ruleset versions "
              f"({versions}): changes between those are counted too; --baseline compares two rulesets on the "
              f"same facts", file=err)
    if args.json:
        for change in result.changes:
            out.write(json.dumps(change.as_json(), ensure_ascii=False) + "\n")
        summary = whatif.summary_json(result, args.examples, rules=ruleset.version,
                                      baseline=baseline_rules.version if baseline_rules else None,
                                      relocate=args.relocate, exit=status)
        out.write(json.dumps(summary, ensure_ascii=False) + "\n")
    else:
        out.write(f"what if: ruleset {ruleset.version} ({args.rules}) against {against}; {where}\n")
        for line in whatif.text_report(result, args.examples):
            out.write(line + "\n")
    out.flush()
    return status


if __name__ == "__main__":
    sys.exit(main())
