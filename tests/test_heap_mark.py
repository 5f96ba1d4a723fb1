"""The heap mark (engine.py) and a program that uses gc.freeze() itself.

Objects in the collector's permanent generation are skipped by gc.get_objects(); the mark must
still find the program's frozen instances, and leave what the program froze frozen, whether the
update commits or is discarded.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

import gdsu_fork
from gdsu_fork import STARTUP_FROZEN, Outcome

POLICY = """
@patch.migrate({point!r})
def double(old, new, env):
    new.doubled = old.x * 2
    return new
"""

BROKEN = """
@patch.migrate({point!r})
def broken(old, new, env):
    raise ValueError("no")
"""


def patch_for(scn, policy: str) -> str:
    return scn.patch_file(extra=policy.format(point=f"{scn.module_name}:Point"))


@pytest.fixture
def program_freeze(points) -> Iterator[None]:
    """The test body runs as a program that called gc.freeze() after making `points`;
    unfrozen again afterwards."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def unfrozen_ids() -> set[int]:
    return {id(o) for o in gc.get_objects()}


@pytest.fixture
def points(scenario):
    """The scenario, and points made before any gc.freeze()."""
    scn = scenario("mig_ahead")
    mod = scn.module
    return scn, [mod.Point(i, "frozen") for i in range(200)]


def test_instances_the_program_froze_are_migrated(points, program_freeze):
    scn, frozen = points
    young = [scn.module.Point(i, "young") for i in range(200)]
    assert not unfrozen_ids() & {id(p) for p in frozen}  # the program froze them

    report = gdsu_fork.update(patch_for(scn, POLICY))

    assert report.outcome == Outcome.COMMITTED, report.reason
    assert report.migrated == len(frozen) + len(young)
    assert all(p.doubled == 2 * p.x for p in frozen + young)
    # what the program froze is frozen again (and so is what existed when the update ended)
    assert not unfrozen_ids() & {id(p) for p in frozen + young}
    assert gc.get_freeze_count() > STARTUP_FROZEN


def test_a_discarded_update_leaves_the_program_frozen(points, program_freeze):
    scn, frozen = points
    report = gdsu_fork.update(patch_for(scn, BROKEN))
    assert report.outcome == Outcome.DISCARDED and "ValueError: no" in report.reason
    assert all(not hasattr(p, "doubled") for p in frozen)
    assert not unfrozen_ids() & {id(p) for p in frozen}


def test_without_a_program_freeze_the_mark_is_undone(points):
    scn, instances = points
    report = gdsu_fork.update(patch_for(scn, POLICY))
    assert report.outcome == Outcome.COMMITTED, report.reason
    assert all(p.doubled == 2 * p.x for p in instances)
    assert gc.get_freeze_count() <= STARTUP_FROZEN
    assert {id(p) for p in instances} <= unfrozen_ids()
