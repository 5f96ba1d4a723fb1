"""Migrations done ahead of the pause, and their reuse in it.

The rehearsal child migrates the marked instances while the program runs. For instances whose
policy reads nothing but the instance's own fields (`policies.is_pure`), that result stays right
for as long as the instance's own state is unchanged, and the kernel says which states changed:
the rehearsal's snapshot child keeps every page as it was at its fork, so a page the program
writes afterwards becomes the program's private copy (cow.py). In the pause, the parent reads
which pages were written, and the update child re-runs the policies only for the instances on
those pages, for instances made since the mark and for impure policies; it takes the other
results from here. The parent's commit is unchanged: it applies what the pause child sends.

Results travel by value, with classes and functions by name (resolved again in the pause child,
whose new environment defines the same names). A result referring to another object of the
program cannot travel so: then nothing is reused.
"""

from __future__ import annotations

import dataclasses
import io
import pickle
import sys
import types
from array import array
from collections.abc import Iterable, Sequence
from typing import Any

from . import cow
from .analysis import resolve_qualname
from .bulk import BulkMigration, Listing
from .delta import _DeltaPickler
from .isolate import Snapshot


@dataclasses.dataclass(frozen=True)
class Ahead:
    """What the rehearsal child sends for the pause to reuse (plain bytes and arrays)."""

    pages: bytes  # cow.StatePages of every marked object, taken before any migration touched it
    starts: bytes
    bulk: bytes  # the reusable migrations, pickled by name
    others: bytes  # array("q") of marked positions without a reusable migration
    count: int  # reusable migrations

    def encode(self) -> bytes:
        return pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL)

    @staticmethod
    def decode(data: bytes) -> Ahead:
        ahead = pickle.loads(data)
        if not isinstance(ahead, Ahead):
            msg = f"expected the rehearsal's migrations, got {type(ahead).__name__}"
            raise TypeError(msg)
        return ahead


class NotReusable(Exception):
    """A migrated value refers to an object of the program: it cannot travel by value."""


class _ByName(_DeltaPickler):
    """Pickles what the child made by value, classes and functions by name, and refuses any
    other object of the program (it would need an address, valid only at this fork)."""

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, type) or type(obj) is types.FunctionType:
            return ("name", *self._name(obj))
        if type(obj) is types.ModuleType:
            if sys.modules.get(obj.__name__) is not obj:
                raise NotReusable(f"module {obj.__name__} is not imported under its name")
            return ("module", obj.__name__)
        if type(obj) is types.BuiltinFunctionType:
            return None  # pickle saves it by name (array's reconstructor, say)
        if super().persistent_id(obj) is not None:
            raise NotReusable(f"a migrated value refers to a {type(obj).__qualname__} object")
        return None

    def _name(self, obj: Any) -> tuple[str, str]:
        """Its "module", "qualname"; a live class that this update keeps may resolve to its new
        version here, which the pause child's delta turns into it again (a replacement)."""
        module, qualname = obj.__module__, obj.__qualname__
        found = resolve_qualname(module, qualname)
        if found is obj or (found is not None and self._replacements.get(id(found)) is obj):
            return module, qualname
        raise NotReusable(f"{module}:{qualname} is not found under its name")


class _ByNameLoader(pickle.Unpickler):
    def persistent_load(self, pid: Any) -> Any:
        if pid[0] == "module":
            return sys.modules[pid[1]]
        found = resolve_qualname(pid[1], pid[2])
        if found is None:
            msg = f"the rehearsal's migrations name {pid[1]}:{pid[2]}, which is not defined"
            raise pickle.UnpicklingError(msg)
        return found


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
    buffer = io.BytesIO()
    try:
        _ByName(buffer, made, replacements, {}).dump(mine)
    except (NotReusable, pickle.PicklingError, TypeError, AttributeError):
        return None
    others = array("q")
    if len(mine) < len(objects):
        others.extend(sorted(set(range(len(objects))).difference(mine.indices())))
    return Ahead(
        pages=pages.pages.tobytes(),
        starts=pages.starts.tobytes(),
        bulk=buffer.getvalue(),
        others=others.tobytes(),
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
    def load(cls, ahead: Ahead, written: Iterable[int], marked: int) -> Reuse:
        """Decode after the new environment is built, so that names resolve to it."""
        bulk = _ByNameLoader(io.BytesIO(ahead.bulk)).load()
        if not isinstance(bulk, BulkMigration):
            msg = f"expected a bulk migration, got {type(bulk).__name__}"
            raise TypeError(msg)
        written = set(written)
        if written:
            bulk = bulk.without(written)
        others = set(array("q", ahead.others))
        return cls(bulk, sorted(others | written), marked)
