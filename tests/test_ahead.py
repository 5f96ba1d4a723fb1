"""Migrations done ahead of the pause: reused only where the instance did not change since.

The rehearsal migrates the instances while the program runs; the pause reuses a result only for
a pure policy and an instance the program did not write meanwhile. Each test changes the
program's state while the update waits for its safe point (a thread sits in changed code), and
checks that the committed state is what a migration in the pause would have made.
"""

from __future__ import annotations

import gc
import os
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
from scenario import committed

import gdsu_fork
from gdsu_fork import Outcome, Phase, cow

needs_cow = pytest.mark.skipif(
    not cow.supported(), reason="this kernel or Python cannot tell written pages (cow.py)"
)

POLICIES = """
@patch.migrate({point!r})
@policies.pure
def double(old, new, env):
    new.doubled = old.x * 2
    return new

@patch.migrate({basket!r})
def count(old, new, env):  # not pure: it looks inside the list
    new.count = len(old.items)
    return new
"""


def patch_for(scn, extra: str = "") -> str:
    names = {"point": f"{scn.module_name}:Point", "basket": f"{scn.module_name}:Basket"}
    return scn.patch_file(extra=POLICIES.format(**names) + extra)


@contextmanager
def held_safe_point(module) -> Iterator[threading.Event]:
    """A thread inside the changed `hold` until the event is set."""
    release = threading.Event()
    thread = threading.Thread(target=module.hold, args=(release,), name="holder", daemon=True)
    thread.start()
    try:
        yield release
    finally:
        release.set()
        thread.join(10)


def once_waiting(action: Callable[[], None]) -> Callable[[gdsu_fork.Progress], None]:
    """A progress listener running `action` once, when the update starts waiting (the
    rehearsal is over by then)."""
    done = []

    def listener(event: gdsu_fork.Progress) -> None:
        if event.phase is Phase.WAITING and not done:
            done.append(True)
            action()

    return listener


def test_instances_changed_while_waiting_are_migrated_from_their_new_state(scenario):
    scn = scenario("mig_ahead")
    mod = scn.module
    points = [mod.Point(i, "p") for i in range(20_000)]
    baskets = [mod.Basket([1]) for _ in range(50)]
    ids = [id(p) for p in points]
    changed = points[::1000]
    late: list = []

    with held_safe_point(mod) as release:

        def meanwhile() -> None:
            for p in changed:
                p.x = -1  # the rehearsal doubled the old value
            del points[1].label  # a field gone since the rehearsal
            late.extend(mod.Point(5, "late") for _ in range(100))  # made after the mark
            baskets[0].items.append(2)  # seen only through a sub-object
            release.set()

        report = committed(gdsu_fork.update(patch_for(scn), progress=once_waiting(meanwhile)))

    assert [id(p) for p in points] == ids
    assert all(p.doubled == 2 * p.x for p in points)
    assert all(p.doubled == -2 for p in changed)
    assert not hasattr(points[1], "label") and points[1].doubled == 2
    assert all(p.doubled == 10 for p in late)
    assert baskets[0].count == 2 and all(b.count == 1 for b in baskets[1:])
    assert report.migrated == len(points) + len(late) + len(baskets)
    assert report.reused <= len(points) - len(changed)


@needs_cow
def test_unchanged_instances_of_a_pure_policy_are_reused(scenario):
    scn = scenario("mig_ahead")
    mod = scn.module
    points = [mod.Point(i, "p") for i in range(20_000)]
    baskets = [mod.Basket([1, 2]) for _ in range(50)]
    report = committed(gdsu_fork.update(patch_for(scn)))
    assert all(p.doubled == 2 * p.x for p in points)
    assert all(b.count == 2 for b in baskets)
    # pages the program wrote since (this test's own allocations) may cost a few re-migrations;
    # the impure policy's instances are never reused
    assert len(points) * 0.9 <= report.reused <= len(points)


@needs_cow
def test_validations_see_every_instance_reused_or_not(scenario):
    scn = scenario("mig_ahead")
    mod = scn.module
    points = [mod.Point(i, "p") for i in range(5_000)]
    extra = (
        "@patch.validate\n"
        "def doubled(env):\n"
        f"    pairs = env.pairs({scn.module_name + ':Point'!r})\n"
        f"    assert len(pairs) == {len(points)}, len(pairs)\n"
        "    return all(n.doubled == 2 * o.x and not hasattr(o, 'doubled') for o, n in pairs)\n"
    )
    with held_safe_point(mod) as release:

        def meanwhile() -> None:
            points[7].x = 100
            release.set()

        report = committed(
            gdsu_fork.update(patch_for(scn, extra), progress=once_waiting(meanwhile))
        )
    assert points[7].doubled == 200
    assert report.reused > 0


def test_nothing_is_reused_while_a_child_the_program_forked_lives(scenario):
    """A child forked meanwhile maps the pages too: a write before its fork could not be seen."""
    scn = scenario("mig_ahead")
    mod = scn.module
    points = [mod.Point(i, "p") for i in range(2_000)]
    read_end, write_end = os.pipe()
    child: list[int] = []
    try:
        with held_safe_point(mod) as release:

            def meanwhile() -> None:
                points[3].x = 50  # written before the fork: would read as clean
                with warnings.catch_warnings():  # 3.12+: the waiting thread is alive
                    warnings.simplefilter("ignore", DeprecationWarning)
                    pid = os.fork()
                if pid == 0:
                    os.close(write_end)
                    os.read(read_end, 1)  # until the test closes its end
                    os._exit(0)
                child.append(pid)
                release.set()

            report = committed(gdsu_fork.update(patch_for(scn), progress=once_waiting(meanwhile)))
    finally:
        os.close(write_end)
        os.close(read_end)
        for pid in child:
            os.waitpid(pid, 0)
    assert report.reused == 0
    assert points[3].doubled == 100
    assert all(p.doubled == 2 * p.x for p in points)


def test_a_dead_snapshot_child_never_lets_a_changed_instance_be_reused(scenario):
    """Without the snapshot, pages only it shared turn private: they read as written (safe)."""
    scn = scenario("mig_ahead")
    mod = scn.module
    points = [mod.Point(i, "p") for i in range(2_000)]
    with held_safe_point(mod) as release:

        def meanwhile() -> None:
            for child in psutil.Process().children():
                child.kill()  # the rehearsal's snapshot: the only child left while waiting
            points[3].x = 50
            release.set()

        report = committed(gdsu_fork.update(patch_for(scn), progress=once_waiting(meanwhile)))
    assert points[3].doubled == 100
    assert all(p.doubled == 2 * p.x for p in points)
    assert report.reused < len(points)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("    raise ValueError('no')\n", "ValueError: no"),
        ("    import ctypes\n    ctypes.string_at(0)\n", "SIGSEGV"),  # the snapshot says how
    ],
    ids=["raises", "crashes"],
)
def test_a_failed_migration_rehearsal_costs_no_pause_and_leaves_no_child(scenario, body, reason):
    scn = scenario("mig_ahead")
    mod = scn.module
    points = [mod.Point(i, "p") for i in range(100)]
    extra = (
        f"@patch.migrate({scn.module_name + ':Point'!r})\n"
        "@policies.pure\n"
        "def broken(old, new, env):\n" + body
    )
    report = gdsu_fork.update(patch_for(scn, extra))
    assert report.outcome == Outcome.DISCARDED
    assert reason in report.reason
    assert report.timings["pause"] == 0
    assert all(not hasattr(p, "doubled") for p in points)
    assert psutil.Process().children() == []


def test_a_program_using_gc_freeze_still_gets_its_migration_rehearsed(scenario):
    """A program that froze objects itself gets the heap mark too (test_heap_mark.py): a
    failing migration costs no pause, and the committed one is right."""
    scn = scenario("mig_ahead")
    mod = scn.module
    gc.freeze()
    try:
        points = [mod.Point(i, "p") for i in range(100)]  # made after the program's freeze
        extra = (
            f"@patch.migrate({scn.module_name + ':Point'!r})\n"
            "@policies.pure\n"
            "def broken(old, new, env):\n"
            "    raise ValueError('no')\n"
        )
        failed = gdsu_fork.update(patch_for(scn, extra))
        assert failed.outcome == Outcome.DISCARDED and "ValueError: no" in failed.reason
        assert failed.timings["pause"] == 0
        report = committed(gdsu_fork.update(patch_for(scn)))
    finally:
        gc.unfreeze()
    assert report.migrated == len(points)
    assert all(p.doubled == 2 * p.x for p in points)


def pair_check(scn, trace: Path) -> str:
    """A per-pair validation noting the process that runs it; refuses a doubled value of -2."""
    return (
        f"@patch.validate_each({scn.module_name + ':Point'!r})\n"
        "def doubled_right(old, new, env):\n"
        "    import os\n"
        f"    with open({str(trace)!r}, 'a') as f:\n"
        "        f.write(f'{os.getpid()}\\n')\n"
        "    return new.doubled == 2 * old.x and new.doubled != -2\n"
    )


def test_validate_each_refuses_in_the_rehearsal_and_names_the_instance(scenario, tmp_path):
    scn = scenario("mig_ahead")
    points = [scn.module.Point(i, "p") for i in range(50)]
    points[7].x = -1
    report = gdsu_fork.update(patch_for(scn, pair_check(scn, tmp_path / "calls")))
    assert report.outcome == Outcome.DISCARDED and report.timings["pause"] == 0
    assert "doubled_right returned False" in report.reason and "Point" in report.reason
    assert all(not hasattr(p, "doubled") for p in points)


@needs_cow
def test_validate_each_checks_in_the_pause_only_what_the_pause_migrated(scenario, tmp_path):
    scn = scenario("mig_ahead")
    mod = scn.module
    points = [mod.Point(i, "p") for i in range(20_000)]
    trace = tmp_path / "calls"
    with held_safe_point(mod) as release:

        def meanwhile() -> None:
            points[5].x = 1_000  # re-migrated in the pause, and checked there
            release.set()

        report = committed(
            gdsu_fork.update(
                patch_for(scn, pair_check(scn, trace)), progress=once_waiting(meanwhile)
            )
        )
    calls: dict[str, int] = {}
    for pid in trace.read_text().split():
        calls[pid] = calls.get(pid, 0) + 1
    assert sorted(calls.values())[-1] == len(points)  # the rehearsal checked every pair
    assert sum(calls.values()) - len(points) == report.migrated - report.reused  # the pause
    assert 0 < report.reused < len(points)
    assert points[5].doubled == 2_000


def test_validate_each_in_the_pause_refuses_a_state_changed_while_waiting(scenario, tmp_path):
    scn = scenario("mig_ahead")
    mod = scn.module
    points = [mod.Point(i, "p") for i in range(2_000)]
    with held_safe_point(mod) as release:

        def meanwhile() -> None:
            points[9].x = -1  # valid when rehearsed, refused once migrated from its new state
            release.set()

        report = gdsu_fork.update(
            patch_for(scn, pair_check(scn, tmp_path / "calls")), progress=once_waiting(meanwhile)
        )
    assert report.outcome == Outcome.DISCARDED, report.reason
    assert report.timings["pause"] > 0 and "doubled_right returned False" in report.reason
    assert all(not hasattr(p, "doubled") for p in points)
