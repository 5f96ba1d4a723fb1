"""Validations: system checks run on every update, and the application's own registry.

`APP_VALIDATIONS` is process-wide on purpose: an application registers its invariants once, at
import time, and every later update — from any thread or from the supervisor — must check them.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterable
from typing import Any

from .errors import UpdateRefused, short_repr

Validation = Callable[[Any], Any]

APP_VALIDATIONS: list[Validation] = []


def app_validation(fn: Validation) -> Validation:
    """Register an application-level validation, run on the new environment of every update.

    The function receives the update's `Env`; returning False or raising refuses the update.
    """
    if not callable(fn):
        msg = f"app_validation: {fn!r} is not callable"
        raise TypeError(msg)
    if fn not in APP_VALIDATIONS:
        APP_VALIDATIONS.append(fn)
    return fn


def _name(fn: Validation) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def run_validations(kind: str, validations: Iterable[Validation], env: Any) -> None:
    """Run each validation; the first that returns False or raises refuses the update."""
    for fn in validations:
        try:
            verdict = fn(env)
        except Exception as exc:
            msg = f"{kind} validation {_name(fn)} raised {type(exc).__name__}: {exc}"
            raise UpdateRefused(msg) from exc
        if verdict is False:
            msg = f"{kind} validation {_name(fn)} returned False"
            raise UpdateRefused(msg)


def run_pair_validations(checks: Iterable[tuple[str, Callable[..., Any]]], env: Any) -> None:
    """Run each `patch.validate_each` check on every pair of its class this child migrated."""
    for name, fn in checks:
        for old, new in env.pairs(name):
            try:
                verdict = fn(old, new, env)
            except Exception as exc:
                msg = (
                    f"patch validation {_name(fn)} raised {type(exc).__name__}: {exc} "
                    f"for {short_repr(new)} (migrated from {short_repr(old)})"
                )
                raise UpdateRefused(msg) from exc
            if verdict is False:
                msg = (
                    f"patch validation {_name(fn)} returned False for {short_repr(new)} "
                    f"(migrated from {short_repr(old)})"
                )
                raise UpdateRefused(msg)


def check_code_installed(installed: Iterable[tuple[types.FunctionType, types.CodeType]]) -> None:
    """System validation: every function the update gave new code to runs that code now."""
    for fn, code in installed:
        if fn.__code__ is not code:
            msg = f"system validation: {fn.__module__}:{fn.__qualname__} does not run its new code"
            raise UpdateRefused(msg)


def check_definitions_resolve(module: types.ModuleType, names: Iterable[str]) -> None:
    """System validation: every def and class of the new source is reachable under its name."""
    for name in names:
        if name not in module.__dict__:
            msg = f"system validation: {module.__name__}:{name} is defined by the new source but missing"
            raise UpdateRefused(msg)
