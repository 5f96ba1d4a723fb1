"""Redirecting references from objects a layout change forced to replace, in the update child.

When a class's layout changes (slots, a tuple's length, a builtin base), its instances cannot be
changed in place: each gets a new object, and every reference to the old one must lead to the new
one after the commit. The child finds the referrers of the old objects and records an assignment
for each reference it can rewrite (lists, deques, dicts, sets, closure cells, slots). Any reference
it cannot rewrite — a tuple, a weak reference, a running frame's local variable, a class attribute,
an unknown container — refuses the update with a reason, before anything changed.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import sys
import types
import weakref
from collections.abc import Iterator
from typing import Any

from .delta import OpKind
from .env import slot_names
from .errors import short_repr
from .merge import Merge


def _is_same_sequence(referrer: Any, olds: list[Any]) -> bool:
    """The argument tuple of our own gc.get_referrers(*olds) call (3.13 reports it)."""
    return (
        type(referrer) is tuple
        and len(referrer) == len(olds)
        and all(a is b for a, b in zip(referrer, olds, strict=True))
    )


def _looks_like_class_dict(d: dict[Any, Any]) -> bool:
    # A class's namespace is a dict reachable only through a read-only proxy: assigning into it
    # would bypass the interpreter's type caches.
    return "__module__" in d and ("__dict__" in d or "__slots__" in d or "__weakref__" in d)


@contextlib.contextmanager
def _whole_heap_visible() -> Iterator[None]:
    """gc.get_referrers skips the permanent generation, where the child froze the old heap."""
    gc.unfreeze()
    try:
        yield
    finally:
        gc.freeze()


class Rewrites:
    """Plans the reference rewrites of one update: `become(old, new)` for each replaced object."""

    def __init__(self, merge: Merge) -> None:
        self.merge = merge
        self.pairs: dict[int, tuple[Any, Any]] = {}  # instances
        self.strict: set[int] = set()  # instances: every reference must be rewritten
        self.classes: dict[int, tuple[Any, Any]] = {}  # classes whose layout changed

    def become(self, old: Any, new: Any, *, strict: bool = True) -> None:
        """After the commit, references to `old` lead to `new`.

        `strict` (instances): every reference must be rewritten, or the update is refused.
        Otherwise (a class whose layout changed): only module globals are rewritten, the names
        programs look classes up by; containers the runtime keeps (caches, MROs) are left alone.
        """
        if strict:
            self.pairs[id(old)] = (old, new)
            self.strict.add(id(old))
        else:
            self.classes[id(old)] = (old, new)

    def _new(self, obj: Any) -> Any:
        return self.pairs[id(obj)][1]

    def plan(self, created: set[int], frames: list[types.FrameType]) -> None:
        """Record the rewrites; `created`: ids of objects the child made (not to be rewritten)."""
        self._rewrite_module_globals(created)
        if not self.pairs:
            return
        self._check_frames(frames)
        self._check_weakrefs()
        olds = [old for old, _ in self.pairs.values()]
        with _whole_heap_visible():
            referrers = gc.get_referrers(*olds)
        skip = created | set(self.pairs) | {id(olds), id(referrers)}
        for referrer in referrers:
            if id(referrer) not in skip and not _is_same_sequence(referrer, olds):
                self._rewrite(referrer)

    def _rewrite_module_globals(self, created: set[int]) -> None:
        if not self.classes:
            return
        for module in list(sys.modules.values()):
            namespace = getattr(module, "__dict__", None)
            if namespace is None or id(namespace) in created:
                continue
            for key, value in list(namespace.items()):
                if id(value) in self.classes:
                    self.merge.op(OpKind.SETITEM, namespace, key, self.classes[id(value)][1])

    def _refuse(self, target: Any, where: str) -> None:
        self.merge.refusals.append(
            f"a {type(target).__module__}.{type(target).__qualname__} must become a new object "
            f"(its class's layout changed), but {where} holds it and cannot be rewritten; "
            f"drop that reference before updating, or keep the class's layout"
        )

    def _check_frames(self, frames: list[types.FrameType]) -> None:
        for top in frames:
            frame: types.FrameType | None = top
            while frame is not None:
                for name, value in frame.f_locals.items():
                    if id(value) in self.strict:
                        code = frame.f_code
                        self._refuse(
                            value,
                            f"local variable {name!r} of {code.co_qualname} "
                            f"({code.co_filename}:{frame.f_lineno}) in a running thread",
                        )
                frame = frame.f_back

    def _check_weakrefs(self) -> None:
        for key in self.strict:
            old = self.pairs[key][0]
            with contextlib.suppress(TypeError):
                if weakref.getweakrefcount(old):
                    self._refuse(old, "a weak reference")

    def _rewrite(self, referrer: Any) -> None:
        op = self.merge.op
        kind = type(referrer)
        pairs = self.pairs
        if kind is list or isinstance(referrer, collections.deque):
            for index, item in enumerate(referrer):
                if id(item) in pairs:
                    op(OpKind.SETITEM, referrer, index, self._new(item))
        elif isinstance(referrer, dict):
            if _looks_like_class_dict(referrer):
                self._refuse_holding(referrer, "a class attribute")
                return
            for key, value in list(referrer.items()):
                new_value = self._new(value) if id(value) in pairs else value
                if id(key) in pairs:
                    op(OpKind.DELITEM, referrer, key)
                    op(OpKind.SETITEM, referrer, self._new(key), new_value)
                elif new_value is not value:
                    op(OpKind.SETITEM, referrer, key, new_value)
        elif isinstance(referrer, set):
            for item in list(referrer):
                if id(item) in pairs:
                    op(OpKind.SETDISCARD, referrer, None, item)
                    op(OpKind.SETADD, referrer, None, self._new(item))
        elif kind is types.CellType:
            op(OpKind.SETCELL, referrer, None, self._new(referrer.cell_contents))
        elif isinstance(referrer, type | types.FunctionType | types.MethodType | tuple):
            self._refuse_holding(referrer, f"a {kind.__name__} ({short_repr(referrer)})")
        elif not self._rewrite_attributes(referrer):
            where = f"an object of type {kind.__module__}.{kind.__qualname__}"
            self._refuse_holding(referrer, where)

    def _rewrite_attributes(self, referrer: Any) -> bool:
        """Rewrite references held in an object's attributes (3.11+ keeps small instance
        dictionaries inline, so the object itself is the referrer); False if none was found."""
        attributes = dict(getattr(referrer, "__dict__", {}))
        for name in slot_names(type(referrer)):
            with contextlib.suppress(AttributeError):
                attributes[name] = object.__getattribute__(referrer, name)
        found = False
        for name, value in attributes.items():
            if id(value) in self.pairs:
                self.merge.op(OpKind.SETATTR, referrer, name, self._new(value))
                found = True
        return found

    def _refuse_holding(self, referrer: Any, where: str) -> None:
        """Refuse only if `referrer` holds a strict target (instances, not classes)."""
        targets = [r for r in gc.get_referents(referrer) if id(r) in self.strict]
        if targets:
            self._refuse(targets[0], where)
