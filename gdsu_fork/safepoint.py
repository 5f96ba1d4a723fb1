"""Waiting for a safe point and pausing the program there.

CONTRACT (used by engine.py; keep it):

    with paused_at_safe_point(codes, allowed=..., timeout=..., on_blocked=...) as pause:
        ...   # every other thread is parked; none is inside `codes`

- `codes`: the code objects the update changes or removes (old versions, nested ones included).
- `allowed`: code objects whose frames may stay on a stack (patch.allow_running).
- The calling thread is the update thread and is exempt.
- Raises `SafePointTimeout` (with `.blockers`, a list of `Blocker`) if no safe point is reached
  before `timeout` seconds; the program is then left running as before.
- `on_blocked(blockers)` is called while waiting, when what blocks changes.

TEMPORARY implementation: stack check of threads only, no real freeze yet.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterator
from types import CodeType, FrameType

from .errors import SafePointTimeout


@dataclasses.dataclass(frozen=True)
class Blocker:
    """A thread, task or generator whose stack holds code the update changes."""

    kind: str
    name: str
    stack: tuple[str, ...]

    def describe(self) -> str:
        """Name and stack, innermost frame last, one "file:line in function" per line."""
        frames = "\n".join(f"    {line}" for line in self.stack)
        return f"{self.kind} {self.name!r}:\n{frames}"


def _stack_lines(frame: FrameType | None) -> tuple[str, ...]:
    lines = []
    while frame is not None:
        code = frame.f_code
        lines.append(f"{code.co_filename}:{frame.f_lineno} in {code.co_name}")
        frame = frame.f_back
    return tuple(reversed(lines))


def find_blockers(codes: Collection[CodeType], allowed: Collection[CodeType] = ()) -> list[Blocker]:
    """Every thread other than the caller whose stack executes one of `codes`."""
    me = threading.get_ident()
    names = {t.ident: t.name for t in threading.enumerate()}
    blockers = []
    for ident, top in sys._current_frames().items():
        if ident == me:
            continue
        frame: FrameType | None = top
        while frame is not None:
            if frame.f_code in codes and frame.f_code not in allowed:
                name = names.get(ident, f"thread {ident}")
                blockers.append(Blocker("thread", name, _stack_lines(top)))
                break
            frame = frame.f_back
    return blockers


@contextlib.contextmanager
def paused_at_safe_point(
    codes: Collection[CodeType],
    *,
    allowed: Collection[CodeType] = (),
    timeout: float,
    on_blocked: Callable[[list[Blocker]], None] | None = None,
) -> Iterator[None]:
    """Wait until no other thread runs `codes`, then hold the program paused for the body."""
    deadline = time.monotonic() + timeout
    codes = frozenset(codes)
    allowed = frozenset(allowed)
    while blockers := find_blockers(codes, allowed):
        if on_blocked is not None:
            on_blocked(blockers)
        if time.monotonic() >= deadline:
            err = SafePointTimeout(
                "no safe point within the timeout: "
                + "; ".join(b.describe() for b in blockers)
            )
            err.blockers = blockers  # type: ignore[attr-defined]
            raise err
        time.sleep(0.001)
    yield
