"""Generated patches applied for real with `gdsu_fork.update`, by hand and from watched saves."""

from __future__ import annotations

import importlib
import itertools
import os
import queue
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

import gdsu_fork
from gdsu_fork.diff import diff_paths, diff_sources
from gdsu_fork.watch import SaveResult, Watcher

SCENARIOS = Path(__file__).parent / "scenarios"
DEADLINE = 20.0
_unique = itertools.count()


@pytest.fixture
def live_module(tmp_path: Path) -> Iterator[tuple[ModuleType, Path]]:
    """A fresh module imported from `tmp_path/src/<unique>.py`; write its v1 before importing."""
    src = tmp_path / "src"
    src.mkdir()
    name = f"diff_live_{os.getpid()}_{next(_unique)}"
    path = src / f"{name}.py"
    sys.path.insert(0, str(src))
    holder: dict[str, ModuleType] = {}

    def load(source: str) -> ModuleType:
        path.write_text(source)
        holder["module"] = importlib.import_module(name)
        return holder["module"]

    try:
        yield load, path  # type: ignore[misc]
    finally:
        sys.path.remove(str(src))
        sys.modules.pop(name, None)


def test_a_generated_method_only_patch_applies_without_edits(live_module, tmp_path):
    load, path = live_module
    v1 = (SCENARIOS / "diff_methods" / "v1.py").read_text()
    v2 = (SCENARIOS / "diff_methods" / "v2.py").read_text()
    module = load(v1)
    circle = module.Circle(2)
    area_before = module.area
    assert circle.area() == 12

    new_tree = tmp_path / "new"
    new_tree.mkdir()
    (new_tree / path.name).write_text(v2)
    generated = diff_paths(path, new_tree / path.name)
    assert not generated.needs_edit
    report = gdsu_fork.update(generated.write(tmp_path / "patch.py"))

    assert report.committed, report.reason
    assert circle.area() == pytest.approx(12.566370614359172)
    assert module.area is area_before, "functions keep their identity"
    assert module.Circle.unit().r == 1.0


def test_declared_migrations_apply_from_a_watched_save(live_module):
    """Watch mode end to end: classes change fields and say, next to them, how to migrate."""
    load, path = live_module
    module = load(
        "class Box:\n    def __init__(self, w):\n        self.w = w\n\n\n"
        "class Tag:\n    def __init__(self, label):\n        self.label = label\n"
    )
    boxes, tag = [module.Box(1), module.Box(5)], module.Tag("red")
    v2 = (
        "from gdsu_fork import policies\n\n\n"
        "def _fill(old, new, env):\n"
        "    new.h = old.w * 2\n"
        "    return new\n\n\n"
        "class Box:\n"
        "    __gdsu_migrate__ = _fill\n\n"
        "    def __init__(self, w):\n        self.w = w\n        self.h = w * 2\n\n"
        "    def area(self):\n        return self.w * self.h\n\n\n"
        "class Tag:\n"
        "    __gdsu_migrate__ = policies.Rename(label='name')\n\n"
        "    def __init__(self, name):\n        self.name = name.upper()\n\n\n"
        "def __gdsu_validate__(env):\n"
        "    return all(b.h == 2 * b.w for _, b in env.pairs(__name__ + ':Box'))\n"
    )
    results: queue.Queue[SaveResult] = queue.Queue()
    with Watcher([path.parent], gdsu_fork.update, on_result=results.put):
        temp = path.with_suffix(".tmp")
        temp.write_text(v2)
        os.replace(temp, path)
        result = results.get(timeout=DEADLINE)
    assert result.committed, result.line()
    assert [b.area() for b in boxes] == [2, 50]
    assert vars(tag) == {"name": "red"}
    assert f"migrates {module.__name__}:Box, {module.__name__}:Tag" in result.line()


def test_a_watched_save_reaches_a_running_thread_without_errors(live_module):
    load, path = live_module
    module = load("def value():\n    return 1\n")
    errors: list[BaseException] = []
    seen_new = threading.Event()
    stop = threading.Event()

    def worker() -> None:
        while not stop.is_set():
            try:
                if module.value() == 2:
                    seen_new.set()
            except BaseException as exc:  # any error in the running program fails the test
                errors.append(exc)
                return

    thread = threading.Thread(target=worker, daemon=True)
    results: queue.Queue[SaveResult] = queue.Queue()
    with Watcher([path.parent], gdsu_fork.update, on_result=results.put):
        thread.start()
        try:
            path.write_text("def value(\n")  # not compilable yet: waited on, nothing applied
            assert results.get(timeout=DEADLINE).waiting
            started = time.monotonic()
            path.write_text("def value():\n    return 2\n")
            result = results.get(timeout=DEADLINE)
            assert result.committed, result.line()
            assert seen_new.wait(DEADLINE)
            assert time.monotonic() - started < DEADLINE
        finally:
            stop.set()
            thread.join(DEADLINE)
    assert errors == []


def test_a_generated_todo_refuses_the_update_and_changes_nothing(live_module, tmp_path):
    load, path = live_module
    module = load("class Acc:\n    def __init__(self, c):\n        self.c = c\n")
    acc = module.Acc(250)
    v2 = "class Acc:\n    def __init__(self, c):\n        self.c = c\n        self.e = c / 100\n"
    generated = diff_sources({module.__name__: (path.read_text(), v2)})
    assert generated.needs_edit
    report = gdsu_fork.update(generated.write(tmp_path / "todo.py"))
    assert not report.committed
    assert "gains field(s) e with no evident default" in (report.reason or "")
    assert vars(acc) == {"c": 250}


def test_a_declared_validation_refusing_a_save_keeps_the_last_good_version(live_module):
    load, path = live_module
    module = load("def value():\n    return 1\n")
    refuse = "def __gdsu_validate__(env):\n    return False\n"
    accept = "def __gdsu_validate__(env):\n    return env.new[__name__ + ':value']() == 3\n"
    results: queue.Queue[SaveResult] = queue.Queue()
    with Watcher([path.parent], gdsu_fork.update, on_result=results.put):
        path.write_text("def value():\n    return 2\n\n\n" + refuse)
        refused = results.get(timeout=DEADLINE)
        assert not refused.committed
        assert f"declared_validation_{module.__name__}" in (refused.reason or "")
        assert module.value() == 1
        path.write_text("def value():\n    return 3\n\n\n" + accept)
        accepted = results.get(timeout=DEADLINE)
    assert accepted.committed, accepted.line()
    assert module.value() == 3


def test_a_burst_of_rename_saves_ends_on_the_last_version(live_module):
    load, path = live_module
    module = load("def value():\n    return 0\n")
    results: queue.Queue[SaveResult] = queue.Queue()
    with Watcher([path.parent], gdsu_fork.update, on_result=results.put) as watcher:
        for number in range(1, 11):
            temp = path.with_name(f".{path.name}.{number}")
            temp.write_text(f"def value():\n    return {number}\n")
            os.replace(temp, path)
        last = "def value():\n    return 10\n"
        while watcher.applied_source(path) != last:
            result = results.get(timeout=DEADLINE)
            assert result.committed, result.line()
    assert module.value() == 10


def test_generated_field_migrations_apply_once_the_todo_is_filled(live_module, tmp_path):
    load, _ = live_module
    v1 = (SCENARIOS / "diff_fields" / "v1.py").read_text()
    v2 = (SCENARIOS / "diff_fields" / "v2.py").read_text()
    module = load(v1)
    vector, item, session = module.Vector(3, 4), module.Item("tea"), module.Session("bob")
    counter, account = module.Counter(), module.Account("ann", 250)
    held = {"v": vector, "items": [item]}
    generated = diff_sources({module.__name__: (v1, v2)})
    patch_file = generated.write(tmp_path / "fields.py")

    refused = gdsu_fork.update(patch_file)
    assert not refused.committed
    assert "Account gains field(s) balance" in (refused.reason or "")
    assert vars(vector) == {"x": 3, "y": 4}, "a refused update changes nothing"

    todo = "    raise NotImplementedError("
    text = patch_file.read_text()
    assert text.count(todo) == 1
    filled = "    new.balance = old.cents / 100\n    return new\n"
    patch_file.write_text(text.replace(todo, filled + todo))
    report = gdsu_fork.update(patch_file)

    assert report.committed, report.reason
    assert held["v"] is vector
    assert vars(vector) == {"a": 3, "y": 4, "z": 0.0, "tags": []}
    assert vector.norm() == 5.0
    assert (item.price, item.log) == (0.5, [])
    assert vars(session) == {"user": "bob"}
    assert vars(counter) == {"hits": 0, "misses": 0, "label": "counter"}
    assert account.balance == 2.5
