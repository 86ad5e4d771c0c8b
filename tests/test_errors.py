"""One error root: every exception class geoblock defines derives from geoblock.errors.GeoblockError."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import geoblock
from geoblock.errors import GeoblockError


def _exception_classes() -> list[type[BaseException]]:
    found = []
    for info in pkgutil.walk_packages(geoblock.__path__, "geoblock."):
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__ == info.name:
                found.append(obj)
    return found


def test_every_exception_class_geoblock_defines_derives_from_geoblock_error():
    classes = _exception_classes()
    names = {c.__name__ for c in classes}
    assert {"GeoblockError", "InvalidHost", "RuleError", "InvalidField", "NoAnswer", "GeoError", "CannotJudge",
            "MalformedClientHello", "OptionProblem", "ReplayError", "InvalidFlow"} <= names
    assert [c.__qualname__ for c in classes if not issubclass(c, GeoblockError)] == []


def test_errors_that_are_bad_values_are_still_value_errors():
    from geoblock.core.names import InvalidHost, normalize_host
    from geoblock.core.rules import RuleError
    from geoblock.mitm.observe import InvalidField, http_target

    for cls in (InvalidHost, RuleError, InvalidField):
        assert issubclass(cls, GeoblockError) and issubclass(cls, ValueError)
    try:
        normalize_host("a..b")
    except GeoblockError as exc:
        assert isinstance(exc, InvalidHost) and "a..b" in str(exc)
    else:
        raise AssertionError("an invalid host must raise")
    try:
        http_target(None, "bad host!", None)
    except GeoblockError as exc:
        assert isinstance(exc, InvalidField) and exc.field == "Host"
    else:
        raise AssertionError("an invalid Host must raise")
