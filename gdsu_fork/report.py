"""What an update did: the outcome, why, what changed, and how long each phase took."""

from __future__ import annotations

import dataclasses
import enum
import json
from typing import Any


class Outcome(enum.StrEnum):
    """How an update ended."""

    COMMITTED = "committed"
    DISCARDED = "discarded"
    ABORTED = "aborted"


class ChangeKind(enum.StrEnum):
    """What happened to one definition."""

    CHANGED = "changed"
    ADDED = "added"
    REMOVED = "removed"


@dataclasses.dataclass(frozen=True)
class Change:
    """One definition the patch changes, adds or removes, named "module:qualname"."""

    name: str
    kind: ChangeKind

    def __str__(self) -> str:
        return f"{self.kind} {self.name}"


TIMING_PHASES = ("rehearse", "wait", "pause", "child", "commit", "total")


@dataclasses.dataclass
class Report:
    """The result of `gdsu_fork.update`.

    `reason` is None when committed; otherwise it names the cause (a traceback, a signal, the
    failing validation, the threads that blocked the safe point).
    """

    outcome: Outcome
    reason: str | None = None
    changes: list[Change] = dataclasses.field(default_factory=list)
    migrated: int = 0
    reused: int = 0  # of the migrated instances, how many were migrated ahead of the pause
    delta_bytes: int = 0
    timings: dict[str, float] = dataclasses.field(
        default_factory=lambda: dict.fromkeys(TIMING_PHASES, 0.0)
    )
    blockers: list[str] = dataclasses.field(default_factory=list)
    title: str = ""

    @property
    def committed(self) -> bool:
        """True when the update took effect."""
        return self.outcome is Outcome.COMMITTED

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict with plain strings for the enums."""
        return {
            "title": self.title,
            "outcome": str(self.outcome),
            "reason": self.reason,
            "changes": [{"name": c.name, "kind": str(c.kind)} for c in self.changes],
            "migrated": self.migrated,
            "reused": self.reused,
            "delta_bytes": self.delta_bytes,
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "blockers": list(self.blockers),
        }

    def to_json(self) -> str:
        """The report as a JSON object."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        """Rebuild a report from `to_dict` output (e.g. received from an agent)."""
        return cls(
            outcome=Outcome(data["outcome"]),
            reason=data.get("reason"),
            changes=[Change(c["name"], ChangeKind(c["kind"])) for c in data.get("changes", [])],
            migrated=int(data.get("migrated", 0)),
            reused=int(data.get("reused", 0)),
            delta_bytes=int(data.get("delta_bytes", 0)),
            timings={k: float(v) for k, v in data.get("timings", {}).items()},
            blockers=list(data.get("blockers", [])),
            title=data.get("title", ""),
        )

    def summary(self) -> str:
        """One line for people: outcome, counts, pause."""
        line = (
            f"{self.outcome}: {len(self.changes)} change(s), {self.migrated} instance(s) migrated, "
            f"pause {self.timings.get('pause', 0.0):.1f} ms, total {self.timings.get('total', 0.0):.1f} ms"
        )
        if self.reason:
            line += f"\nreason: {self.reason}"
        return line
