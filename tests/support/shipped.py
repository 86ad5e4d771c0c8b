"""The shipped rules (the repository's rules/), copied where a test can change them."""

import shutil
from pathlib import Path

SHIPPED_RULES = Path(__file__).resolve().parents[2] / "rules"


def copy_shipped_rules(dest: Path) -> Path:
    """Copy the shipped rule files (*.yaml) and the list files they name (lists/) into `dest` (created if
    missing), so that a test can add or change files beside them. Returns `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in SHIPPED_RULES.glob("*.yaml"):
        shutil.copy(f, dest / f.name)
    shutil.copytree(SHIPPED_RULES / "lists", dest / "lists", dirs_exist_ok=True)
    return dest


def shipped_list_names() -> list[str]:
    """The names of the shipped list files' plain entries (the first word of each line that is not a
    comment), read without geoblock's own code: a reference for tests that check what geoblock blocks."""
    names = []
    for f in sorted((SHIPPED_RULES / "lists").glob("*.txt")):
        for line in f.read_text(encoding="utf-8").splitlines():
            word = line.split("#", 1)[0].split()
            if word and not word[0].startswith(("=", "*.")):
                names.append(word[0].lower())
    return names
