"""Running a piece of work in a forked child, with a deadline and a memory cap.

Whatever the work does — raise, exit, loop, crash, exhaust memory — the calling process gets a
`ChildResult` saying what happened, and the child is gone.

With `snapshot=True` the child forks once more: the grandchild does the work, and the child
itself only waits, keeping every page of the program as it was at the fork until the caller
releases it (`Snapshot.release`). While it waits, a page the program writes gets a private copy,
which is how the engine tells what the program changed since (see cow.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import resource
import select
import signal
import struct
import sys
import time
import traceback
from collections.abc import Callable

from . import cow
from .errors import GdsuError

_OK, _FAILED = b"K", b"E"
# What a child writes on its pipe: any number of b"P" + pid (a process doing its work, for the
# parent's watcher), then b"A" + length + the answer (_OK or _FAILED, then the bytes).
_PID, _ANSWER = b"P", b"A"
_PID_FRAME = 1 + 8

# In an update child: where its answer goes, for `announce` (None in the program itself).
_answer_fd: int | None = None


def announce(pid: int) -> None:
    """Tell the parent's watcher that process `pid` works for this update child (a grandchild
    it forked), so that the watcher's memory and time caps cover it too."""
    if _answer_fd is not None:
        _write_all(_answer_fd, _PID + struct.pack("!Q", pid))


class Snapshot:
    """A child that keeps the program's pages as they were at its fork, until released.

    Its lifetime is bound to a pipe: it exits when every write end is closed. The program holds
    the only one; forks made meanwhile close their inherited copy (`_close_held_in_child`).
    A fork canary, armed right after the fork where the kernel can tell written pages, says
    whether the program forked again since (cow.py).
    """

    def __init__(self, pid: int, release_fd: int, canary: cow.ForkCanary | None) -> None:
        """Right after the fork of child `pid`; `canary` was made just before it."""
        self.pid = pid
        self._release_fd: int | None = release_fd
        self._canary = canary
        if canary is not None:
            canary.arm()
        _HELD.add(release_fd)

    @property
    def forked_since(self) -> bool:
        """True if a process this one forked after the snapshot still lives (it shares the pages
        too, so a page written before its fork could read as untouched), or if that cannot be
        told."""
        return self._canary is None or self._canary.forked_since()

    @property
    def held(self) -> bool:
        """True until `release`."""
        return self._release_fd is not None

    def release(self) -> None:
        """Let the child exit (it is reaped by `reap`); idempotent."""
        fd, self._release_fd = self._release_fd, None
        if fd is not None:
            _HELD.discard(fd)
            os.close(fd)
            _UNREAPED.append(self.pid)
            if self._canary is not None:
                self._canary.close()


# write ends of the pipes that keep snapshot children waiting
_HELD: set[int] = set()


def _close_held_in_child() -> None:
    # A child forked while a snapshot is held (the pause's update child, a worker the program
    # forks) must not keep the snapshot alive after the program releases it.
    for fd in _HELD:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_close_held_in_child)


@dataclasses.dataclass(frozen=True)
class ChildResult:
    """What the child sent back (`payload`) or why it did not (`reason`); `snapshot`: the
    waiting child of `run_forked(snapshot=True)`, to release once its pages are not needed."""

    ok: bool
    payload: bytes = b""
    reason: str | None = None
    seconds: float = 0.0
    snapshot: Snapshot | None = None


def _virtual_size() -> int:
    with open("/proc/self/statm", "rb") as f:
        pages = int(f.read().split()[0])
    return pages * os.sysconf("SC_PAGE_SIZE")


def _cap_memory(extra: int) -> None:
    """Let the child grow by `extra` bytes of address space; beyond that, MemoryError."""
    limit = _virtual_size() + extra
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


_ENGINE_DIR = os.path.dirname(os.path.abspath(__file__))


def _describe_exception() -> str:
    """The current exception's traceback, without the engine's own frames when the fault lies
    elsewhere (the patch, a migration, a validation): those are what the operator must fix."""
    exc = sys.exc_info()[1]
    assert exc is not None
    summary = traceback.TracebackException.from_exception(exc)
    frames = [f for f in summary.stack if not f.filename.startswith(_ENGINE_DIR)]
    if frames and not isinstance(exc, GdsuError):
        summary.stack = traceback.StackSummary.from_list(frames)
    elif isinstance(exc, GdsuError):
        return f"{type(exc).__name__}: {exc}"
    return "".join(summary.format()).rstrip()


_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """An update child never outlives the program: if the program dies (or already has), so
    does the child (Linux's parent-death signal)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def _hold(release_fd: int, write_fd: int, worker: int) -> None:
    """The snapshot child's whole life: wait for the worker and for the release, then end the
    way the worker ended (so that the parent can describe a crash)."""
    os.close(write_fd)
    _, status = os.waitpid(worker, 0)
    while os.read(release_fd, 4096):
        pass
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        with contextlib.suppress(OSError, ValueError):
            signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), sig)
    os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1)


def _child_main(
    write_fd: int,
    work: Callable[[], bytes],
    memory: int | None,
    parent: int,
    release_fd: int | None,
) -> None:
    global _answer_fd
    code = 1
    try:
        _answer_fd = write_fd
        _die_with_parent(parent)
        if memory is not None:
            _cap_memory(memory)
        if release_fd is not None:
            holder = os.getpid()
            worker = os.fork()  # this process is single-threaded: no at-fork hazard
            if worker:
                _hold(release_fd, write_fd, worker)
            os.close(release_fd)
            _die_with_parent(holder)
            announce(os.getpid())  # the worker writes every frame: one writer keeps the order
        else:
            announce(os.getpid())
        try:
            payload = _OK + work()
        except BaseException:
            payload = _FAILED + _describe_exception().encode("utf-8", "replace")
        _write_all(write_fd, _ANSWER + struct.pack("!Q", len(payload)) + payload)
        # EOF now, before the exit tears down the copy of the heap: the parent needs no more
        os.close(write_fd)
        code = 0
    finally:
        os._exit(code)


# children that answered in full and are left to exit on their own (see run_forked)
_UNREAPED: list[int] = []


def reap() -> None:
    """Collect the children `run_forked(reap_now=False)` left behind."""
    while _UNREAPED:
        pid = _UNREAPED.pop()
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def _announce(on_start: Callable[[int], None] | None, pid: int) -> None:
    if on_start is not None:
        with contextlib.suppress(Exception):  # a broken watcher must not break the update
            on_start(pid)


def _describe_exit(status: int, seconds: float) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        return (
            f"the update child was killed by {name} ({signal.strsignal(sig)}) after {seconds:.2f} s"
        )
    code = os.WEXITSTATUS(status)
    return (
        f"the update child exited with status {code} before reporting "
        f"(did the patch call os._exit or sys.exit?)"
    )


def run_forked(
    work: Callable[[], bytes],
    *,
    timeout: float,
    memory: int | None = None,
    fork: Callable[[], int] = os.fork,
    on_start: Callable[[int], None] | None = None,
    snapshot: bool = False,
) -> ChildResult:
    """Fork, run `work` in the child, and return its bytes or the reason it failed.

    `fork` makes the child (the engine's switches off hooks inherited from a pause); `memory`
    caps the child's growth in bytes; `on_start(pid)` lets a watcher follow the process doing
    the work. A child still running at `timeout` seconds is killed. A child that delivered its
    whole answer is left for `reap` to collect: its exit (unmapping a copy of a large heap) takes
    milliseconds that neither a paused program nor the next step should wait for.
    `snapshot`: see the module docstring; a successful result then holds the `Snapshot`.
    """
    running = start_forked(work, memory=memory, fork=fork, on_start=on_start, snapshot=snapshot)
    return running.wait(timeout)


def start_forked(
    work: Callable[[], bytes],
    *,
    memory: int | None = None,
    fork: Callable[[], int] = os.fork,
    on_start: Callable[[int], None] | None = None,
    snapshot: bool = False,
) -> Running:
    """Fork and start `work` in the child; the caller goes on and `wait`s for the answer later
    (see `run_forked` for the arguments)."""
    read_fd, write_fd = os.pipe()
    release_read, release_write = os.pipe() if snapshot else (None, None)
    canary = cow.open_canary() if snapshot and cow.supported() else None
    started = time.monotonic()
    parent = os.getpid()
    try:
        pid = fork()
    except BaseException:
        for fd in (read_fd, write_fd, release_read, release_write):
            if fd is not None:
                os.close(fd)
        if canary is not None:
            canary.close()
        raise
    if pid == 0:
        os.close(read_fd)
        if release_write is not None:
            os.close(release_write)
        _child_main(write_fd, work, memory, parent, release_read)
    os.close(write_fd)
    held = None
    if release_read is not None and release_write is not None:
        os.close(release_read)
        held = Snapshot(pid, release_write, canary)
    return Running(pid, read_fd, held, started, on_start)


class Running:
    """A forked child at work (`start_forked`); `wait` collects its answer exactly once."""

    def __init__(
        self,
        pid: int,
        read_fd: int,
        held: Snapshot | None,
        started: float,
        on_start: Callable[[int], None] | None,
    ) -> None:
        self.pid = pid
        self._read_fd = read_fd
        self._held = held
        self._started = started
        self._on_start = on_start

    def _read(self, deadline: float) -> tuple[bytes, bool]:
        """The child's answer frame (what follows b"A"; may be cut short), and whether the
        deadline passed; pid frames before it go to the watcher as they arrive."""
        pending = b""
        chunks: list[bytes] = []
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.pid, signal.SIGKILL)
                    return b"".join(chunks), True
                ready, _, _ = select.select([self._read_fd], [], [], remaining)
                if not ready:
                    continue
                chunk = os.read(self._read_fd, 1 << 20)
                if not chunk:
                    return b"".join(chunks), False
                if chunks:
                    chunks.append(chunk)
                    continue
                pending += chunk
                while pending[:1] == _PID and len(pending) >= _PID_FRAME:
                    _announce(self._on_start, struct.unpack("!Q", pending[1:_PID_FRAME])[0])
                    pending = pending[_PID_FRAME:]
                if pending[:1] == _ANSWER:
                    chunks.append(pending[1:])
        finally:
            os.close(self._read_fd)

    def wait(self, timeout: float) -> ChildResult:
        """The child's answer, or the reason there is none; a child still at work `timeout`
        seconds after it started is killed. A child that answered in full is left for `reap`
        (it decided its exit status before it closed its end of the pipe)."""
        pid, held = self.pid, self._held
        data, timed_out = self._read(self._started + timeout)
        complete = len(data) >= 8 and struct.unpack("!Q", data[:8])[0] == len(data) - 8
        if complete and data[8:9] == _OK and not timed_out:
            seconds = time.monotonic() - self._started
            if held is not None:
                return ChildResult(True, payload=data[9:], seconds=seconds, snapshot=held)
            _UNREAPED.append(pid)
            return ChildResult(True, payload=data[9:], seconds=seconds)
        if held is not None:
            held.release()
            _UNREAPED.remove(pid)
        _, status = os.waitpid(pid, 0)
        seconds = time.monotonic() - self._started
        data = data[8:] if complete else b""
        if timed_out:
            return ChildResult(
                False,
                reason=f"the update child did not finish within {timeout:.1f} s and was killed",
                seconds=seconds,
            )
        if data[:1] == _OK and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
            return ChildResult(True, payload=data[1:], seconds=seconds)
        if data[:1] == _FAILED:
            return ChildResult(
                False, reason=data[1:].decode("utf-8", "replace").rstrip(), seconds=seconds
            )
        return ChildResult(False, reason=_describe_exit(status, seconds), seconds=seconds)
