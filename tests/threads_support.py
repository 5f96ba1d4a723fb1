"""Threads for safe-point and freeze tests: spinning, gated, and a view of installed hooks."""

from __future__ import annotations

import importlib.util
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path


def load(name: str, path: Path):
    """Import a scenario file under a unique module name."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class Spinners:
    """`n` threads each calling `fn()` in a loop and counting; they stop at `stop()`."""

    def __init__(self, n: int, fn: Callable[[], object], name: str = "spin") -> None:
        self.fn = fn
        self.counts = [0] * n
        self.stopped = False
        self._want = False
        self._seen: set[int] = set()
        self._lock = threading.Lock()
        self._all_seen = threading.Event()
        self.threads = [
            threading.Thread(target=self._run, args=(i,), name=f"{name}-{i}", daemon=True)
            for i in range(n)
        ]

    def __enter__(self) -> Spinners:
        for t in self.threads:
            t.start()
        assert self.wait_progress(10), "spinners did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped = True
        for t in self.threads:
            t.join(10)

    def _run(self, i: int) -> None:
        fn = self.fn
        counts = self.counts
        while not self.stopped:
            fn()
            counts[i] += 1
            if self._want:
                with self._lock:
                    self._seen.add(i)
                    if len(self._seen) == len(counts):
                        self._all_seen.set()

    def snapshot(self) -> list[int]:
        return list(self.counts)

    def wait_progress(self, timeout: float) -> bool:
        """Wait until every thread has completed one more loop."""
        with self._lock:
            self._seen.clear()
            self._all_seen.clear()
        self._want = True
        try:
            return self._all_seen.wait(timeout)
        finally:
            self._want = False


def assert_still(counts: Callable[[], list[int]], seconds: float = 0.05) -> None:
    """Fail if a parked thread moves while the caller (the update thread) lets time pass."""
    before = counts()
    time.sleep(seconds)  # an observation window, not a synchronisation
    after = counts()
    assert before == after, f"parked threads advanced during the pause: {before} -> {after}"


class Gate:
    """A thread that enters `fn(gate)` and stays inside until `open()`."""

    def __init__(self, fn: Callable[[Gate], object], name: str) -> None:
        self.inside = threading.Event()
        self.release = threading.Event()
        self.log: list[str] = []
        self.running = True  # for loops that must not call anything
        self.thread = threading.Thread(target=fn, args=(self,), name=name, daemon=True)

    def start(self) -> Gate:
        self.thread.start()
        assert self.inside.wait(10)
        return self

    def open(self) -> None:
        self.running = False
        self.release.set()

    def close(self, timeout: float = 10) -> None:
        """Open the gate and wait for the thread to end: no test leaves it to the next."""
        self.open()
        if self.thread.ident is not None:
            self.thread.join(timeout)
            assert not self.thread.is_alive(), f"thread {self.thread.name!r} did not end"


def threads_left(before: set[threading.Thread], timeout: float = 10) -> list[str]:
    """Names of threads started since `before` that are still alive after `timeout` seconds.

    A thread a test leaves running can still be inside the code the next test changes, and
    block (or be parked in) that test's update.
    """
    deadline = time.monotonic() + timeout
    for thread in set(threading.enumerate()) - before:
        thread.join(max(deadline - time.monotonic(), 0))
    return sorted(t.name for t in set(threading.enumerate()) - before if t.is_alive())


def installed_hooks() -> set[str]:
    """Every trace, profile or monitoring hook in the interpreter, any thread."""
    hooks = set()
    if sys.version_info >= (3, 12):
        for tool in range(6):
            name = sys.monitoring.get_tool(tool)
            if name is not None:
                hooks.add(f"monitoring tool {tool}: {name}")
    else:
        from gdsu_fork.freeze import hooked_threads

        for ident, trace, profile, _ in hooked_threads():
            if trace or profile:
                hooks.add(f"trace/profile function on thread {ident}")
    return hooks
