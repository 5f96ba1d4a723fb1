"""Watching the forked children of an update: memory and lifetime caps, enforced by SIGKILL.

The engine names each child it forks in its progress events ("pid"). A child is measured by its
unique set size: right after the fork it shares every page with the app, so its RSS says nothing
about what the patch costs; USS counts the pages it copied or allocated itself.
"""

from __future__ import annotations

import contextlib
import time

import psutil


class ChildWatch:
    """The update children of one update and the caps they must stay under."""

    def __init__(self, *, memory_cap: int | None, lifetime: float | None) -> None:
        self.memory_cap = memory_cap
        self.lifetime = lifetime
        self._children: dict[int, tuple[psutil.Process, float]] = {}
        self.killed: list[str] = []
        """Why each child this watch killed was killed, for the update's report."""

    @property
    def active(self) -> bool:
        """True while some watched child may still be alive."""
        return bool(self._children)

    def add(self, pid: int) -> None:
        """Start watching `pid`, an update child of the app."""
        if pid in self._children:
            return
        with contextlib.suppress(psutil.NoSuchProcess):  # already gone: nothing to watch
            self._children[pid] = (psutil.Process(pid), time.monotonic())

    def kill_all(self) -> list[int]:
        """Kill every watched child still alive (their update is over); the pids killed.

        An update child whose app died is orphaned and would live on (a hung patch for ever):
        nobody else is left to end it. psutil refuses a pid that was reused meanwhile.
        """
        killed = []
        for pid, (proc, _) in self._children.items():
            try:
                if proc.status() != psutil.STATUS_ZOMBIE:
                    proc.kill()
                    killed.append(pid)
            except psutil.NoSuchProcess:
                continue
        self._children.clear()
        return killed

    def check(self) -> list[str]:
        """Kill children over a cap; the reasons for those killed by this call."""
        reasons = []
        for pid, (proc, started) in list(self._children.items()):
            try:
                if proc.status() == psutil.STATUS_ZOMBIE:
                    del self._children[pid]
                    continue
                reason = self._over_cap(proc, started)
                if reason:
                    proc.kill()
            except psutil.NoSuchProcess:
                del self._children[pid]
                continue
            if reason:
                del self._children[pid]
                reasons.append(reason)
        self.killed.extend(reasons)
        return reasons

    def _over_cap(self, proc: psutil.Process, started: float) -> str | None:
        age = time.monotonic() - started
        if self.lifetime is not None and age > self.lifetime:
            return (
                f"update child {proc.pid} was killed by gdsu-supervise after {age:.1f} s, over "
                f"the update timeout of {self.lifetime:g} s; raise --timeout if the patch needs "
                "more time"
            )
        if self.memory_cap is not None:
            uss = proc.memory_full_info().uss
            if uss > self.memory_cap:
                return (
                    f"update child {proc.pid} was killed by gdsu-supervise: it used "
                    f"{uss / 2**20:.0f} MiB of its own memory, over the cap of "
                    f"{self.memory_cap / 2**20:.0f} MiB; raise --child-memory if the patch "
                    "needs more"
                )
        return None
