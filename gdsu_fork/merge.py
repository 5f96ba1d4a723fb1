"""Merging the new version of a module into the live one, keeping every identity.

Runs in the update child, after the new source was executed into the module's own namespace. It
pairs each old object with its new counterpart (functions, classes, closures, decorator wrappers)
and records the assignments that turn the old objects into the new version: new code into old
functions, new members into old classes, new values for changed globals. Nothing of the live
program is modified here; the operations are applied later by `commit.apply_ops`.
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import types
from typing import Any

from .analysis import (
    Path,
    Step,
    bindings,
    class_body,
    class_fields,
    code_equivalent,
    pair_nested,
    same_statements,
)
from .delta import Op, OpKind
from .report import Change, ChangeKind

_MISSING: Any = object()
_ATOMS = (type(None), bool, int, float, complex, str, bytes)
# class members the interpreter manages itself
_CLASS_SKIP = frozenset({"__dict__", "__weakref__", "_abc_impl", "__module__"})


def is_atom(value: Any) -> bool:
    """Immutable plain data: taking the new value of it loses no live state."""
    if type(value) in _ATOMS:
        return True
    if type(value) in (tuple, frozenset):
        return all(is_atom(v) for v in value)
    return False


def _same(a: Any, b: Any) -> bool:
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:
        return False


def _cell_value(cell: types.CellType) -> Any:
    try:
        return cell.cell_contents
    except ValueError:
        return _MISSING


def _slots(cls: type) -> tuple[str, ...] | None:
    slots = cls.__dict__.get("__slots__")
    if slots is None:
        return None
    return (slots,) if isinstance(slots, str) else tuple(slots)


@dataclasses.dataclass(frozen=True)
class ClassPair:
    """A live class and its new version; `fields` come from the class bodies (None: unknown)."""

    old: type
    new: type
    path: Path
    old_fields: frozenset[str] | None
    new_fields: frozenset[str] | None
    bases_changed: bool
    layout_changed: bool = False  # the new class object replaces the old one

    @property
    def fields_changed(self) -> bool:
        return self.old_fields is not None and self.old_fields != self.new_fields


class Merge:
    """The operations, replacements and findings of merging one patch's modules."""

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.replacements: dict[int, Any] = {}  # id(new object) -> the old object it becomes
        self.keep: list[Any] = []  # new objects paired with old ones, kept alive for their ids
        self.changes: list[Change] = []
        self.blocking: list[Path] = []  # functions whose old code must not be running
        self.nested: dict[types.CodeType, types.CodeType] = {}  # old nested code -> new
        self.refusals: list[str] = []
        self.classes: list[ClassPair] = []
        self.removed_classes: list[tuple[str, type]] = []  # ("module:qualname", class)
        self._merged: set[tuple[int, int]] = set()

    # --- recording ---------------------------------------------------------------------------

    def op(self, kind: OpKind, target: Any, key: Any, value: Any = None) -> None:
        self.ops.append(Op(kind, target, key, value))

    def change(self, module: str, qualname: str, kind: ChangeKind) -> None:
        item = Change(f"{module}:{qualname}", kind)
        if item not in self.changes:
            self.changes.append(item)

    def _pair(self, old: Any, new: Any) -> bool:
        """Record that `new` becomes `old`; False if this pair was already merged."""
        key = (id(old), id(new))
        if key in self._merged:
            return False
        self._merged.add(key)
        self.replacements[id(new)] = old
        self.keep.append(new)
        return True

    # --- modules -------------------------------------------------------------------------------

    def merge_module(
        self,
        module: types.ModuleType,
        old_ns: dict[str, Any],
        old_tree: ast.Module,
        new_tree: ast.Module,
    ) -> None:
        """Pair the module's new namespace (already executed into it) with its old snapshot."""
        name = module.__name__
        namespace = module.__dict__
        old_b, new_b = bindings(old_tree.body), bindings(new_tree.body)
        for key, new in list(namespace.items()):
            old = old_ns.get(key, _MISSING)
            if old is new:
                continue
            if old is _MISSING:
                self.op(OpKind.SETITEM, namespace, key, new)
                if isinstance(new, types.FunctionType | type):
                    self.change(name, key, ChangeKind.ADDED)
                continue
            path: Path = (name, (("g", key),))
            same = (
                None if _definitions(old, new) else same_statements(old_b.get(key), new_b.get(key))
            )
            kept = self.merge_value(old, new, path, key, same, old_tree.body, new_tree.body)
            if not kept:
                self.op(OpKind.SETITEM, namespace, key, new)
        for key in old_b:
            if key not in new_b and key in old_ns:
                self.op(OpKind.DELITEM, namespace, key)
                old = old_ns[key]
                if isinstance(old, types.FunctionType | type):
                    self.change(name, key, ChangeKind.REMOVED)
                if isinstance(old, type):
                    self.removed_classes.append((f"{name}:{key}", old))
                if isinstance(old, types.FunctionType):
                    self.blocking.append((name, (("g", key),)))

    # --- values --------------------------------------------------------------------------------

    def merge_value(
        self,
        old: Any,
        new: Any,
        path: Path,
        qualname: str,
        same_statements: bool | None,
        old_body: list[ast.stmt] | None = None,
        new_body: list[ast.stmt] | None = None,
        replaceable: bool = False,
    ) -> bool:
        """Make `old` the new version where identity matters; False: take `new` instead.

        `same_statements` says whether the statements binding the name are unchanged (None:
        unknown, e.g. a closure cell): unchanged statements keep the live value.
        """
        if isinstance(old, types.FunctionType) and isinstance(new, types.FunctionType):
            return self.merge_function(old, new, path, qualname, replaceable)
        if isinstance(old, type) and isinstance(new, type):
            short = qualname.rsplit(".", 1)[-1]
            return self.merge_class(
                old, new, path, qualname, class_body(old_body, short), class_body(new_body, short)
            )
        if type(old) is type(new) and isinstance(old, staticmethod | classmethod):
            if old.__func__ is new.__func__:
                return True  # e.g. classmethod(types.GenericAlias)
            if not isinstance(old.__func__, types.FunctionType) or not isinstance(
                new.__func__, types.FunctionType
            ):
                return False
            sub: Path = (path[0], (*path[1], ("f", "")))
            return self.merge_function(old.__func__, new.__func__, sub, qualname, replaceable)
        if type(old) is type(new) is property:
            return self._merge_property(old, new, path, qualname)
        wrapped_old = _wrapped(old)
        if wrapped_old is not None and type(old) is type(new) and not is_atom(old):
            wrapped_new = _wrapped(new)
            if isinstance(wrapped_old, types.FunctionType) and isinstance(
                wrapped_new, types.FunctionType
            ):
                # e.g. functools.lru_cache: keep the wrapper (and its state), update the function
                self.merge_function(
                    wrapped_old, wrapped_new, (path[0], (*path[1], ("w", ""))), qualname
                )
                self._pair(old, new)
                return True
        if same_statements:
            return True
        if same_statements is None and not (is_atom(old) and is_atom(new)):
            return True  # live state reached through a closure: kept
        return _same(old, new) and is_atom(old)

    def _merge_property(self, old: property, new: property, path: Path, qualname: str) -> bool:
        accessors = ("fget", "fset", "fdel")
        if any((getattr(old, a) is None) != (getattr(new, a) is None) for a in accessors):
            return False
        for name in accessors:
            o, n = getattr(old, name), getattr(new, name)
            if isinstance(o, types.FunctionType) and isinstance(n, types.FunctionType):
                self.merge_function(o, n, (path[0], (*path[1], ("p", name))), qualname)
        self._pair(old, new)
        return True

    # --- functions -----------------------------------------------------------------------------

    def merge_function(
        self,
        old: types.FunctionType,
        new: types.FunctionType,
        path: Path,
        qualname: str,
        replaceable: bool = False,
    ) -> bool:
        """Give `old` the code, defaults and closure values of `new`; True when that is possible.

        A function whose closure variables changed cannot be updated in place. If it is
        `replaceable` (a class attribute: found through its class, like the methods a
        dataclass generates), False tells the caller to put the new function in its place;
        otherwise the update is refused.
        """
        oc, nc = old.__code__, new.__code__
        if oc.co_freevars != nc.co_freevars and replaceable:
            self.change(old.__module__ or path[0], qualname, ChangeKind.CHANGED)
            self.blocking.append(path)
            return False
        if not self._pair(old, new):
            return True
        module = old.__module__ or path[0]
        if oc.co_freevars != nc.co_freevars:
            self.refusals.append(
                f"{module}:{qualname}: its free variables changed from {oc.co_freevars} to "
                f"{nc.co_freevars}; a live function cannot take other closure variables, and "
                f"replacing it would leave old references running old code. Keep the enclosing "
                f"variables the same in this update, or restart the program."
            )
            return True
        same_code = code_equivalent(oc, nc)
        if oc != nc:
            self.op(OpKind.SETATTR, old, "__code__", nc)
        if not same_code:
            self.change(module, qualname, ChangeKind.CHANGED)
            self.blocking.append(path)
            for o, n in pair_nested(oc, nc):
                if not code_equivalent(o, n) or o != n:
                    self.nested[o] = n
        self._merge_defaults(old, new)
        for attr in ("__doc__", "__annotations__"):
            if not _same(getattr(old, attr), getattr(new, attr)):
                self.op(OpKind.SETATTR, old, attr, getattr(new, attr))
        self._merge_function_dict(old, new, path, qualname)
        self._merge_closure(old, new, path, qualname)
        return True

    def _merge_defaults(self, old: types.FunctionType, new: types.FunctionType) -> None:
        """New defaults, except a mutable default of an unchanged signature: that is live state."""
        for attr in ("__defaults__", "__kwdefaults__"):
            o, n = getattr(old, attr), getattr(new, attr)
            if _same(o, n):
                continue
            values_o = tuple((o or {}).items()) if attr == "__kwdefaults__" else o or ()
            values_n = tuple((n or {}).items()) if attr == "__kwdefaults__" else n or ()
            if len(values_o) != len(values_n) or (is_atom(values_n) and is_atom(values_o)):
                self.op(OpKind.SETATTR, old, attr, n)

    def _merge_function_dict(
        self, old: types.FunctionType, new: types.FunctionType, path: Path, qualname: str
    ) -> None:
        for key, value in new.__dict__.items():
            current = old.__dict__.get(key, _MISSING)
            if key == "__wrapped__" and current is not _MISSING:
                sub: Path = (path[0], (*path[1], ("w", "")))
                if not self.merge_value(current, value, sub, qualname, None):
                    self.op(OpKind.SETATTR, old, key, value)
            elif current is _MISSING:
                self.op(OpKind.SETATTR, old, key, value)
            elif isinstance(current, types.FunctionType) and isinstance(value, types.FunctionType):
                self.merge_function(current, value, path, qualname)

    def _merge_closure(
        self, old: types.FunctionType, new: types.FunctionType, path: Path, qualname: str
    ) -> None:
        for name, old_cell, new_cell in zip(
            old.__code__.co_freevars, old.__closure__ or (), new.__closure__ or (), strict=True
        ):
            o, n = _cell_value(old_cell), _cell_value(new_cell)
            if o is n or n is _MISSING:
                continue
            sub: Path = (path[0], (*path[1], ("c", name)))
            inner = (
                getattr(n, "__qualname__", qualname)
                if isinstance(n, types.FunctionType)
                else qualname
            )
            if o is _MISSING or not self.merge_value(o, n, sub, inner, None):
                self.op(OpKind.SETCELL, old_cell, name, n)

    # --- classes -------------------------------------------------------------------------------

    def merge_class(
        self,
        old: type,
        new: type,
        path: Path,
        qualname: str,
        old_body: list[ast.stmt] | None,
        new_body: list[ast.stmt] | None,
    ) -> bool:
        """Move the new class's members into the old class object, which keeps its identity.

        Returns False when the class's layout changed: then the new class object replaces the
        old one, and its instances become new objects (see rewrite.py).
        """
        module = old.__module__
        old_fields = class_fields(old_body) if old_body is not None else None
        new_fields = class_fields(new_body) if new_body is not None else None
        if _layout_changed(old, new, old_fields, new_fields):
            if (id(old), id(new)) not in self._merged:
                self._merged.add((id(old), id(new)))
                self.keep.append(new)
                self.classes.append(ClassPair(old, new, path, old_fields, new_fields, True, True))
                self.change(module, qualname, ChangeKind.CHANGED)
            return False
        if not self._pair(old, new):
            return True
        if type(old) is not self.replacements.get(id(type(new)), type(new)):
            self.refusals.append(
                f"{module}:{qualname}: its metaclass changed from {type(old).__name__} to "
                f"{type(new).__name__}; a live class cannot change its metaclass."
            )
            return True
        bases = tuple(self.replacements.get(id(b), b) for b in new.__bases__)
        bases_changed = bases != old.__bases__
        if bases_changed:
            self.op(OpKind.SETATTR, old, "__bases__", new.__bases__)
            self.change(module, qualname, ChangeKind.CHANGED)
        pair = ClassPair(old, new, path, old_fields, new_fields, bases_changed)
        self.classes.append(pair)
        if pair.fields_changed:
            self.change(module, qualname, ChangeKind.CHANGED)
        if isinstance(old, enum.EnumMeta) and list(old.__members__) != list(new.__members__):
            self.refusals.append(
                f"{module}:{qualname}: the members of this Enum changed; adding or removing "
                f"members of a live Enum is not supported."
            )
            return True
        old_b = bindings(old_body) if old_body is not None else {}
        new_b = bindings(new_body) if new_body is not None else {}
        members = set(old.__members__) if isinstance(old, enum.EnumMeta) else set()
        slots = set(_slots(new) or ())
        for key, nv in new.__dict__.items():
            if key in _CLASS_SKIP or key in slots or key in members or _enum_internal(old, key):
                continue
            ov = old.__dict__.get(key, _MISSING)
            if ov is nv:
                continue
            if ov is _MISSING:
                self.op(OpKind.SETATTR, old, key, nv)
                if _is_definition(nv):
                    self.change(module, f"{qualname}.{key}", ChangeKind.ADDED)
                continue
            sub: Path = (path[0], (*path[1], ("a", key)))
            same = None if _definitions(ov, nv) else same_statements(old_b.get(key), new_b.get(key))
            kept = self.merge_value(
                ov, nv, sub, f"{qualname}.{key}", same, old_body, new_body, replaceable=True
            )
            if not kept:
                self.op(OpKind.SETATTR, old, key, nv)
        for key in old_b:
            if key not in new.__dict__ and key in old.__dict__:
                self.op(OpKind.DELATTR, old, key)
                ov = old.__dict__[key]
                if _is_definition(ov):
                    self.change(module, f"{qualname}.{key}", ChangeKind.REMOVED)
                if isinstance(ov, type):
                    self.removed_classes.append((f"{module}:{qualname}.{key}", ov))
                fn = ov.__func__ if isinstance(ov, staticmethod | classmethod) else ov
                if isinstance(fn, types.FunctionType):
                    self.blocking.append((path[0], (*path[1], ("a", key))))
        return True


def _layout_changed(
    old: type, new: type, old_fields: frozenset[str] | None, new_fields: frozenset[str] | None
) -> bool:
    """True when instances of `old` cannot take on `new` in place (`__class__` assignment)."""
    if _slots(old) != _slots(new):
        return True
    if issubclass(old, tuple) and old_fields != new_fields:
        return True  # a NamedTuple's length is fixed at creation
    return old.__basicsize__ != new.__basicsize__ or old.__itemsize__ != new.__itemsize__


def _definitions(old: Any, new: Any) -> bool:
    """Both functions or both classes: `merge_value` pairs them without comparing statements."""
    return (isinstance(old, types.FunctionType) and isinstance(new, types.FunctionType)) or (
        isinstance(old, type) and isinstance(new, type)
    )


def _wrapped(obj: Any) -> Any:
    try:
        return obj.__wrapped__
    except Exception:
        return None


def _is_definition(obj: Any) -> bool:
    return isinstance(obj, types.FunctionType | type | staticmethod | classmethod | property)


def _enum_internal(cls: type, key: str) -> bool:
    """Bookkeeping an Enum class keeps about its members: the old members stay."""
    return isinstance(cls, enum.EnumMeta) and key.startswith("_") and key.endswith("_")


__all__ = ["Merge", "Step", "is_atom"]
