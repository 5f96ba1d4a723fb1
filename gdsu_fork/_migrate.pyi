"""The migration's loop over plain instances, and Env.instance's path for plain classes
(`_migrate.c`)."""

from collections.abc import Callable
from typing import Any

FINISH: int

def run(
    cursor: list[int],
    taken: list[Any],
    positions: Any,
    plans: dict[type, tuple[Any, ...]],
    affected: set[type],
    env: Any,
    replacements: dict[int, Any],
    keep: list[Any],
    changed: dict[int, Any],
    from_attr: type,
    keep_pairs: bool,
) -> tuple[int, Any] | None: ...
def instance(plain: set[type], fallback: Callable[..., Any], cls: type, /, **attrs: Any) -> Any: ...
