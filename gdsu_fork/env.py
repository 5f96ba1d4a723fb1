"""The view of the old and new environments that migrations and validations receive."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import PatchError
from .patch import Target


class _Resolver:
    """Looks up "module:qualname" in a set of module namespaces."""

    def __init__(self, namespaces: Mapping[str, Mapping[str, Any]], label: str) -> None:
        self._namespaces = namespaces
        self._label = label

    def __getitem__(self, name: str) -> Any:
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
        self._pairs: dict[str, list[tuple[Any, Any]]] = {}

    def removed_fields(self, cls: type) -> frozenset[str]:
        """Fields `cls` (or a base) declared before the update and not after; set per update."""
        return frozenset()

    def instance(self, cls: type, **attrs: Any) -> Any:
        """A blank instance of `cls` (no `__init__` runs), with `attrs` set, frozen classes too."""
        obj = cls.__new__(cls)
        for key, value in attrs.items():
            object.__setattr__(obj, key, value)
        return obj

    def record_pairs(self, name: str, pairs: list[tuple[Any, Any]]) -> None:
        """Remember the migrated instances of class `name` for `pairs`."""
        self._pairs.setdefault(name, []).extend(pairs)

    def pairs(self, name: str) -> list[tuple[Any, Any]]:
        """(old snapshot, migrated instance) for every migrated instance of class `name`."""
        Target.parse(name, what="env.pairs")
        return list(self._pairs.get(name, []))
