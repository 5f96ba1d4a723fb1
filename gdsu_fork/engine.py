"""The update pipeline: rehearse, wait for a safe point, pause, fork, commit or discard.

Only this module moves between the phases of DESIGN §3; each phase's work lives in its own module.
The program's own process never executes patch code: children do (child.py), and the parent only
applies the delta they produced (commit.py).
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import os
import sys
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

from . import STARTUP_FROZEN, cow, safepoint
from . import ahead as ahead_
from . import analysis as analysis_
from . import delta as delta_codec
from ._assign import of_types
from .bulk import Listing
from .child import Analysis, Job, Mode, unpack
from .child import run as child_run
from .commit import apply_delta
from .errors import GdsuError, SafePointTimeout
from .isolate import ChildResult, Snapshot, reap, run_forked
from .patch import Patch
from .progress import Phase, Progress, ProgressCallback
from .report import Change, ChangeKind, Outcome, Report

# One update at a time per process: two pauses cannot interleave.
_UPDATE_LOCK = threading.Lock()


def _ms(seconds: float) -> float:
    return seconds * 1000.0


def default_child_memory() -> int:
    """How much the update child may grow: the memory the machine has available now."""
    return int(psutil.virtual_memory().available)


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Keep the cyclic collector from freeing anything the child's delta refers to."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class _Update:
    """One run of the pipeline; holds its report as it fills in."""

    def __init__(
        self,
        patch: Patch | str | os.PathLike[str],
        timeout: float,
        rehearse: bool,
        progress: ProgressCallback | None,
        child_memory: int | None,
    ) -> None:
        self.job = Job(
            patch if isinstance(patch, Patch) else str(Path(patch).resolve()), timeout=timeout
        )
        self.timeout = timeout
        self.rehearse = rehearse
        self.progress = progress
        self.child_memory = child_memory if child_memory is not None else default_child_memory()
        self.report = Report(Outcome.DISCARDED)
        self.started = time.perf_counter()
        # the rehearsal's migrations, reusable in the pause while its snapshot is held (ahead.py)
        self.ahead: ahead_.Ahead | None = None
        self.ahead_pages: cow.StatePages | None = None
        self.snapshot: Snapshot | None = None
        self.analysis = Analysis()  # what the first child found

    def emit(self, phase: Phase, message: str, **data: object) -> None:
        if self.progress is not None:
            with contextlib.suppress(Exception):  # a broken listener must not break the update
                self.progress(Progress(phase, message, dict(data)))

    def fork(self, mode: Mode, *, snapshot: bool = False) -> ChildResult:
        return run_forked(
            lambda: child_run(self.job, mode),
            timeout=self.timeout,
            memory=self.child_memory,
            fork=safepoint.quiet_fork,
            on_start=lambda pid: self.emit(Phase.CHILD, f"update child {pid} started", pid=pid),
            snapshot=snapshot,
        )

    def finish(self, outcome: Outcome, reason: str | None = None) -> Report:
        self.report.outcome = outcome
        self.report.reason = reason
        self.report.timings["total"] = _ms(time.perf_counter() - self.started)
        phase = {
            Outcome.COMMITTED: Phase.COMMITTED,
            Outcome.DISCARDED: Phase.DISCARDED,
            Outcome.ABORTED: Phase.ABORTED,
        }[outcome]
        self.emit(phase, self.report.summary(), report=self.report.to_dict())
        return self.report

    def take_analysis(self, analysis: Analysis) -> None:
        self.report.title = analysis.title
        self.report.changes = [Change(name, ChangeKind(kind)) for name, kind in analysis.changes]
        self.report.migrated = analysis.migrated
        self.report.reused = analysis.reused

    def run(self) -> Report:
        first_mode = Mode.REHEARSE if self.rehearse else Mode.ANALYSE
        self.job.defer_instances = self.rehearse
        if self.rehearse:
            self.emit(Phase.REHEARSING, "rehearsing in a forked child; the program runs on")
        else:
            self.emit(Phase.ANALYSING, "analysing the patch in a forked child")
        try:
            result = self.fork(first_mode)
        finally:
            self.job.defer_instances = False
        self.report.timings["rehearse"] = _ms(result.seconds)
        if not result.ok:
            return self.finish(Outcome.DISCARDED, result.reason)
        analysis, _ = unpack(result.payload)
        self.take_analysis(analysis)
        self.analysis = analysis
        codes = analysis_.blocking_codes([(m, tuple(s)) for m, s in analysis.blocking])  # type: ignore[misc]
        allowed = _allowed_codes(analysis.allowed)
        with self.heap_mark(analysis, codes - allowed) as suspended:
            try:
                if analysis.deferred:
                    failure = self.rehearse_migration()
                    if failure is not None:
                        return failure
                return self.wait_pause_commit(codes, allowed, suspended)
            finally:
                self.release_snapshot()

    def rehearse_migration(self) -> Report | None:
        """Rehearse the migration on the marked instances while the program runs; keep what
        the pause may reuse. A report if the rehearsal failed (nothing changed, no pause)."""
        self.emit(
            Phase.REHEARSING,
            f"rehearsing the migration of {len(self.job.prior_objects)} marked object(s); "
            "the program runs on",
        )
        self.job.speculate, self.job.young = True, []  # the marked objects, nothing else
        try:
            result = self.fork(Mode.REHEARSE, snapshot=True)
        finally:
            self.job.speculate, self.job.young = False, None
        self.report.timings["rehearse"] += _ms(result.seconds)
        if not result.ok:
            return self.finish(Outcome.DISCARDED, result.reason)
        analysis, captured = unpack(result.payload)
        self.take_analysis(analysis)
        self.snapshot = result.snapshot
        if captured:
            self.ahead = ahead_.Ahead.decode(captured)
            self.ahead_pages = ahead_.prepare(self.ahead)
        else:
            self.release_snapshot()
        return None

    def release_snapshot(self) -> None:
        if self.snapshot is not None:
            self.snapshot.release()
            self.snapshot = None

    def reusable_positions(self) -> None:
        """In the pause, before anything touches the marked objects: which of the rehearsal's
        migrations still hold (their instances were not written since), for the pause child."""
        if self.ahead is None or self.ahead_pages is None:
            return
        written = ahead_.written_positions(self.ahead_pages, self.snapshot)
        self.release_snapshot()
        if written is not None:
            self.job.ahead, self.job.written = self.ahead, written

    @contextlib.contextmanager
    def heap_mark(self, analysis: Analysis, blocking: set[types.CodeType]) -> Iterator[list[Any]]:
        """List what the paused child will need, and gc.freeze(), as one instant.

        After the mark, the child's gc.get_objects() lists only objects made since; the listing
        taken at the mark covers the rest: closures of changed nested code, instances of
        affected classes (`job.prior_objects`), suspended generators and coroutines of changed
        code (yielded). An object made between the listing and the mark would be in neither,
        so the program's threads are parked for those two C-level steps (about 20 ms per
        million objects); sorting the listing happens after they run on.

        A program that uses gc.freeze() itself has objects in the permanent generation, which
        the collector's walks skip: they are unfrozen for the listing, so that its frozen
        instances are found and migrated too. The collector cannot re-freeze just those, so
        when the update ends everything that exists then is frozen again: what the program
        froze stays frozen, and so does what it made since, as if it had called gc.freeze()
        at that moment (cyclic garbage among those objects is never collected, as for any
        frozen object).
        """
        program_froze = gc.get_freeze_count() > STARTUP_FROZEN
        listing: list[Any] | None = None
        marking = False  # from here on the collector's generations are the mark's to restore
        try:
            if analysis.nested or analysis.affected or _suspendable(blocking):
                with safepoint.paused_at_safe_point((), timeout=self.timeout):
                    marking = True
                    if program_froze:
                        gc.unfreeze()
                    listing = gc.get_objects() if analysis.nested or analysis.affected else None
                    suspended = safepoint.find_suspended(blocking)
                    gc.freeze()
            else:
                suspended = []
                marking = True
                gc.freeze()
            if listing is not None:
                self.job.prior_objects = _needed(analysis, listing)
            del listing
            yield suspended
        finally:
            if marking:
                gc.unfreeze()
                if program_froze:
                    gc.freeze()

    def wait_pause_commit(
        self, codes: set[types.CodeType], allowed: set[types.CodeType], suspended: list[object]
    ) -> Report:
        self.emit(Phase.WAITING, f"waiting for a safe point ({len(codes)} changed code objects)")
        wait_started = time.perf_counter()

        def on_blocked(blockers: list[safepoint.Blocker]) -> None:
            self.emit(
                Phase.WAITING,
                "blocked by " + "; ".join(b.name for b in blockers),
                blockers=[b.describe() for b in blockers],
            )

        try:
            with (
                safepoint.paused_at_safe_point(
                    codes,
                    allowed=allowed,
                    timeout=self.timeout,
                    on_blocked=on_blocked,
                    suspended=suspended,
                ) as pause,
                _collector_paused(),
            ):
                pause_started = time.perf_counter()
                self.report.timings["wait"] = _ms(pause_started - wait_started)
                self.emit(Phase.PAUSED, "program paused")
                return self.commit_in_pause(pause, pause_started)
        except SafePointTimeout as exc:
            self.report.timings["wait"] = _ms(time.perf_counter() - wait_started)
            self.report.blockers = [b.describe() for b in getattr(exc, "blockers", [])]
            return self.finish(Outcome.ABORTED, str(exc))

    def commit_in_pause(self, pause: safepoint.Pause, pause_started: float) -> Report:
        self.reusable_positions()
        me = threading.get_ident()
        self.job.frames = [f for ident, f in sys._current_frames().items() if ident != me]
        # made since the mark (and needed): the child indexes this very list
        self.job.young = _needed(self.analysis, gc.get_objects())
        try:
            return self.run_commit_child(pause, pause_started)
        finally:
            self.job.frames, self.job.young = [], None
            self.job.ahead, self.job.written = None, None

    def discard_in_pause(self, pause_started: float, reason: str | None) -> Report:
        self.report.timings["pause"] = _ms(time.perf_counter() - pause_started)
        return self.finish(Outcome.DISCARDED, reason)

    def run_commit_child(self, pause: safepoint.Pause, pause_started: float) -> Report:
        # Invariant until the commit ends: nothing that existed at the fork is released here,
        # since the delta may name it by address.
        expected = self.report.migrated  # as found by the rehearsal (or the analysis: 0)
        self.emit(
            Phase.MIGRATING,
            f"building the new environment: {expected} instance(s) to migrate, then validations",
            instances=expected,
        )
        result = self.fork(Mode.COMMIT)
        objects = Listing(self.job.prior_objects, self.job.young or [])
        self.report.timings["child"] = _ms(result.seconds)
        if not result.ok:
            return self.discard_in_pause(pause_started, result.reason)
        analysis, data = unpack(result.payload)
        self.take_analysis(analysis)
        self.report.delta_bytes = len(data)
        commit_started = time.perf_counter()
        try:
            decoded = delta_codec.decode(data)
        except Exception as exc:
            return self.discard_in_pause(pause_started, f"the delta could not be decoded: {exc!r}")
        late = pause.late_entries()
        if late:  # the point of no return is next: after it, these frames would run old code
            return self.discard_in_pause(
                pause_started,
                "C code (a signal handler, a finalizer, a library's callback) started changed "
                f"code during the pause: {'; '.join(late)}; that frame would run the old code "
                "after the commit. Nothing changed; run the update again.",
            )
        self.emit(Phase.COMMITTING, f"committing {len(decoded.ops)} operations")
        try:
            apply_delta(decoded, objects)
        except Exception as exc:
            return self.discard_in_pause(
                pause_started, f"the commit failed and was undone: {exc!r}"
            )
        now = time.perf_counter()
        self.report.timings["commit"] = _ms(now - commit_started)
        self.report.timings["pause"] = _ms(now - pause_started)
        return self.finish(Outcome.COMMITTED)


def _suspendable(codes: set[types.CodeType]) -> bool:
    flags = inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR
    return any(code.co_flags & flags for code in codes)


def _needed(analysis: Analysis, listing: list[Any]) -> list[Any]:
    """From a listing of the heap, what the update child needs: instances of affected classes
    and, when nested code changed, functions (closures made at run time). The rest (most of a
    heap) the child would only have to skip (C-level loops)."""
    classes = {analysis_.resolve_qualname(*name.split(":")) for name in analysis.affected}
    kinds = analysis_.subclasses_of({c for c in classes if isinstance(c, type)})
    if analysis.nested:
        kinds.add(types.FunctionType)
    return of_types(listing, kinds)


def _allowed_codes(allowed: list[tuple[str, str]]) -> set[types.CodeType]:
    codes: set[types.CodeType] = set()
    for module, qualname in allowed:
        fn = analysis_.resolve_qualname(module, qualname)
        if isinstance(fn, types.FunctionType):
            codes.add(fn.__code__)
    return codes


def update(
    patch: Patch | str | os.PathLike[str],
    *,
    timeout: float = 10.0,
    rehearse: bool = True,
    progress: ProgressCallback | None = None,
    child_memory: int | None = None,
) -> Report:
    """Apply a patch (a `Patch` or the path of a patch file) to this running program.

    Callable from any thread. Never raises for a failed update: the report says "discarded"
    (the new environment failed: nothing changed) or "aborted" (no safe point in `timeout`
    seconds), with the reason. `timeout` bounds each wait separately: the rehearsal child, the
    wait for a safe point, and the child that builds the new environment in the pause.
    `progress` receives `Progress` events as the update goes; `child_memory` caps how many bytes
    an update child may add to its copy of the program (default: the memory available).
    """
    if not _UPDATE_LOCK.acquire(timeout=timeout):
        return Report(Outcome.ABORTED, reason=f"another update was still running after {timeout} s")
    try:
        return _Update(patch, timeout, rehearse, progress, child_memory).run()
    except GdsuError as exc:
        return Report(Outcome.DISCARDED, reason=str(exc))
    finally:
        reap()
        _UPDATE_LOCK.release()
