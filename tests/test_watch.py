"""The watch loop with real file writes: in-place saves, rename saves, bursts, broken saves.

`apply` is the supervisor's job; here it is a recorder that reads each patch the watcher hands it
(as the engine would) and answers with a report, so every save's patch can be checked.
"""

from __future__ import annotations

import ast
import contextlib
import os
import queue
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gdsu_fork import watch as watch_module
from gdsu_fork.errors import GdsuError
from gdsu_fork.report import Outcome, Report
from gdsu_fork.watch import SaveResult, Watcher

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="saves are detected by inotify close events"
)

DEADLINE = 10.0

V1 = "def f():\n    return 1\n"


class Recorder:
    """Stands in for the update pipeline: keeps every patch's module sources, answers `outcome`."""

    def __init__(self) -> None:
        self.patches: list[dict[str, str]] = []
        self.outcome = Outcome.COMMITTED
        self.reason: str | None = None
        self.lock = threading.Lock()

    def __call__(self, patch_path: Path) -> Report:
        modules = {}
        for node in ast.walk(ast.parse(patch_path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "patch.module":
                modules[ast.literal_eval(node.args[0])] = ast.literal_eval(node.args[1])
        with self.lock:
            self.patches.append(modules)
        reason = None if self.outcome is Outcome.COMMITTED else self.reason
        return Report(outcome=self.outcome, reason=reason, timings={"pause": 1.5})


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "mod.py").write_text(V1)
    (tmp_path / "pkg" / "other.py").write_text("X = 1\n")
    return tmp_path


@contextlib.contextmanager
def watching(
    tree: Path, apply: Callable[[Path], Report] | None = None, **options: Any
) -> Iterator[tuple[Watcher, Recorder, queue.Queue[SaveResult]]]:
    """A started watcher of `tree` whose results go to a queue; `apply` defaults to a Recorder."""
    results: queue.Queue[SaveResult] = queue.Queue()
    recorder = Recorder()
    with Watcher([tree], apply or recorder, on_result=results.put, **options) as watcher:
        yield watcher, recorder, results


@pytest.fixture
def watched(tree: Path) -> Iterator[tuple[Watcher, Recorder, queue.Queue[SaveResult]]]:
    with watching(tree) as started:
        yield started


def next_result(results: queue.Queue[SaveResult]) -> SaveResult:
    try:
        return results.get(timeout=DEADLINE)
    except queue.Empty:
        pytest.fail(f"no save result within {DEADLINE} s")


def save_in_place(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def save_by_rename(path: Path, text: str) -> None:
    temp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    temp.write_text(text)
    os.replace(temp, path)


@pytest.mark.parametrize("save", [save_in_place, save_by_rename])
def test_a_save_becomes_one_patch_from_the_applied_version(tree, watched, save):
    watcher, recorder, results = watched
    v2 = "def f():\n    return 2\n"
    save(tree / "pkg" / "mod.py", v2)
    result = next_result(results)
    assert result.committed
    assert result.files == ("pkg/mod.py",)
    assert result.line() == "watch: pkg/mod.py: changed pkg.mod:f -> committed, pause 1.5 ms"
    assert recorder.patches == [{"pkg.mod": v2}]
    assert watcher.applied_source(tree / "pkg" / "mod.py") == v2
    assert results.empty()


def test_a_burst_of_chunked_saves_is_never_read_half_written(tree, watched):
    """Each version is written in many flushed chunks; only whole versions may reach a patch."""
    watcher, recorder, results = watched
    path = tree / "pkg" / "mod.py"
    versions = [
        "".join(f"def g{i}_{n}():\n    return {n}\n\n" for n in range(200)) for i in range(15)
    ]
    for number, text in enumerate(versions):
        if number % 2:
            save_by_rename(path, text)
            continue
        with open(path, "w") as f:
            for start in range(0, len(text), 512):
                f.write(text[start : start + 512])
                f.flush()
                os.fsync(f.fileno())
    while watcher.applied_source(path) != versions[-1]:
        next_result(results)
    whole = set(versions)
    for modules in recorder.patches:
        assert modules["pkg.mod"] in whole, "a patch carried a half-written file"


def test_saves_of_several_files_together_become_one_update(tree, watched):
    watcher, recorder, results = watched
    save_by_rename(tree / "pkg" / "mod.py", "def f():\n    return 3\n")
    save_by_rename(tree / "pkg" / "other.py", "X = 2\n")
    result = next_result(results)
    if result.files != ("pkg/mod.py", "pkg/other.py"):
        # The two saves straddled a debounce window on a loaded machine: both still apply.
        result = next_result(results)
        assert len(recorder.patches) == 2
    else:
        assert recorder.patches == [{"pkg.mod": "def f():\n    return 3\n", "pkg.other": "X = 2\n"}]
    assert result.committed
    assert watcher.applied_source(tree / "pkg" / "other.py") == "X = 2\n"


def test_a_file_that_does_not_compile_is_waited_on(tree, watched):
    watcher, recorder, results = watched
    path = tree / "pkg" / "mod.py"
    save_in_place(path, "def f(:\n    return 4\n")
    waiting = next_result(results)
    assert waiting.waiting and not waiting.committed
    assert waiting.line() == (
        "watch: pkg/mod.py: pkg/mod.py does not compile yet (line 1: invalid syntax); "
        "waiting for the next save"
    )
    assert recorder.patches == []
    assert watcher.applied_source(path) == V1
    save_in_place(path, "def f():\n    return 4\n")
    assert next_result(results).committed
    assert recorder.patches == [{"pkg.mod": "def f():\n    return 4\n"}]


def test_a_failed_update_keeps_the_last_good_version_and_says_why_once(tree, watched):
    watcher, recorder, results = watched
    path = tree / "pkg" / "mod.py"
    recorder.outcome = Outcome.DISCARDED
    recorder.reason = "Traceback (most recent call last):\n  ...\nValueError: validation said no"
    save_in_place(path, "def f():\n    return 5\n")
    first = next_result(results)
    assert not first.committed
    assert (
        first.line()
        .splitlines()[0]
        .endswith("-> discarded, pause 1.5 ms: ValueError: validation said no")
    )
    assert "    Traceback (most recent call last):" in first.line()
    save_in_place(path, "def f():\n    return 6\n")
    second = next_result(results)
    assert len(second.line().splitlines()) == 1, "the same reason is printed once"
    assert watcher.applied_source(path) == V1

    recorder.outcome = Outcome.COMMITTED
    save_in_place(tree / "pkg" / "other.py", "X = 7\n")
    third = next_result(results)
    assert third.committed
    # The still-unapplied change of mod.py travels with the next good save, diffed from V1.
    assert recorder.patches[-1] == {"pkg.mod": "def f():\n    return 6\n", "pkg.other": "X = 7\n"}
    assert watcher.applied_source(path) == "def f():\n    return 6\n"


def test_unchanged_saves_and_new_files_apply_nothing(tree, watched):
    _watcher, recorder, results = watched
    save_in_place(tree / "pkg" / "mod.py", V1)
    assert next_result(results).line() == "watch: pkg/mod.py: no change"
    save_in_place(tree / "pkg" / "fresh.py", "Y = 1\n")
    assert (
        next_result(results).line() == "watch: pkg/fresh.py: new file, recorded as loaded from disk"
    )
    save_in_place(tree / "pkg" / "fresh.py", "Y = 2\n")
    assert next_result(results).committed
    assert recorder.patches == [{"pkg.fresh": "Y = 2\n"}]


def test_declared_migration_reaches_the_patch_in_watch_mode(tree, watched):
    watcher, _recorder, results = watched
    path = tree / "pkg" / "shapes.py"
    save_in_place(path, "class Box:\n    def __init__(self, w):\n        self.w = w\n")
    next_result(results)  # recorded as the starting version
    v2 = (
        "class Box:\n"
        "    __gdsu_migrate__ = staticmethod(lambda old, new, env: new)\n"
        "    def __init__(self, w):\n        self.w = w\n        self.h = w * 2\n"
    )
    save_by_rename(path, v2)
    assert next_result(results).committed
    patch_text = sorted(watcher.patch_dir.glob("save-*.py"))[-1].read_text()
    assert "return env.new['pkg.shapes:Box'].__gdsu_migrate__(old, new, env)" in patch_text
    assert "NotImplementedError" not in patch_text


def test_watching_a_missing_directory_is_refused(tmp_path):
    with pytest.raises(GdsuError, match="not a directory"):
        Watcher([tmp_path / "nope"], Recorder())


def test_a_save_that_moves_the_original_to_a_backup_first(tree, watched):
    """Emacs and vim (backupcopy=no) rename the original away, then write a new file."""
    _watcher, recorder, results = watched
    path = tree / "pkg" / "mod.py"
    os.replace(path, path.with_name("mod.py~"))
    save_in_place(path, "def f():\n    return 8\n")
    assert next_result(results).committed
    assert recorder.patches == [{"pkg.mod": "def f():\n    return 8\n"}]


def test_hidden_cache_and_site_packages_files_are_not_the_program(tree):
    junk = (".hidden.py", ".venv/lib/x.py", "lib/site-packages/y.py", "pkg/__pycache__/z.py")
    for rel in junk:
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
    with watching(tree) as (_, recorder, results):
        for rel in junk:
            save_in_place(tree / rel, "A = 1\n")
        save_in_place(tree / "pkg" / "mod.py", "def f():\n    return 9\n")
        result = next_result(results)
    assert result.files == ("pkg/mod.py",)
    assert recorder.patches == [{"pkg.mod": "def f():\n    return 9\n"}]


def test_after_a_restart_the_files_on_disk_are_the_applied_version(tree, watched):
    watcher, recorder, results = watched
    path = tree / "pkg" / "mod.py"
    recorder.outcome, recorder.reason = Outcome.DISCARDED, "refused"
    save_in_place(path, "def f():\n    return 10\n")
    assert not next_result(results).committed
    watcher.reload()  # the supervisor restarted the program: it imported what is on disk
    recorder.outcome = Outcome.COMMITTED
    save_in_place(tree / "pkg" / "other.py", "X = 10\n")
    assert next_result(results).committed
    assert recorder.patches[-1] == {"pkg.other": "X = 10\n"}
    assert watcher.applied_source(path) == "def f():\n    return 10\n"


def test_the_main_script_is_not_updated_live(tree):
    script = tree / "app.py"
    script.write_text("import pkg.mod\n\nif __name__ == '__main__':\n    print('start')\n")
    with watching(tree, names={script: "__main__"}) as (_, recorder, results):
        save_in_place(script, "import pkg.mod\n\nif __name__ == '__main__':\n    print('again')\n")
        refused = next_result(results)
        assert refused.line() == (
            "watch: app.py: is the main script (__main__): not updated live, as that would start "
            "the program again; move the code you edit into a module, or restart"
        )
        save_in_place(tree / "pkg" / "mod.py", "def f():\n    return 11\n")
        assert next_result(results).committed
    assert recorder.patches == [{"pkg.mod": "def f():\n    return 11\n"}]


def test_a_file_open_for_writing_is_not_read(tmp_path):
    """The read lease: refused while any process has the file open for writing."""
    path = tmp_path / "m.py"
    path.write_text("X = 1\n")
    writer = open(path, "a")  # noqa: SIM115 - held open on purpose
    try:
        assert watch_module._read_alone(path) == (None, True)
    finally:
        writer.close()
    assert watch_module._read_alone(path) == (b"X = 1\n", True)


def test_without_leases_the_event_barrier_still_applies_saves(tree, monkeypatch):
    # Leases are missing on some filesystems and systems: force that branch.
    monkeypatch.setattr(watch_module, "_take_read_lease", lambda fd: False)
    with watching(tree) as (_, recorder, results):
        save_in_place(tree / "pkg" / "mod.py", "def f():\n    return 12\n")
        assert next_result(results).committed
    assert recorder.patches == [{"pkg.mod": "def f():\n    return 12\n"}]


def test_an_apply_that_raises_is_reported_and_watching_goes_on(tree):
    calls: list[Path] = []

    def unreachable(patch_path: Path) -> Report:
        calls.append(patch_path)
        if len(calls) == 1:
            raise ConnectionError("no supervisor answers")
        return Report(outcome=Outcome.COMMITTED)

    with watching(tree, unreachable) as (watcher, _, results):
        save_in_place(tree / "pkg" / "mod.py", "def f():\n    return 13\n")
        assert next_result(results).line() == (
            "watch: pkg/mod.py: changed pkg.mod:f -> not applied: no supervisor answers"
        )
        save_in_place(tree / "pkg" / "other.py", "X = 13\n")
        assert next_result(results).committed
        assert watcher.applied_source(tree / "pkg" / "mod.py") == "def f():\n    return 13\n"


def test_a_file_with_a_nul_byte_is_waited_on(tree, watched):
    _, recorder, results = watched
    save_in_place(tree / "pkg" / "mod.py", "def f():\n    return 1\x00\n")
    waiting = next_result(results)
    assert waiting.waiting and "does not compile yet" in waiting.line()
    assert recorder.patches == []


def test_a_file_its_coding_cannot_decode_is_waited_on(tree, watched):
    _, recorder, results = watched
    (tree / "pkg" / "mod.py").write_bytes(b"X = '\xff\xfe'\n")
    waiting = next_result(results)
    assert waiting.waiting and "pkg/mod.py cannot be decoded yet" in waiting.line()
    save_in_place(tree / "pkg" / "mod.py", "X = 'ok'\n")
    assert next_result(results).committed
    assert recorder.patches == [{"pkg.mod": "X = 'ok'\n"}]


@pytest.mark.parametrize(("main_module", "saved"), [("pkg.mod", "mod.py"), ("pkg", "__main__.py")])
def test_the_module_run_with_python_m_is_the_main_script_too(tree, main_module, saved):
    (tree / "pkg" / "__main__.py").write_text("print('run')\n")
    with watching(tree, main_module=main_module) as (_, recorder, results):
        save_in_place(tree / "pkg" / saved, "print('edited')\n")
        assert "is the main script (__main__)" in next_result(results).line()
    assert recorder.patches == []
