"""Waiting for a safe point and pausing the program there.

CONTRACT (used by engine.py):

    with paused_at_safe_point(codes, allowed=..., timeout=..., on_blocked=...) as pause:
        ...   # every other thread is parked; none is inside `codes`

- `codes`: the code objects the update changes or removes (old versions, nested ones included).
- `allowed`: code objects whose frames may stay on a stack (patch.allow_running).
- The calling thread is the update thread and is exempt.
- Raises `SafePointTimeout` (with `.blockers`, a list of `Blocker`) if no safe point is reached
  before `timeout` seconds; the program is then left running as before.
- `on_blocked(blockers)` is called while waiting, when what blocks changes.
- A child forked inside the block must call `release_in_child()` before any other Python code
  (`pause.fork()` and `quiet_fork()` do it, and fork without 3.12's multi-threaded warning).
- `pause.late_entries()`: call it right before the point of no return (the commit) and discard
  unless it returns (): C code (a signal handler, a finalizer) started a changed function during
  the pause, and that frame runs the old code once the program is released.

A safe point: no thread stack, no suspended generator or coroutine (asyncio tasks included, on
every loop) holds a frame of `codes`. The wait is driven by return notifications on the code that
blocks (see `freeze`), never by polling: the program runs at full speed meanwhile. When a blocking
frame returns, every other thread is parked at its next instruction, threads still inside changed
code run on to their return and park there, and the check that finds no blocker and the freeze
are one step (`Freezer.try_freeze`). A failed attempt releases everyone and waits again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import gc
import inspect
import sys
import threading
import time
import weakref
from collections.abc import Callable, Collection, Iterator
from types import CodeType, FrameType
from typing import Any

from .errors import SafePointTimeout
from .freeze import Freezer, Phase, open_freezer, quiet_fork, release_in_child, returning_frame

__all__ = [
    "Blocker",
    "BlockerKind",
    "Pause",
    "find_blockers",
    "find_suspended",
    "paused_at_safe_point",
    "quiet_fork",
    "release_in_child",
]

_SUSPENDABLE = (
    inspect.CO_GENERATOR
    | inspect.CO_COROUTINE
    | inspect.CO_ASYNC_GENERATOR
    | inspect.CO_ITERABLE_COROUTINE
)
# How long one attempt keeps the other threads parked while threads inside changed code run
# on to their return. 200 threads converge in 9–15 ms on our 2-core machines.
ATTEMPT_WINDOW = 0.05
# How long a wait goes without any notification before it looks whether the blocking frames
# moved on anyway (a safety net; see the comment where it is used).
REARM_AFTER = 1.0


class BlockerKind(enum.StrEnum):
    """What holds a changed frame."""

    THREAD = "thread"
    TASK = "task"
    GENERATOR = "generator"


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


@dataclasses.dataclass
class Pause:
    """What the body of `paused_at_safe_point` gets: figures about the wait, and the fork."""

    waited: float = 0.0
    attempts: int = 0
    # The freezer's record of late entries (appended to while the pause lasts).
    _late: list[str] = dataclasses.field(default_factory=list, repr=False)

    def late_entries(self) -> tuple[str, ...]:
        """Changed functions started since the freeze, as "file:line in qualname"; () if none.

        Only C code can start one while every thread is parked (a signal handler run from a
        blocking call, a C library's callback, a finalizer): its thread parks at the
        function's first instruction, in a frame of the old code, and runs that old code
        once released. An update must therefore call this right before its point of no
        return and give up (discard) unless it returns ().
        """
        return tuple(self._late)

    @staticmethod
    def fork() -> int:
        """Fork inside the freeze: no multi-threaded fork warning, the child released."""
        return quiet_fork()


def _frame_line(frame: FrameType) -> str:
    code = frame.f_code
    return f"{code.co_filename}:{frame.f_lineno} in {code.co_name}"


def _stack_lines(frame: FrameType | None) -> tuple[str, ...]:
    """Outermost frame first; our own parking frames left out."""
    lines = []
    while frame is not None:
        if not frame.f_code.co_filename.startswith(_FREEZE_FILE):
            lines.append(_frame_line(frame))
        frame = frame.f_back
    return tuple(reversed(lines))


_FREEZE_FILE = sys.modules[Freezer.__module__].__file__ or "<freeze>"


def _suspended_frame(obj: Any) -> FrameType | None:
    """The frame of a generator, coroutine or async generator that is suspended, else None."""
    for frame_attr, running_attr in (
        ("gi_frame", "gi_running"),
        ("cr_frame", "cr_running"),
        ("ag_frame", "ag_running"),
    ):
        frame = getattr(obj, frame_attr, None)
        if frame is not None:
            return None if getattr(obj, running_attr, False) else frame
    return None


@dataclasses.dataclass
class _Scan:
    """One look at every stack: who holds changed frames."""

    threads: dict[int, FrameType]  # ident -> top frame of a thread holding a changed frame
    suspended: list[Any]  # generators, coroutines, async generators suspended in changed code
    codes: set[CodeType]  # the changed code objects those frames execute

    @property
    def blocked(self) -> bool:
        return bool(self.threads or self.suspended)

    def key(self) -> frozenset[tuple[int, int]]:
        return frozenset(
            [(ident, id(f.f_code)) for ident, f in self.threads.items()]
            + [(0, id(obj)) for obj in self.suspended]
        )


def find_suspended(codes: Collection[CodeType]) -> list[Any]:
    """Generators, coroutines and async generators suspended (or not started) in `codes`.

    A suspended frame can only be a generator's or a coroutine's, and it refers to its code:
    one referrer walk finds them all, asyncio tasks' coroutine chains included. The walk does
    not see objects moved to the permanent generation by `gc.freeze()`: call it before.
    """
    codes = frozenset(codes)
    gen_codes = [c for c in codes if c.co_flags & _SUSPENDABLE]
    if not gen_codes:
        return []
    found = []
    for obj in gc.get_referrers(*gen_codes):
        frame = _suspended_frame(obj)
        if frame is not None and frame.f_code in codes:
            found.append(obj)
    return found


def _scan(
    changed: frozenset[CodeType],
    known: Collection[weakref.ref[Any]] = (),
    full: bool = True,
) -> _Scan:
    """Find every holder of a changed frame but the caller's thread (a frame stopped in its
    return event runs no more of its code: not counted; `known`: suspended generators found
    before a `gc.freeze()`). Unless `full`, a thread found blocking skips the heap walk."""
    me = threading.get_ident()
    threads: dict[int, FrameType] = {}
    codes: set[CodeType] = set()
    for ident, top in sys._current_frames().items():
        if ident == me:
            continue
        skip = returning_frame(top)
        frame: FrameType | None = top
        while frame is not None:
            if frame.f_code in changed and frame is not skip:
                threads[ident] = top
                codes.add(frame.f_code)
            frame = frame.f_back
    if threads and not full:
        return _Scan(threads, [], codes)
    suspended = find_suspended(changed)
    seen = {id(obj) for obj in suspended}
    for ref in known:
        obj = ref()
        if obj is not None and id(obj) not in seen:
            frame = _suspended_frame(obj)
            if frame is not None and frame.f_code in changed:
                suspended.append(obj)
    for obj in suspended:
        codes.add(_suspended_frame(obj).f_code)  # type: ignore[union-attr]
    return _Scan(threads, suspended, codes)


def _await_chain(obj: Any) -> list[Any]:
    """A coroutine or generator and what it awaits / delegates to, outermost first."""
    chain = [obj]
    for _ in range(1000):
        inner = getattr(chain[-1], "cr_await", None) or getattr(chain[-1], "gi_yieldfrom", None)
        if inner is None:
            break
        chain.append(inner)
    return chain


def _all_tasks() -> list[Any]:
    """Every asyncio task of every loop, in any thread.

    `asyncio.all_tasks()` needs the loop's own thread; these are the registries behind it
    (3.11: `_all_tasks`; 3.12+: `_scheduled_tasks` and `_eager_tasks`).
    """
    tasks_module = sys.modules.get("asyncio.tasks")
    if tasks_module is None:
        return []
    tasks: list[Any] = []
    for registry in ("_all_tasks", "_scheduled_tasks", "_eager_tasks"):
        tasks.extend(getattr(tasks_module, registry, ()))
    return tasks


def _owner(obj: Any, tasks: dict[int, Any]) -> tuple[Any, Any]:
    """The asyncio task whose chain runs `obj` (or None), and the outermost awaiter of `obj`."""
    if id(obj) in tasks:
        task = tasks[id(obj)]
        return task, task.get_coro()
    outer = obj
    for _ in range(1000):
        step = None
        for ref in gc.get_referrers(outer):
            if outer in (getattr(ref, "cr_await", None), getattr(ref, "gi_yieldfrom", None)):
                step = ref
        if step is None:
            break
        outer = step
    return None, outer


def _describe(scan: _Scan) -> list[Blocker]:
    names = {t.ident: t.name for t in threading.enumerate()}
    blockers = [
        Blocker(BlockerKind.THREAD, names.get(ident, f"thread {ident}"), _stack_lines(top))
        for ident, top in scan.threads.items()
    ]
    tasks = {id(link): task for task in _all_tasks() for link in _await_chain(task.get_coro())}
    for obj in scan.suspended:
        task, outer = _owner(obj, tasks)
        stack = tuple(
            _frame_line(frame)
            for link in _await_chain(outer)
            if (
                frame := getattr(link, "cr_frame", None)
                or getattr(link, "gi_frame", None)
                or getattr(link, "ag_frame", None)
            )
            is not None
        )
        if task is not None:
            blockers.append(Blocker(BlockerKind.TASK, task.get_name(), stack))
        else:
            name = getattr(outer, "__qualname__", type(outer).__name__)
            blockers.append(Blocker(BlockerKind.GENERATOR, name, stack))
    return blockers


def find_blockers(codes: Collection[CodeType], allowed: Collection[CodeType] = ()) -> list[Blocker]:
    """Every other thread, task or suspended generator that holds a frame of `codes`."""
    return _describe(_scan(frozenset(codes) - frozenset(allowed)))


def _timeout_error(blockers: list[Blocker], timeout: float) -> SafePointTimeout:
    listing = "\n".join(b.describe() for b in blockers)
    msg = (
        f"no safe point within {timeout:g} s: {len(blockers)} thread(s)/task(s)/generator(s) "
        f"kept running code that the update changes:\n{listing}\n"
        "Let them finish (raise the timeout), or declare patch.allow_running() for a function "
        "that never returns; the program runs on unchanged."
    )
    err = SafePointTimeout(msg)
    err.blockers = blockers  # type: ignore[attr-defined]
    return err


def _attempt(
    fz: Freezer,
    deadline: float,
    window: float,
    look: Callable[[bool], _Scan],
) -> tuple[bool, _Scan | None, bool]:
    """Park everyone, let changed frames return; True if frozen at a safe point.

    On failure every thread is released again; also returned: the last scan (who blocked) and
    whether threads stayed inside changed code for the whole window.
    """
    now = time.monotonic()
    if not fz.begin_parking(lock_timeout=deadline - now):
        return False, None, False
    end = min(deadline, now + window)
    last: _Scan | None = None

    def check() -> set[int] | None:
        nonlocal last
        last = look(False)
        return set(last.threads) if last.blocked else None

    expired = False
    while True:
        if fz.try_freeze(check):
            return True, None, False
        if last is not None and last.blocked and not last.threads:
            break  # only suspended frames block, and nobody can resume them while parked
        left = end - time.monotonic()
        if left <= 0:
            expired = True
            break
        fz.signal.wait(left)
    fz.unpark()
    return False, last, expired


def _changed_frames(scan: _Scan, changed: frozenset[CodeType]) -> dict[int, list[FrameType]]:
    """ident -> the changed frames on that thread's stack (held: an id could be reused)."""
    out: dict[int, list[FrameType]] = {}
    for ident, top in scan.threads.items():
        frame: FrameType | None = top
        while frame is not None:
            if frame.f_code in changed:
                out.setdefault(ident, []).append(frame)
            frame = frame.f_back
    return out


def _still_stuck(
    stuck: dict[int, list[FrameType]], scan: _Scan, changed: frozenset[CodeType]
) -> bool:
    """True if a thread that outlasted an attempt still runs one of the same changed frames."""
    now = _changed_frames(scan, changed)
    return any(
        any(f is g for f in frames for g in now.get(ident, ())) for ident, frames in stuck.items()
    )


@contextlib.contextmanager
def paused_at_safe_point(
    codes: Collection[CodeType],
    *,
    allowed: Collection[CodeType] = (),
    timeout: float,
    on_blocked: Callable[[list[Blocker]], None] | None = None,
    window: float = ATTEMPT_WINDOW,
    suspended: Collection[Any] = (),
) -> Iterator[Pause]:
    """Wait until no other thread, task or generator runs `codes`, then hold the program paused
    for the body. `window`: how long one attempt may keep threads parked while it waits for
    changed frames to return. `suspended`: what `find_suspended` returned before a
    `gc.freeze()` (which hides older objects from the collector's walks)."""
    start = time.monotonic()
    deadline = start + timeout
    changed = frozenset(codes) - frozenset(allowed)
    known = [weakref.ref(obj) for obj in suspended]
    pause = Pause()
    with open_freezer(changed) as fz:

        def look(full: bool = True) -> _Scan:
            return _scan(changed, known, full)

        reported: frozenset[tuple[int, int]] | None = None
        # Threads that stayed in changed code through a whole attempt: no new attempt (which
        # stalls the program for up to `window`) until the frames they were in have returned.
        stuck: dict[int, list[FrameType]] = {}
        notified = rearm = False
        while True:
            early = fz.phase is Phase.PARK  # a returning blocker began the parking itself
            scan = None if early else look()
            if stuck and scan is not None and not _still_stuck(stuck, scan, changed):
                stuck = {}
            if early or (
                scan is not None and (not scan.blocked or (notified and scan.threads and not stuck))
            ):
                pause.attempts += 1
                frozen, last, expired = _attempt(fz, deadline, window, look)
                if frozen:
                    pause.waited = time.monotonic() - start
                    pause._late = fz.late_entries
                    yield pause
                    return
                if expired and last is not None:
                    stuck = _changed_frames(last, changed)
                scan = look()  # the program runs again: who blocks now, in full
            assert scan is not None
            if scan.blocked and scan.key() != reported:
                reported = scan.key()
                if on_blocked is not None:
                    on_blocked(_describe(scan))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _timeout_error(_describe(scan), timeout)
            if not scan.blocked:
                notified = True  # an attempt lost a race with an entering thread: retry
                continue
            # Arm, then look again: a blocker that returned in between sent no notification.
            fz.watch(scan.codes, None if scan.suspended else set(scan.threads), renew=rearm)
            fz.eager = not stuck and not scan.suspended  # only once the watch is armed
            if look().key() != scan.key():
                notified = True
                continue
            before = _changed_frames(scan, changed)
            notified = fz.signal.wait(min(remaining, REARM_AFTER))
            rearm = not notified
            if rearm:
                # No notification for a while. The "lost events" once seen here under load were
                # frames already in their return event (parked there by an earlier freezer or
                # attempt), now exempt (`returning_frame`). One kind of return still sends no
                # event: inside any tool's callback (a debugger's trace function calling changed
                # code) no event fires. So, seldom, look whether the blocking frames moved on
                # (then try) and arm afresh.
                after = _changed_frames(look(), changed)
                notified = any(
                    not any(f is g for g in after.get(ident, ()))
                    for ident, frames in before.items()
                    for f in frames
                )
