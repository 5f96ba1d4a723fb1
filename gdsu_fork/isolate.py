"""Running a piece of work in a forked child, with a deadline and a memory cap.

Whatever the work does — raise, exit, loop, crash, exhaust memory — the calling process gets a
`ChildResult` saying what happened, and the child is gone.
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

from .errors import GdsuError

_OK, _FAILED = b"K", b"E"


@dataclasses.dataclass(frozen=True)
class ChildResult:
    """What the child sent back (`payload`) or why it did not (`reason`)."""

    ok: bool
    payload: bytes = b""
    reason: str | None = None
    seconds: float = 0.0


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


def _child_main(write_fd: int, work: Callable[[], bytes], memory: int | None, parent: int) -> None:
    code = 1
    try:
        _die_with_parent(parent)
        if memory is not None:
            _cap_memory(memory)
        try:
            payload = _OK + work()
        except BaseException:
            payload = _FAILED + _describe_exception().encode("utf-8", "replace")
        _write_all(write_fd, struct.pack("!Q", len(payload)) + payload)
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
    reap_now: bool = True,
) -> ChildResult:
    """Fork, run `work` in the child, and return its bytes or the reason it failed.

    `fork` makes the child (the engine's switches off hooks inherited from a pause); `memory`
    caps the child's growth in bytes; `on_start(pid)` lets a watcher follow the child. A child still running at
    `timeout` seconds is killed. With `reap_now` False, a child that delivered its whole answer is
    left for `reap` to collect: its exit (unmapping a copy of a large heap) takes milliseconds
    that a paused program should not wait for.
    """
    read_fd, write_fd = os.pipe()
    started = time.monotonic()
    parent = os.getpid()
    pid = fork()
    if pid == 0:
        os.close(read_fd)
        _child_main(write_fd, work, memory, parent)
    os.close(write_fd)
    if on_start is not None:
        with contextlib.suppress(Exception):
            on_start(pid)
    chunks: list[bytes] = []
    deadline = started + timeout
    timed_out = False
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            ready, _, _ = select.select([read_fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(read_fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_fd)
        if timed_out:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    data = b"".join(chunks)
    complete = len(data) >= 8 and struct.unpack("!Q", data[:8])[0] == len(data) - 8
    if complete and data[8:9] == _OK and not timed_out and not reap_now:
        _UNREAPED.append(pid)
        return ChildResult(True, payload=data[9:], seconds=time.monotonic() - started)
    _, status = os.waitpid(pid, 0)
    seconds = time.monotonic() - started
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
