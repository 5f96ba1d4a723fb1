"""Encoding and decoding of the delta: what the update child sends back to the paused program.

The child and the parent share the heap as it was at the fork. So the delta names every object
that existed then by its address (a pickle *persistent id*) and carries by value only what the
child created: new code, new functions, new classes, new values. The parent resolves addresses
while it is paused with its collector off, so every address still holds the object the child saw.
"""

from __future__ import annotations

import abc
import ctypes
import enum
import gc
import io
import marshal
import pickle
import types
from typing import Any, NamedTuple

from .bulk import BulkMigration


class OpKind(enum.IntEnum):
    """What one operation of the commit does; every kind only assigns."""

    SETATTR = 1  # setattr(target, key, value); classes through type.__setattr__
    DELATTR = 2
    SETITEM = 3  # target[key] = value (module dicts, registries)
    DELITEM = 4
    SETCELL = 5  # target.cell_contents = value
    SETADD = 6  # target.add(value)
    SETDISCARD = 7  # target.discard(value)


class Op(NamedTuple):
    """One assignment of the commit."""

    kind: OpKind
    target: Any
    key: Any
    value: Any


class Delta(NamedTuple):
    """What a commit applies: new modules first (so their globals resolve), then the operations,
    then the instances migrated in place: those migrated in the pause (`bulk`), and those taken
    from the rehearsal (`reused`, see ahead.py)."""

    new_modules: list[types.ModuleType]
    ops: list[Op]
    bulk: BulkMigration | None = None
    reused: BulkMigration | None = None


# --- rebuilding what the child created (run in the parent while unpickling) -------------------

_EMPTY = ("gdsu-empty-cell",)


def _make_code(data: bytes) -> types.CodeType:
    return marshal.loads(data)


def _make_cell() -> types.CellType:
    return types.CellType()


def _fill_cell(cell: types.CellType, state: dict[str, Any]) -> None:
    cell.cell_contents = state["contents"]


def _make_function(
    code: types.CodeType,
    globals_: dict[str, Any],
    name: str,
    closure: tuple[types.CellType, ...] | None,
) -> types.FunctionType:
    return types.FunctionType(code, globals_, name, None, closure)


_FUNCTION_ATTRS = (
    "__defaults__",
    "__kwdefaults__",
    "__qualname__",
    "__module__",
    "__doc__",
    "__annotations__",
)


def _fill_function(fn: types.FunctionType, state: dict[str, Any]) -> None:
    for key, value in state.items():
        setattr(fn, key, value)


def _make_class(meta: type, name: str, bases: tuple[type, ...], fixed: dict[str, Any]) -> type:
    # type.__new__ rather than meta(...): the metaclass's Python code must not run in the commit.
    return type.__new__(meta, name, bases, dict(fixed))


def _fill_class(cls: type, state: dict[str, Any]) -> None:
    for key, value in state.items():
        type.__setattr__(cls, key, value)
    if isinstance(cls, abc.ABCMeta):
        abc._abc_init(cls)  # type: ignore[attr-defined]


def _make_module(name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    _LOADING_MODULES[name] = module
    return module


def _fill_module(module: types.ModuleType, state: dict[str, Any]) -> None:
    module.__dict__.update(state)


# modules created by the delta being loaded, so their __dict__ can be referred to by name
_LOADING_MODULES: dict[str, types.ModuleType] = {}

# class attributes the interpreter or a base class rebuilds itself
_CLASS_SKIP = frozenset({"__dict__", "__weakref__", "_abc_impl"})


def _class_reduction(cls: type) -> tuple[Any, ...]:
    slots = cls.__dict__.get("__slots__")
    fixed: dict[str, Any] = {"__module__": cls.__module__, "__qualname__": cls.__qualname__}
    if slots is not None:
        fixed["__slots__"] = slots
    slot_names = {slots} if isinstance(slots, str) else set(slots or ())
    state = {
        k: v
        for k, v in cls.__dict__.items()
        if k not in _CLASS_SKIP and k not in fixed and k not in slot_names
    }
    return (
        _make_class,
        (type(cls), cls.__name__, cls.__bases__, fixed),
        state,
        None,
        None,
        _fill_class,
    )


def _function_reduction(fn: types.FunctionType) -> tuple[Any, ...]:
    state = {k: getattr(fn, k) for k in _FUNCTION_ATTRS}
    state.update(fn.__dict__)
    args = (fn.__code__, fn.__globals__, fn.__name__, fn.__closure__)
    return (_make_function, args, state, None, None, _fill_function)


class _DeltaPickler(pickle.Pickler):
    """Pickles what the child created by value, and what existed at the fork by address.

    An object is new if the young-generation snapshot `new_ids` holds it, or if one of our
    reductions just made it (`_fresh`). Tuples always go by value: they are immutable, and the
    pickle machinery makes temporary ones.
    """

    def __init__(
        self,
        file: io.BytesIO,
        new_ids: set[int],
        replacements: dict[int, Any],
        new_module_dicts: dict[int, str],
    ) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._new_ids = new_ids
        self._replacements = replacements
        self._new_module_dicts = new_module_dicts
        self._fresh: set[int] = set()
        self._keep: list[Any] = []  # keeps temporaries alive so their ids stay unique

    def _is_new(self, key: int) -> bool:
        return key in self._new_ids or key in self._fresh

    def persistent_id(self, obj: Any) -> Any:
        if type(obj) is _Old:
            return (id(obj.obj), id(type(obj.obj)))
        key = id(obj)
        if key in self._replacements:
            old = self._replacements[key]
            return (id(old), id(type(old)))
        if key in self._new_module_dicts:
            return ("moddict", self._new_module_dicts[key])
        if type(obj) is tuple or self._is_new(key) or not gc.is_tracked(obj):
            return None
        return (key, id(type(obj)))

    def _mark_fresh(self, obj: Any) -> None:
        self._fresh.add(id(obj))
        self._keep.append(obj)

    def _own_reduction(self, rv: tuple[Any, ...], *built: Any) -> tuple[Any, ...]:
        """Our reductions build the state dict, and `built` (e.g. a class's fixed namespace)."""
        for obj in (rv[2], *built):
            self._mark_fresh(obj)
        return rv

    def _fresh_reduction(self, rv: tuple[Any, ...]) -> tuple[Any, ...]:
        """Mark as new the containers a reduction has just built for a new object.

        Those are the state (and a (dict, slots) pair's members) and the item iterators.
        Arguments are references (a namedtuple's fields), never marked: a container a reduction
        builds into its arguments (a set subclass's list) is a known limit, caught by the type
        check on the parent's side in most cases.
        """
        candidates = [rv[i] for i in (2, 3, 4) if len(rv) > i]
        if len(rv) > 2 and isinstance(rv[2], tuple):
            candidates.extend(rv[2])
        for part in candidates:
            if gc.is_tracked(part) and not self._is_new(id(part)) and type(part) is not tuple:
                self._mark_fresh(part)
        return rv

    def reducer_override(self, obj: Any) -> Any:
        kind = type(obj)
        if kind is types.CodeType:
            return (_make_code, (marshal.dumps(obj),))
        if kind is types.FunctionType:
            return self._own_reduction(_function_reduction(obj))
        if kind is types.CellType:
            try:
                contents = obj.cell_contents
            except ValueError:
                return (_make_cell, ())
            return self._own_reduction(
                (_make_cell, (), {"contents": contents}, None, None, _fill_cell)
            )
        if kind is types.ModuleType:
            state = dict(obj.__dict__)
            return self._own_reduction(
                (_make_module, (obj.__name__,), state, None, None, _fill_module)
            )
        if kind is staticmethod or kind is classmethod:
            return (kind, (obj.__func__,))
        if kind is property:
            return (property, (obj.fget, obj.fset, obj.fdel, obj.__doc__))
        if isinstance(obj, type):
            if not self._is_new(id(obj)):
                return NotImplemented  # a builtin type: pickled by name
            rv = _class_reduction(obj)
            return self._own_reduction(rv, rv[1][3])
        reduce = getattr(obj, "__reduce_ex__", None)
        if reduce is None:
            return NotImplemented
        return self._fresh_reduction(reduce(pickle.HIGHEST_PROTOCOL))


class _Old:
    """Marks an operation's target: always an object of the fork, sent by address.

    Needed because an empty dict is not tracked by the collector, so tracking alone cannot tell
    an old empty registry from a new one.
    """

    __slots__ = ("obj",)

    def __init__(self, obj: Any) -> None:
        self.obj = obj


def encode(delta: Delta, *, replacements: dict[int, Any], new_ids: set[int] | None = None) -> bytes:
    """Serialize a delta built in the child, after `gc.freeze()` marked what existed at the fork.

    `replacements` maps the id of a new object to the old object it becomes (a class or function
    that keeps its identity): references to the new one travel as references to the old one.
    `new_ids`: ids of the objects the child made (default: the young generations now).
    """
    ops = [(k, _Old(t), key, v) for k, t, key, v in delta.ops]
    payload = (delta.new_modules, ops, delta.bulk, delta.reused)
    new_module_dicts = {id(m.__dict__): m.__name__ for m in delta.new_modules}
    # (after building `ops`, so that the list counts as new)
    new_ids = young_object_ids() if new_ids is None else new_ids | {id(ops)}
    buffer = io.BytesIO()
    _DeltaPickler(buffer, new_ids, replacements, new_module_dicts).dump(payload)
    return buffer.getvalue()


# CPython's object header: the reference count, then the type pointer (3.11-3.13, default build).
_OB_TYPE_OFFSET = ctypes.sizeof(ctypes.c_ssize_t)


def _object_at(address: int, type_address: int) -> Any:
    """The object at `address`, after checking it still has the type the child saw there."""
    seen = ctypes.c_void_p.from_address(address + _OB_TYPE_OFFSET).value
    if seen != type_address:
        msg = f"the object at {address:#x} is not the one the update child saw (type changed)"
        raise pickle.UnpicklingError(msg)
    return ctypes.cast(address, ctypes.py_object).value


class _DeltaUnpickler(pickle.Unpickler):
    def persistent_load(self, pid: Any) -> Any:
        if isinstance(pid, tuple) and len(pid) == 2 and isinstance(pid[0], int):
            return _object_at(*pid)
        if isinstance(pid, tuple) and len(pid) == 2 and pid[0] == "moddict":
            return _LOADING_MODULES[pid[1]].__dict__
        msg = f"unknown reference {pid!r} in the delta"
        raise pickle.UnpicklingError(msg)


def decode(data: bytes | memoryview) -> Delta:
    """Rebuild a delta in the process that was forked from (or is) the child's parent.

    Must run while the heap is as it was at the fork: paused, collector off.
    """
    _LOADING_MODULES.clear()
    try:
        new_modules, ops, bulk, reused = _DeltaUnpickler(io.BytesIO(data)).load()
    finally:
        _LOADING_MODULES.clear()
    return Delta(
        new_modules,
        [Op(OpKind(k), target, key, value) for k, target, key, value in ops],
        bulk,
        reused,
    )


def young_object_ids() -> set[int]:
    """Ids of every tracked object outside the permanent generation (see `gc.freeze`)."""
    return {id(o) for o in gc.get_objects()}
