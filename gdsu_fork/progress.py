"""Progress events an update emits while it runs, for the CLI and the supervisor."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from typing import Any


class Phase(enum.StrEnum):
    """The steps of an update, in the order they happen."""

    ANALYSING = "analysing"
    REHEARSING = "rehearsing"
    WAITING = "waiting"
    PAUSED = "paused"
    CHILD = "child"
    MIGRATING = "migrating"
    VALIDATING = "validating"
    COMMITTING = "committing"
    COMMITTED = "committed"
    DISCARDED = "discarded"
    ABORTED = "aborted"


@dataclasses.dataclass(frozen=True)
class Progress:
    """One event: the phase entered, a line for people, and details for programs.

    `data` may hold "pid" (the update child's process id, for watchers), "blockers" (a list of
    strings naming what blocks the safe point), "instances" (a count).
    """

    phase: Phase
    message: str
    data: dict[str, Any] = dataclasses.field(default_factory=dict)


ProgressCallback = Callable[[Progress], None]
