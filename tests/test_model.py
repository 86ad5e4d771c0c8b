"""The decision's vocabulary (geoblock.core.model): closed sets of words, keyword-built verdicts."""

from __future__ import annotations

import dataclasses
from typing import get_args

import pytest

from geoblock.core import decide as decide_mod
from geoblock.core import model, rules, ruleset
from geoblock.core.model import ACTIONS, SEVERITY, STAGES, Action, Facts, Stage, Verdict


def test_actions_in_order_of_severity_everywhere():
    assert ACTIONS == get_args(Action) == ("allow", "log", "block")
    assert [SEVERITY[a] for a in ACTIONS] == [0, 1, 2]
    assert rules.ACTIONS is ACTIONS and ruleset.SEVERITY is SEVERITY
    assert set(rules.ON_ERROR) == {"block", "allow"} <= set(ACTIONS)


def test_stages_are_the_six_a_connection_shows():
    assert set(STAGES) == set(get_args(Stage)) == {"ip", "dns", "connect", "tls", "http", "stream"}
    assert decide_mod.STAGES is STAGES


def test_verdicts_are_built_by_keyword_only():
    v = Verdict(action="block", reason="because", rule="r1", offshore=True, name="binance.com")
    assert (v.action, v.reason, v.rule, v.offshore, v.name) == ("block", "because", "r1", True, "binance.com")
    assert Verdict(action="allow", reason="default") == Verdict(action="allow", reason="default", rule=None,
                                                                 offshore=None, name=None)
    with pytest.raises(TypeError):
        Verdict("block", None, "because", None)  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        v.action = "allow"  # type: ignore[misc]


def test_decide_returns_model_verdicts(tmp_path):
    (tmp_path / "r.yaml").write_text("rules:\n  - id: x\n    action: block\n    domains: [binance.com]\n")
    rs = ruleset.Ruleset.load(str(tmp_path))
    verdict = decide_mod.decide(Facts("connect", names=("api.binance.com",)), rs)
    assert type(verdict) is model.Verdict and (verdict.action, verdict.rule) == ("block", "x")
    assert type(decide_mod.decide(Facts("connect", names=("example.com",)), rs)) is model.Verdict


def test_hand_written_constructors_agree_with_the_declared_fields():
    """Verdict and DomainSpec build their instance dict in one store (for the decision's hot path): their
    constructors take exactly the declared fields, with the declared defaults, and give equal, frozen,
    hashable values; Verdict.of (positional) gives what the keyword constructor gives."""
    import inspect

    for cls in (Verdict, rules.DomainSpec):
        params = [p for p in inspect.signature(cls.__init__).parameters.values() if p.name != "self"]
        declared = dataclasses.fields(cls)
        assert [p.name for p in params] == [f.name for f in declared], cls
        assert [p.default for p in params] == [inspect.Parameter.empty if f.default is dataclasses.MISSING
                                               else f.default for f in declared], cls
    values = dict(action="block", reason="r", rule="x", offshore=True, name="a.com", unknown="country",
                  platform="P", entry="l.txt:3", list="l.txt", list_version="0123456789ab")
    by_keyword = Verdict(**values)  # type: ignore[arg-type]
    by_position = Verdict.of(*values.values())  # type: ignore[arg-type]
    assert by_position == by_keyword and hash(by_position) == hash(by_keyword)
    assert dataclasses.asdict(by_position) == values and type(by_position) is Verdict
    spec = rules.DomainSpec("a.com", "tree", "a.com", "P", "l.txt:3")
    assert (spec.name, spec.mode, spec.text, spec.platform, spec.where, spec.listfile) == (
        "a.com", "tree", "a.com", "P", "l.txt:3", None)
    assert spec == rules.DomainSpec("a.com", "tree", "a.com", "P", "l.txt:3") and hash(spec)
    for frozen in (by_position, spec):
        with pytest.raises(dataclasses.FrozenInstanceError):
            frozen.platform = "Q"  # type: ignore[misc]
