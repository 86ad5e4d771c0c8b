"""The probe's evidence as one self-contained HTML page: leaks first, then the names x techniques grid.

    page.write("probe.jsonl", "probe.html")     # or: geoblock probe ... -o probe.jsonl --html probe.html

The page (docs/probe.md, "Reading the page") holds, in this order: the run's header (probe version, run
id, start, end and time taken, the path (transparent gateway or proxy), the control path, the gateway's
ruleset version and database builds from its /status, the JSON lines' SHA-256 and how to check it); every
leak as a table; every over-blocked try; the outcomes per technique as a chart; a legend; and the grid,
one row per name and one cell per try, each cell with a colour AND a text label (the finding), the how,
and the rule id of a 451.

Self-contained like `geoblock report`'s page (it reuses tools/report.py's CSS, Content-Security-Policy
and chart helper): inline CSS and SVG, no script, nothing fetched, printable. Every value from the file
is escaped (a name in a list may be hostile); control characters are shown as U+FFFD. 1,000 names x 18
techniques render in about a second (tests/test_probe_page.py builds such a run).
"""

from __future__ import annotations

import html
import os
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from geoblock.probe.evidence import FINDINGS, Evidence, digest_file, read
from geoblock.tools.report import CONTROL_CHARS, CSS, svg_chart

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
"""The page's Content-Security-Policy: the same as `geoblock report`'s (nothing fetched, no script)."""

STYLE = {  # finding -> (background, text colour, the label shown in a cell)
    "leak": ("#c0392b", "#fff", "LEAK"),
    "overblocked": ("#7d3c98", "#fff", "OVERBLOCKED"),
    "inconclusive": ("#f5d76e", "#222", "inconclusive"),
    "enforced": ("#a9d3a9", "#222", "enforced"),
    "reached": ("#a7c7e7", "#222", "reached"),
    "failed": ("#e0e0e0", "#222", "failed"),
    "not-applicable": ("#f7f7f7", "#666", "n/a"),
}
"""How each finding is drawn: never by colour alone, each has its own text label."""

MEANING = {
    "leak": "a name expected blocked was reached through the gateway: the block does not hold for this technique",
    "overblocked": "a name expected reached (--allowed) was blocked: the gateway blocks more than it should",
    "inconclusive": "blocked through the gateway, but the control path did not reach the service either: it "
                    "may be down, so this is not counted as enforcement",
    "enforced": "a name expected blocked was blocked through the gateway (and the control path, if any, "
                "reached it)",
    "reached": "a name expected reached was reached through the gateway, as it should be",
    "failed": "the probe could not make the try (the detail says why): no evidence either way",
    "not-applicable": "the technique does not apply on this path or network (e.g. no NAT64 prefix, UDP through "
                      "a proxy)",
}

_PAGE_CSS = """
body { max-width: 75em; }
h1 .verdict { font-size: .8em; padding: .1em .5em; border-radius: 3px; }
.grid-wrap { overflow-x: auto; }
table.grid { font-size: .78em; }
table.grid td { min-width: 6.5em; line-height: 1.25; }
table.grid th.name, table.grid td.name { font-family: "DejaVu Sans Mono", monospace; min-width: 12em;
  max-width: 22em; overflow-wrap: anywhere; }
table.grid thead th { position: sticky; top: 0; }
.label { font-weight: bold; display: block; }
.how, .rule, .ctl { display: block; }
.ctl { font-size: .9em; opacity: .85; }
td.f-leak { outline: 2px solid #7b241c; }
td.f-inconclusive { border: 2px dashed #b7950b; font-style: italic; }
td.f-overblocked { outline: 2px solid #4a235a; }
code.digest { overflow-wrap: anywhere; }
@media print { .grid-wrap { overflow: visible; } table.grid { font-size: 6.5pt; } table.grid td { min-width: 0; }
               table.grid thead th { position: static; } }
""" + "".join(f"td.f-{k}, span.f-{k} {{ background: {bg}; color: {fg}; }}\n" for k, (bg, fg, _) in STYLE.items())


def _e(value: Any) -> str:
    """A value from the file as HTML text: escaped, control characters shown as U+FFFD, None as "–"."""
    if value is None:
        return "–"
    return html.escape(CONTROL_CHARS.sub("\ufffd", str(value)))


def _header(ev: Evidence, digest: str) -> str:
    run, end = ev.run, ev.end
    status = run.get("gateway_status")
    gateway = "not read (no --status URL given)"
    if isinstance(status, dict):
        rs = status.get("ruleset")
        dbs = status.get("databases")
        rs = rs if isinstance(rs, dict) else None
        dbs = dbs if isinstance(dbs, dict) else {}
        parts = [f"ruleset <code>{_e(rs.get('version'))}</code> ({_e(rs.get('rules'))} rules, "
                 f"{_e(rs.get('domains'))} domains)" if rs else "no ruleset loaded"]
        for key in ("country", "asn"):
            db = dbs.get(key)
            parts.append(f"{key} database {_e(db.get('edition'))} built {_e(db.get('build'))}"
                         if isinstance(db, dict) else f"no {key} database")
        health = "healthy" if status.get("healthy") else f"UNHEALTHY: {_e(status.get('health'))}"
        gateway = f"{health}; " + "; ".join(parts)
    elif run.get("gateway_status_error"):
        gateway = f"not read: {_e(run['gateway_status_error'])}"
    opts = run.get("options") or {}
    via = "an explicit proxy at " + _e(run.get("proxy")) if run.get("via") == "proxy" else "a transparent gateway"
    control = run.get("control")
    name = ev.path.name
    sample = (f", a sample of {_e(run.get('sample'))} (seed {_e(run.get('seed'))})"
              if run.get("sample") is not None else "")
    if end is not None:
        ended = f"{_e(end['ended'])} ({float(end['duration_s']):,.1f} s)"
    else:
        ended = "no end line: the run was stopped before it finished"
    no_control = "none (a block is counted as enforced without checking the service was up)"
    return f"""<dl>
<dt>probe</dt><dd>geoblock {_e(run['probe_version'])}, run <code>{_e(run['run_id'])}</code>,
on {_e(run.get('observer_hostname'))}</dd>
<dt>started</dt><dd>{_e(run['started'])}</dd>
<dt>ended</dt><dd>{ended}</dd>
<dt>path</dt><dd>through {via}</dd>
<dt>control</dt><dd>{_e(control) if control else no_control}</dd>
<dt>gateway</dt><dd>{gateway}</dd>
<dt>names</dt><dd>{_e(run.get('names_total'))} from <code>{_e(run.get('names_source'))}</code>{sample}</dd>
<dt>techniques</dt><dd>{len(run['techniques'])}: {_e(', '.join(map(str, run['techniques'])))}</dd>
<dt>safety</dt><dd>{_e(opts.get('concurrency'))} tries at once, at most {_e(opts.get('rate'))} a second,
{_e(opts.get('timeout_s'))} s per step</dd>
<dt>evidence</dt><dd><code>{_e(name)}</code> SHA-256 <code class="digest" id="digest">{_e(digest)}</code><br>
<span class="muted">check it: <code>sha256sum -c {_e(name)}.sha256</code> in the file's directory, or
<code>geoblock probe-verify {_e(name)}</code></span></dd>
<dt>page made</dt><dd>{datetime.now(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}</dd>
</dl>"""


def _try_table(tries: list[dict[str, Any]], empty: str, label: str) -> str:
    if not tries:
        return f'<p class="muted">{_e(empty)}</p>'
    rows = "".join(
        f'<tr><td class="f-{t["finding"]}"><span class="label">{label}</span></td><td>{_e(t["name"])}</td>'
        f'<td>{_e(t["technique"])}</td><td>{_e(t["outcome"])}: {_e(t["how"])}</td><td>{_e(t.get("address"))}</td>'
        f'<td>{_e(t.get("sent_name"))}</td><td>{_e(t.get("detail"))}</td></tr>\n'
        for t in tries)
    return ("<table><thead><tr><th>finding</th><th>name</th><th>technique</th><th>how</th><th>address</th>"
            f"<th>name sent</th><th>detail</th></tr></thead><tbody>\n{rows}</tbody></table>")


def _chart(ev: Evidence, techniques: list[str]) -> str:
    counts = Counter((t["technique"], t["finding"]) for t in ev.gateway_tries)
    if not counts:
        return ""

    def draw(ax: Any) -> None:
        ys = list(range(len(techniques)))[::-1]
        left = [0] * len(techniques)
        for finding in FINDINGS:
            xs = [counts.get((tech, finding), 0) for tech in techniques]
            if any(xs):
                ax.barh(ys, xs, left=left, color=STYLE[finding][0], label=STYLE[finding][2],
                        edgecolor="#555", linewidth=.4)
                left = [a + b for a, b in zip(left, xs, strict=True)]
        ax.set_yticks(ys, [CONTROL_CHARS.sub("\ufffd", t) for t in techniques])
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # tries are counted, never halved
        ax.set_xlabel("tries through the gateway")
        ax.legend(loc="lower right", frameon=False, ncols=4, fontsize=8, bbox_to_anchor=(1, 1))
        ax.spines[["top", "right"]].set_visible(False)
    return svg_chart(draw, 1.2 + 0.25 * len(techniques))


def _legend() -> str:
    items = "".join(f'<dt><span class="f-{k}" style="padding:0 .4em">{STYLE[k][2]}</span></dt><dd>{_e(MEANING[k])}</dd>'
                    for k in FINDINGS)
    return (f"<dl>{items}</dl><p class=\"muted\">Each cell: the finding (colour and label), then how the try "
            "ended (outcome: how), the rule id of a 451 block page, and what the control path saw. Hover a cell "
            "for the detail; every try's detail is in the JSON lines.</p>")


def _grid(ev: Evidence, techniques: list[str]) -> str:
    cells: dict[tuple[str, str], dict[str, Any]] = {}
    names: dict[str, str] = {}  # name -> expect, in file order
    for t in ev.gateway_tries:
        cells[(t["name"], t["technique"])] = t
        names.setdefault(t["name"], t["expect"])
    for t in ev.tries:  # a name tried only on the control path (a run stopped early) still gets its row
        names.setdefault(t["name"], t["expect"])
    worst = {n: min((FINDINGS.index(cells[(n, tech)]["finding"]) for tech in techniques if (n, tech) in cells),
                    default=len(FINDINGS)) for n in names}
    order = sorted(names, key=lambda n: (names[n] != "blocked", worst[n]))  # leaks first, stable otherwise
    head = "".join(f"<th>{_e(tech)}</th>" for tech in techniques)
    rows = []
    for n in order:
        out = [f'<tr><td class="name">{_e(n)}</td><td>{_e(names[n])}</td>']
        for tech in techniques:
            cell = cells.get((n, tech))
            if cell is None:
                out.append('<td class="muted">not tried</td>')
                continue
            finding = cell["finding"]
            rule = f'<span class="rule">rule {_e(cell["rule"])}</span>' if cell.get("rule") else ""
            ctl = cell.get("control")
            control = (f'<span class="ctl">control: {_e(ctl.get("outcome"))}/{_e(ctl.get("how"))}</span>'
                       if isinstance(ctl, dict) else "")
            how = ("" if cell["how"] == cell["outcome"] else  # not-applicable: the label says it all
                   f'<span class="how">{_e(cell["outcome"])}: {_e(cell["how"])}</span>')
            out.append(f'<td class="f-{finding}" title="{_e(cell.get("detail"))}"><span class="label">'
                       f"{STYLE[finding][2]}</span>{how}{rule}{control}</td>")
        out.append("</tr>\n")
        rows.append("".join(out))
    return (f'<div class="grid-wrap"><table class="grid"><thead><tr><th class="name">name</th><th>expected</th>'
            f'{head}</tr></thead><tbody>\n{"".join(rows)}</tbody></table></div>')


def render(evidence: Evidence, digest: str) -> str:
    """The page for `evidence` (read by geoblock.probe.evidence.read) whose JSON lines have the SHA-256
    `digest` (hex): one self-contained HTML document as text (see the module)."""
    ev = evidence
    techniques = [str(t) for t in ev.run.get("techniques", [])]
    for t in ev.tries:  # a technique the run line does not list still gets a column
        if t["technique"] not in techniques:
            techniques.append(t["technique"])
    counts = ev.counts()
    leaks = ev.leaks
    over = sorted((t for t in ev.gateway_tries if t["finding"] == "overblocked"),
                  key=lambda t: (t["name"], t["technique"]))
    verdict_finding = "leak" if leaks else "enforced"
    verdict = f"{len(leaks):,} leak(s)" if leaks else "no leak"
    summary = ", ".join(f"{counts[k]:,} {STYLE[k][2]}" for k in FINDINGS if counts[k])
    controls = len(ev.tries) - len(ev.gateway_tries)
    on_control = f"; {controls:,} on the control path" if controls else ""
    no_leak = "No leak: no name expected blocked was reached by any technique."
    no_over = "Nothing over-blocked: every name expected reached was reached (or none was given)."
    chart = _chart(ev, techniques)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>geoblock probe {_e(ev.run['run_id'])}: {verdict}</title><style>{CSS}{_PAGE_CSS}</style></head>
<body><h1>geoblock probe: <span class="verdict f-{verdict_finding}">{verdict}</span></h1>
<p>{len(ev.gateway_tries):,} tries through the gateway ({_e(summary) or "none"}){on_control}.</p>
{_header(ev, digest)}
<section id="leaks"><h2>Leaks: {len(leaks):,}</h2>
<p>Every try where a name expected blocked was reached through the gateway.</p>
{_try_table(leaks, no_leak, "LEAK")}</section>
<section id="overblocked"><h2>Over-blocked: {len(over):,}</h2>
{_try_table(over, no_over, "OVERBLOCKED")}</section>
<section id="by-technique"><h2>Findings per technique</h2>{f"<figure>{chart}</figure>" if chart else ""}</section>
<section id="legend"><h2>What each finding means</h2>{_legend()}</section>
<section id="grid"><h2>Every try: names x techniques</h2>
<p class="muted">Rows: names expected blocked first, those with a leak at the top; then names expected reached.</p>
{_grid(ev, techniques)}</section>
</body></html>
"""


def write(jsonl_path: str | os.PathLike[str], html_path: str | os.PathLike[str]) -> Path:
    """Read the probe's JSON lines at `jsonl_path` (EvidenceError if they do not read), write the page to
    `html_path` (UTF-8) and return its path. The digest shown is the file's SHA-256 as it is now."""
    evidence = read(jsonl_path)
    out = Path(html_path)
    out.write_text(render(evidence, digest_file(jsonl_path)), encoding="utf-8")
    return out


__all__ = ["CSP", "MEANING", "STYLE", "render", "write"]
