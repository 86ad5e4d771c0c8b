"""The block page a blocked person sees: in their language (Accept-Language), saying by whom access was
restricted, on what basis and whom to ask; a template with a mistake stops start-up with a message.

Real mitmdump processes with geoblock, real curl (plain HTTP through the explicit proxy: the page is the
451 answer to the request, no server is dialled), and a real headless Chromium for the Chinese page.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from support import browser
from support.decisions import records
from support.proc import BLOCK_PY, Mitmdump, curl, free_port, geoblock_options, mitmdump_path

pytestmark = pytest.mark.e2e

OPERATOR = "Example Securities Regulator & <IT>"
CONTACT = "access-review@example.org"
NOTICE = "https://regulator.example/notices/2026-17?lang=all&v=2"  # for rules without their own notice
# the shipped rule's own notice (rules/crypto-exchanges.yaml)
RULE_NOTICE = "Order of the financial regulator on offshore cryptocurrency trading platforms"

EN_TITLE = "<title>Access restricted</title>"
ZH_TITLE = "<title>访问受限</title>"


def run_mitmdump_until_exit(tmp_path, *sets: str) -> tuple[int, str]:
    """Start mitmdump with geoblock and the `--set` values `sets`, expecting it to refuse to start:
    (exit status, its output). Fails (killing it) when it is still running after 30 s."""
    port = free_port()
    args = [mitmdump_path(), "-s", str(BLOCK_PY), "--listen-host", "127.0.0.1", "-p", str(port),
            "--set", f"confdir={tmp_path / 'conf'}", "--set", f"geoblock_log={tmp_path / 'd.jsonl'}",
            "--set", "geoblock_metrics="]
    for s in sets:
        args += ["--set", s]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    return proc.returncode, out


def head_and_body(out: str) -> tuple[dict[str, str], str]:
    """curl's `-D - -o -` output: the last response head's fields (lower-case names) and the body."""
    head, _, body = out.partition("\n\n")  # curl's CRLFs arrive as "\n" (text mode)
    fields = {}
    for line in head.split("\n")[1:]:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    return fields, body


@pytest.fixture(scope="module")
def proxy(tmp_path_factory, rules_dir, geo_dir):
    d = tmp_path_factory.mktemp("page-proxy")
    m = Mitmdump(d / "conf", geoblock_options(rules_dir, geo_dir, d / "decisions.jsonl", geoblock_operator=OPERATOR,
                                              geoblock_contact=CONTACT, geoblock_notice=NOTICE))
    m.decisions = d / "decisions.jsonl"
    with m:
        yield m


@pytest.mark.parametrize("accept, lang", [
    (None, "en"),
    ("en", "en"),
    ("en-US,en;q=0.9", "en"),
    ("zh-CN", "zh-CN"),
    ("zh", "zh-CN"),
    ("zh-Hans", "zh-CN"),
    ("zh-Hans-CN", "zh-CN"),
    ("fr", "en"),  # no French template: English
    ("fr;q=1, zh-CN;q=0.5", "zh-CN"),  # no French: the next language the reader accepts
    ("en;q=0.1, zh;q=0.9", "zh-CN"),  # q-values, not the header's order
    ("zh-CN;q=0, en;q=0.5", "en"),  # q=0: not acceptable
    ("zh, zh-CN;q=0", "en"),  # zh would be served by zh-CN, which the reader excluded
    ("zh-Hans-CN, zh-CN;q=0, en;q=0.5", "en"),
    ("zh-CN, zh;q=0", "zh-CN"),  # the more specific range wins
    ("fr, zh-CN;q=abc", "en"),  # a malformed q-value: that member is ignored
])
def test_the_page_is_in_the_readers_language(proxy, accept, lang):
    args = ["-H", f"Accept-Language: {accept}"] if accept is not None else []
    r = curl(proxy, "http://www.binance.com/x", *args)
    assert r.stdout.startswith("HTTP/1.1 451 Unavailable For Legal Reasons"), r.stdout + r.stderr
    head, body = head_and_body(r.stdout)
    assert head["content-language"] == lang
    assert head["vary"] == "Accept-Language"
    assert f'<html lang="{lang}">' in body
    if lang == "en":
        assert EN_TITLE in body
        assert ("<strong>www.binance.com</strong> is blocked on this network: access to it has been restricted by "
                "<strong>Example Securities Regulator &amp; &lt;IT&gt;</strong>.") in body
        assert f'<p id="basis">Basis: {RULE_NOTICE}</p>' in body
        assert "<dt>Platform</dt><dd>Binance</dd>" in body
        assert (f'contact <a href="mailto:{CONTACT}">{CONTACT}</a> and quote the details below') in body
        assert "<dt>Rule</dt><dd><code>offshore-crypto-exchanges</code></dd>" in body
        assert re.search(r"<dt>Time \(UTC\)</dt><dd>20\d\d-\d\d-\d\dT\d\d:\d\d:\d\dZ</dd>", body), body
    else:
        assert ZH_TITLE in body
        assert ("<strong>Example Securities Regulator &amp; &lt;IT&gt;</strong>已限制从本网络访问 "
                "<strong>www.binance.com</strong>。") in body
        assert f'<p id="basis">依据：{RULE_NOTICE}</p>' in body
        assert "<dt>平台</dt><dd>Binance</dd>" in body
        assert f'请联系 <a href="mailto:{CONTACT}">{CONTACT}</a>，并附上以下详细信息。' in body
        assert "<dt>规则</dt><dd><code>offshore-crypto-exchanges</code></dd>" in body
        assert re.search(r"<dt>时间（UTC）</dt><dd>20\d\d-\d\d-\d\dT\d\d:\d\d:\d\dZ</dd>", body), body
    rec = records(proxy.decisions, stage="http", host="www.binance.com")[-1]
    assert (rec["action"], rec["rule"], rec["enforced"]) == ("block", "offshore-crypto-exchanges", True)


@pytest.mark.parametrize("accept, basis", [
    ("en", '<p id="basis">Basis: <a href="{0}">{0}</a></p>'),
    ("zh-CN", '<p id="basis">依据：<a href="{0}">{0}</a></p>'),
])
def test_a_rule_without_notice_shows_the_policy_notice(proxy, accept, basis):
    # rule below-only (tests/rules/extra.yaml) has no notice: geoblock_notice, a URL, made a link
    r = curl(proxy, "http://a.wild.test/", "-H", f"Accept-Language: {accept}")
    head, body = head_and_body(r.stdout)
    assert head["x-geoblock-rule"] == "below-only"
    assert basis.format("https://regulator.example/notices/2026-17?lang=all&amp;v=2") in body
    assert "<dt>Platform</dt>" not in body and "<dt>平台</dt>" not in body


def test_without_operator_contact_or_notice_the_page_says_whom_to_ask(tmp_path, rules_dir, geo_dir):
    with Mitmdump(tmp_path / "conf", geoblock_options(rules_dir, geo_dir, tmp_path / "d.jsonl")) as m:
        en = head_and_body(curl(m, "http://a.wild.test/").stdout)[1]
        zh = head_and_body(curl(m, "http://a.wild.test/", "-H", "Accept-Language: zh-CN").stdout)[1]
    assert "access to it has been restricted by the network's operator." in en
    assert "ask your network's administrator" in en
    assert 'id="basis"' not in en and "<dt>Platform</dt>" not in en
    assert "本网络的运营方已限制从本网络访问" in zh and "请联系您的网络管理员" in zh
    assert 'id="basis"' not in zh


def test_links_only_for_http_https_and_mailto(tmp_path, rules_dir, geo_dir):
    options = geoblock_options(rules_dir, geo_dir, tmp_path / "d.jsonl", geoblock_contact="javascript:alert(1)",
                               geoblock_notice="Order 17 <b>(2026)</b>")
    with Mitmdump(tmp_path / "conf", options) as m:
        body = head_and_body(curl(m, "http://a.wild.test/").stdout)[1]
    assert "contact javascript:alert(1) and quote" in body and "<a " not in body
    assert "Basis: Order 17 &lt;b&gt;(2026)&lt;/b&gt;</p>" in body


def test_an_operator_adds_a_language_with_a_template_in_the_directory(tmp_path, rules_dir, geo_dir):
    pages = tmp_path / "pages"
    pages.mkdir()
    (pages / "fr.html").write_text('<html lang="fr"><p>Accès à $host restreint par $operator (règle $rule). '
                                   "Contact : $contact</p></html>\n", encoding="utf-8")
    options = geoblock_options(rules_dir, geo_dir, tmp_path / "d.jsonl", geoblock_block_pages=pages,
                               geoblock_operator="ACME", geoblock_contact="https://acme.example/help")
    with Mitmdump(tmp_path / "conf", options) as m:
        fr = curl(m, "http://www.binance.com/", "-H", "Accept-Language: fr-CH, fr;q=0.9, en;q=0.8")
        zh = curl(m, "http://www.binance.com/", "-H", "Accept-Language: zh-CN")
        de = curl(m, "http://www.binance.com/", "-H", "Accept-Language: de")
    head, body = head_and_body(fr.stdout)
    assert head["content-language"] == "fr"
    assert body == ('<html lang="fr"><p>Accès à www.binance.com restreint par ACME (règle offshore-crypto-exchanges). '
                    'Contact : <a href="https://acme.example/help">https://acme.example/help</a></p></html>\n')
    assert head_and_body(zh.stdout)[0]["content-language"] == "zh-CN"  # the shipped ones stay
    assert head_and_body(de.stdout)[0]["content-language"] == "en"


def test_an_excluded_language_falls_back_to_another_template_of_that_language(tmp_path, rules_dir, geo_dir):
    pages = tmp_path / "pages"
    pages.mkdir()
    (pages / "zh-TW.html").write_text('<html lang="zh-TW"><p>$host 已被 $operator 封鎖</p></html>\n',
                                      encoding="utf-8")
    options = geoblock_options(rules_dir, geo_dir, tmp_path / "d.jsonl", geoblock_block_pages=pages,
                               geoblock_operator="ACME")
    with Mitmdump(tmp_path / "conf", options) as m:
        seen = {accept: head_and_body(curl(m, "http://www.binance.com/", "-H", f"Accept-Language: {accept}").stdout)
                for accept in ("zh", "zh, zh-CN;q=0", "zh, zh-CN;q=0, zh-TW;q=0, en;q=0.1")}
    assert {a: head["content-language"] for a, (head, _) in seen.items()} == {
        "zh": "zh-CN",  # the first template of the language
        "zh, zh-CN;q=0": "zh-TW",  # zh-CN excluded: the next template of the language
        "zh, zh-CN;q=0, zh-TW;q=0, en;q=0.1": "en"}  # both excluded: the next range
    assert seen["zh, zh-CN;q=0"][1] == '<html lang="zh-TW"><p>www.binance.com 已被 ACME 封鎖</p></html>\n'


def test_a_single_template_file_is_the_page_for_every_reader(tmp_path, rules_dir, geo_dir):
    # geoblock_block_page as before issue 14, now with $contact (it stopped start-up with a bare 'contact')
    page = tmp_path / "page.html"
    page.write_text("<p>$host is blocked by $rule; ask $contact</p>")
    options = geoblock_options(rules_dir, geo_dir, tmp_path / "d.jsonl", geoblock_block_page=page,
                               geoblock_contact="it@example.org")
    with Mitmdump(tmp_path / "conf", options) as m:
        answers = [curl(m, "http://www.binance.com/", "-H", f"Accept-Language: {lang}") for lang in ("zh-CN", "en")]
    for r in answers:
        head, body = head_and_body(r.stdout)
        assert body == ('<p>www.binance.com is blocked by offshore-crypto-exchanges; ask '
                        '<a href="mailto:it@example.org">it@example.org</a></p>')
        assert "content-language" not in head and "vary" not in head


KNOWN = "$contact, $host, $lang, $notice, $operator, $platform, $reason, $rule, $ts"


@pytest.mark.parametrize("name, text, message", [
    ("de.html", "<html lang=\"de\">\n<p>Zugriff auf $host gesperrt.</p>\n<p>Kontakt: $kontakt</p>\n",
     "de.html:3: unknown placeholder $kontakt; the placeholders are " + KNOWN),
    ("de.html", "<p>$host</p>\n<p>Preis: 5 $ pro Monat</p>\n",
     "de.html:2: '$ pro Monat</p>': a '$' that starts no placeholder (write $$ for a dollar sign); the placeholders "
     "are " + KNOWN),
    ("de.html", "<p>$host</p>\n<!-- if $kontakt -->$contact<!-- end -->\n",
     "de.html:2: unknown placeholder $kontakt in <!-- if -->; the placeholders are " + KNOWN),
    ("de.html", "<p>$host</p>\n\n<!-- if $contact -->$contact\n",
     "de.html:3: <!-- if $contact --> has no <!-- end -->"),
    ("deutsch page.html", "<p>$host</p>\n",
     "the file name must be a language tag and .html (e.g. en.html, zh-CN.html, pt-BR.html), not "
     "'deutsch page.html'"),
])
def test_a_bad_template_stops_start_up_with_the_file_line_and_placeholders(tmp_path, name, text, message):
    pages = tmp_path / "pages"
    pages.mkdir()
    (pages / name).write_text(text, encoding="utf-8")
    code, out = run_mitmdump_until_exit(tmp_path, f"geoblock_block_pages={pages}")
    assert code == 1 and "Error logged during startup, exiting..." in out, out
    assert f"geoblock: block page template {pages / name}" in out, out
    assert message in out, out
    assert "Traceback" not in out, out


def test_a_bad_single_template_stops_start_up(tmp_path):
    page = tmp_path / "page.html"
    page.write_text("<p>$host is blocked by $rule.</p>\n<p>Ask $contakt.</p>\n")
    code, out = run_mitmdump_until_exit(tmp_path, f"geoblock_block_page={page}")
    assert code == 1 and "Error logged during startup, exiting..." in out, out
    assert f"geoblock: block page template {page}:2: unknown placeholder $contakt; the placeholders are {KNOWN}" \
        in out, out
    assert "Traceback" not in out, out


@pytest.mark.browser
def test_chromium_shows_the_chinese_page(proxy, tmp_path):
    """Chromium asking for Chinese (--accept-lang=zh-CN) gets the Chinese page; the DOM after load holds
    its text (the machine may lack CJK fonts: the screenshot is not checked)."""
    if browser.CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    v = browser.visit("http://www.binance.com/", proxy.url, tmp_path / "profile", extra=["--accept-lang=zh-CN"])
    assert v.title == "访问受限", v.dom[:2000] + v.problems[-2000:]
    assert "<h1>对该网站的访问已受限</h1>" in v.dom
    assert "已限制从本网络访问 <strong>www.binance.com</strong>。" in v.dom
    assert f'<a href="mailto:{CONTACT}">{CONTACT}</a>' in v.dom
    assert '<html lang="zh-CN">' in v.dom



def test_a_missing_template_directory_stops_start_up(tmp_path):
    code, out = run_mitmdump_until_exit(tmp_path, f"geoblock_block_pages={tmp_path / 'no-pages'}")
    assert code == 1, out
    assert f"geoblock: block page directory {tmp_path / 'no-pages'}: No such file or directory" in out, out
    assert "Traceback" not in out, out


def test_a_rules_own_notice_url_is_a_link_and_wins_over_the_option(tmp_path, geo_dir):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "policy.yaml").write_text("home_countries: [CN]\n")
    (rules / "r.yaml").write_text(
        "rules:\n"
        "  - id: ordered\n    action: block\n    domains: [ordered.test]\n"
        "    notice: https://regulator.example/orders/17\n"
        "  - id: scripted\n    action: block\n    domains: [scripted.test]\n"
        "    notice: \"javascript:alert('x')\"\n")
    options = geoblock_options(rules, geo_dir, tmp_path / "d.jsonl", geoblock_notice="the general order")
    with Mitmdump(tmp_path / "conf", options) as m:
        ordered = head_and_body(curl(m, "http://ordered.test/").stdout)[1]
        scripted = head_and_body(curl(m, "http://scripted.test/").stdout)[1]
    assert ('<p id="basis">Basis: <a href="https://regulator.example/orders/17">'
            'https://regulator.example/orders/17</a></p>') in ordered
    assert "<p id=\"basis\">Basis: javascript:alert(&#x27;x&#x27;)</p>" in scripted and "<a " not in scripted
