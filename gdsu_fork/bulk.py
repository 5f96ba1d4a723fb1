"""Bulk instance migration: the compact part of the delta for instances migrated in place.

Shipping each migrated instance's whole state would make the pause grow with the size of every
object. Instead the child ships, per instance, only what differs: its new class, the attributes
to delete and the attributes whose value changed. Instances are named by their position in a list
that the parent built just before the fork and the child inherited (no address to check), and a
value moved from one attribute to another (a rename) travels as the name it came from. The parent
applies it with C-level loops, and can undo it.
"""

from __future__ import annotations

import dataclasses
import gc
from array import array
from itertools import repeat
from typing import Any

_MISSING: Any = object()


@dataclasses.dataclass(frozen=True)
class FromAttr:
    """A value the instance already holds under another attribute name (a renamed field)."""

    name: str


@dataclasses.dataclass
class BulkMigration:
    """Per migrated instance: its index, new class (table index, -1: unchanged), removed
    attributes (table index) and changed values."""

    indices: array = dataclasses.field(default_factory=lambda: array("q"))
    class_of: array = dataclasses.field(default_factory=lambda: array("q"))
    removed_of: array = dataclasses.field(default_factory=lambda: array("q"))
    classes: list[type] = dataclasses.field(default_factory=list)
    removals: list[tuple[str, ...]] = dataclasses.field(default_factory=lambda: [()])
    changed: dict[int, dict[str, Any]] = dataclasses.field(
        default_factory=dict
    )  # position -> values

    def __len__(self) -> int:
        return len(self.indices)

    def add(
        self,
        index: int,
        new_class: type | None,
        removed: tuple[str, ...],
        changed: dict[str, Any],
    ) -> None:
        """Record one instance's migration (child side)."""
        if changed:
            self.changed[len(self.indices)] = changed
        self.indices.append(index)
        self.class_of.append(-1 if new_class is None else self._class_slot(new_class))
        slot = self._lookup.get(removed)
        self.removed_of.append(slot if slot is not None else self._removal_slot(removed))

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

    def __post_init__(self) -> None:
        # where a class (by id) or a removal tuple sits in its table; not part of the delta
        self._lookup: dict[Any, int] = {(): 0}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        del state["_lookup"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lookup = {}

    def has_tracked_values(self, replacements: dict[int, Any]) -> bool:
        """Whether a changed value may be an object the child made (it must then tell old
        objects from new ones with a full young-generation snapshot)."""
        return any(
            gc.is_tracked(v) and not isinstance(v, FromAttr) and id(v) not in replacements
            for values in self.changed.values()
            for v in values.values()
        )

    def containers(self) -> list[Any]:
        """Every container this object made: all are new, whatever the collector says."""
        made: list[Any] = [self, self.classes, self.removals, self.changed, self._lookup]
        for values in self.changed.values():
            made.append(values)
            made.extend(v for v in values.values() if isinstance(v, FromAttr))
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
    changed: dict[str, Any] = {}
    where: dict[int, str] | None = None
    for key, value in new_state.items():
        if old_state.get(key, _MISSING) is value:
            continue
        if where is None:
            where = {id(v): k for k, v in old_state.items()}
        source = where.get(id(value))
        changed[key] = FromAttr(source) if source is not None else value
    return changed


class AppliedBulk:
    """What `apply_bulk` did, so it can be undone if a later step of the commit fails."""

    def __init__(self, targets: list[Any], classes: list[type]) -> None:
        self.targets = targets
        self.classes = classes
        self.namespaces: dict[int, dict[str, Any]] = {}  # position -> the replaced __dict__

    def undo(self) -> None:
        for target, cls in zip(self.targets, self.classes, strict=True):
            if type(target) is not cls:
                object.__setattr__(target, "__class__", cls)
        for position, namespace in self.namespaces.items():
            object.__setattr__(self.targets[position], "__dict__", namespace)


def apply_bulk(bulk: BulkMigration, objects: list[Any]) -> AppliedBulk:
    """Migrate the instances in place (parent and child alike); undone on an exception.

    A changed state goes in as a new `__dict__`: the old one stays intact, for the undo and, in
    the child, as the old side of `env.pairs`.
    """
    targets = [objects[i] for i in bulk.indices]
    applied = AppliedBulk(targets, list(map(type, targets)))
    class_of = bulk.class_of
    try:
        for slot, cls in enumerate(bulk.classes):
            group = [t for t, c in zip(targets, class_of, strict=True) if c == slot]
            list(map(object.__setattr__, group, repeat("__class__"), repeat(cls)))
        removals, removed_of, changed = bulk.removals, bulk.removed_of, bulk.changed
        for position in {p for p, r in enumerate(removed_of) if r} | changed.keys():
            target = targets[position]
            namespace = target.__dict__
            gone = removals[removed_of[position]]
            state = (
                {k: v for k, v in namespace.items() if k not in gone} if gone else dict(namespace)
            )
            for key, value in changed.get(position, {}).items():
                state[key] = namespace[value.name] if isinstance(value, FromAttr) else value
            object.__setattr__(target, "__dict__", state)
            applied.namespaces[position] = namespace
    except BaseException:
        applied.undo()
        raise
    return applied
