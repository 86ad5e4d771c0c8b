"""`geoblock probe`: try to reach listed services from the client side and record what happened.

    geoblock probe NAMES [--allowed FILE|NAME ...] [--proxy HOST:PORT] [--control direct|HOST:PORT|FILE.jsonl]
                   [--techniques a,b,...] [--sample N] [--seed S] [--concurrency 4] [--rate 10] [--timeout 5]
                   [--resolve NAME=IP ...] [--resolver IP] [--sinkhole IP ...] [--ca FILE] [--nat64-prefix PFX]
                   [--doh URL ...] [--dot IP ...] [--status URL] [--tls-port 443] [--http-port 80]
                   [-o OUT.jsonl] [--html OUT.html]

Exit status: 0 no leak, 1 at least one leak (a listed name reached), 2 a usage or input error (one line on
stderr naming the file:line or value), 3 no try was made (every one failed or was not applicable: a wrong
--proxy, no address for any name), 130 interrupted (Ctrl-C: the lines written so far stay). Progress
and the summary (leaks first) go to stderr.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import sys
from pathlib import Path
from typing import Any

from geoblock.core.names import InvalidHost, normalize_host
from geoblock.probe.evidence import EvidenceError
from geoblock.probe.run import (
    Plan,
    ProbeInputError,
    Summary,
    load_names,
    read_control_file,
    run,
    sample_names,
    write_digest,
)
from geoblock.probe.techniques import DEFAULT_DOH, DEFAULT_DOT, TECHNIQUES, Options, Target, dot_address

DEFAULT_CONCURRENCY = 4  # parallel tries: a handful of connections, as one browser makes
DEFAULT_RATE = 10.0  # tries a second at most, over the whole run
DEFAULT_TIMEOUT = 5.0  # seconds per network step


def parse_hostport(value: str, what: str) -> tuple[str, int]:
    """("host", port) of "host:port" or "[v6]:port"; ProbeInputError naming `what` and the value."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ProbeInputError(f"bad {what} {value!r}: expected HOST:PORT (e.g. 127.0.0.1:8080)")
    return host, int(port)


def _ip(value: str, what: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ProbeInputError(f"bad {what} {value!r}: not an IP address") from None


def _dot(value: str) -> str:
    try:
        dot_address(value)
    except ValueError:
        raise ProbeInputError(f"bad --dot {value!r}: expected IP or IP:PORT") from None
    return value


def _names_of(value: str) -> list[str]:
    """--allowed: a file's names, else one name."""
    if Path(value).exists() or "/" in value:
        return load_names(value)
    try:
        host = normalize_host(value)
    except InvalidHost as exc:
        raise ProbeInputError(f"bad --allowed name {value!r}: {exc}") from None
    if not isinstance(host, str):
        raise ProbeInputError(f"bad --allowed name {value!r}: an address, not a name")
    return [value]


def build_plan(args: argparse.Namespace) -> Plan:
    """The run's Plan from the parsed arguments; ProbeInputError (one line) for bad input."""
    listed = load_names(args.names)
    if not listed:
        raise ProbeInputError(f"{args.names}: no names to try")
    if args.sample is not None and args.sample < 1:
        raise ProbeInputError(f"bad --sample {args.sample}: 1 or more")
    for flag, port in (("--tls-port", args.tls_port), ("--http-port", args.http_port)):
        if not 0 < port < 65536:
            raise ProbeInputError(f"bad {flag} {port}: a port from 1 to 65535")
    total = len(listed)
    listed = sample_names(listed, args.sample, args.seed)
    allowed: list[str] = []
    for value in args.allowed:
        allowed += _names_of(value)
    techniques = [t.strip() for t in args.techniques.split(",") if t.strip()] if args.techniques else list(TECHNIQUES)
    unknown = [t for t in techniques if t not in TECHNIQUES]
    if unknown:
        raise ProbeInputError(f"unknown technique {unknown[0]!r} in --techniques (known: {', '.join(TECHNIQUES)})")
    resolve: dict[str, tuple[str, ...]] = {}
    for item in args.resolve:
        name, sep, ip = item.partition("=")
        if not sep or not name:
            raise ProbeInputError(f"bad --resolve {item!r}: expected NAME=IP")
        resolve[name] = resolve.get(name, ()) + (_ip(ip, "--resolve address"),)
    if args.concurrency < 1 or args.rate <= 0 or args.timeout <= 0:
        raise ProbeInputError("--concurrency must be 1 or more, --rate and --timeout more than 0")
    if args.nat64_prefix:
        try:
            ipaddress.IPv6Network(args.nat64_prefix, strict=False)
        except ValueError:
            raise ProbeInputError(f"bad --nat64-prefix {args.nat64_prefix!r}: not an IPv6 prefix") from None
    for url in args.doh or ():
        if not url.startswith("https://"):
            raise ProbeInputError(f"bad --doh {url!r}: expected an https:// URL")
    opts = Options(
        proxy=parse_hostport(args.proxy, "--proxy") if args.proxy else None, timeout=args.timeout, ca=args.ca,
        resolver=_ip(args.resolver, "--resolver") if args.resolver else None,
        sinkholes=frozenset(_ip(s, "--sinkhole") for s in args.sinkhole), nat64_prefix=args.nat64_prefix,
        doh=tuple(args.doh or DEFAULT_DOH), dot=tuple(_dot(d) for d in args.dot) or DEFAULT_DOT,
        resolve=resolve, tls_port=args.tls_port, http_port=args.http_port)
    if args.ca and not Path(args.ca).is_file():
        raise ProbeInputError(f"{args.ca}: no such CA file (--ca)")
    control, control_file, label = None, None, None
    if args.control == "direct":
        control, label = Options(**{**vars(opts), "proxy": None}), "direct"
    elif args.control and args.control.endswith(".jsonl"):
        control_file, label = read_control_file(args.control), args.control
    elif args.control:
        host, port = parse_hostport(args.control, "--control")
        control, label = Options(**{**vars(opts), "proxy": (host, port)}), f"{host}:{port}"
    targets = [Target(n, resolve.get(n, ()), "blocked") for n in listed]
    both = sorted(set(listed) & set(allowed))
    if both:  # the list decides: a name it holds is expected blocked
        _say(f"geoblock probe: {', '.join(both[:5])}{' ...' if len(both) > 5 else ''} given with --allowed and "
             f"in the list: tried as listed (expected blocked)")
    targets += [Target(n, resolve.get(n, ()), "reached") for n in dict.fromkeys(allowed) if n not in set(listed)]
    return Plan(targets, techniques, opts, names_source=args.names, names_total=total, control=control,
                control_file=control_file, control_label=label, concurrency=args.concurrency, rate=args.rate,
                sample=args.sample, seed=args.seed, status_url=args.status)


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _brief(record: dict[str, Any]) -> str:
    return f"{record['name']} {record['technique']}: {record['outcome']}/{record['how']} ({record['detail']})"


def print_summary(summary: Summary, out: Path, digest_line: str) -> None:
    """The summary on stderr: leaks first, then over-blocking, counts, time, the file and its SHA-256."""
    for record in sorted(summary.leaks, key=lambda r: (r["name"], r["technique"])):
        _say(f"LEAK {_brief(record)}")
    for record in sorted(summary.overblocked, key=lambda r: (r["name"], r["technique"])):
        _say(f"overblocked {_brief(record)}")
    counts = ", ".join(f"{n} {k}" for k, n in sorted(summary.counts.items()))
    _say(f"probe: {summary.tries} tries in {summary.duration_s:.1f} s: {len(summary.leaks)} leaks; {counts}")
    _say(f"probe: evidence {out} sha256 {digest_line}")


def cmd_probe(args: argparse.Namespace) -> int:
    """Run the probe (see the module); the exit status."""
    try:
        plan = build_plan(args)
    except ProbeInputError as exc:
        _say(f"geoblock probe: {exc}")
        return 2
    out = Path(args.output or f"probe-{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%SZ')}.jsonl")
    try:
        handle = out.open("w", encoding="utf-8")
    except OSError as exc:
        _say(f"geoblock probe: {out}: cannot write ({exc.strerror})")
        return 2
    _say(f"probe: {len(plan.targets)} names x {len(plan.techniques)} techniques, "
         f"{'via proxy ' + args.proxy if args.proxy else 'direct (transparent gateway)'}, writing {out}")
    def progress(line: str) -> None:
        _say(f"probe: {line}")

    try:
        with handle:
            summary = run(plan, handle, progress)
    except KeyboardInterrupt:
        _say(f"probe: interrupted: the tries finished so far are in {out} (no end line, no digest)")
        # the tries under way wait on sockets for up to --timeout each: leave now, the file is closed
        os._exit(130)
    side = write_digest(out)
    print_summary(summary, out, side.read_text(encoding="utf-8").split()[0])
    if args.html:
        from geoblock.probe import page  # matplotlib and duckdb (tools/report.py) load only when a page is asked for

        try:
            page.write(out, Path(args.html))
        except (EvidenceError, OSError) as exc:  # the evidence stands; only the page is missing
            _say(f"geoblock probe: no page written: {exc}")
        else:
            _say(f"probe: page {args.html}")
    if summary.leaks:
        return 1
    if not any(summary.counts.get(k) for k in ("enforced", "leak", "inconclusive", "reached", "overblocked")):
        # no try got an answer either way (a wrong --proxy, no address for any name, every service down)
        _say("geoblock probe: no try was made (every one failed or was not applicable): nothing is shown "
             "either way; see the details in the evidence")
        return 3
    return 0


def add_parser(sub: Any) -> None:
    """Add `geoblock probe` to the `geoblock` command's subparsers."""
    p = sub.add_parser("probe", help="try to reach listed services from the client side (evidence of a block)",
                       description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("names", help="a list file (geoblock's list format) or a rules file or directory: names "
                                 "expected blocked")
    p.add_argument("--allowed", action="append", default=[], metavar="FILE|NAME",
                   help="names expected reached (controls for over-blocking); repeatable")
    p.add_argument("--proxy", help="HOST:PORT of an explicit proxy (default: direct, a transparent gateway)")
    p.add_argument("--control", help="direct, HOST:PORT (a proxy) or FILE.jsonl (a control run's lines)")
    p.add_argument("--techniques", help=f"comma-separated, default all: {','.join(TECHNIQUES)}")
    p.add_argument("--sample", type=int, help="try N names drawn from the list")
    p.add_argument("--seed", type=int, help="the sample's random seed")
    p.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY)
    p.add_argument("--rate", type=float, default=DEFAULT_RATE, help="tries a second at most")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per network step")
    p.add_argument("--resolve", action="append", default=[], metavar="NAME=IP", help="an address for a name")
    p.add_argument("--resolver", help="a DNS resolver's IP (default: the system's)")
    p.add_argument("--sinkhole", action="append", default=[], metavar="IP",
                   help="an address a blocking resolver answers with")
    p.add_argument("--ca", help="a PEM file of trusted CAs (default: the system's)")
    p.add_argument("--nat64-prefix", help="the network's NAT64 prefix (e.g. 64:ff9b::/96)")
    p.add_argument("--doh", action="append", metavar="URL",
                   help="a DNS-over-HTTPS URL (repeatable); default: the public resolvers "
                        + ", ".join(DEFAULT_DOH) + " (the doh technique asks them: leave it out with --techniques)")
    p.add_argument("--dot", action="append", default=[], metavar="IP",
                   help="a DNS-over-TLS resolver, IP or IP:PORT (repeatable); default: the public resolvers "
                        + ", ".join(DEFAULT_DOT) + " on port 853")
    p.add_argument("--status", help="the gateway's /status URL, recorded in the run line")
    p.add_argument("--tls-port", type=int, default=443, help="the services' TLS port (default 443)")
    p.add_argument("--http-port", type=int, default=80, help="the services' HTTP port (default 80)")
    p.add_argument("-o", "--output", help="the JSON lines file (default probe-<time>.jsonl)")
    p.add_argument("--html", help="also write the HTML page here")
    p.set_defaults(func=cmd_probe)


__all__ = ["add_parser", "build_plan", "cmd_probe"]
