"""Safe points with real threads, generators and event loops, against the safepoint contract."""

from __future__ import annotations

import asyncio
import contextlib
import dis
import faulthandler
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
import threads_support as support

from gdsu_fork.errors import SafePointTimeout
from gdsu_fork.freeze import FreezeError
from gdsu_fork.safepoint import REARM_AFTER, BlockerKind, find_blockers, paused_at_safe_point

Spinners, Gate, assert_still = support.Spinners, support.Gate, support.assert_still


def work() -> int:
    """Changed by the updates below: 200 iterations, as hot code in a server would be."""
    x = 0
    for i in range(200):
        x += i
    return x


def other_work() -> int:
    x = 0
    for i in range(200):
        x += i
    return x


def gated(gate: Gate) -> None:
    """Stays inside (a changed function) until the gate opens."""
    gate.log.append("in")
    gate.inside.set()
    gate.release.wait(30)
    gate.log.append("out")


def failing(gate: Gate) -> None:
    """Stays inside (a changed function) until the gate opens, then leaves by an exception."""
    gate.inside.set()
    gate.release.wait(30)
    gate.log.append("raised")
    raise LookupError("leaving by an exception")


def calls_failing(gate: Gate) -> None:
    with contextlib.suppress(LookupError):
        failing(gate)


def forever(gate: Gate) -> None:
    gate.inside.set()
    while gate.running:
        pass  # FOREVER_LINE


FOREVER_LINE = next(
    i
    for i, line in enumerate(Path(__file__).read_text().splitlines(), 1)
    if line.strip().endswith("# FOREVER_LINE")
)


def freeze_once(codes, timeout: float, **kwargs) -> str:
    """One update that only reaches its pause (a test expecting a timeout must not hang)."""
    with paused_at_safe_point(codes, timeout=timeout, **kwargs):
        return "frozen"


def run_updater(fn, *args, **kwargs) -> tuple[threading.Thread, dict]:
    """Run `fn` in an update thread (never the main thread, like the agent); its result/error."""
    out: dict = {}

    def main() -> None:
        try:
            out["result"] = fn(*args, **kwargs)
        except BaseException as exc:
            out["error"] = exc

    thread = threading.Thread(target=main, name="updater", daemon=True)
    thread.start()
    return thread, out


def finish(thread: threading.Thread, out: dict, timeout: float = 30) -> object:
    thread.join(timeout)
    if thread.is_alive():
        faulthandler.dump_traceback(all_threads=True)  # who holds what, for the report
    assert not thread.is_alive(), "the update thread hung"
    if "error" in out:
        raise out["error"]
    return out.get("result")


@pytest.fixture(autouse=True)
def no_hooks_or_threads_left():
    before, threads = support.installed_hooks(), set(threading.enumerate())
    yield
    assert support.installed_hooks() == before, "a hook outlived the update window"
    assert support.threads_left(threads) == [], "a test left threads running"


def test_freezes_when_nothing_blocks_and_parks_busy_threads():
    with Spinners(4, other_work) as spin:

        def update() -> float:
            started = time.perf_counter()
            with paused_at_safe_point([work.__code__], timeout=5) as pause:
                frozen = time.perf_counter()
                assert_still(spin.snapshot)
            assert pause.attempts == 1
            return frozen - started

        for _ in range(5):
            finish(*run_updater(update))
            assert spin.wait_progress(10), "threads did not run on after the pause"


def test_waits_for_a_thread_inside_changed_code_then_freezes():
    gate = Gate(gated, "in-work").start()
    seen = []

    def on_blocked(blockers) -> None:
        seen.append(blockers)
        gate.open()

    def update() -> list[str]:
        with paused_at_safe_point([gated.__code__], timeout=10, on_blocked=on_blocked):
            return list(gate.log)

    log = finish(*run_updater(update))
    gate.close()
    assert log == ["in", "out"], "frozen while a thread was still inside changed code"
    [first] = seen
    assert [(b.kind, b.name) for b in first] == [("thread", "in-work")]
    assert any(f"{Path(__file__).name}:" in line and "gated" in line for line in first[0].stack)


def test_a_blocker_leaving_by_an_exception_ends_the_wait_at_once():
    gate = Gate(calls_failing, "raising").start()
    opened: list[float] = []

    def on_blocked(_) -> None:
        opened.append(time.monotonic())
        gate.open()

    def update() -> tuple[float, list[str]]:
        with paused_at_safe_point([failing.__code__], timeout=10, on_blocked=on_blocked):
            return time.monotonic(), list(gate.log)

    frozen, log = finish(*run_updater(update))
    gate.close()
    assert log == ["raised"], "frozen while a thread was still inside changed code"
    # its unwind notified the wait: no falling back on the slow re-look (safepoint.REARM_AFTER)
    assert frozen - opened[0] < REARM_AFTER / 2


def test_threads_entering_changed_code_during_the_wait_are_waited_for():
    first = Gate(gated, "first").start()
    second = Gate(gated, "second")
    seen: list[set[str]] = []

    def on_blocked(blockers) -> None:
        names = {b.name for b in blockers}
        seen.append(names)
        if names == {"first"}:
            second.start()  # enters the changed function while the update waits
            first.open()
        elif names == {"second"}:
            second.open()

    def update() -> tuple[list[str], list[str]]:
        with paused_at_safe_point([gated.__code__], timeout=10, on_blocked=on_blocked):
            return list(first.log), list(second.log)

    assert finish(*run_updater(update)) == (["in", "out"], ["in", "out"])
    first.close()
    second.close()
    assert seen[0] == {"first"}
    assert {"second"} in seen


def test_hot_loop_through_changed_code_converges():
    with Spinners(4, work, "hot") as hot, Spinners(4, other_work, "cold") as cold:

        def update() -> None:
            with paused_at_safe_point([work.__code__], timeout=5):
                assert_still(lambda: hot.snapshot() + cold.snapshot(), 0.02)

        for _ in range(10):
            finish(*run_updater(update))
        assert hot.wait_progress(10)
        assert cold.wait_progress(10)


def test_timeout_names_the_thread_and_line_and_the_program_runs_on():
    gate = Gate(forever, "looper").start()
    with Spinners(2, other_work) as spin:
        with pytest.raises(SafePointTimeout) as info:
            finish(*run_updater(freeze_once, [forever.__code__], 0.3))
        assert spin.wait_progress(10)
    [blocker] = info.value.blockers
    assert (blocker.kind, blocker.name) == ("thread", "looper")
    assert blocker.stack[-1] in (
        f"{__file__}:{FOREVER_LINE} in forever",
        f"{__file__}:{FOREVER_LINE - 1} in forever",
    )
    assert "looper" in str(info.value) and blocker.stack[-1] in str(info.value)
    assert gate.thread.is_alive()
    gate.close()


def changed_gen():
    yield 1
    yield 2


def test_suspended_generator_blocks_until_it_finishes():
    gen = changed_gen()
    next(gen)
    with pytest.raises(SafePointTimeout) as info:
        finish(*run_updater(freeze_once, [changed_gen.__code__], 0.2))
    [blocker] = info.value.blockers
    assert blocker.kind == BlockerKind.GENERATOR
    assert "changed_gen" in blocker.name
    assert any("in changed_gen" in line for line in blocker.stack)

    finisher_done = threading.Event()

    def on_blocked(blockers) -> None:
        # Another thread resumes the generator to its end while the update waits.
        def drain() -> None:
            list(gen)
            finisher_done.set()

        threading.Thread(target=drain).start()

    def update() -> bool:
        with paused_at_safe_point([changed_gen.__code__], timeout=10, on_blocked=on_blocked):
            return finisher_done.is_set()

    assert finish(*run_updater(update)) is True


async def changed_coro(fut: asyncio.Future) -> str:
    return await fut


async def outer_coro(fut: asyncio.Future) -> str:
    return await changed_coro(fut)


class LoopThread:
    """An asyncio loop running in its own thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="loop", daemon=True)
        self.thread.start()

    def call(self, coro_fn, timeout: float = 10):
        return asyncio.run_coroutine_threadsafe(coro_fn(), self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def test_suspended_asyncio_task_blocks_and_is_named():
    lt = LoopThread()
    try:

        async def start():
            fut = lt.loop.create_future()
            task = asyncio.create_task(outer_coro(fut), name="sleeper")
            await asyncio.sleep(0)
            return fut, task

        fut, task = lt.call(start)
        with pytest.raises(SafePointTimeout) as info:
            finish(*run_updater(freeze_once, [changed_coro.__code__], 0.2))
        [blocker] = info.value.blockers
        assert (blocker.kind, blocker.name) == ("task", "sleeper")
        assert [line.rsplit(" in ", 1)[1] for line in blocker.stack] == [
            "outer_coro",
            "changed_coro",
        ]

        def on_blocked(blockers) -> None:
            lt.loop.call_soon_threadsafe(fut.set_result, "done")

        def update() -> bool:
            with paused_at_safe_point([changed_coro.__code__], timeout=10, on_blocked=on_blocked):
                return task.done()

        assert finish(*run_updater(update)) is True
    finally:
        lt.close()


def handle() -> int:
    return other_work()


def serve(gate: Gate) -> None:
    """Never returns (an accept loop); calls changed code on every turn."""
    gate.inside.set()
    while not gate.release.is_set():
        handle()


def test_allowed_frames_may_stay_while_the_code_they_call_is_changed():
    gate = Gate(serve, "server").start()
    try:
        codes = [serve.__code__, handle.__code__]
        assert [b.name for b in find_blockers(codes)] == ["server"]

        def update() -> list[tuple[str, str]]:
            with paused_at_safe_point(codes, allowed=[serve.__code__], timeout=5):
                frame = sys._current_frames()[gate.thread.ident]
                stack = []
                while frame is not None:
                    op = dis.opname[frame.f_code.co_code[frame.f_lasti]]
                    stack.append((frame.f_code.co_name, op))
                    frame = frame.f_back
                return stack

        for _ in range(5):
            stack = finish(*run_updater(update))
            assert "serve" in [name for name, _ in stack]
            # A frame of changed code may only be there while it returns.
            assert all(op.startswith("RETURN") for name, op in stack if name == "handle"), stack
    finally:
        gate.close()


def test_one_update_at_a_time():
    def update() -> None:
        with (
            paused_at_safe_point([work.__code__], timeout=5),
            pytest.raises(FreezeError, match="one update at a time"),
        ):
            freeze_once([work.__code__], 1)

    finish(*run_updater(update))


handled: list[int] = []


def on_signal(signum, frame) -> None:
    """A signal handler that the update below changes: C code calls it, wherever the main
    thread is waiting."""
    handled.append(signum)


def test_changed_code_started_from_c_during_the_pause_is_a_late_entry():
    """The main thread waits in C; a signal makes it call a changed handler in the pause."""
    handled.clear()

    def update() -> tuple[tuple[str, ...], tuple[str, ...], list[int]]:
        with paused_at_safe_point([on_signal.__code__], timeout=10) as pause:
            first = pause.late_entries()
            os.kill(os.getpid(), signal.SIGUSR1)
            deadline = time.monotonic() + 10
            entered = threading.Event()  # never set: a wait with a deadline, GIL released
            while not pause.late_entries() and time.monotonic() < deadline:
                entered.wait(0.005)
            return first, pause.late_entries(), list(handled)

    previous = signal.signal(signal.SIGUSR1, on_signal)
    try:
        thread, out = run_updater(update)
        while thread.is_alive():
            thread.join(0.01)  # the main thread in C; it runs handlers between its waits
        first, late, during = finish(thread, out)
        deadline = time.monotonic() + 10
        while not handled and time.monotonic() < deadline:
            threading.Event().wait(0.01)  # the handler runs in this (main) thread
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert first == ()
    code = on_signal.__code__
    assert late == (f"{code.co_filename}:{code.co_firstlineno} in {code.co_qualname}",)
    assert during == [], "the changed handler ran in the pause"
    assert handled == [signal.SIGUSR1], "the handler was lost"  # it ran after: old code


def test_a_thread_still_finishing_its_return_does_not_block_the_next_update():
    """Parked at its return by one update, a thread finishes that return after the release
    without a new return event: the next update must not count it as a blocker (it would wait
    for an event that never comes)."""
    gate = Gate(gated, "returning").start()
    seen: list[list[str]] = []

    def update() -> None:
        with paused_at_safe_point([gated.__code__], timeout=10, on_blocked=lambda _: gate.open()):
            pass  # "returning" is parked in its return from gated()
        # Released, it has not run yet (this thread holds the GIL): it is still in that return.
        with paused_at_safe_point(
            [gated.__code__], timeout=10, on_blocked=lambda b: seen.append([x.name for x in b])
        ):
            pass

    for _ in range(3):
        finish(*run_updater(update))
        gate.close()
        gate = Gate(gated, "returning").start()
    gate.close()
    assert seen == []
