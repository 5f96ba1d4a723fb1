"""Bulk instance migration: the compact part of the delta for instances migrated in place.

Shipping each migrated instance's whole state would make the pause grow with the size of every
object. Instead the child ships, per instance, only what differs: its new class, the attributes
to delete and the attributes whose value changed. Instances are named by their position in a list
that the parent built just before the fork and the child inherited (no address to check), and a
value moved from one attribute to another (a rename) travels as the name it came from.

Instances that change the same way — same old class, same new class, same attributes deleted —
form a group, stored as an array of positions. The parent applies a group with a few C loops
(`__class__` assignments, in-place deletions: gdsu_fork/_assign.c) and no Python-level call per
instance: this is the hot path of a large migration's pause. It can undo what it applied.
"""

from __future__ import annotations

import bisect
import dataclasses
import gc
import inspect
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import chain, repeat
from operator import is_
from typing import Any

from ._assign import pick, set_all, take_all

_MISSING: Any = object()

# (old class slot, new class slot or -1: unchanged, removal slot or 0: none)
GroupKey = tuple[int, int, int]


class Listing:
    """The objects a bulk migration's positions refer to: the marked ones, then those made
    since the mark. The parts are never joined: building one list would touch every object,
    and after a fork each page touched first costs a copy."""

    def __init__(self, *parts: Sequence[Any]) -> None:
        self.parts = parts
        self._starts = list(chain([0], _running_sum(map(len, parts))))

    def __len__(self) -> int:
        return self._starts[-1]

    def __getitem__(self, position: int) -> Any:
        part = bisect.bisect_right(self._starts, position) - 1
        if position < 0 or part >= len(self.parts):
            raise IndexError(position)
        return self.parts[part][position - self._starts[part]]

    def take(self, positions: Sequence[int]) -> list[Any]:
        """The objects at `positions`, which must be sorted (C-level loops per part)."""
        taken: list[Any] = []
        lo = 0
        for part, start in zip(self.parts, self._starts, strict=False):
            hi = bisect.bisect_left(positions, start + len(part), lo)
            taken.extend(pick(part, positions[lo:hi], start))
            lo = hi
        if lo < len(positions):
            msg = f"position {positions[lo]} is outside the listing ({len(self)} objects)"
            raise IndexError(msg)
        return taken


def _running_sum(values: Iterable[int]) -> Iterator[int]:
    total = 0
    for value in values:
        total += value
        yield total


@dataclasses.dataclass(frozen=True)
class FromAttr:
    """A value the instance already holds under another attribute name (a renamed field)."""

    name: str


@dataclasses.dataclass
class BulkMigration:
    """Migrated instances grouped by how they change; tables of classes and of attribute
    tuples to delete. An instance whose values change also gets a new `__dict__`: `changed`
    holds, by position, its new values and the attributes it loses.

    Invariant: `add` is called in increasing position order, so every group is sorted.
    """

    classes: list[type] = dataclasses.field(default_factory=list)
    removals: list[tuple[str, ...]] = dataclasses.field(default_factory=lambda: [()])
    groups: dict[GroupKey, array] = dataclasses.field(default_factory=dict)
    changed: dict[int, tuple[dict[str, Any], tuple[str, ...]]] = dataclasses.field(
        default_factory=dict
    )

    def __len__(self) -> int:
        return sum(map(len, self.groups.values()))

    def add(
        self,
        index: int,
        old_class: type,
        new_class: type | None,
        removed: tuple[str, ...],
        changed: dict[str, Any],
    ) -> None:
        """Record one instance's migration (child side)."""
        if changed:
            self.changed[index] = (changed, removed)
            removed = ()
        self.group(old_class, new_class, removed).append(index)

    def group(self, old_class: type, new_class: type | None, removed: tuple[str, ...]) -> array:
        """The positions of the instances that change so (append to it in position order)."""
        slot = self._lookup.get(removed)
        key = (
            self._class_slot(old_class),
            -1 if new_class is None else self._class_slot(new_class),
            slot if slot is not None else self._removal_slot(removed),
        )
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = array("q")
        return group

    def _class_slot(self, cls: type) -> int:
        slot = self._lookup.get(id(cls))
        if slot is None:
            slot = self._lookup[id(cls)] = len(self.classes)
            self.classes.append(cls)
        return slot

    def _removal_slot(self, removed: tuple[str, ...]) -> int:
        slot = self._lookup[removed] = len(self.removals)
        self.removals.append(removed)
        return slot

    def reindex(self) -> None:
        """Index the tables again (after their classes were replaced)."""
        self._index_tables()

    def _index_tables(self) -> None:
        # where a class (by id) or a removal tuple sits in its table; not part of the delta
        self._lookup: dict[Any, int] = {removed: i for i, removed in enumerate(self.removals)}
        self._lookup.update((id(cls), i) for i, cls in enumerate(self.classes))

    def __post_init__(self) -> None:
        self._index_tables()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        del state["_lookup"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._index_tables()

    def indices(self) -> Iterator[int]:
        """The position of every migrated instance."""
        return chain.from_iterable(self.groups.values())

    def old_classes(self) -> set[type]:
        """The live classes of the migrated instances."""
        return {self.classes[old] for old, _, _ in self.groups}

    def select(self, keep: Callable[[type], bool]) -> BulkMigration:
        """The entries of the instances whose live class `keep` accepts (same tables)."""
        groups = {k: v for k, v in self.groups.items() if keep(self.classes[k[0]])}
        chosen = set(chain.from_iterable(groups.values())) if self.changed else set()
        return BulkMigration(
            classes=self.classes,
            removals=self.removals,
            groups=groups,
            changed={i: v for i, v in self.changed.items() if i in chosen},
        )

    def sample(self) -> BulkMigration:
        """The first instance of each group (same tables). The instances of a group share their
        old class, new class and deleted names: a commit that fails for one of them fails for
        the first, so a rehearsal with no validation of instances tries only these."""
        groups = {key: group[:1] for key, group in self.groups.items() if group}
        firsts = {group[0] for group in groups.values()}
        return BulkMigration(
            classes=self.classes,
            removals=self.removals,
            groups=groups,
            changed={i: v for i, v in self.changed.items() if i in firsts},
        )

    def without(self, positions: Iterable[int]) -> BulkMigration:
        """A copy without the entries of the instances at `positions` (same tables); the
        groups' positions are sorted, so each group is cut with slices, not scanned."""
        drop = sorted(positions)
        gone = set(drop)
        groups = {}
        for key, group in self.groups.items():
            kept = array("q")
            lo = 0
            for position in drop[bisect.bisect_left(drop, group[0]) :] if group else ():
                if position > group[-1]:
                    break
                at = bisect.bisect_left(group, position, lo)
                if at < len(group) and group[at] == position:
                    kept.extend(group[lo:at])
                    lo = at + 1
            if lo:
                kept.extend(group[lo:])
                group = kept
            if group:
                groups[key] = group
        return BulkMigration(
            classes=self.classes,
            removals=self.removals,
            groups=groups,
            changed={i: v for i, v in self.changed.items() if i not in gone},
        )

    def extend(self, later: BulkMigration) -> None:
        """Add the entries of `later`, whose positions all follow ours (groups stay sorted)."""
        classes = [self._class_slot(c) for c in later.classes]
        removals = [
            slot if (slot := self._lookup.get(r)) is not None else self._removal_slot(r)
            for r in later.removals
        ]
        for (old, new, removed), group in later.groups.items():
            key = (classes[old], -1 if new < 0 else classes[new], removals[removed])
            mine = self.groups.get(key)
            if mine is None:
                self.groups[key] = group
            else:
                mine.extend(group)
        self.changed.update(later.changed)

    def has_tracked_values(self, replacements: dict[int, Any]) -> bool:
        """Whether a changed value may be an object the child made (it must then tell old
        objects from new ones with a full young-generation snapshot)."""
        return any(
            gc.is_tracked(v) and not isinstance(v, FromAttr) and id(v) not in replacements
            for values, _ in self.changed.values()
            for v in values.values()
        )

    def containers(self) -> list[Any]:
        """Every container this object made: all are new, whatever the collector says."""
        made: list[Any] = [self, self.classes, self.removals, self.groups, self.changed]
        made.append(self._lookup)
        made.extend(self.groups.values())  # arrays are tracked by the collector
        for entry in self.changed.values():
            made.extend(entry)
            made.extend(v for v in entry[0].values() if isinstance(v, FromAttr))
        return made


def diff_state(
    old_state: dict[str, Any], new_state: dict[str, Any]
) -> tuple[tuple[str, ...], dict[str, Any]]:
    """What turns `old_state` into `new_state`: names to delete, and values to set."""
    removed = tuple(k for k in old_state if k not in new_state)
    return removed, diff_values(old_state, new_state)


def diff_values(old_state: dict[str, Any], new_state: dict[str, Any]) -> dict[str, Any]:
    """The values of `new_state` that differ from `old_state`'s (by identity); a value the old
    state holds under another name becomes `FromAttr` (a renamed field travels as its name)."""
    if all(map(is_, new_state.values(), map(old_state.get, new_state, repeat(_MISSING)))):
        return {}  # the common case, checked by C-level loops
    get = old_state.get
    changed = {k: v for k, v in new_state.items() if get(k, _MISSING) is not v}
    if changed:
        where = {id(v): k for k, v in old_state.items()}
        for key, value in changed.items():
            source = where.get(id(value))
            if source is not None:
                changed[key] = FromAttr(source)
    return changed


def _is_data_descriptor(cls: type, name: str) -> bool:
    attr = inspect.getattr_static(cls, name, None)
    return hasattr(type(attr), "__set__") or hasattr(type(attr), "__delete__")


class AppliedBulk:
    """What `apply_bulk` did, in order, so it can be undone if a later step fails."""

    def __init__(self) -> None:
        self._undo: list[Callable[[], None]] = []

    def undo(self) -> None:
        while self._undo:
            self._undo.pop()()


def _new_state(target: Any, values: dict[str, Any], gone: tuple[str, ...]) -> dict[str, Any]:
    namespace = target.__dict__
    state = {k: v for k, v in namespace.items() if k not in gone} if gone else dict(namespace)
    for key, value in values.items():
        state[key] = namespace[value.name] if isinstance(value, FromAttr) else value
    return state


def _set_class(group: list[Any], old: type, new: type) -> Callable[[], None]:
    try:
        set_all(group, "__class__", new)
    except BaseException:
        set_all(group, "__class__", old)  # the ones before the failing one
        raise
    return lambda: set_all(group, "__class__", old)


def _delete(group: list[Any], cls: type, names: tuple[str, ...]) -> Callable[[], None]:
    """Delete attributes in place from the instances' own namespace; returns the undo."""
    removed: list[tuple[str, list[Any]]] = []

    def undo() -> None:
        for name, values in reversed(removed):
            for target, value in zip(group, values, strict=True):
                vars(target)[name] = value

    try:
        for name in names:
            if _is_data_descriptor(cls, name):  # it must not intercept the deletion
                namespaces = list(map(vars, group))
                values = [ns[name] for ns in namespaces]
                removed.append((name, values))
                for ns in namespaces:
                    del ns[name]
            else:
                removed.append((name, take_all(group, name)))
    except BaseException:
        undo()
        raise
    return undo


def apply_bulk(bulk: BulkMigration, objects: Listing) -> AppliedBulk:
    """Migrate the instances in place (parent and child alike); undone on an exception.

    A changed state goes in as a new `__dict__`: the old one stays intact, for the undo and, in
    the child, as the old side of `env.pairs`. Then each group gets its new class and loses its
    deleted attributes in place (class first: on 3.11 and 3.12 the assignment is cheaper on an
    intact namespace).
    """
    applied = AppliedBulk()
    steps = applied._undo
    try:
        for index, (values, gone) in bulk.changed.items():
            target = objects[index]
            namespace = target.__dict__
            object.__setattr__(target, "__dict__", _new_state(target, values, gone))
            steps.append(lambda t=target, ns=namespace: object.__setattr__(t, "__dict__", ns))
        classes, removals = bulk.classes, bulk.removals
        for (old, new, removed), indices in bulk.groups.items():
            if new < 0 and not removed:
                continue
            group = objects.take(indices)
            if new >= 0:
                steps.append(_set_class(group, classes[old], classes[new]))
            if removed:
                current = classes[new if new >= 0 else old]
                steps.append(_delete(group, current, removals[removed]))
    except BaseException:
        applied.undo()
        raise
    return applied
