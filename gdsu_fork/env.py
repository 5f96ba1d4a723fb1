"""The view of the old and new environments that migrations and validations receive."""

from __future__ import annotations

import functools
import types
from collections.abc import Mapping
from typing import Any

from . import _migrate
from .errors import PatchError
from .patch import Target
from .policies import set_field


def blank(cls: type) -> Any:
    """A new instance of `cls` without running `__init__`."""
    try:
        return cls.__new__(cls)
    except TypeError:
        return object.__new__(cls)


@functools.cache
def slot_names(cls: type) -> tuple[str, ...]:
    """The slot names of `cls` and its bases (not __dict__ and __weakref__)."""
    names: list[str] = []
    for base in cls.__mro__:
        slots = base.__dict__.get("__slots__", ())
        names.extend(
            n
            for n in ((slots,) if isinstance(slots, str) else slots)
            if n not in ("__dict__", "__weakref__")
        )
    return tuple(names)


def _copy_member(value: Any) -> Any:
    """A function (or method wrapper) frozen with its current code."""
    if isinstance(value, types.FunctionType):
        copy = types.FunctionType(
            value.__code__, value.__globals__, value.__name__, value.__defaults__, value.__closure__
        )
        copy.__kwdefaults__ = value.__kwdefaults__
        copy.__qualname__ = value.__qualname__
        return copy
    if isinstance(value, staticmethod | classmethod):
        return type(value)(_copy_member(value.__func__))
    if isinstance(value, property):
        return property(
            *(_copy_member(f) for f in (value.fget, value.fset, value.fdel)), value.__doc__
        )
    return value


class OldVersions:
    """Copies of live classes as they are before the commit, so that the old side of
    `env.pairs` keeps the old behaviour: the commit changes the live classes in place."""

    _SKIP = frozenset({"__dict__", "__weakref__"})

    def __init__(self) -> None:
        self._copies: dict[type, type] = {}

    def of(self, cls: type) -> type:
        if cls in self._copies:
            return self._copies[cls]
        if cls.__module__ == "builtins" or not hasattr(cls, "__dict__"):
            return cls
        slots = cls.__dict__.get("__slots__")
        slot_names = {slots} if isinstance(slots, str) else set(slots or ())
        namespace = {
            k: _copy_member(v)
            for k, v in cls.__dict__.items()
            if k not in self._SKIP and k not in slot_names
        }
        if slots is not None:
            namespace["__slots__"] = slots
        try:
            bases = tuple(self.of(b) for b in cls.__bases__)
            copy = type.__new__(type(cls), cls.__name__, bases, namespace)
        except (TypeError, ValueError):
            copy = cls  # an exotic layout or metaclass: the live class will do
        self._copies[cls] = copy
        return copy

    def snapshot(self, obj: Any, cls: type, state: dict[str, Any]) -> Any:
        """A detached copy of `obj` as it was: class `cls` (its code then) and `state`."""
        copy_cls = self.of(cls)
        if isinstance(obj, tuple):
            return tuple.__new__(copy_cls, obj)  # its fields are its items
        copy = blank(copy_cls)
        for name, value in state.items():
            set_field(copy, name, value)
        return copy


_MISSING: Any = object()


class _Resolver(dict[str, Any]):
    """Looks up "module:qualname" in a set of module namespaces.

    A dict of the names resolved so far: a migration looks the same names up for every
    instance, and a hit is then a plain (C-level) dict lookup.
    """

    def __init__(self, namespaces: Mapping[str, Mapping[str, Any]], label: str) -> None:
        super().__init__()
        self._namespaces = namespaces
        self._label = label

    def __missing__(self, name: str) -> Any:
        found = self[name] = self._resolve(name)
        return found

    def _resolve(self, name: str) -> Any:
        target = Target.parse(name, what=f"env.{self._label}")
        namespace = self._namespaces.get(target.module)
        obj: Any = namespace
        for part in target.qualname.split("."):
            scope = obj if isinstance(obj, Mapping) else getattr(obj, "__dict__", {})
            if part not in scope:
                msg = f"env.{self._label}[{name!r}]: the {self._label} environment has no {name}"
                raise PatchError(msg)
            obj = scope[part]
        return obj

    def get(self, name: str, default: Any = None) -> Any:
        """Like `__getitem__`, with a default when the name does not resolve."""
        try:
            return self[name]
        except PatchError:
            return default


class Env:
    """What a migration policy or a validation can see of the update.

    `old[name]` resolves in the program as it was before the update, `new[name]` in the new
    environment; `pairs(name)` yields (old snapshot, migrated instance) for validations.
    """

    def __init__(
        self,
        old_namespaces: Mapping[str, Mapping[str, Any]],
        new_namespaces: Mapping[str, Mapping[str, Any]],
    ) -> None:
        self.old = _Resolver(old_namespaces, "old")
        self.new = _Resolver(new_namespaces, "new")
        self._pairs: dict[str, list[tuple[Any, type, dict[str, Any], Any]]] = {}
        self.old_versions = OldVersions()
        self._plain: set[type] = set()  # classes whose instances env.instance makes directly
        # A policy calls env.instance once per instance: for the classes in _plain, a C function
        # (no Python frame, no dict for the keyword arguments) stands before the method below.
        self.instance = functools.partial(  # type: ignore[method-assign]
            _migrate.instance, self._plain, types.MethodType(Env.instance, self)
        )

    def forget_lookups(self) -> None:
        """Drop cached `old`/`new` lookups: after the child applied the delta, new classes are
        the ones decoded from it, as in the parent."""
        self.old.clear()
        self.new.clear()

    def removed_fields(self, cls: type) -> frozenset[str]:
        """Fields `cls` (or a base) declared before the update and not after; set per update."""
        return frozenset()

    def instance(self, cls: type, /, **attrs: Any) -> Any:
        """A blank instance of `cls` (no `__init__` runs), with `attrs` set, frozen classes too.
        Also decides which classes are plain (see `__init__`)."""
        obj = blank(cls)
        namespace = getattr(obj, "__dict__", None)
        if namespace is not None and not slot_names(cls):
            namespace.update(attrs)  # like object.__setattr__ for a class without slots
            if type(obj) is cls and cls.__new__ is object.__new__:
                self._plain.add(cls)
        else:
            for key, value in attrs.items():
                set_field(obj, key, value)
        return obj

    def record_pairs(
        self, names: list[str], entries: list[tuple[Any, type, dict[str, Any], Any]]
    ) -> None:
        """Remember migrated instances — (instance, old class, old state, migrated object) —
        under each class name they answer to."""
        for name in names:
            self._pairs.setdefault(name, []).extend(entries)

    def pairs(self, name: str) -> list[tuple[Any, Any]]:
        """(old snapshot, migrated instance) for every migrated instance of class `name`.

        The old snapshot is a detached copy with the old state and the old code of its class.
        """
        Target.parse(name, what="env.pairs")
        snapshot = self.old_versions.snapshot
        return [(snapshot(o, c, s), m) for o, c, s, m in self._pairs.get(name, [])]
