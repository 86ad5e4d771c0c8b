#!/usr/bin/env python3
"""Make geoblock's reference sample of ordinary names (addons/geoblock/data/ordinary-names.txt).

`geoblock check` (core/lint.py) warns about a name pattern that matches a large share of this sample:
a review or block pattern that catches ordinary names floods the log or blocks ordinary sites.

    python3 scripts/make_ordinary_names.py [WORDS] > addons/geoblock/data/ordinary-names.txt

WORDS: an English word list, one word a line (default /usr/share/dict/american-english, Debian's
`wamerican` package: SCOWL, permissive licence). The sample is made the way ordinary registrable domains
are named, deterministically (a fixed seed):
- 25,000 one-word names: words of 3 or more letters a-z (no capitals, no apostrophes), drawn at random;
- 25,000 two-word names: two words of 3 to 6 letters (short words are the common ones), joined;
- a short list of real ordinary names known to collide with trading words (KNOWN below);
each under a public suffix drawn from a fixed mix (com most often). The same word list gives the same file.
"""

from __future__ import annotations

import random
import re
import sys

SEED = 14  # issue 14
SINGLES = 25_000
COMPOUNDS = 25_000
# public suffixes and how often each is drawn (com about half the time, as among registered names)
SUFFIXES = (("com", 50), ("net", 8), ("org", 8), ("io", 4), ("co", 3), ("de", 5), ("co.uk", 4), ("info", 3),
            ("app", 2), ("fr", 3), ("nl", 2), ("com.au", 2), ("ca", 2), ("us", 2), ("eu", 2))
# ordinary names the issue met (definitions, ad networks, event apps) and their kind, whatever the draw
KNOWN = ("definitions.com", "definitely.org", "defiance.net", "tradeshow.com", "tradeshows.net", "tradedoubler.com",
         "thetradedesk.com", "tradesman.co.uk", "swapmeet.com", "swapcard.com", "coincidence.org", "tokenring.net")


def main(argv: list[str]) -> int:
    path = argv[1] if len(argv) > 1 else "/usr/share/dict/american-english"
    with open(path, encoding="utf-8") as fp:
        words = sorted({w.strip() for w in fp if re.fullmatch(r"[a-z]{3,}", w.strip())})
    short = [w for w in words if len(w) <= 6]
    rng = random.Random(SEED)
    suffixes = [s for s, _ in SUFFIXES]
    weights = [w for _, w in SUFFIXES]
    names = {f"{w}.{rng.choices(suffixes, weights)[0]}" for w in rng.sample(words, SINGLES)}
    while len(names) < SINGLES + COMPOUNDS:
        names.add(f"{rng.choice(short)}{rng.choice(short)}.{rng.choices(suffixes, weights)[0]}")
    names.update(KNOWN)
    out = sys.stdout
    out.write("# geoblock's reference sample of ordinary names: core/lint.py warns about a name pattern that\n"
              "# matches a large share of it. Made by scripts/make_ordinary_names.py (seed 14) from Debian's\n"
              "# wamerican word list (/usr/share/dict/american-english, 2020.12.07): 25,000 one-word and 25,000\n"
              "# two-word names under a fixed mix of public suffixes, plus a few real ordinary names that collide\n"
              "# with trading words (definitions.com, tradeshow.com, swapmeet.com, ...). No name was chosen to\n"
              "# make a pattern pass. Word list: SCOWL, Copyright 2000-2011 by Kevin Atkinson: \"Permission to\n"
              "# use, copy, modify, distribute and sell these word lists, the associated scripts, the output\n"
              "# created from the scripts, and its documentation for any purpose is hereby granted without fee,\n"
              "# provided that the above copyright notice appears in all copies and that both that copyright\n"
              "# notice and this permission notice appear in supporting documentation. Kevin Atkinson makes no\n"
              "# representations about the suitability of this array for any purpose. It is provided \"as is\"\n"
              "# without express or implied warranty.\"\n")
    for name in sorted(names):
        out.write(name + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
