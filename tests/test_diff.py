"""Patch generation from two versions of a module: what it detects and the patch text it writes."""

from __future__ import annotations

import ast
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gdsu_fork.diff import Default, GeneratedPatch, diff_paths, diff_sources
from gdsu_fork.errors import PatchError
from gdsu_fork.report import Change, ChangeKind

SCENARIOS = Path(__file__).parent / "scenarios"


def generate(tmp_path: Path, scenario: str, name: str = "mod") -> GeneratedPatch:
    """Diff a scenario's v1.py and v2.py, placed as `<name>.py` in two trees."""
    for version in ("v1", "v2"):
        (tmp_path / version).mkdir()
        shutil.copy(SCENARIOS / scenario / f"{version}.py", tmp_path / version / f"{name}.py")
    return diff_paths(tmp_path / "v1", tmp_path / "v2")


def patch_calls(text: str) -> dict[str, list[ast.Call]]:
    """The `patch.<method>(...)` calls of a patch file, by method, decorators included."""
    calls: dict[str, list[ast.Call]] = {}
    for node in ast.walk(ast.parse(text)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "patch"
        ):
            calls.setdefault(node.func.attr, []).append(node)
    return calls


def migrations(text: str) -> dict[str, str]:
    """Class name -> the policy expression (or "<function>" for a decorated migration)."""
    found = {}
    for call in patch_calls(text).get("migrate", []):
        target = ast.literal_eval(call.args[0])
        found[target] = ast.unparse(call.args[1]) if len(call.args) > 1 else "<function>"
    return found


def validations(text: str) -> list[str]:
    """Names of the functions decorated with `@patch.validate`."""
    return [
        node.name
        for node in ast.parse(text).body
        if isinstance(node, ast.FunctionDef)
        and any(ast.unparse(d) == "patch.validate" for d in node.decorator_list)
    ]


def test_method_only_change_gives_a_patch_with_the_new_source_and_no_migration(tmp_path):
    generated = generate(tmp_path, "diff_methods")
    assert generated.changes == [
        Change("mod:area", ChangeKind.CHANGED),
        Change("mod:Circle.unit", ChangeKind.CHANGED),
    ]
    assert generated.migrated == []
    assert not generated.needs_edit
    text = generated.text()
    calls = patch_calls(text)
    assert set(calls) == {"module"}
    (module,) = calls["module"]
    assert ast.literal_eval(module.args[0]) == "mod"
    assert ast.literal_eval(module.args[1]) == (SCENARIOS / "diff_methods" / "v2.py").read_text()
    assert "#   changed: area, Circle.unit" in text


def test_fields_added_renamed_and_removed_get_by_name_migrations(tmp_path):
    text = generate(tmp_path, "diff_fields").text()
    found = migrations(text)
    assert found["mod:Vector"] == (
        "policies.ByName() | policies.Rename(x='a') | policies.AddDefault('z', 0.0) | "
        "policies.AddDefault('tags', factory=list)"
    )
    assert found["mod:Item"] == (
        "policies.ByName() | policies.AddDefault('price', 0.5) | "
        "policies.AddDefault('log', factory=list)"
    )
    assert found["mod:Session"] == "policies.ByName() | policies.Drop('cache')"
    assert found["mod:Counter"] == (
        "policies.ByName() | policies.AddDefault('misses', 0) | "
        "policies.AddDefault('label', 'counter')"
    )
    # One validation stub per migrated class.
    assert validations(text) == [f"check_{c.split(':')[1].lower()}" for c in found]


def test_a_field_without_evident_default_is_a_todo_that_refuses_until_edited(tmp_path):
    generated = generate(tmp_path, "diff_fields")
    assert generated.needs_edit
    text = generated.text()
    assert migrations(text)["mod:Account"] == "<function>"
    tree = ast.parse(text)
    (fn,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "migrate_account"]
    assert "# TODO: set balance from the old state" in text
    raising = [n for n in ast.walk(fn) if isinstance(n, ast.Raise)]
    assert raising, "an unedited TODO must refuse the update, not leave the field missing"
    message = ast.literal_eval(raising[0].exc.args[0])  # type: ignore[union-attr]
    assert "mod:Account" in message and "balance" in message and "__gdsu_migrate__" in message


def test_rename_is_not_guessed_when_the_uses_differ():
    old = "class C:\n    def __init__(self):\n        self.x = 1\n"
    old += "    def f(self):\n        return self.x + 1\n"
    new = "class C:\n    def __init__(self, q):\n        self.w = q\n"
    new += "    def g(self):\n        print(self.w)\n"
    generated = diff_sources({"m": (old, new)})
    (cls,) = generated.modules[0].classes
    assert cls.renames == {}
    assert cls.removed == ["x"] and cls.todo_fields == ["w"]


def test_layout_changes_and_removed_classes_are_listed(tmp_path):
    generated = generate(tmp_path, "diff_layout")
    text = generated.text()
    assert "#   class Point: __slots__ x, y -> x, y, z" in text
    assert "#   class Child: bases () -> (Base)" in text
    assert "#   class Frozen: decorators @dataclass -> @dataclass(frozen=True)" in text
    found = migrations(text)
    assert found["mod:Point"] == "policies.ByName() | policies.AddDefault('z', 0)"
    assert found["mod:Child"] == "policies.ByName()"
    assert found["mod:Pair"] == "policies.ByName() | policies.AddDefault('weight', 1.0)"
    assert "mod:Frozen" not in found, "a decorator change alone migrates no instance"
    assert "# mod:Obsolete was removed. Live instances of it need a migration" in text
    assert Change("mod:Obsolete", ChangeKind.REMOVED) in generated.changes


def test_declared_migration_and_validation_are_used_by_the_patch_that_introduces_them(tmp_path):
    generated = generate(tmp_path, "diff_declared")
    text = generated.text()
    assert migrations(text) == {"mod:Temperature": "<function>", "mod:Plain": "<function>"}
    assert "return env.new['mod:Temperature'].__gdsu_migrate__(old, new, env)" in text
    assert "return env.new['mod:__gdsu_validate__'](env)" in text
    assert "TODO" not in text.split("from gdsu_fork import")[1].split("# New module sources.")[0]


def test_a_declaration_left_in_place_is_inert_for_later_patches():
    v2 = (SCENARIOS / "diff_declared" / "v2.py").read_text()
    v3 = v2.replace("return self.a + 0", "return self.a + 1")
    text = diff_sources({"mod": (v2, v3)}).text()
    assert "migrate" not in patch_calls(text)
    assert "__gdsu_validate__" not in text.split("# New module sources.")[0]


def test_unchanged_modules_are_left_out_and_line_shifts_are_no_change():
    source = "def f():\n    return 1\n"
    assert diff_sources({"m": (source, source)}).modules == []
    shifted = diff_sources({"m": (source, "\n\n" + source)})
    assert shifted.changes == []
    assert "no definition changed" in shifted.text()


def test_a_version_that_does_not_compile_is_refused_with_the_file_and_line():
    with pytest.raises(PatchError, match=r"pkg/m\.py: the new version does not compile \(line 2"):
        diff_sources({"pkg.m": ("x = 1\n", "x = 1\ndef (:\n")}, paths={"pkg.m": "pkg/m.py"})


@pytest.mark.parametrize(
    "source",
    [
        "x = '''quoted'''\n",
        "path = 'C:\\\\dir\\\\'\n",
        "s = 'tab\\there'\n",
        "ends_with_backslash = 1  # \\",
        "ünïcode = '✓'\n",
    ],
)
def test_embedded_sources_round_trip_exactly(source):
    text = diff_sources({"m": ("", source)}).text()
    (call,) = patch_calls(text)["module"]
    embedded = ast.literal_eval(call.args[1])
    assert embedded == (source if source.endswith("\n") else source + "\n")


def test_generated_text_is_valid_python_for_every_scenario(tmp_path):
    for scenario in ("diff_methods", "diff_fields", "diff_layout", "diff_declared"):
        where = tmp_path / scenario
        where.mkdir()
        text = generate(where, scenario).text()
        compile(text, f"{scenario}-patch.py", "exec")


def test_summary_is_one_short_line():
    old = "".join(f"def f{i}():\n    return 0\n" for i in range(7))
    new = "".join(f"def f{i}():\n    return 1\n" for i in range(7))
    summary = diff_sources({"m": (old, new)}).summary()
    assert summary == "changed m:f0, m:f1, m:f2, m:f3 and 3 more"


@pytest.mark.parametrize(
    ("header", "kind"),
    [
        ("import attrs\n\n@attrs.define\nclass P:\n", "dataclass"),
        ("from pydantic import BaseModel\n\nclass P(BaseModel):\n", "model"),
    ],
)
def test_annotated_fields_of_attrs_and_pydantic_classes(header, kind):
    old, new = header + "    a: int\n", header + "    a: int\n    b: str = 'x'\n"
    (cls,) = diff_sources({"m": (old, new)}).modules[0].classes
    assert cls.new.kind == kind
    assert cls.added == {"b": Default(value="'x'")}


def test_summary_names_guessed_renames(tmp_path):
    summary = generate(tmp_path, "diff_fields").summary(limit=10)
    assert summary.endswith("renames guessed: x->a")


@given(st.text())
@settings(max_examples=300, deadline=None)
def test_any_source_text_embeds_exactly_through_a_file(source):
    from gdsu_fork.diff import _string_literal

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "p.py"
        path.write_text(f"S = {_string_literal(source)}\n", encoding="utf-8")
        namespace: dict[str, str] = {}
        exec(path.read_text(encoding="utf-8"), namespace)
    assert namespace["S"] == source
