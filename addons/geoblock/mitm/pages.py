"""The block page's templates: one per language, chosen by the reader's `Accept-Language`.

A template is HTML with `$name` placeholders (`string.Template` syntax: `$name` or `${name}`, `$$` for a
dollar sign) and optional parts:

    <!-- if $contact -->Questions: $contact<!-- else -->Ask your network's administrator.<!-- end -->

(the `else` branch is optional; optional parts do not nest). The placeholders (`PLACEHOLDERS`):

- `$host`: the blocked name (Unicode), `$rule`: the id of the rule that decided ("(none)" when none did),
  `$reason`: the decision's reason (one English sentence), `$ts`: the decision's time (UTC, ISO 8601),
  `$platform`: the platform the matching entry names ("" when none);
- `$operator`: who restricts access (option `geoblock_operator`);
- `$notice`: the basis (the rule's `notice`, else option `geoblock_notice`): text, or a link when it is an
  http(s) or mailto URL;
- `$contact`: whom to ask (option `geoblock_contact`): a link when it is an email address (mailto) or an
  http(s)/mailto URL, else text;
- `$lang`: the language tag of the template in use.

Every value is HTML-escaped; only http, https and mailto URLs become links. A template is checked when
it is loaded: an unknown placeholder, a `$` that starts none, or an `if`/`else`/`end` out of place raises
`PageProblem` naming the file, the line and what is wrong (with the placeholders that exist).

Languages (`PageSet`): the shipped templates (`geoblock/data/pages/<tag>.html`: English and Simplified
Chinese), then those of the directory option `geoblock_block_pages` (files named by language tag, e.g.
`fr.html`, `zh-TW.html`; a tag also shipped replaces the shipped template). The reader's language is
chosen by RFC 4647 "lookup" (section 3.4) over the ranges of `Accept-Language` (RFC 9110 section 12.5.4)
in order of their q-values: `zh-Hans-CN` tries `zh-Hans-CN`, then `zh-Hans`, then `zh`. A primary language
with no template of its own (`zh`) is served by the first template of that language (`zh-CN`), so `zh`,
`zh-Hans` and `zh-TW` get the Simplified Chinese page unless a closer template exists. A language the
reader excludes (q=0) is never chosen, however it would be reached (`excluded`). Nothing matched,
or no header: English (or the single template of `geoblock_block_page`, which is then the page for every
reader whose languages have no template in the directory, the shipped ones left out: see `PageSet.load`).
"""

from __future__ import annotations

import html
import os
import re
import string
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from geoblock.errors import GeoblockError
from geoblock.paths import PACKAGE_DIR

SHIPPED_PAGES = os.path.join(PACKAGE_DIR, "data", "pages")
"""The templates installed with the package, one `<language tag>.html` each."""

DEFAULT_LANGUAGE = "en"

PLACEHOLDERS: tuple[str, ...] = ("contact", "host", "lang", "notice", "operator", "platform", "reason", "rule",
                                 "ts")
"""Every placeholder a template may use (see the module docstring)."""

# RFC 5646 section 2.1 in its general shape (1*8ALPHA *("-" 1*8alphanum)): the tags a file may be named by
_TAG = re.compile(r"[A-Za-z]{1,8}(?:-[A-Za-z0-9]{1,8})*")
# RFC 9110 section 12.4.2: qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )
_QVALUE = re.compile(r"(?:0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)")
# `<!-- if $name -->`, `<!-- else -->`, `<!-- end -->`; one alone on its line takes the line with it
_DIRECTIVE = re.compile(r"(?P<own>^[ \t]*)?<!--\s*(?:(if)\s+\$\{?(\w*)\}?|(else)|(end))\s*-->(?(own)[ \t]*\n)",
                        re.MULTILINE)
_SAFE_SCHEMES = ("http://", "https://", "mailto:")
_EMAIL = re.compile(r"[^@\s/:<>\"']+@[^@\s/:<>\"']+\.[^@\s/:<>\"']+")


class PageProblem(GeoblockError):
    """A block page template (or its directory) that cannot be used. `str()` says where ("file:line")
    and what is wrong."""


@dataclass(frozen=True, slots=True)
class _Part:
    """One piece of a template: literal text (`cond` None), or an optional part shown when the
    placeholder `cond` has a value (`then`), else `other`."""

    then: string.Template
    cond: str | None = None
    other: string.Template | None = None


def _line(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _known() -> str:
    return ", ".join(f"${name}" for name in PLACEHOLDERS)


class PageTemplate:
    """One block page template: `render(values)` gives the page's HTML.

    `text`: the template (UTF-8 text); `origin`: where it came from (a path, or "built-in"), for messages;
    `lang`: its language tag (from its file name, else the `lang` attribute of its `<html>` element, else
    None: no Content-Language is sent). Raises PageProblem for an unknown placeholder, a `$` that starts
    none, or an optional part out of place, naming `origin`, the line and the placeholders that exist."""

    def __init__(self, text: str, origin: str = "built-in", lang: str | None = None) -> None:
        self.origin = origin
        self.text = text
        self.lang = lang if lang is not None else _html_lang(text)
        self.parts = tuple(self._parse(text))

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], lang: str | None = None) -> PageTemplate:
        """The template in the UTF-8 file `path`. Raises PageProblem (unreadable, not UTF-8, or see
        the constructor)."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise PageProblem(f"block page template {path}: {exc.strerror or exc}") from exc
        except UnicodeDecodeError as exc:
            line = Path(path).read_bytes().count(b"\n", 0, exc.start) + 1  # exc.start: a byte offset
            raise PageProblem(f"block page template {path}:{line}: not UTF-8 ({exc.reason})") from exc
        return cls(text, origin=str(path), lang=lang)

    def _where(self, offset: int) -> str:
        return f"block page template {self.origin}:{_line(self.text, offset)}"

    def _template(self, start: int, end: int) -> string.Template:
        """The text between two offsets as a string.Template, each placeholder checked."""
        piece = self.text[start:end]
        template = string.Template(piece)
        for match in template.pattern.finditer(piece):
            name = match.group("named") or match.group("braced")
            where = self._where(start + match.start())
            if match.group("invalid") is not None:
                after = piece[match.start():].split("\n", 1)[0][:20]  # the `$` and what follows on its line
                raise PageProblem(f"{where}: {after!r}: a '$' that starts no placeholder (write $$ for a dollar "
                                  f"sign); the placeholders are {_known()}")
            if name is not None and name not in PLACEHOLDERS:
                raise PageProblem(f"{where}: unknown placeholder ${name}; the placeholders are {_known()}")
        return template

    def _parse(self, text: str) -> Iterator[_Part]:
        """The template's parts: literal text and optional parts (`<!-- if $x -->...<!-- end -->`)."""
        at = 0
        cond: str | None = None
        then: string.Template | None = None
        opened = 0  # offset of the open `if`
        for match in _DIRECTIVE.finditer(text):
            _, is_if, name, is_else, _ = match.groups()
            where = self._where(match.start())
            piece = self._template(at, match.start())
            if is_if:
                if cond is not None:
                    raise PageProblem(f"{where}: optional parts do not nest (the one opened at line "
                                      f"{_line(text, opened)} has no <!-- end --> before this one)")
                if name not in PLACEHOLDERS:
                    raise PageProblem(f"{where}: unknown placeholder ${name} in <!-- if -->; the placeholders are "
                                      f"{_known()}")
                yield _Part(piece)
                cond, then, opened = name, None, match.start()
            elif is_else:
                if cond is None or then is not None:
                    raise PageProblem(f"{where}: <!-- else --> without an <!-- if $name --> before it")
                then = piece
            else:
                if cond is None:
                    raise PageProblem(f"{where}: <!-- end --> without an <!-- if $name --> before it")
                yield _Part(then or piece, cond, piece if then is not None else None)
                cond, then = None, None
            at = match.end()
        if cond is not None:
            raise PageProblem(f"block page template {self.origin}:{_line(text, opened)}: <!-- if ${cond} --> has "
                              f"no <!-- end -->")
        yield _Part(self._template(at, len(text)))

    def render(self, values: Mapping[str, str]) -> str:
        """The page: `values` (placeholder -> HTML, already escaped: see `page_values`) substituted; an
        optional part shows its first branch when its placeholder's value is not empty. A placeholder
        missing from `values` is empty."""
        full = {name: values.get(name, "") for name in PLACEHOLDERS}
        out = []
        for part in self.parts:
            if part.cond is None or full[part.cond]:
                out.append(part.then.substitute(full))
            elif part.other is not None:
                out.append(part.other.substitute(full))
        return "".join(out)


def _html_lang(text: str) -> str | None:
    found = re.search(r"<html[^>]*\slang=[\"']?([A-Za-z0-9-]+)", text, re.IGNORECASE)
    return found.group(1) if found and _TAG.fullmatch(found.group(1)) else None


def link_or_text(value: str, email: bool = False) -> str:
    """`value` as HTML: a link when it is an http, https or mailto URL (or, with `email`, an email
    address, linked with mailto:), else escaped text. Never a link to any other scheme."""
    value = value.strip()
    if not value:
        return ""
    text = html.escape(value)
    if value.lower().startswith(_SAFE_SCHEMES) and not any(c.isspace() for c in value):
        return f'<a href="{text}">{text}</a>'
    if email and _EMAIL.fullmatch(value):
        return f'<a href="mailto:{text}">{text}</a>'
    return text


def page_values(*, host: str, rule: str, reason: str, ts: str, platform: str | None, operator: str,
                notice: str | None, contact: str, lang: str) -> dict[str, str]:
    """The placeholders' values as HTML: every value escaped, `notice` and `contact` linked when they are
    URLs (`link_or_text`; `contact` also when it is an email address)."""
    plain = {"host": host, "rule": rule, "reason": reason, "ts": ts, "platform": platform or "",
             "operator": operator, "lang": lang}
    values = {name: html.escape(value) for name, value in plain.items()}
    values["notice"] = link_or_text(notice or "")
    values["contact"] = link_or_text(contact, email=True)
    return values


# ---------------------------------------------------------------------------------------- languages


def language_ranges(header: str | None) -> list[tuple[str, float]]:
    """The language ranges of an `Accept-Language` value (RFC 9110 section 12.5.4), best first: (range in
    lower case, q). Ranges of equal weight keep the header's order; a malformed member (a bad range or
    q-value) is skipped, as RFC 9110 lets a recipient ignore what it cannot parse. q=0 ranges are kept
    (they exclude a language)."""
    ranges: list[tuple[str, float]] = []
    for member in (header or "").split(","):
        fields = [f.strip() for f in member.split(";")]
        tag = fields[0]
        if not tag or not (tag == "*" or _TAG.fullmatch(tag)):
            continue
        q = 1.0
        ok = True
        for param in fields[1:]:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                value = value.strip()
                if not _QVALUE.fullmatch(value):
                    ok = False
                    break
                q = float(value)
        if ok:
            ranges.append((tag.lower(), q))
    ranges.sort(key=lambda item: -item[1])  # stable: equal weights keep the header's order
    return ranges


def lookup(ranges: list[tuple[str, float]], tags: Mapping[str, Sequence[str]]) -> str | None:
    """RFC 4647 section 3.4 lookup: the first range (best q first, q > 0) that, truncated from the end
    subtag by subtag, matches one of `tags` (lower-case tag -> the tags as named that may serve it, in order
    of preference: the tag itself, or for a primary language without a template of its own the templates of
    that language); a single-letter subtag is dropped with the one after it (e.g. `-x-...`). `*` matches
    nothing here (the caller's default applies). A language excluded with q=0 is never chosen, neither
    named (`zh-CN;q=0`) nor reached through a primary language (`zh` served by `zh-CN`): see `excluded`;
    the next template that may serve the range, or the next range, is tried. None: no match."""
    for tag, q in ranges:
        if q == 0 or tag == "*":
            continue
        subtags = tag.split("-")
        while subtags:
            candidate = "-".join(subtags)
            if not excluded(ranges, candidate):
                served = next((t for t in tags.get(candidate, ()) if not excluded(ranges, t.lower())), None)
                if served is not None:
                    return served
            subtags.pop()
            if subtags and len(subtags[-1]) == 1:
                subtags.pop()
    return None


def excluded(ranges: list[tuple[str, float]], tag: str) -> bool:
    """Whether the reader's ranges (language_ranges) exclude the lower-case language tag `tag`: the most
    specific range matching it (the tag itself or a prefix of it ending at a subtag: `zh` matches `zh-cn`;
    `*` not counted) has q=0. `zh-CN;q=0` excludes zh-CN; `zh;q=0` excludes zh-CN too, unless `zh-CN` is
    named with a q above 0."""
    best: tuple[int, float] | None = None  # (length of the range, its q); the first of equal lengths wins
    for rng, q in ranges:
        if rng != "*" and (tag == rng or tag.startswith(rng + "-")) and (best is None or len(rng) > best[0]):
            best = (len(rng), q)
    return best is not None and best[1] == 0


class PageSet:
    """The block page in every language: `choose(accept_language)` -> the template to send.

    `pages`: language tag -> template (at least `default`'s); `default`: the tag of the page for readers
    none of whose languages has a template; `single`: a template (option `geoblock_block_page`) that
    replaces the default page for those readers."""

    def __init__(self, pages: Mapping[str, PageTemplate], default: str = DEFAULT_LANGUAGE,
                 single: PageTemplate | None = None) -> None:
        self.pages = dict(pages)
        self.single = single
        self.default = single if single is not None else self.pages[default]
        # a lower-case tag (and each primary language without a template of its own) -> a tag of `pages`
        self.tags: dict[str, list[str]] = {tag.lower(): [tag] for tag in self.pages}
        family: dict[str, list[str]] = {}  # primary language -> its templates, sorted
        for tag in sorted(self.pages):
            family.setdefault(tag.split("-", 1)[0].lower(), []).append(tag)
        for primary, members in family.items():
            self.tags.setdefault(primary, members)

    @property
    def negotiated(self) -> bool:
        """Whether the page depends on Accept-Language (more than one template)."""
        return len(self.pages) + (self.single is not None) > 1

    def choose(self, accept_language: str | None) -> PageTemplate:
        """The template for a reader whose request says `accept_language` (None: no header)."""
        if not self.pages:
            return self.default
        tag = lookup(language_ranges(accept_language), self.tags)
        return self.pages[tag] if tag is not None else self.default

    @classmethod
    def load(cls, directory: str | None = None, single: str | None = None,
             shipped: str = SHIPPED_PAGES) -> PageSet:
        """The templates in force, every one checked:

        - neither option: the shipped templates (English, Simplified Chinese), English by default;
        - `directory` (option `geoblock_block_pages`: `<tag>.html` files): added to the shipped ones (one of
          the same tag, case-insensitively, replaces the shipped one);
        - `single` (option `geoblock_block_page`, a template file): the operator's own page, which
          replaces the shipped ones: alone, it is the page for every reader (no negotiation); with
          `directory`, it is the page for readers none of whose languages has a template there.

        Raises PageProblem naming the file (and line)."""
        pages: dict[str, PageTemplate] = {}
        for folder in (None if single else shipped, directory):
            if not folder:
                continue
            try:
                names = sorted(os.listdir(folder))
            except OSError as exc:
                raise PageProblem(f"block page directory {folder}: {exc.strerror or exc}") from exc
            for name in names:
                stem, ext = os.path.splitext(name)
                if ext.lower() != ".html":
                    continue
                path = os.path.join(folder, name)
                if not _TAG.fullmatch(stem):
                    raise PageProblem(f"block page template {path}: the file name must be a language tag and "
                                      f".html (e.g. en.html, zh-CN.html, pt-BR.html), not {name!r}")
                for known in [t for t in pages if t.lower() == stem.lower()]:
                    del pages[known]
                pages[stem] = PageTemplate.from_file(path, lang=stem)
        if DEFAULT_LANGUAGE not in pages and single is None:
            raise PageProblem(f"block page templates: no {DEFAULT_LANGUAGE}.html in {shipped} or {directory}: the "
                              f"page for readers whose languages have no template")
        return cls(pages, single=PageTemplate.from_file(single) if single else None)
