"""Whole updates (gdsu_fork.update) of a program busy in threads, sockets and an event loop."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path

import pytest
from scenario import committed

import gdsu_fork
from gdsu_fork import Outcome, Phase


@pytest.fixture
def app(scenario):
    return scenario("threads_app")


class Program:
    """The running program around the scenario module: threads, sockets and an event loop.

    Every observation checks that code of one version ran: `pair()` returns the version of
    both halves, which differ only if an update landed between them.
    """

    def __init__(self, mod, busy: int = 8, readers: int = 2, tasks: int = 1000) -> None:
        self.mod = mod
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.counts: dict[str, int] = {}
        self.threads: list[threading.Thread] = []
        self.socks = [socket.socketpair() for _ in range(readers)]
        for i in range(busy):
            self._thread(f"busy-{i}", self._busy)
        for i, (_, inner) in enumerate(self.socks):
            self._thread(f"reader-{i}", self._reader, inner)
        self._thread("feeder", self._feeder)
        self._thread("checker", self._checker)
        self.loop = asyncio.new_event_loop()
        self._thread("loop", self.loop.run_forever, counted=False)
        self.tasks = tasks

    def _thread(self, name: str, fn, *args, counted: bool = True) -> None:
        def run() -> None:
            try:
                fn(*args)
            except BaseException as exc:
                self.errors.append(f"{name}: {exc!r}")

        if counted:
            self.counts[name] = 0
        self.threads.append(threading.Thread(target=run, name=name, daemon=True))

    def _count(self, name: str) -> None:
        self.counts[name] = self.counts[name] + 1

    def _same(self, where: str, values) -> None:
        if len(set(values)) != 1:
            self.errors.append(f"{where} saw versions {values}")

    def _busy(self) -> None:
        name = threading.current_thread().name
        while not self.stop.is_set():
            self.mod.work()
            self._same(name, self.mod.pair())
            self._count(name)

    def _reader(self, sock: socket.socket) -> None:
        name = threading.current_thread().name
        while b"q" not in (data := sock.recv(64)):
            first, second, version, _ = self.mod.handle(data)
            self._same(name, (first, second, version))
            self._count(name)

    def _feeder(self) -> None:
        while not self.stop.wait(0.002):
            for outer, _ in self.socks:
                outer.send(b"x")
            self._count("feeder")

    def _checker(self) -> None:
        while not self.stop.is_set():
            self._same("checker", self.mod.on_tick())
            self._count("checker")

    async def _task(self, i: int) -> None:
        while not self.stop.is_set():
            await asyncio.sleep(0.001 * (i % 10))
            self._same(f"task-{i}", self.mod.on_tick())
            self.counts["tasks"] = self.counts.get("tasks", 0) + 1

    async def _start_tasks(self) -> None:
        for i in range(self.tasks):
            asyncio.get_running_loop().create_task(self._task(i), name=f"task-{i}")

    def __enter__(self) -> Program:
        for t in self.threads:
            t.start()
        asyncio.run_coroutine_threadsafe(self._start_tasks(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for outer, _ in self.socks:
            outer.send(b"q")

        async def cancel_all() -> None:
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(cancel_all(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        for t in self.threads:
            t.join(10)
        self.loop.close()
        for a, b in self.socks:
            a.close()
            b.close()

    def progressed_since(self, before: dict[str, int]) -> list[str]:
        """Names of the threads (and the task group) that have not moved since `before`."""
        return [name for name, n in self.counts.items() if n <= before.get(name, -1)]


def wait_for(predicate, timeout: float = 20) -> bool:
    """Wait for a condition that other threads make true, with a deadline."""
    done = threading.Event()
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        done.wait(0.01)
    return True


@pytest.mark.slow
def test_fifty_alternating_updates_under_load_never_mix_versions(app):
    mod = app.module
    patches = {2: app.patch_file("v2"), 1: app.patch_file("v1")}
    with Program(mod) as program:
        assert wait_for(lambda: len(program.counts) == 13 and all(program.counts.values())), (
            program.counts
        )
        pauses = []
        for n in range(50):
            target = 2 if n % 2 == 0 else 1
            report = committed(gdsu_fork.update(patches[target], timeout=20, rehearse=False))
            pauses.append(report.timings)
            assert mod.a() == mod.b() == mod.VERSION == target
            assert mod.pair() == (target, target)
        before = dict(program.counts)
        assert wait_for(lambda: not program.progressed_since(before)), program.progressed_since(
            before
        )
    assert program.errors == []
    assert max(t["pause"] for t in pauses) < 2000, pauses


def test_update_waits_for_a_thread_in_changed_code_then_commits_at_once(app):
    mod = app.module
    entered = threading.Event()
    returned: list[float] = []
    paused: list[float] = []

    def on_progress(event: gdsu_fork.Progress) -> None:
        if event.phase == Phase.PAUSED:
            paused.append(time.perf_counter())

    thread = threading.Thread(target=mod.slow, args=(entered, returned), name="slowpoke")
    thread.start()
    assert entered.wait(10)
    report = committed(gdsu_fork.update(app.patch_file("v2"), timeout=10, progress=on_progress))
    thread.join(10)
    [back] = returned
    [frozen] = paused
    assert frozen > back, "paused while the thread was still inside slow()"
    assert frozen - back < 0.05, f"took {1000 * (frozen - back):.1f} ms to pause after the return"
    assert report.timings["wait"] > 100
    assert mod.a() == 2


def test_endless_loop_in_changed_code_aborts_naming_thread_and_line(app):
    mod = app.module
    flag = threading.Event()
    thread = threading.Thread(target=mod.spin, args=(flag,), name="spinner", daemon=True)
    thread.start()
    assert flag.wait(10)
    try:
        lines = Path(mod.__file__).read_text().splitlines()
        spin_line = next(i for i, line in enumerate(lines, 1) if "SPIN_LINE" in line)
        report = gdsu_fork.update(app.patch_file("v2"), timeout=0.5)
        assert report.outcome == Outcome.ABORTED, report.reason
        [blocker] = report.blockers
        assert "spinner" in blocker
        assert (
            f"{mod.__file__}:{spin_line}" in blocker or f"{mod.__file__}:{spin_line - 1}" in blocker
        )
        assert "spinner" in report.reason
        assert mod.a() == 1 and thread.is_alive()  # unharmed, still running the old code
    finally:
        flag.clear()
        thread.join(10)
    committed(gdsu_fork.update(app.patch_file("v2"), timeout=5))


def test_suspended_task_and_generator_block_until_they_finish(app):
    mod = app.module
    loop = asyncio.new_event_loop()
    loop_thread = threading.Thread(target=loop.run_forever, name="loop", daemon=True)
    loop_thread.start()
    try:

        async def start() -> tuple[asyncio.Future, asyncio.Task]:
            fut = loop.create_future()
            task = asyncio.create_task(mod.waiting(fut), name="waiter-task")
            await asyncio.sleep(0)
            return fut, task

        fut, task = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
        gen = mod.numbers()
        assert next(gen) == 1

        report = gdsu_fork.update(app.patch_file("v2"), timeout=0.3)
        assert report.outcome == Outcome.ABORTED, report.reason
        text = "\n".join(report.blockers)
        assert "task 'waiter-task'" in text and "in waiting" in text
        assert "generator" in text and "in numbers" in text

        def resume(event: gdsu_fork.Progress) -> None:
            if event.phase == Phase.WAITING and "blocked" in event.message:
                loop.call_soon_threadsafe(fut.set_result, "go")
                threading.Thread(target=list, args=(gen,)).start()

        committed(gdsu_fork.update(app.patch_file("v2"), timeout=10, progress=resume))
        assert task.result() == ("go", 1, 1)  # finished in the old code, before the commit
        assert mod.a() == 2
    finally:
        loop.call_soon_threadsafe(loop.stop)
        loop_thread.join(10)
        loop.close()


def test_changed_code_started_from_c_in_the_pause_discards_the_update(scenario):
    """A signal makes the main thread (waiting in C) call a changed handler during the pause:
    that frame would run the old code after the commit, so the update is discarded."""
    import os
    import signal

    from gdsu_fork import freeze

    scn = scenario("late_entry")
    mod = scn.module
    results: list[gdsu_fork.Report] = []

    def signal_in_the_pause(event: gdsu_fork.Progress) -> None:
        if event.phase is Phase.MIGRATING:  # paused, the update child about to start
            os.kill(os.getpid(), signal.SIGUSR1)
            deadline = time.monotonic() + 10
            while not (freeze._active and freeze._active.late_entries):
                if time.monotonic() > deadline:
                    break
                threading.Event().wait(0.002)  # GIL released: the main thread takes the signal

    def update() -> None:
        results.append(gdsu_fork.update(scn.patch_file(), progress=signal_in_the_pause))

    previous = signal.signal(signal.SIGUSR1, mod.on_signal)
    try:
        updater = threading.Thread(target=update)
        updater.start()
        while updater.is_alive():
            updater.join(0.01)  # the main thread in C; it runs handlers between its waits
    finally:
        signal.signal(signal.SIGUSR1, previous)
    (report,) = results
    assert report.outcome == Outcome.DISCARDED, report.reason
    assert "started changed code during the pause" in report.reason
    assert "on_signal" in report.reason
    assert mod.handled == ["v1"]  # released, the old handler ran; nothing was committed
    assert "v1" in mod.on_signal.__code__.co_consts
