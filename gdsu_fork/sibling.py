"""Migrating with both cores: the update child forks a sibling that migrates half the positions.

A migration is a Python loop over instances, bound to one core by the GIL; a second process does
half of it meanwhile. Only when every policy is pure (policies.py): an impure one may count or
collect across instances, and would see half of them in each process. The sibling is forked once the new environment is built, so that both
resolve the same names: it sends its half by name (byname.py) and the child takes it as its own.
If the sibling cannot — its half raised, it crashed, or its results cannot travel by name — the
child migrates that half itself, so a failure is found and reported exactly as without a sibling.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Sequence

from . import byname, delta, isolate
from .bulk import Listing
from .migrate import Migration
from .policies import is_pure
from .rewrite import Rewrites

# Below this many positions to look at, the sibling's fork costs more than it saves.
PARALLEL_FROM = 20_000
# The sibling's share of the positions: a little less than half, since it also packs its results
# by name and the child unpacks them (about a tenth of the migration's time, measured at 100k).
SIBLING_SHARE = 0.45


def worth_splitting(migration: Migration, positions: int) -> bool:
    """Whether a migration over `positions` objects should take a sibling."""
    return (
        positions >= PARALLEL_FROM
        and len(os.sched_getaffinity(0)) >= 2
        and all(is_pure(policy) for policy in migration.patch.migrations.values())
    )


def migrate(
    migration: Migration,
    objects: Listing,
    rewrites: Rewrites,
    *,
    reuse: object = None,
    timeout: float,
) -> None:
    """`migration.migrate(objects, reuse)`, with a sibling when it is worth it."""
    positions = migration.begin(objects, reuse)  # type: ignore[arg-type]
    if positions is None:
        return
    if not worth_splitting(migration, len(positions)):
        migration.migrate_positions(objects, positions)
        return
    share = int(len(positions) * SIBLING_SHARE)
    first, rest = positions[:share], positions[share:]
    sibling = isolate.start_forked(lambda: _migrate_half(migration, objects, first, rewrites))
    isolate.announce(sibling.pid)
    migration.migrate_positions(objects, rest)
    result = sibling.wait(timeout)
    if result.ok and result.payload:
        migration.take(objects, byname.loads(result.payload, migration.merge.replacements))
    else:
        migration.migrate_before(objects, first)


def _migrate_half(
    migration: Migration, objects: Listing, positions: Sequence[int], rewrites: Rewrites
) -> bytes:
    """The sibling's work: its half, by name; empty bytes when it cannot travel so."""
    gc.freeze()  # what exists now is the update child's: only what we make is ours
    merge = migration.merge
    ops, refusals = len(merge.ops), len(merge.refusals)
    migration.migrate_positions(objects, positions)
    if len(merge.ops) > ops or len(merge.refusals) > refusals or rewrites.pairs:
        return b""  # assignments or reference rewrites: only the update child can make them
    bulk = migration.bulk
    made = {id(c) for c in bulk.containers()}
    if bulk.has_tracked_values(merge.replacements):  # a value may be an object made here
        made |= delta.young_object_ids()
    return byname.dumps(bulk, made, merge.replacements) or b""
