"""A failed update never harms the program: code and state stay exactly as they were."""

from __future__ import annotations

import os
import types
from typing import Any

import pytest

import gdsu_fork
from gdsu_fork import Outcome
from gdsu_fork.validations import APP_VALIDATIONS


def fingerprint(module: types.ModuleType) -> dict[str, Any]:
    """Identity and code of everything in a module's namespace and its classes."""
    result: dict[str, Any] = {}
    for name, value in vars(module).items():
        result[name] = (id(value), getattr(value, "__code__", None))
        if isinstance(value, type):
            for key, member in vars(value).items():
                result[f"{name}.{key}"] = (id(member), getattr(member, "__code__", None))
    return result


@pytest.fixture
def basic(scenario):
    scn = scenario("code_basic")
    scn.module.GROWN.append("live")
    before = fingerprint(scn.module)
    yield scn
    assert fingerprint(scn.module) == before, "a failed update changed the program"
    assert scn.module.func(1) == "v1 func 1" and scn.module.GROWN == ["live"]


def discarded(report: gdsu_fork.Report, *, reason: str, paused: bool = False) -> None:
    assert report.outcome == Outcome.DISCARDED, report
    assert reason in (report.reason or ""), report.reason
    assert (report.timings["pause"] > 0) is paused, report.timings


def test_new_source_does_not_compile(basic):
    patch = gdsu_fork.Patch("broken")
    patch.module(basic.module_name, "def func(x:\n    return x\n")
    discarded(gdsu_fork.update(patch), reason="SyntaxError")


def test_new_source_top_level_raises(basic):
    source = basic.source("v2").read_text() + "\nraise RuntimeError('boom at import')\n"
    patch = gdsu_fork.Patch("raises")
    patch.module(basic.module_name, source)
    discarded(gdsu_fork.update(patch), reason="RuntimeError: boom at import")


def test_patch_file_calls_os_exit(basic):
    path = basic.patch_file(extra="import os\nos._exit(3)\n")
    discarded(gdsu_fork.update(path), reason="exited with status 3")


def test_patch_file_loops_forever_is_killed_at_the_timeout(basic):
    path = basic.patch_file(extra="while True:\n    pass\n")
    discarded(gdsu_fork.update(path, timeout=1.5), reason="did not finish within 1.5 s")


def test_validation_returns_false(basic):
    path = basic.patch_file(extra="@patch.validate\ndef never_ok(env):\n    return False\n")
    discarded(gdsu_fork.update(path), reason="never_ok returned False")


def test_application_validation_raises(basic):
    def invariant(env):
        raise AssertionError("the shop lost an order")

    gdsu_fork.app_validation(invariant)
    try:
        report = gdsu_fork.update(basic.patch_file())
    finally:
        APP_VALIDATIONS.remove(invariant)
    discarded(report, reason="the shop lost an order")
    assert "application validation" in report.reason


def test_child_segfault(basic):
    path = basic.patch_file(extra="import ctypes\nctypes.string_at(0)\n")
    discarded(gdsu_fork.update(path), reason="SIGSEGV")


def test_child_segfault_in_a_validation_is_caught_by_rehearsal(basic):
    discarded(gdsu_fork.update(basic.patch_file(extra=CRASHING_VALIDATION)), reason="SIGSEGV")


# Without rehearsal, patch loading still runs in an analysis child before the pause; validations
# run only in the commit child, so a crash there happens while the program is paused.
CRASHING_VALIDATION = (
    "@patch.validate\ndef crash(env):\n    import ctypes\n    ctypes.string_at(0)\n"
)
HANGING_VALIDATION = "@patch.validate\ndef hang(env):\n    import time\n    time.sleep(3600)\n"


def test_child_segfault_in_the_pause_without_rehearsal(basic):
    path = basic.patch_file(extra=CRASHING_VALIDATION)
    discarded(gdsu_fork.update(path, rehearse=False), reason="SIGSEGV", paused=True)


def test_child_hang_in_the_pause_without_rehearsal(basic):
    path = basic.patch_file(extra=HANGING_VALIDATION)
    report = gdsu_fork.update(path, rehearse=False, timeout=1.0)
    assert report.outcome == Outcome.DISCARDED
    assert "within 1.0 s" in report.reason


def test_child_allocating_more_than_the_machine_has(basic):
    path = basic.patch_file(
        extra="import psutil\nhoard = bytearray(4 * psutil.virtual_memory().total)\n"
    )
    discarded(gdsu_fork.update(path), reason="MemoryError")


def test_child_memory_cap_turns_gradual_growth_into_a_discard(basic):
    extra = "hoard = []\nwhile True:\n    hoard.append(bytearray(64 * 2**20))\n"
    path = basic.patch_file(extra=extra)
    discarded(gdsu_fork.update(path, child_memory=256 * 2**20), reason="MemoryError")


def test_missing_module_is_named(scenario):
    patch = gdsu_fork.Patch("unknown")
    patch.define("no_such_module_xyz:f", "def f():\n    pass\n")
    report = gdsu_fork.update(patch)
    assert report.outcome == Outcome.DISCARDED
    assert "no_such_module_xyz" in report.reason and "has not imported" in report.reason


def test_patch_file_without_patch_binding(basic, tmp_path):
    path = tmp_path / "nopatch.py"
    path.write_text("x = 1\n")
    report = gdsu_fork.update(path)
    assert report.outcome == Outcome.DISCARDED
    assert "must bind a gdsu_fork.Patch to the name 'patch'" in report.reason


@pytest.mark.parametrize("rehearse", [True, False])
def test_patch_code_never_runs_in_the_program(scenario, tmp_path, rehearse):
    scn = scenario("code_basic")
    trace = tmp_path / "pids"
    extra = (
        "import os\n"
        f"TRACE = {str(trace)!r}\n"
        "def note(where):\n"
        "    with open(TRACE, 'a') as f:\n"
        "        f.write(f'{where} {os.getpid()}\\n')\n"
        "note('top')\n"
        "@patch.validate\n"
        "def check(env):\n"
        "    note('validate')\n"
        "    return True\n"
        f"patch.migrate_global({scn.module_name + ':LIMIT'!r}, lambda old, env: note('global') or 7)\n"
    )
    report = gdsu_fork.update(scn.patch_file(extra=extra), rehearse=rehearse)
    assert report.outcome == Outcome.COMMITTED, report.reason
    assert scn.module.LIMIT == 7
    lines = trace.read_text().split()
    pids = {int(p) for p in lines[1::2]}
    assert set(lines[0::2]) == {"top", "validate", "global"}
    assert os.getpid() not in pids
    # the rehearsal (or analysis) child, the migration's rehearsal on the marked heap when
    # instances are affected, and the commit child
    assert len(pids) in (2, 3)


def test_traceback_of_a_failing_new_top_level_shows_the_new_line(basic):
    source = basic.source("v2").read_text() + "\nraise RuntimeError('boom at import')\n"
    patch = gdsu_fork.Patch("raises")
    patch.module(basic.module_name, source)
    report = gdsu_fork.update(patch)
    assert "raise RuntimeError('boom at import')" in report.reason
