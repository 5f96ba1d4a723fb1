"""Bulk migrations by name, between two processes that built the same new environment.

The rehearsal child sends the pause child the migrations it did (ahead.py), and a sibling sends
the update child the half it migrated (sibling.py). Their classes and functions travel by
"module:qualname", resolved again by the receiver in its own new environment; what the sender
made travels by value. Any other object of the program would need an address, valid only in
the sender: then `dumps` says None and the receiver does the work itself.
"""

from __future__ import annotations

import io
import pickle
import sys
import types
from typing import Any

from .analysis import resolve_qualname
from .bulk import BulkMigration
from .delta import _DeltaPickler


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


class _Loader(pickle.Unpickler):
    def persistent_load(self, pid: Any) -> Any:
        if pid[0] == "module":
            return sys.modules[pid[1]]
        found = resolve_qualname(pid[1], pid[2])
        if found is None:
            msg = f"the migrations received name {pid[1]}:{pid[2]}, which is not defined here"
            raise pickle.UnpicklingError(msg)
        return found


def dumps(bulk: BulkMigration, made: set[int], replacements: dict[int, Any]) -> bytes | None:
    """`bulk` by name, or None if it refers to an object of the program. `made`: ids of the
    objects the sender created; `replacements`: its new objects that become old ones."""
    buffer = io.BytesIO()
    try:
        _ByName(buffer, made, replacements, {}).dump(bulk)
    except (NotReusable, pickle.PicklingError, TypeError, AttributeError):
        return None
    return buffer.getvalue()


def loads(data: bytes | memoryview, replacements: dict[int, Any]) -> BulkMigration:
    """A bulk migration from `dumps`, its names resolved here (after the new environment is
    built). A name resolves to the new version of a class this update keeps: `replacements`
    turns it back into the live class, as the instances' own class must be."""
    bulk = _Loader(io.BytesIO(data)).load()
    if not isinstance(bulk, BulkMigration):
        msg = f"expected a bulk migration, got {type(bulk).__name__}"
        raise TypeError(msg)
    bulk.classes = [replacements.get(id(cls), cls) for cls in bulk.classes]
    bulk.reindex()
    return bulk
