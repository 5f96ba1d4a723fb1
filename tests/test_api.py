"""The public API: every exported name exists, is documented, and the binding names are there."""

from __future__ import annotations

import json

import gdsu_fork
from gdsu_fork import Outcome, Report, policies


def test_every_exported_name_exists_and_has_a_docstring():
    assert gdsu_fork.__all__ == sorted(gdsu_fork.__all__)
    for name in gdsu_fork.__all__:
        obj = getattr(gdsu_fork, name)
        assert (obj.__doc__ or "").strip(), f"gdsu_fork.{name} has no docstring"


def test_binding_names():
    patch = gdsu_fork.Patch("api")
    for method in (
        "module",
        "define",
        "remove",
        "migrate",
        "migrate_global",
        "validate",
        "allow_running",
    ):
        assert callable(getattr(patch, method))
    for policy in ("ByName", "Rename", "AddDefault", "Drop", "Compute", "Reclass", "PullUp"):
        assert (getattr(policies, policy).__doc__ or "").strip()


def test_outcomes_are_the_documented_strings():
    assert [str(o) for o in Outcome] == ["committed", "discarded", "aborted"]
    report = Report(Outcome.DISCARDED, reason="why")
    data = json.loads(report.to_json())
    assert data["outcome"] == "discarded" and data["reason"] == "why"
    assert Report.from_dict(data).outcome is Outcome.DISCARDED
    assert set(data["timings"]) == {"rehearse", "wait", "pause", "child", "commit", "total"}


def test_policies_compose_left_to_right():
    class Thing:
        pass

    old, new = Thing(), Thing()
    old.x = 1
    chain = (
        policies.Rename(x="a")
        | policies.AddDefault("z", 0.0)
        | policies.Compute("b", lambda o: o.x * 2)
    )
    result = chain(old, new, None)
    assert vars(result) == {"a": 1, "z": 0.0, "b": 2}
