"""Code changes on live objects: every reference runs the new code and keeps its identity."""

from __future__ import annotations

import inspect
import traceback

import pytest
from scenario import committed

import gdsu_fork
from gdsu_fork import Outcome


@pytest.fixture
def basic(scenario):
    return scenario("code_basic")


def test_module_function_references_run_new_code_with_same_identity(basic):
    mod = basic.module
    user = basic.load_companion("user")
    f = mod.func
    callback = mod.CALLBACKS[0]
    committed(gdsu_fork.update(basic.patch_file()))
    assert mod.func is f is callback is user.held
    assert f(1) == callback(1) == user.held(1) == "v2 func 1"
    assert [f] == mod.CALLBACKS  # the re-executed top level did not append a second callback


def test_report_lists_changes_by_kind(basic):
    report = committed(gdsu_fork.update(basic.patch_file()))
    kinds = {c.name.split(":")[1]: str(c.kind) for c in report.changes}
    assert kinds["func"] == "changed"
    assert kinds["Shape.area"] == "changed"
    assert kinds["Shape.perimeter"] == "added"
    assert kinds["Shape.to_remove"] == "removed"
    assert kinds["Added"] == "added"
    assert kinds["Removed"] == "removed"
    assert kinds["removed_function"] == "removed"
    assert "register" not in kinds  # unchanged functions are not reported
    data = report.to_dict()
    assert data["outcome"] == "committed"
    assert set(data["timings"]) >= {"rehearse", "wait", "pause", "child", "commit", "total"}


def test_methods_static_class_property_and_super(basic):
    mod = basic.module
    shape_class = mod.Shape
    base_class = mod.Base
    shape = mod.Shape("sq")
    area = mod.Shape.area
    unit = mod.Shape.__dict__["unit"]
    committed(gdsu_fork.update(basic.patch_file()))
    assert mod.Shape is shape_class and mod.Base is base_class
    assert isinstance(shape, mod.Shape)
    assert mod.Shape.area is area and shape.area() == "v2 area"
    assert mod.Shape.__dict__["unit"] is unit and shape.unit() == "v2 static"
    assert mod.Shape.build() == ("v2 classmethod", shape_class)
    assert shape.label == "v2 label sq"
    # super() inside an updated method resolves through the kept class
    assert shape.describe() == "v2 shape/v2 base"
    cell = dict(
        zip(mod.Shape.describe.__code__.co_freevars, mod.Shape.describe.__closure__, strict=True)
    )
    assert cell["__class__"].cell_contents is shape_class
    assert shape.perimeter() == "v2 perimeter"
    assert mod.Shape.kind == "v2 kind"


def test_nested_functions_and_live_closures(basic):
    mod = basic.module
    bump = mod.make_counter(10)
    bump(1)
    fn = mod.make_lambda()
    helper = mod.Shape("x").inner()
    committed(gdsu_fork.update(basic.patch_file()))
    assert bump(1) == ("v2", 12)  # new code, live closure state kept
    assert fn(3) == ("v2 lambda", 3)
    assert helper() == "v2 helper"
    assert mod.make_counter(0)(1) == ("v2", 1)


def test_decorated_functions(basic):
    mod = basic.module
    wrapper = mod.wrapped
    registered = mod.registered
    stacked = mod.stacked
    changed = mod.decorated_by_changed
    committed(gdsu_fork.update(basic.patch_file()))
    assert mod.wrapped is wrapper and wrapper(2) == "[v2 wrapped 2]"
    assert mod.wrapped.__wrapped__(2) == "v2 wrapped 2"
    assert [registered] == mod.REGISTRY and registered() == "v2 registered"
    assert mod.stacked is stacked and stacked() == "[v2 stacked!]"
    assert mod.decorated_by_changed is changed and changed() == "{body}"


def test_added_and_removed_definitions(basic):
    mod = basic.module
    shape = mod.Shape("s")
    committed(gdsu_fork.update(basic.patch_file()))
    assert not hasattr(shape, "to_remove")
    assert not hasattr(mod, "Removed") and not hasattr(mod, "removed_function")
    assert mod.added_function() == "v2 added"
    added = mod.Added("a")
    assert isinstance(added, mod.Shape)
    assert added.describe() == "v2 added/v2 shape/v2 base"


def test_globals_keep_live_values_unless_their_statement_changed(basic):
    mod = basic.module
    grown = mod.GROWN
    grown.extend([1, 2, 3])
    committed(gdsu_fork.update(basic.patch_file()))
    assert mod.GROWN is grown and grown == [1, 2, 3]
    assert mod.LIMIT == 5
    assert mod.NEW_GLOBAL == "v2 new global"


def test_tracebacks_and_getsource_show_the_new_source(basic):
    mod = basic.module
    committed(gdsu_fork.update(basic.patch_file()))
    assert 'return f"v2 func {x}"' in inspect.getsource(mod.func)
    assert "def perimeter" in inspect.getsource(mod.Shape.perimeter)
    with pytest.raises(ValueError, match="v2 failing") as info:
        mod.failing()
    text = "".join(traceback.format_exception(info.value))
    assert 'raise ValueError("v2 failing")' in text


def test_round_trip_v1_v2_v1_keeps_identities(basic):
    mod = basic.module
    f, shape = mod.func, mod.Shape("r")
    for version, expected in [("v2", "v2"), ("v1", "v1"), ("v2", "v2")]:
        committed(gdsu_fork.update(basic.patch_file(version)))
        assert mod.func is f and f(0).startswith(expected)
        assert shape.area() == f"{expected} area"


def test_define_and_remove_single_definitions(basic):
    mod = basic.module
    shape = mod.Shape("d")
    patch = gdsu_fork.Patch("single definitions")
    patch.define(f"{basic.module_name}:func", "def func(x):\n    return f'defined {x}'\n")
    patch.define(f"{basic.module_name}:Shape.area", "def area(self):\n    return 'defined area'\n")
    patch.define(f"{basic.module_name}:Shape.volume", "def volume(self):\n    return 0\n")
    patch.remove(f"{basic.module_name}:removed_function")
    committed(gdsu_fork.update(patch))
    assert mod.func(1) == "defined 1"
    assert shape.area() == "defined area" and shape.volume() == 0
    assert not hasattr(mod, "removed_function")
    assert mod.wrapped(1) == "[v1 wrapped 1]"  # untouched definitions keep working


def test_closure_with_renamed_free_variables_is_refused_before_anything_changes(scenario):
    scn = scenario("code_freevars")
    mod = scn.module
    closure = mod.make_renamed(1, 2)
    untouched = mod.untouched
    report = gdsu_fork.update(scn.patch_file("v2_renamed_only"))
    assert report.outcome == Outcome.DISCARDED
    assert "closure" in report.reason and "('a', 'b')" in report.reason
    assert report.timings["pause"] == 0.0
    assert closure() == ("v1", 1, 2) and untouched() == "v1 untouched"


def test_closure_with_fewer_free_variables_is_refused(scenario):
    scn = scenario("code_freevars")
    mod = scn.module
    closure = mod.make_fewer(1, 2)
    report = gdsu_fork.update(scn.patch_file())
    assert report.outcome == Outcome.DISCARDED
    assert "make_fewer.<locals>.closure" in report.reason
    assert closure() == ("v1", 1, 2) and mod.untouched() == "v1 untouched"


def test_free_variable_changes_without_live_closures_apply(scenario):
    scn = scenario("code_freevars")
    committed(gdsu_fork.update(scn.patch_file()))
    assert scn.module.make_renamed(1, 2)() == ("v2", 1, 2)
    assert scn.module.make_fewer(1, 2)() == ("v2", 1)


def test_several_modules_in_one_patch_apply_together(scenario):
    first, second = scenario("code_basic"), scenario("code_freevars")
    patch = gdsu_fork.Patch("two modules")
    patch.module(first.module_name, first.source("v2").read_text())
    patch.module(second.module_name, second.source("v2").read_text())
    committed(gdsu_fork.update(patch))
    assert first.module.func(0) == "v2 func 0" and second.module.untouched() == "v2 untouched"


def test_several_modules_one_failing_changes_none(scenario):
    first, second = scenario("code_basic"), scenario("code_freevars")
    patch = gdsu_fork.Patch("two modules, one broken")
    patch.module(first.module_name, first.source("v2").read_text())
    patch.module(second.module_name, "def untouched(:\n    pass\n")
    report = gdsu_fork.update(patch)
    assert report.outcome == Outcome.DISCARDED and "SyntaxError" in report.reason
    assert first.module.func(0) == "v1 func 0" and second.module.untouched() == "v1 untouched"


def test_added_module(scenario, tmp_path):
    scn = scenario("code_basic")
    name = f"{scn.module_name}_extra"
    patch = gdsu_fork.Patch("new module")
    patch.module(
        name, f"from {scn.module_name} import func\n\ndef twice(x):\n    return func(x) * 2\n"
    )
    committed(gdsu_fork.update(patch))
    import importlib

    extra = importlib.import_module(name)
    assert extra.twice(1) == "v1 func 1v1 func 1"


def test_update_from_another_thread(basic):
    import threading

    result: list[gdsu_fork.Report] = []
    thread = threading.Thread(target=lambda: result.append(gdsu_fork.update(basic.patch_file())))
    thread.start()
    thread.join(60)
    committed(result[0])
    assert basic.module.func(0) == "v2 func 0"
