"""Parking application threads inside hook callbacks, so that none executes Python code.

A thread parks by blocking inside a callback the interpreter calls before it runs Python code:
on 3.12+ a `sys.monitoring` event, on 3.11 a C-level trace function that our C helper
`_tstates` sets on each thread state (`sys.settrace` reaches only the calling thread). Holding
the GIL does not freeze anything: it is released at the first blocking call and handed over
every switch interval.

A `Freezer` lives for one update window and moves through its phases:

- WATCH: the program runs. Only return/yield notifications on the code that blocks the update
  are armed (3.12+: local events, free elsewhere; 3.11: the blocking threads are traced).
- PARK: every thread whose stack holds no changed frame parks at its next instruction; threads
  inside changed code run on at full speed (3.12+: `DISABLE`) and park when that code returns.
- FROZEN: every event parks its thread, whatever its stack. Set by the caller right after a
  clean safe-point check (`try_freeze`), so the check and the freeze are one step.

Hooks are process-wide, so one Freezer may be active at a time (`_active`). A forked child
inherits the armed hooks and every lock as it was held: it must call `release_in_child()` before
it runs any other Python code.
"""

from __future__ import annotations

import _imp
import _thread
import contextlib
import enum
import gc
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Collection, Iterator
from types import CodeType, FrameType
from typing import Any

from . import _tstates
from .errors import GdsuError

_OWN_DIR = os.path.dirname(os.path.abspath(__file__))
_PY312 = sys.version_info >= (3, 12)


class FreezeError(GdsuError, RuntimeError):
    """The freeze cannot be set up (no free monitoring tool, another update in progress)."""


class Phase(enum.Enum):
    """Where the update window stands; see the module docstring."""

    OFF = "off"
    WATCH = "watch"
    PARK = "park"
    FROZEN = "frozen"


_PARKING = (Phase.PARK, Phase.FROZEN)
# A collection threshold no allocation count reaches (the C field is an int).
_NO_COLLECTION = 2**31 - 1

# The Freezer whose hooks are armed, if any: hooks are per interpreter, so at most one.
_active: Freezer | None = None


def _is_own(code: CodeType) -> bool:
    """True for code of this package: the update thread runs it, application threads do not."""
    return code.co_filename.startswith(_OWN_DIR)


class _Gate:
    """A lock held by the update thread while threads are parked; parked threads wait on it."""

    def __init__(self) -> None:
        self.lock = _thread.allocate_lock()
        self.lock.acquire()

    def wait(self) -> None:
        # Acquire-then-release hands the open gate on to the next parked thread.
        self.lock.acquire()
        self.lock.release()

    def open(self) -> None:
        self.lock.release()


class _Signal:
    """A wake-up for the update thread that any thread may raise, cheap and without Python locks."""

    def __init__(self) -> None:
        self._lock = _thread.allocate_lock()
        self._lock.acquire()

    def raise_(self) -> None:
        # Two threads may both see it held; the loser's release fails harmlessly.
        with contextlib.suppress(RuntimeError):
            self._lock.release()

    def wait(self, timeout: float) -> bool:
        """Wait until raised (and lower it again); False if the timeout passed first."""
        return self._lock.acquire(timeout=max(timeout, 0.0))

    def clear(self) -> None:
        self._lock.acquire(blocking=False)


def _fork_locks() -> tuple[list[Any], list[Any]]:
    """Locks that `os.fork`'s before-fork hooks acquire: (re-entrant ones, plain ones).

    A parked thread holding one would deadlock the fork. The update thread takes the
    re-entrant ones (logging's) while the program still runs and holds them through the pause:
    logging's hook then takes it again in our thread. A plain Lock (concurrent.futures') cannot
    be held so, the hook would wait on us; instead no thread parks while it is locked, and the
    freeze waits until it is free. (Releasing a held lock at the freeze would not do: a thread
    blocked on it in C takes it without running Python.) The import lock, which CPython takes
    at each fork, is a plain one too.
    """
    rlocks, plain = [], []
    logging = sys.modules.get("logging")
    if logging is not None and hasattr(logging, "_lock"):
        rlocks.append(logging._lock)
    futures = sys.modules.get("concurrent.futures.thread")
    if futures is not None and hasattr(futures, "_global_shutdown_lock"):
        plain.append(futures._global_shutdown_lock)
    return rlocks, plain


class Freezer:
    """Return notifications, parking and the freeze for one update window.

    `changed`: code objects no thread may execute at the safe point (allowed ones removed).
    Call `close()` in every case; it releases every parked thread and removes every hook.
    """

    def __init__(self, changed: Collection[CodeType]) -> None:
        global _active
        if _active is not None:
            msg = "another update is already waiting for a safe point; run one update at a time"
            raise FreezeError(msg)
        self.changed = frozenset(changed)
        self.phase = Phase.OFF
        self.updater = threading.get_ident()
        self._main = threading.main_thread().ident
        self.signal = _Signal()
        # Bumped whenever a thread is let into changed code while parking; see `try_freeze`.
        self.entries = 0
        # Threads inside changed code at the last check: their parking is worth a new check.
        self.waiting_for: set[int] = set()
        # Set while the import lock stops the freeze: any parking is worth a new check.
        self.import_wait = False
        # Whether a returning blocker may start the parking itself (see `returned`).
        self.eager = False
        # Held while hooks are switched: the update thread and a returning thread (`returned`)
        # must not interleave their set-ups (one would undo the other's events).
        self._arming = _thread.allocate_lock()
        # Frames that started changed code after the freeze (only possible from C): reported.
        self.late_entries: list[str] = []
        self._gate: _Gate | None = None
        self._held_locks: list[Any] = []
        self._watched: list[Any] = _fork_locks()[1]
        # While threads are parked: the collector's state before the pause, else None.
        self._gc_saved: tuple[bool, tuple[int, int, int]] | None = None
        self._hooks = _MonitoringHooks(self) if _PY312 else _TraceHooks(self)
        _active = self

    # -- waiting ------------------------------------------------------------------------------

    def watch(
        self, blocking: Collection[CodeType], threads: Collection[int] | None, renew: bool = False
    ) -> None:
        """Arm notifications for returns from `blocking` (run by `threads`; None: any thread);
        `renew`: switch them off and on again."""
        with self._arming:
            if self._gate is None:
                self._gate = _Gate()
            self.phase = Phase.WATCH
            if renew:
                self._hooks.unpark()
                self._hooks.watch(frozenset(), threads)
            self._hooks.watch(frozenset(blocking), threads)

    def notify(self) -> None:
        """Called in the thread whose changed frame returned or yielded: wake the update thread."""
        self.signal.raise_()

    def returned(self, frame: FrameType) -> None:
        """A blocking `frame` is returning (called in its thread while watching).

        With `eager` set, the returning thread starts the parking itself and parks at once:
        waking the update thread and letting it win the GIL from busy threads takes up to a
        switch interval (5 ms), deciding here takes microseconds.
        """
        if (
            self.eager
            and self.phase is Phase.WATCH
            and self.stack_clean(frame.f_back)
            and self._arming.acquire(blocking=False)
        ):
            try:
                started = self.eager and self.phase is Phase.WATCH and self._gate is not None
                if started:
                    self._start_gc_pause()
                    self.entries = 0
                    self.phase = Phase.PARK
                    self._hooks.park()
            finally:
                self._arming.release()
            if started:
                self.park_here(frame)
                return
        self.signal.raise_()

    # -- parking ------------------------------------------------------------------------------

    def begin_parking(self, lock_timeout: float) -> bool:
        """Park every thread outside changed code (or keep the parking a returning thread began);
        False if a lock that the fork needs stayed busy."""
        self.eager = False  # no thread may start a parking while we take the fork locks
        if self.phase is Phase.PARK:
            # Parked threads may hold a fork lock: take them without waiting, else start over.
            if self._take_fork_locks(0.0):
                self._start_gc_pause()
                return True
            self.unpark()
        if not self._take_fork_locks(lock_timeout):
            return False
        self._start_gc_pause()
        with self._arming:
            if self._gate is None:
                self._gate = _Gate()
            self.entries = 0
            self.phase = Phase.PARK
            self._hooks.park()
        return True

    def _start_gc_pause(self) -> None:
        """No collection, so no finalizer of the program, in any thread until `_end_gc_pause`.

        Call it before any thread parks: a finalizer run while threads are parked (in the
        update thread, or in a thread inside our hook callback, where no event parks it) runs
        the program's code in the pause, and deadlocks if it needs a lock a parked thread holds.
        """
        if self._gc_saved is not None:
            return
        self._gc_saved = (gc.isenabled(), gc.get_threshold())
        # 3.12 runs a collection that an allocation scheduled earlier (a flag that the next
        # thread to check its eval breaker acts on) whatever gc.disable() says: `_Py_RunGC`
        # checks neither `enabled` nor `collecting` (3.11 collects inside the allocation, 3.13
        # checks `enabled`). It collects only generations over their threshold: raise them
        # first, so that no eval-breaker check from here to the end of the pause can start one.
        gc.set_threshold(_NO_COLLECTION, _NO_COLLECTION, _NO_COLLECTION)
        gc.disable()

    def _end_gc_pause(self) -> None:
        if self._gc_saved is None:
            return
        enabled, thresholds = self._gc_saved
        self._gc_saved = None
        gc.set_threshold(*thresholds)
        if enabled:
            gc.enable()

    def try_freeze(self, check: Callable[[], set[int] | None]) -> bool:
        """Run the safe-point `check` and freeze if it passes, as one step.

        `check` returns None when safe, else the idents of the threads inside changed code
        (whose parking wakes us). The check runs Python, so other threads may get the GIL
        during it; any of them that enters changed code bumps `entries` (every other one
        parks). Equal counts around the check mean nothing slipped in, and from
        `phase = FROZEN` on every thread parks.
        """
        self._hooks.rearm()
        before = self.entries
        blocking = check()
        if blocking is not None:
            self.waiting_for = blocking
            return False
        if self.fork_locks_busy():
            # A thread (not parked) holds the import lock or another plain fork lock: os.fork
            # would wait for it forever. It parks once it lets go, and wakes us then.
            self.import_wait = True
            return False
        self.phase = Phase.FROZEN
        # 3.11: a thread started during the check had no trace function, so no entry of its
        # was counted. Arm it now (it parks at its next event); if there was one, check again.
        if self._hooks.rearm() == 0 and self.entries == before:
            return True
        self.phase = Phase.PARK
        return False

    def unpark(self) -> None:
        """Release every parked thread and remove the parking hooks (a failed attempt, the end)."""
        with self._arming:
            self.phase = Phase.WATCH
            self._hooks.unpark()
            if self._gate is not None:
                self._gate.open()
                self._gate = None
        self.waiting_for = set()
        self.import_wait = False
        self._release_fork_locks()
        self._end_gc_pause()

    def park_here(self, returning: FrameType | None) -> None:
        """Block the calling application thread while threads are parked (called from hooks);
        `returning`: the frame whose return event this is (see `returning_frame`), or None."""
        if self._gate is None:
            return
        me = _thread.get_ident()
        if self.phase is Phase.PARK and self.fork_locks_busy():
            # Parked now, it could hold a lock that os.fork needs: park it later.
            self.import_wait = True
            return
        if returning is not None or me in self.waiting_for or self.import_wait:
            self.signal.raise_()  # a blocking frame is done: worth a new check
        # A signal must not run the main thread's Python handlers inside the freeze: block them
        # while parked; the kernel keeps them pending (or hands them to a thread in C), and the
        # handler runs after the release. Nothing is lost.
        blocked = me == self._main
        if blocked:
            old = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        here = self
        try:
            # When the gate opens, a new attempt (or the next update's Freezer) may already be
            # parking: the instruction this thread stopped before has still not run, so it
            # stays parked there rather than run it unhooked.
            while (fz := _active) is not None and fz.phase in _PARKING:
                gate = fz._gate
                if gate is None:
                    break
                if fz is not here:
                    here = fz
                    if returning is not None or me in fz.waiting_for:
                        fz.signal.raise_()
                gate.wait()
        finally:
            if blocked:
                signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def stack_clean(self, frame: FrameType | None) -> bool:
        """True if no frame from `frame` outwards executes changed code."""
        changed = self.changed
        while frame is not None:
            if frame.f_code in changed:
                return False
            frame = frame.f_back
        return True

    # -- the fork -----------------------------------------------------------------------------

    def _take_fork_locks(self, timeout: float) -> bool:
        rlocks, self._watched = _fork_locks()
        for lock in rlocks:
            if not lock.acquire(timeout=max(timeout, 0.0)):
                self._release_fork_locks()
                return False
            self._held_locks.append(lock)
        return True

    def _release_fork_locks(self) -> None:
        while self._held_locks:
            self._held_locks.pop().release()

    def fork_locks_busy(self) -> bool:
        """True while a lock that os.fork takes, and that we cannot hold, is held by a thread."""
        return _imp.lock_held() or any(lock.locked() for lock in self._watched)

    # -- the end ------------------------------------------------------------------------------

    def close(self) -> None:
        """Release every parked thread and remove every hook; idempotent."""
        global _active
        if self.phase is Phase.OFF and _active is not self:
            return
        try:
            self.unpark()
        finally:  # even if the release raised (Ctrl-C in an update on the main thread)
            self.phase = Phase.OFF
            if self._gate is not None:  # it stopped before opening the gate
                self._gate.open()
                self._gate = None
            self._hooks.close()
            if _active is self:
                _active = None

    def forget_in_child(self) -> None:
        """Drop hooks and locks inherited by a forked child, whose other threads are gone."""
        global _active
        self.phase = Phase.OFF
        self._hooks.close()
        self._gate = None
        # The modules' after-fork hooks re-created their locks (logging's, concurrent.futures').
        self._held_locks.clear()
        self._end_gc_pause()
        _active = None


def release_in_child() -> None:
    """Switch every inherited hook off in a forked child; call it first thing after the fork."""
    if _active is not None:
        _active.forget_in_child()


# Any fork, not only the engine's: a process the program forks while an update waits or
# pauses would otherwise keep our hooks, and its first return from changed code would park
# it on a gate nobody opens there.
os.register_at_fork(after_in_child=release_in_child)


def _fork_without_warning() -> int:
    # 3.12+ warns in the parent about forking a multi-threaded process; the warning machinery
    # could run user code (showwarning), and the threads are parked anyway.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*fork")
        return os.fork()


def quiet_fork() -> int:
    """`os.fork()` without the multi-threaded fork warning; the child is released from the freeze.

    Raises FreezeError, rather than deadlock, if the program is frozen while a lock that
    os.fork takes is held: `try_freeze` saw it free, but a thread blocked on it in C can win
    it without running Python after that check, then parks holding it at its next
    instruction (nothing releases a lock in a frozen program).
    """
    fz = _active
    if fz is not None and fz.phase is Phase.FROZEN and fz.fork_locks_busy():
        msg = (
            "a thread holds a lock that os.fork needs (the import lock or concurrent.futures' "
            "shutdown lock) in the pause: forking would deadlock the program; the update is "
            "given up and may be tried again"
        )
        raise FreezeError(msg)
    pid = _fork_without_warning()
    if pid == 0:
        release_in_child()
    return pid


@contextlib.contextmanager
def open_freezer(changed: Collection[CodeType]) -> Iterator[Freezer]:
    """A Freezer that is closed (threads released, hooks removed) however the block ends."""
    freezer = Freezer(changed)
    try:
        yield freezer
    finally:
        freezer.close()


# -- 3.12+: sys.monitoring -------------------------------------------------------------------


class _MonitoringHooks:
    """Notifications and parking through `sys.monitoring` (PEP 669)."""

    # Conventional ids first left to debuggers (0) and coverage (1); use a spare one.
    _TOOL_IDS = (4, 3, 5, 2, 0)

    def __init__(self, freezer: Freezer) -> None:
        mon = sys.monitoring
        self.f = freezer
        self.mon = mon
        self.tool = -1
        for tool in self._TOOL_IDS:
            if mon.get_tool(tool) is None:
                mon.use_tool_id(tool, "gdsu-fork")
                self.tool = tool
                break
        else:
            msg = "every sys.monitoring tool id is in use; stop a profiler or debugger and retry"
            raise FreezeError(msg)
        ev = mon.events
        self.ev = ev
        self.local: set[CodeType] = set()
        self.disabled = False
        mon.register_callback(self.tool, ev.PY_RETURN, self._on_return)
        mon.register_callback(self.tool, ev.PY_YIELD, self._on_yield)
        mon.register_callback(self.tool, ev.PY_UNWIND, self._on_unwind)
        mon.register_callback(self.tool, ev.INSTRUCTION, self._on_instruction)
        mon.register_callback(self.tool, ev.PY_START, self._on_start)

    def _set_local(self, codes: frozenset[CodeType]) -> None:
        events = self.ev.PY_RETURN | self.ev.PY_YIELD
        for code in self.local - codes:
            self.mon.set_local_events(self.tool, code, 0)
        for code in codes - self.local:
            self.mon.set_local_events(self.tool, code, events)
        self.local = set(codes)

    def watch(self, blocking: frozenset[CodeType], threads: Collection[int] | None) -> None:
        # Local events cost nothing in other code; PY_UNWIND (an exception leaving a blocking
        # frame) exists only as a global event, cheap because unwinding is rare.
        self._set_local(blocking)
        self.mon.set_events(self.tool, self.ev.PY_UNWIND if blocking else 0)

    def park(self) -> None:
        self._set_local(self.f.changed)
        ev = self.ev
        self.mon.set_events(self.tool, ev.PY_UNWIND | ev.INSTRUCTION | ev.PY_START)

    def rearm(self) -> int:
        """Nothing to do: events are per interpreter, new threads are covered."""
        return 0

    def unpark(self) -> None:
        self.mon.set_events(self.tool, self.ev.PY_UNWIND)
        if self.disabled:
            # Re-enables what DISABLE switched off, for every tool (a coverage tool's too).
            self.mon.restart_events()
            self.disabled = False

    def close(self) -> None:
        if self.tool < 0:
            return
        mon = self.mon
        mon.set_events(self.tool, 0)
        self._set_local(frozenset())
        if self.disabled:
            mon.restart_events()
            self.disabled = False
        for event in (self.ev.PY_RETURN, self.ev.PY_YIELD, self.ev.PY_UNWIND):
            mon.register_callback(self.tool, event, None)
        for event in (self.ev.INSTRUCTION, self.ev.PY_START):
            mon.register_callback(self.tool, event, None)
        mon.free_tool_id(self.tool)
        self.tool = -1

    # Callbacks run in the thread that triggers them, and never re-enter themselves.

    def _on_return(self, code: CodeType, offset: int, retval: object) -> Any:
        return self._leaving(sys._getframe(1))

    def _leaving(self, frame: FrameType) -> None:
        """A frame of changed code is leaving (a return, or an exception unwinding it)."""
        f = self.f
        phase = f.phase
        if _thread.get_ident() == f.updater:
            return None
        if phase is Phase.WATCH:
            f.returned(frame)
        elif phase is not Phase.OFF:
            if phase is Phase.FROZEN or f.stack_clean(frame.f_back):
                f.park_here(frame)
            else:
                f.notify()
        return None

    def _on_yield(self, code: CodeType, offset: int, retval: object) -> Any:
        # The generator stays suspended in changed code: a blocker, never an exempt frame.
        self.f.notify()
        return None

    def _on_unwind(self, code: CodeType, offset: int, exc: BaseException) -> Any:
        f = self.f
        if code in f.changed:
            return self._leaving(sys._getframe(1))
        return None

    def _on_instruction(self, code: CodeType, offset: int) -> Any:
        f = self.f
        if _thread.get_ident() == f.updater:
            if _is_own(code):
                self.disabled = True
                return self.mon.DISABLE
            return None
        phase = f.phase
        if phase is Phase.FROZEN:
            f.park_here(None)
        elif phase is Phase.PARK:
            if code in f.changed:
                # Let it run at full speed to its return, where PY_RETURN parks it.
                self.disabled = True
                return self.mon.DISABLE
            if f.stack_clean(sys._getframe(1)):
                f.park_here(None)
        return None

    def _on_start(self, code: CodeType, offset: int) -> Any:
        f = self.f
        if _thread.get_ident() == f.updater:
            return None
        phase = f.phase
        if code in f.changed:
            if phase is Phase.PARK:
                f.entries += 1  # runs old code to its return; `try_freeze` sees the count move
            elif phase is Phase.FROZEN:
                _note_late_entry(f, sys._getframe(1))
                f.park_here(None)
        elif phase is Phase.FROZEN or (phase is Phase.PARK and f.stack_clean(sys._getframe(1))):
            f.park_here(None)
        return None


def _note_late_entry(f: Freezer, frame: FrameType) -> None:
    code = frame.f_code
    f.late_entries.append(f"{code.co_filename}:{code.co_firstlineno} in {code.co_qualname}")


# -- 3.11: per-thread C trace functions, set in one C walk -------------------------------------

_TRACE_CALL, _TRACE_EXCEPTION, _TRACE_LINE, _TRACE_RETURN, _TRACE_OPCODE = 0, 1, 2, 3, 7


def hooked_threads() -> list[tuple[int, bool, bool, bool]]:
    """3.11: (ident, trace function set, profile function set, ours) for every thread state."""
    return _tstates.hooks()


class _TraceHooks:
    """Notifications and parking through per-thread C trace functions (3.11).

    `_tstates` (C) sets them: every walk over the thread states happens in C under the GIL,
    running no Python code, so no thread state can be freed under it (walked through ctypes,
    it crashed when a thread ended mid-walk).
    """

    def __init__(self, freezer: Freezer) -> None:
        self.f = freezer
        self.c = _tstates
        # The update thread is never traced (built there; `returned` may arm from another).
        self.updater = freezer.updater
        self.callback = self._trace  # one bound method: the thread states hold references to it
        # Frames whose line/opcode events we switched, to restore at the end.
        self.quiet: list[FrameType] = []
        self.opcodes: list[FrameType] = []
        self.watch_codes: frozenset[CodeType] = frozenset()

    def watch(self, blocking: frozenset[CodeType], threads: Collection[int] | None) -> None:
        self.c.disarm()
        self.watch_codes = blocking
        self.c.arm(self.callback, self.updater, threads)

    def park(self) -> None:
        self.rearm()
        # A thread in a C call comes back in the middle of a line: opcode events catch it there.
        # A thread leaving an earlier parking resumes its frame mid-line too: skip our frames.
        me = self.f.updater
        for ident, top in sys._current_frames().items():
            frame: FrameType | None = top
            while frame is not None and _is_own(frame.f_code):
                frame = frame.f_back
            if (
                ident != me
                and frame is not None
                and frame.f_code not in self.f.changed
                and not frame.f_trace_opcodes
            ):
                frame.f_trace_opcodes = True
                self.opcodes.append(frame)

    def rearm(self) -> int:
        """Arm every thread, those started since the last walk included; how many were new."""
        return self.c.arm(self.callback, self.updater)

    def unpark(self) -> None:
        # Back to no hook at all; the caller arms the watch it needs next.
        for frame in self.opcodes:
            frame.f_trace_opcodes = False
        self.opcodes.clear()
        for frame in self.quiet:
            frame.f_trace_lines = True
        self.quiet.clear()
        self.c.disarm()

    def close(self) -> None:
        self.unpark()

    def _trace(self, frame: FrameType, what: int) -> None:
        try:
            if _thread.get_ident() == self.f.updater:
                return
            if what == _TRACE_RETURN:
                self._on_trace_return(frame)
            else:
                self._event(frame, what)
        except Exception:
            # A fault of ours must not become the application's exception. (KeyboardInterrupt
            # and the like, raised by the application's signal handlers, do propagate.)
            return

    def _on_trace_return(self, frame: FrameType) -> None:
        # Its own function: `returning_frame` recognises a thread stopped in here.
        f = self.f
        phase = f.phase
        if phase is Phase.WATCH or phase is Phase.OFF:
            if frame.f_code in self.watch_codes:
                f.returned(frame)
        elif phase is Phase.FROZEN or f.stack_clean(frame.f_back):
            f.park_here(frame)
        elif frame.f_code in f.changed:
            f.notify()

    def _event(self, frame: FrameType, what: int) -> None:
        f = self.f
        phase = f.phase
        if phase is Phase.WATCH or phase is Phase.OFF:
            return
        changed = frame.f_code in f.changed
        if phase is Phase.FROZEN:
            if what == _TRACE_CALL and changed:
                _note_late_entry(f, frame)
            f.park_here(None)
        elif changed:
            if what == _TRACE_CALL:
                f.entries += 1
            elif what in (_TRACE_LINE, _TRACE_OPCODE):
                # Full speed to the return, where the return event parks it.
                frame.f_trace_lines = False
                frame.f_trace_opcodes = False
                self.quiet.append(frame)
        elif f.stack_clean(frame):
            f.park_here(None)


# Our callbacks for return events. A thread stopped in one is finishing the return of the frame
# right below them: that frame executes no more of its code, and its return event has fired.
_HERE = Freezer.park_here.__code__.co_filename
_RETURN_CALLBACKS = frozenset(
    {
        _MonitoringHooks._on_return.__code__,
        _MonitoringHooks._on_unwind.__code__,
        _TraceHooks._on_trace_return.__code__,
    }
)


def returning_frame(top: FrameType) -> FrameType | None:
    """The frame a thread is returning from while it is inside our return callback, else None.

    The safe-point check must not count that frame as a blocker, nor wait for a return event
    from it: the event has fired already. (A thread parked at a return by one freezer may
    finish that return only after the next freezer, or the next attempt, has looked at it:
    counted as a blocker, it stalled the wait until the re-check.)
    """
    frame: FrameType | None = top
    returning = False
    while frame is not None and frame.f_code.co_filename == _HERE:
        returning = returning or frame.f_code in _RETURN_CALLBACKS
        frame = frame.f_back
    return frame if returning else None
