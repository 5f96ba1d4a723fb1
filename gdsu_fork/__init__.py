"""gdsu-fork: dynamic software update for running Python programs.

Update a running program's code and live objects without restarting it: the new environment is
built in a forked child, and the program, paused at a safe point, commits it in place — or keeps
running untouched if anything went wrong.

The names below are imported on first use: a supervised program pays for the engine only when an
update comes.
"""

from __future__ import annotations

import gc
import importlib
from typing import TYPE_CHECKING, Any

# Objects in the collector's permanent generation before the program could freeze any: 3.12.1
# starts with a few hundred of its own. More than these at an update means the program uses
# gc.freeze itself (engine.py). Taken here, when the supervisor's agent first imports us.
STARTUP_FROZEN = gc.get_freeze_count()

if TYPE_CHECKING:
    from . import policies
    from .engine import update
    from .env import Env
    from .errors import GdsuError, PatchError, SafePointTimeout, UpdateRefused
    from .patch import Patch, load_patch
    from .progress import Phase, Progress
    from .report import Change, ChangeKind, Outcome, Report
    from .validations import app_validation

_WHERE = {
    "Change": "report",
    "ChangeKind": "report",
    "Env": "env",
    "GdsuError": "errors",
    "Outcome": "report",
    "Patch": "patch",
    "PatchError": "errors",
    "Phase": "progress",
    "Progress": "progress",
    "Report": "report",
    "SafePointTimeout": "errors",
    "UpdateRefused": "errors",
    "app_validation": "validations",
    "load_patch": "patch",
    "update": "engine",
}

__all__ = [
    "Change",
    "ChangeKind",
    "Env",
    "GdsuError",
    "Outcome",
    "Patch",
    "PatchError",
    "Phase",
    "Progress",
    "Report",
    "SafePointTimeout",
    "UpdateRefused",
    "app_validation",
    "load_patch",
    "policies",
    "update",
]


def __getattr__(name: str) -> Any:
    if name == "policies":
        return importlib.import_module(".policies", __name__)
    module = _WHERE.get(name)
    if module is None:
        msg = f"module 'gdsu_fork' has no attribute {name!r}"
        raise AttributeError(msg)
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
