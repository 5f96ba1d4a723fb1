"""Migrating live instances of changed classes, eagerly, inside the update child.

An instance is affected when its class or a base changed its fields or bases, or when a policy is
registered for its class or a base (DESIGN §5). Each affected instance gets a blank instance of
its new class filled by name, then its policy; the result becomes the instance in the commit —
same object, new class and state — through two assignments: `__class__` and `__dict__` (or the
slots).
"""

from __future__ import annotations

import types
from collections.abc import Iterable
from typing import Any

from .analysis import subclasses_of
from .delta import OpKind
from .env import Env
from .errors import UpdateRefused
from .merge import Merge
from .patch import Patch
from .policies import ByName, set_field, state_of
from .rewrite import Rewrites


def qualified(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


class _Draft:
    """Collects the fields of a tuple-based instance (a NamedTuple), built once they are known."""


def _blank(cls: type) -> Any:
    try:
        return cls.__new__(cls)
    except TypeError:
        return object.__new__(cls)


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

    def snapshot(self, obj: Any) -> Any:
        """A detached copy of `obj` with its current state and its class's current code."""
        cls = self.of(type(obj))
        if isinstance(obj, tuple):
            return tuple.__new__(cls, obj)  # its fields are its items
        copy = _blank(cls)
        for name, value in state_of(obj).items():
            set_field(copy, name, value)
        return copy


class Migration:
    """Finds the affected instances among `objects` and records how each one changes."""

    def __init__(
        self,
        patch: Patch,
        merge: Merge,
        env: Env,
        module_names: Iterable[str],
        rewrites: Rewrites,
    ) -> None:
        self.patch = patch
        self.merge = merge
        self.env = env
        self.rewrites = rewrites
        self.relaid = {pair.old for pair in merge.classes if pair.layout_changed}
        self.new_of: dict[type, type] = {pair.old: pair.new for pair in merge.classes}
        self._old_fields = {pair.old: pair.old_fields or frozenset() for pair in merge.classes}
        self._new_fields = {pair.new: pair.new_fields or frozenset() for pair in merge.classes}
        self.modules = set(module_names)
        self.old_versions = OldVersions()
        self.count = 0
        env.removed_fields = self.removed_fields  # type: ignore[method-assign]

    def removed_fields(self, cls: type) -> frozenset[str]:
        """Fields that `cls` and its bases declared before the update and no longer declare
        after it (a field pulled up into a base is not removed)."""
        before: set[str] = set()
        for base in cls.__mro__:
            before |= self._old_fields.get(base, frozenset())
        after: set[str] = set()
        for base in self.new_of.get(cls, cls).__mro__:
            after |= self._new_fields.get(self.new_of.get(base, base), frozenset())
        return frozenset(before - after)

    def policy_for(self, cls: type) -> Any:
        for base in cls.__mro__:
            policy = self.patch.migrations.get(qualified(base))
            if policy is not None:
                return policy
        return None

    def affected_classes(self) -> set[type]:
        """Live (old) classes whose instances must be migrated, subclasses included."""
        roots = {p.old for p in self.merge.classes if p.fields_changed or p.bases_changed}
        for name in self.patch.migrations:
            cls = self.env.old.get(name)
            if isinstance(cls, type):
                roots.add(cls)
        roots.update(cls for _, cls in self.merge.removed_classes)
        return subclasses_of(roots)

    def _in_new_version(self, cls: type, old_cls: type) -> bool:
        mapped = self.merge.replacements.get(id(cls), cls)
        if mapped is old_cls or cls in self.new_of.values():
            return True
        return cls.__module__ in self.modules and mapped not in {
            c for _, c in self.merge.removed_classes
        }

    def migrate(self, objects: Iterable[Any]) -> None:
        """Migrate every affected instance among `objects`; raise to refuse the update."""
        affected = self.affected_classes()
        if not affected:
            return
        self._check_relaid_subclasses(affected)
        for pair in self.merge.classes:
            if pair.layout_changed:
                self.rewrites.become(pair.old, pair.new, strict=False)
        removed = {cls: name for name, cls in self.merge.removed_classes}
        by_name = ByName()
        pairs: dict[str, list[tuple[Any, Any]]] = {}
        seen: set[int] = set()
        for obj in objects:
            old_cls = type(obj)
            if old_cls not in affected or id(obj) in seen:
                continue
            seen.add(id(obj))
            policy = self.policy_for(old_cls)
            if old_cls in removed and policy is None:
                msg = (
                    f"{removed[old_cls]} is removed but live instances remain (e.g. {obj!r:.80}); "
                    f"register patch.migrate({removed[old_cls]!r}, policy) returning an instance "
                    f"of a class of the new version"
                )
                raise UpdateRefused(msg)
            snapshot = self.old_versions.snapshot(obj)
            target = self.new_of.get(old_cls, old_cls)
            draft = _Draft() if issubclass(target, tuple) else _blank(target)
            new = None if old_cls in removed else by_name(obj, draft, self.env)
            result = policy(obj, new, self.env) if policy is not None else new
            if isinstance(result, _Draft):
                result = target(**vars(result))
            self._check_result(obj, result, policy)
            self._record(obj, result)
            migrated = result if old_cls in self.relaid else obj
            for base in old_cls.__mro__:
                if base.__module__ in self.modules:
                    pairs.setdefault(qualified(base), []).append((snapshot, migrated))
            self.count += 1
        for name, found in pairs.items():
            self.env.record_pairs(name, found)

    def _check_result(self, obj: Any, result: Any, policy: Any) -> None:
        cls = type(result)
        if isinstance(
            result, type | types.ModuleType | types.FunctionType
        ) or not self._in_new_version(cls, type(obj)):
            msg = (
                f"the migration {policy!r} of a {qualified(type(obj))} returned "
                f"{cls.__module__}.{cls.__qualname__}, which is not a class of the new version of "
                f"the patched modules ({', '.join(sorted(self.modules))})"
            )
            raise UpdateRefused(msg)

    def _check_relaid_subclasses(self, affected: set[type]) -> None:
        for cls in affected:
            relaid_bases = [b for b in cls.__mro__[1:] if b in self.relaid]
            if relaid_bases and cls not in self.relaid:
                self.merge.refusals.append(
                    f"{qualified(cls)} derives from {qualified(relaid_bases[0])}, whose layout "
                    f"changes: give the new source of {cls.__module__} in the same patch"
                )

    def _record(self, obj: Any, result: Any) -> None:
        if type(obj) in self.relaid:
            self.rewrites.become(obj, result)
            return
        merge = self.merge
        if merge.replacements.get(id(type(result)), type(result)) is not type(obj):
            merge.op(OpKind.SETATTR, obj, "__class__", type(result))
        if result is not obj:
            merge.replacements[id(result)] = obj
            merge.keep.append(result)
        if hasattr(result, "__dict__"):
            merge.op(OpKind.SETATTR, obj, "__dict__", result.__dict__)
        else:
            for name, value in state_of(result).items():
                merge.op(OpKind.SETATTR, obj, name, value)
