"""Bulk in-place replacement: the one point of no return of an update.

Everything that can fail happened before, in the child (which ran this same function on its own
copy of the heap) or while decoding the delta. Applying only assigns; should an assignment still
raise, the ones already made are undone in reverse order so the program is left as it was.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

from .bulk import AppliedBulk, Listing, apply_bulk
from .delta import Delta, Op, OpKind

_MISSING: Any = object()


def _setattr(target: Any, key: str, value: Any) -> None:
    if isinstance(target, type):
        type.__setattr__(target, key, value)  # a metaclass __setattr__ (Enum's) must not interfere
    else:
        object.__setattr__(target, key, value)


def _delattr(target: Any, key: str, _: Any) -> None:
    if isinstance(target, type):
        type.__delattr__(target, key)
    else:
        object.__delattr__(target, key)


def _setitem(target: Any, key: Any, value: Any) -> None:
    target[key] = value


def _delitem(target: Any, key: Any, _: Any) -> None:
    del target[key]


def _setcell(target: Any, _: Any, value: Any) -> None:
    if value is _MISSING:
        del target.cell_contents
    else:
        target.cell_contents = value


def _setadd(target: Any, _: Any, value: Any) -> None:
    target.add(value)


def _setdiscard(target: Any, _: Any, value: Any) -> None:
    target.discard(value)


def _current(op: Op) -> Any:
    """The value an operation is about to overwrite (or _MISSING), for undo."""
    kind, target, key = op.kind, op.target, op.key
    if kind in (OpKind.SETATTR, OpKind.DELATTR):
        if isinstance(target, type) or (hasattr(target, "__dict__") and key in vars(target)):
            return vars(target).get(key, _MISSING)
        return getattr(target, key, _MISSING)
    if kind in (OpKind.SETITEM, OpKind.DELITEM):
        return target.get(key, _MISSING) if hasattr(target, "get") else target[key]
    if kind in (OpKind.SETADD, OpKind.SETDISCARD):
        return op.value in target
    try:
        return target.cell_contents
    except ValueError:
        return _MISSING


_APPLY: dict[OpKind, Callable[[Any, Any, Any], None]] = {
    OpKind.SETATTR: _setattr,
    OpKind.DELATTR: _delattr,
    OpKind.SETITEM: _setitem,
    OpKind.DELITEM: _delitem,
    OpKind.SETCELL: _setcell,
    OpKind.SETADD: _setadd,
    OpKind.SETDISCARD: _setdiscard,
}


def _restore(op: Op, previous: Any) -> None:
    kind, target, key = op.kind, op.target, op.key
    if kind in (OpKind.SETATTR, OpKind.DELATTR):
        if previous is _MISSING:
            if (isinstance(target, type) and key in vars(target)) or key in getattr(
                target, "__dict__", {}
            ):
                _delattr(target, key, None)
        else:
            _setattr(target, key, previous)
    elif kind in (OpKind.SETITEM, OpKind.DELITEM):
        if previous is _MISSING:
            target.pop(key, None)
        else:
            target[key] = previous
    elif kind in (OpKind.SETADD, OpKind.SETDISCARD):
        (target.add if previous else target.discard)(op.value)
    else:
        _setcell(target, None, previous)


def _undo(done: list[tuple[Op, Any]]) -> None:
    for op, previous in reversed(done):
        try:
            _restore(op, previous)
        except Exception as exc:  # keep undoing the rest; report this one
            print(f"gdsu-fork: could not undo {op.kind.name} on {op.key!r}: {exc}", file=sys.stderr)


def apply_ops(ops: Sequence[Op]) -> Callable[[], None]:
    """Apply every operation, or none: on an exception, undo what was done and re-raise.

    Returns a function that undoes them all, for a later step of the commit that fails.
    """
    done: list[tuple[Op, Any]] = []
    try:
        for op in ops:
            previous = _current(op)
            _APPLY[op.kind](op.target, op.key, op.value)
            done.append((op, previous))
    except BaseException:
        _undo(done)
        raise
    return lambda: _undo(done)


def apply_delta(delta: Delta, objects: Listing, *, reused: bool = True) -> None:
    """The commit: the operations, then the instances migrated in place; all or nothing.

    `objects` is the list the bulk migrations' indices refer to (see bulk.py). `reused`: apply
    the migrations taken from the rehearsal too (the pause child leaves them out when no
    validation looks at instances: the rehearsal tried each group's change on the same, unchanged
    objects, and the commit undoes everything should an instance still refuse).
    """
    undo = apply_ops(delta.ops)
    applied: list[AppliedBulk] = []
    try:
        for bulk in (delta.bulk, delta.reused if reused else None):
            if bulk is not None and len(bulk):
                applied.append(apply_bulk(bulk, objects))
    except BaseException:
        for done in reversed(applied):
            done.undo()
        undo()
        raise
