"""gdsu-fork: dynamic software update for running Python programs.

Update a running program's code and live objects without restarting it: the new environment is
built in a forked child, and the program, paused at a safe point, commits it in place — or keeps
running untouched if anything went wrong.
"""

from . import policies
from .engine import update
from .env import Env
from .errors import GdsuError, PatchError, SafePointTimeout, UpdateRefused
from .patch import Patch, load_patch
from .progress import Phase, Progress
from .report import Change, ChangeKind, Outcome, Report
from .validations import app_validation

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
