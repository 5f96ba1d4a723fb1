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


def qualified(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _blank(cls: type) -> Any:
    try:
        return cls.__new__(cls)
    except TypeError:
        return object.__new__(cls)


def _snapshot(obj: Any) -> Any:
    """A detached copy of `obj` as it is now, for `env.pairs` (old side)."""
    copy = _blank(type(obj))
    for name, value in state_of(obj).items():
        set_field(copy, name, value)
    return copy


class Migration:
    """Finds the affected instances among `objects` and records how each one changes."""

    def __init__(self, patch: Patch, merge: Merge, env: Env, module_names: Iterable[str]) -> None:
        self.patch = patch
        self.merge = merge
        self.env = env
        self.new_of: dict[type, type] = {pair.old: pair.new for pair in merge.classes}
        self.removed: dict[type, frozenset[str]] = {
            pair.old: (pair.old_fields or frozenset()) - (pair.new_fields or frozenset())
            for pair in merge.classes
        }
        self.modules = set(module_names)
        self.count = 0
        env.removed_fields = self.removed_fields  # type: ignore[method-assign]

    def removed_fields(self, cls: type) -> frozenset[str]:
        """Fields that `cls` or one of its bases declared before the update and not after."""
        found: set[str] = set()
        for base in cls.__mro__:
            found |= self.removed.get(base, frozenset())
        return frozenset(found)

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
            snapshot = _snapshot(obj)
            new = (
                None
                if old_cls in removed
                else by_name(obj, _blank(self.new_of.get(old_cls, old_cls)), self.env)
            )
            result = policy(obj, new, self.env) if policy is not None else new
            self._check_result(obj, result, policy)
            self._record(obj, result)
            for base in old_cls.__mro__:
                if base.__module__ in self.modules:
                    pairs.setdefault(qualified(base), []).append((snapshot, obj))
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

    def _record(self, obj: Any, result: Any) -> None:
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
