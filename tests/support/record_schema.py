"""Checking decision records against their schema, geoblock.record.DecisionRecord (a TypedDict).

`problems(record)` lists every way a record (a parsed JSON line, or what make_record returned) differs
from the schema: a required field missing, a field the schema does not name, a value of another type.
Values are compared as JSON carries them: an int is not a bool, a list's items are checked one by one,
a Literal's value must be one of its words.
"""

from __future__ import annotations

import types
import typing
from typing import Any, Literal, Union

from geoblock.record import DecisionRecord

HINTS = typing.get_type_hints(DecisionRecord)
REQUIRED = DecisionRecord.__required_keys__
OPTIONAL = DecisionRecord.__optional_keys__


def problems(record: dict[str, Any]) -> list[str]:
    """What is wrong with `record` as a DecisionRecord; [] when nothing is."""
    found = [f"missing {key!r}" for key in sorted(REQUIRED - record.keys())]
    for key, value in record.items():
        if key not in HINTS:
            found.append(f"unknown field {key!r}")
        elif not _fits(value, HINTS[key]):
            found.append(f"{key!r} is {value!r}, not {HINTS[key]}")
    if record and next(iter(record)) != "ts":
        found.append("'ts' is not the first field")
    return found


def check(records: list[dict[str, Any]]) -> None:
    """Raise AssertionError naming the first record that is not a DecisionRecord, and why."""
    for record in records:
        wrong = problems(record)
        assert not wrong, (wrong, record)


def _fits(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin is typing.NotRequired or origin is typing.Required:
        return _fits(value, typing.get_args(hint)[0])
    if origin is Union or origin is types.UnionType:
        return any(_fits(value, arm) for arm in typing.get_args(hint))
    if origin is Literal:
        return any(type(value) is type(word) and value == word for word in typing.get_args(hint))
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_fits(v, item) for v in value)
    if hint is type(None):
        return value is None
    if hint in (int, float):  # JSON numbers: a bool is not one
        return isinstance(value, hint) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    raise TypeError(f"the schema uses a type this check does not know: {hint!r}")
