"""Reusable migration policies.

A policy is any callable ``(old, new, env) -> object``: `old` is the live instance as it was,
`new` a blank instance of the new class already filled by name, and the return value is what the
instance becomes (it keeps the identity of `old`). The classes here cover the common refactorings
and compose with ``|``: ``Rename(x="a") | AddDefault("z", 0.0)`` runs left to right, each step
receiving the previous step's result as `new`. They are plain objects, importable from a shared
module and reusable across patches.

A policy is *pure* when what it returns depends only on the instance's own fields: it reads
attributes of `old`, may inspect values that cannot change (numbers, strings, tuples of them)
and put any field's value into the result, but never looks inside the mutable objects a field
refers to (a list's items, another instance's attributes) nor at state outside the instance.
The engine migrates the instances of a pure policy while the program still runs, and in the
pause re-migrates only those whose own fields changed since (see ahead.py). The policies here
are pure, except `Compute` and `Reclass`, which are as pure as the function they are given;
declare a function pure with `@pure`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, TypeVar

_MISSING: Any = object()
_F = TypeVar("_F", bound=Callable[..., Any])


def state_of(obj: Any) -> dict[str, Any]:
    """The instance attributes of `obj`: its `__dict__`, its slots, a named tuple's fields."""
    state = dict(getattr(obj, "__dict__", {}))
    fields = getattr(type(obj), "_fields", None)
    if isinstance(obj, tuple) and isinstance(fields, tuple):
        state.update(zip(fields, obj, strict=False))
    for cls in type(obj).__mro__:
        slots = cls.__dict__.get("__slots__", ())
        for name in (slots,) if isinstance(slots, str) else slots:
            if name in ("__dict__", "__weakref__") or name in state:
                continue
            try:
                state[name] = object.__getattribute__(obj, name)
            except AttributeError:
                continue
    return state


def set_field(obj: Any, name: str, value: Any) -> None:
    """Set an attribute even on frozen dataclasses (migration builds the object, nobody sees it)."""
    object.__setattr__(obj, name, value)


def del_field(obj: Any, name: str) -> None:
    """Delete an attribute if present, frozen classes included."""
    with contextlib.suppress(AttributeError):
        object.__delattr__(obj, name)


def has_field(obj: Any, name: str) -> bool:
    """True if `obj` has instance attribute `name` (class attributes do not count)."""
    return name in state_of(obj)


_PURE_MARK = "__gdsu_pure__"


def pure(fn: _F) -> _F:
    """Declare that the migration function `fn` is pure (see the module docstring).

    Declaring an impure function pure can migrate an instance from fields that changed while
    the update waited for its safe point: declare only what reads the instance's own fields.
    """
    try:
        setattr(fn, _PURE_MARK, True)
    except (AttributeError, TypeError) as exc:
        msg = f"pure: cannot mark {fn!r}; give a function, or a Policy whose is_pure() says so"
        raise TypeError(msg) from exc
    return fn


def is_pure(policy: Any) -> bool:
    """Whether a migration `policy` (None: the default by-name one) is pure."""
    if policy is None:
        return True
    if isinstance(policy, Policy):
        return policy.is_pure()
    return getattr(policy, _PURE_MARK, False) is True


class Policy:
    """Base of the composable policies: subclasses implement `__call__`."""

    def __call__(self, old: Any, new: Any, env: Any) -> Any:
        raise NotImplementedError

    def is_pure(self) -> bool:
        """Whether the result depends only on the instance's own fields (module docstring)."""
        return False

    def __or__(self, other: Callable[[Any, Any, Any], Any]) -> Chain:
        return Chain(self, other)

    def __ror__(self, other: Callable[[Any, Any, Any], Any]) -> Chain:
        return Chain(other, self)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


class Chain(Policy):
    """Policies applied one after the other; each gets the previous result as `new`."""

    def __init__(self, *steps: Callable[[Any, Any, Any], Any]) -> None:
        flat: list[Callable[[Any, Any, Any], Any]] = []
        for step in steps:
            flat.extend(step.steps if isinstance(step, Chain) else [step])
        self.steps = tuple(flat)

    def __call__(self, old: Any, new: Any, env: Any) -> Any:
        for step in self.steps:
            new = step(old, new, env)
        return new

    def is_pure(self) -> bool:
        return all(is_pure(step) for step in self.steps)


class ByName(Policy):
    """Copy every attribute of the old instance that the new one lacks (the default policy).

    Fields the new version of the class no longer declares are not copied.
    """

    def is_pure(self) -> bool:
        return True

    def __call__(self, old: Any, new: Any, env: Any) -> Any:
        removed = env.removed_fields(type(old)) if env is not None else frozenset()
        for name, value in state_of(old).items():
            if name not in removed and not has_field(new, name):
                set_field(new, name, value)
        return new


class PullUp(ByName):
    """A field moved to a superclass (or down to a subclass): values follow their names."""


class Rename(Policy):
    """Rename fields: ``Rename(x="a")`` moves the old `x` to the new `a`."""

    def __init__(self, **renames: str) -> None:
        self.renames = renames

    def is_pure(self) -> bool:
        return True

    def __call__(self, old: Any, new: Any, env: Any) -> Any:
        state = state_of(old)
        for before, after in self.renames.items():
            if before in state:
                set_field(new, after, state[before])
                if before not in self.renames.values():
                    del_field(new, before)
        return new


class AddDefault(Policy):
    """Give a new field a value where the instance has none: ``value`` or ``factory()``."""

    def __init__(
        self, name: str, value: Any = _MISSING, *, factory: Callable[[], Any] | None = None
    ) -> None:
        if (value is _MISSING) == (factory is None):
            msg = f"AddDefault({name!r}): give exactly one of value=... or factory=..."
            raise TypeError(msg)
        self.name = name
        self.value = value
        self.factory = factory

    def is_pure(self) -> bool:
        return True

    def __call__(self, old: Any, new: Any, env: Any) -> Any:
        if not has_field(new, self.name):
            set_field(new, self.name, self.factory() if self.factory is not None else self.value)
        return new


class Drop(Policy):
    """Remove fields from the migrated instance."""

    def __init__(self, *names: str) -> None:
        self.names = names

    def is_pure(self) -> bool:
        return True

    def __call__(self, old: Any, new: Any, env: Any) -> Any:
        for name in self.names:
            del_field(new, name)
        return new


class Compute(Policy):
    """Set a field from the old instance: ``Compute("radius", lambda old: math.hypot(old.x, old.y))``."""

    def __init__(self, name: str, fn: Callable[[Any], Any]) -> None:
        self.name = name
        self.fn = fn

    def is_pure(self) -> bool:
        return is_pure(self.fn)

    def __call__(self, old: Any, new: Any, env: Any) -> Any:
        set_field(new, self.name, self.fn(old))
        return new


class Reclass(Policy):
    """Change the class by state (a split): ``Reclass(lambda old: "m:Info" if old.x is None else "m:User")``.

    The instance becomes a blank instance of the chosen new class holding the fields migrated so
    far.
    """

    def __init__(self, fn: Callable[[Any], str]) -> None:
        self.fn = fn

    def is_pure(self) -> bool:
        return is_pure(self.fn)

    def __call__(self, old: Any, new: Any, env: Any) -> Any:
        cls = env.new[self.fn(old)]
        result = env.instance(cls)
        for name, value in state_of(new).items():
            set_field(result, name, value)
        return result


__all__ = [
    "AddDefault",
    "ByName",
    "Chain",
    "Compute",
    "Drop",
    "Policy",
    "PullUp",
    "Reclass",
    "Rename",
    "is_pure",
    "pure",
    "state_of",
]
