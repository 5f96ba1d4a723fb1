"""Migrating with a sibling process: the same result as alone, and the same failures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import gdsu_fork
from gdsu_fork import Outcome, sibling
from gdsu_fork.migrate import Migration

SHARED = ["a list the program owns"]


@pytest.fixture
def split_small(monkeypatch, tmp_path: Path) -> Path:
    """Split even small migrations, and note the pid of every process migrating a half."""
    monkeypatch.setattr(sibling, "PARALLEL_FROM", 10)
    log = tmp_path / "halves"
    original = sibling._migrate_half

    def noting(migration, objects, positions, rewrites):
        with log.open("a") as f:
            f.write(f"{os.getpid()}\n")
        return original(migration, objects, positions, rewrites)

    monkeypatch.setattr(sibling, "_migrate_half", noting)
    redo = Migration.migrate_before

    def noting_redo(self, objects, positions):
        with log.open("a") as f:
            f.write("redone\n")
        return redo(self, objects, positions)

    monkeypatch.setattr(Migration, "migrate_before", noting_redo)
    return log


def patch_for(scn, body: str, decorator: str = "@policies.pure\n") -> Path:
    """A patch whose migration of Point runs `body` (pure unless `decorator` says otherwise)."""
    target = f"@patch.migrate({scn.module_name + ':Point'!r})\n"
    return scn.patch_file(extra=target + decorator + "def policy(old, new, env):\n" + body)


def test_a_split_migration_equals_a_whole_one(scenario, split_small):
    scn = scenario("mig_ahead")
    points = [scn.module.Point(i, f"p{i}") for i in range(400)]
    ids = [id(p) for p in points]
    report = gdsu_fork.update(
        patch_for(scn, "    new.doubled = old.x * 2\n    return new\n"), rehearse=False
    )
    assert report.outcome == Outcome.COMMITTED, report.reason
    assert report.migrated == len(points)
    assert [id(p) for p in points] == ids
    assert all(
        vars(p) == {"x": i, "label": f"p{i}", "doubled": 2 * i} for i, p in enumerate(points)
    )
    halves = split_small.read_text().split()
    assert len(halves) == 1 and halves[0] != "redone"  # one sibling sent its half, taken as is


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("    if old.x == 3:\n        raise ValueError('bad point')\n", "ValueError: bad point"),
        ("    import ctypes\n    if old.x == 3:\n        ctypes.string_at(0)\n", "SIGSEGV"),
    ],
    ids=["raises", "crashes"],
)
def test_a_half_that_fails_in_the_sibling_fails_as_if_alone(scenario, split_small, body, reason):
    """The child migrates the sibling's half itself, and meets the same failure."""
    scn = scenario("mig_ahead")
    points = [scn.module.Point(i, "p") for i in range(400)]
    report = gdsu_fork.update(patch_for(scn, body + "    return new\n"), rehearse=False)
    assert report.outcome == Outcome.DISCARDED
    assert reason in report.reason
    assert all(not hasattr(p, "doubled") for p in points)


def test_the_sibling_is_announced_to_the_watcher(scenario, split_small):
    """Its pid reaches the progress events, so gdsu-supervise caps its memory and time too."""
    scn = scenario("mig_ahead")
    points = [scn.module.Point(i, "p") for i in range(400)]
    announced: list[int] = []

    def progress(event: gdsu_fork.Progress) -> None:
        if event.phase is gdsu_fork.Phase.CHILD:
            announced.append(event.data["pid"])

    report = gdsu_fork.update(
        patch_for(scn, "    new.doubled = 1\n    return new\n"), rehearse=False, progress=progress
    )
    assert report.outcome == Outcome.COMMITTED, report.reason
    (half,) = map(int, split_small.read_text().split())
    assert half in announced
    assert len(set(announced)) == 3  # the analysis child, the commit child and its sibling
    assert all(p.doubled == 1 for p in points)


def test_impure_policies_migrate_in_one_process(scenario, split_small):
    """An impure policy may keep state across instances: it must see them all, in order."""
    scn = scenario("mig_ahead")
    points = [scn.module.Point(i, "p") for i in range(400)]
    body = "    seen.append(old.x)\n    new.doubled = len(seen)\n    return new\n"
    patch = patch_for(scn, body, decorator="")
    patch.write_text(patch.read_text().replace("@patch.migrate", "seen = []\n@patch.migrate", 1))
    report = gdsu_fork.update(patch, rehearse=False)
    assert report.outcome == Outcome.COMMITTED, report.reason
    assert sorted(p.doubled for p in points) == list(range(1, 401))  # one process saw all
    assert not split_small.exists()  # no half was migrated apart
