"""Migrations done ahead of the pause, and their reuse in it.

The rehearsal child migrates the marked instances while the program runs. For instances whose
policy reads nothing but the instance's own fields (`policies.is_pure`), that result stays right
for as long as the instance's own state is unchanged, and the kernel says which states changed:
the rehearsal's snapshot child keeps every page as it was at its fork, so a page the program
writes afterwards becomes the program's private copy (cow.py). In the pause, the parent reads
which pages were written, and the update child re-runs the policies only for the instances on
those pages, for instances made since the mark and for impure policies; it takes the other
results from here. The parent's commit is unchanged: it applies what the pause child sends.

Results travel by name (byname.py): the pause child's new environment defines the same names. A
result referring to another object of the program cannot travel so: then nothing is reused.
"""

from __future__ import annotations

import dataclasses
import struct
from array import array
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from . import byname, cow
from .bulk import BulkMigration, Listing
from .isolate import Snapshot

if TYPE_CHECKING:
    from typing_extensions import Buffer  # collections.abc.Buffer is 3.12+


@dataclasses.dataclass(frozen=True)
class Ahead:
    """What the rehearsal child sends for the pause to reuse (plain bytes and arrays)."""

    pages: memoryview  # cow.StatePages of every marked object, before any migration touched it
    starts: memoryview
    bulk: bytes | memoryview  # the reusable migrations, pickled by name
    others: memoryview  # array("q") of marked positions without a reusable migration
    count: int  # reusable migrations

    def encode(self) -> bytes:
        """The fields one after the other behind their sizes: a few megabytes at 100k
        instances, copied once (pickling them cost several milliseconds of page faults)."""
        parts = [memoryview(p).cast("B") for p in (self.pages, self.starts, self.bulk, self.others)]
        header = _HEADER.pack(_MAGIC, self.count, *(len(p) for p in parts))
        return b"".join([header, *parts])

    @staticmethod
    def decode(data: Buffer) -> Ahead:
        """The fields as views into `data` (no copy)."""
        view = memoryview(data).cast("B")
        if len(view) < _HEADER.size or _HEADER.unpack_from(view)[0] != _MAGIC:
            msg = "expected the rehearsal's migrations"
            raise ValueError(msg)
        _, count, *sizes = _HEADER.unpack_from(view)
        if _HEADER.size + sum(sizes) != len(view):
            msg = (
                f"the rehearsal's migrations are {len(view)} bytes, not {_HEADER.size + sum(sizes)}"
            )
            raise ValueError(msg)
        fields, at = [], _HEADER.size
        for size in sizes:
            fields.append(view[at : at + size])
            at += size
        pages, starts, bulk, others = fields
        return Ahead(pages, starts, bulk, others, count)


_MAGIC = 0x67647375_61686561  # "gdsuahea"
_HEADER = struct.Struct("=QQQQQQ")  # magic, count, then the four sizes


def state_pages(objects: Sequence[Any]) -> cow.StatePages | None:
    """The pages of every marked object, before the migration touches (and re-lays) them;
    None where writes cannot be detected."""
    return cow.state_pages(objects) if cow.supported() else None


def capture(
    bulk: BulkMigration,
    reusable: set[type],
    objects: Sequence[Any] | Listing,
    pages: cow.StatePages,
    made: set[int],
    replacements: dict[int, Any],
) -> bytes | None:
    """Pack the reusable part of `bulk` (rehearsal child, before its modules are restored);
    None when nothing can be reused. `made`: ids of the objects this child created;
    `replacements`: the new objects that become old ones (merge.py)."""
    if not reusable or not len(bulk):
        return None
    mine = bulk if bulk.old_classes() <= reusable else bulk.select(reusable.__contains__)
    if not len(mine):
        return None
    made = made | {id(c) for c in mine.containers()}  # select() made a new one
    data = byname.dumps(mine, made, replacements)
    if data is None:
        return None
    others = array("q")
    if len(mine) < len(objects):
        others.extend(sorted(set(range(len(objects))).difference(mine.indices())))
    return Ahead(
        pages=pages.pages,
        starts=pages.starts,
        bulk=data,
        others=memoryview(others),
        count=len(mine),
    ).encode()


def prepare(ahead: Ahead) -> cow.StatePages:
    """The rehearsal's pages, indexed for the check (parent, while the program runs)."""
    state = cow.StatePages(ahead.pages, ahead.starts)
    state.unique()
    return state


def written_positions(state: cow.StatePages, snapshot: Snapshot | None) -> frozenset[int] | None:
    """Marked positions whose state the program wrote since the rehearsal forked (parent, in
    the pause, before anything else touches them); None if that cannot be told any more."""
    if snapshot is None or not snapshot.held or snapshot.forked_since:
        return None
    return frozenset(cow.dirty(state, cow.written(state.unique())))


@dataclasses.dataclass
class Reuse:
    """The rehearsal's migrations as the pause child takes them (in its new environment)."""

    bulk: BulkMigration
    todo: list[int]  # marked positions the pause child migrates itself
    marked: int  # objects from this position on were made after the mark: all are looked at

    @classmethod
    def load(
        cls, ahead: Ahead, written: Iterable[int], marked: int, replacements: dict[int, Any]
    ) -> Reuse:
        """Decode after the new environment is built, so that names resolve to it."""
        bulk = byname.loads(ahead.bulk, replacements)
        written = set(written)
        if written:
            bulk = bulk.without(written)
        others = array("q")
        others.frombytes(ahead.others)
        return cls(bulk, sorted(written.union(others)), marked)
