"""The freeze's hazards with real threads, forks, sockets and signals."""

from __future__ import annotations

import _imp
import concurrent.futures
import faulthandler
import gc
import io
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import pytest
import threads_support as support

from gdsu_fork.freeze import quiet_fork, release_in_child
from gdsu_fork.safepoint import paused_at_safe_point

Spinners, assert_still = support.Spinners, support.assert_still


def changed() -> int:
    """The code every update here changes."""
    return sum(range(50))


def busy() -> int:
    return sum(range(50))


def in_thread(fn, *args) -> object:
    """Run `fn` in an update thread (never the main thread) and return its result or raise."""
    out: dict = {}

    def main() -> None:
        try:
            out["result"] = fn(*args)
        except BaseException as exc:
            out["error"] = exc

    thread = threading.Thread(target=main, name="updater", daemon=True)
    thread.start()
    thread.join(60)
    if thread.is_alive():
        faulthandler.dump_traceback(all_threads=True)  # who holds what, for the report
    assert not thread.is_alive(), "the update thread hung"
    if "error" in out:
        raise out["error"]
    return out.get("result")


def wait_child(pid: int, read_fd: int, timeout: float = 10) -> bytes:
    """The child's report on a pipe, with a deadline; the child is reaped in every case."""
    try:
        ready, _, _ = select.select([read_fd], [], [], timeout)
        assert ready, "the forked child hung"
        data = os.read(read_fd, 1000)
    finally:
        os.close(read_fd)
        deadline = time.monotonic() + timeout
        while True:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done or time.monotonic() > deadline:
                break
            select.select([], [], [], 0.005)
        if not done:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    return data


def fork_and_run(work, *, plain: bool = False) -> bytes:
    """Fork inside the pause; the child runs `work()` (Python, like patch code) and reports."""
    read_fd, write_fd = os.pipe()
    if plain:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
    else:
        pid = quiet_fork()
    if pid == 0:
        code = 1
        try:
            if plain:
                release_in_child()
            os.write(write_fd, work())
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    return wait_child(pid, read_fd)


def child_work() -> bytes:
    """What a child does first: run Python, including the changed code and other threads' code."""
    for _ in range(10_000):
        changed()
        busy()
    problems = [*support.installed_hooks()]
    if _imp.lock_held():
        problems.append("the import lock is held")
    if not logging._lock.acquire(blocking=False):
        problems.append("logging's lock is held")
    return b"ok" if not problems else repr(problems).encode()


@pytest.fixture(autouse=True)
def no_hooks_or_threads_left():
    before, threads = support.installed_hooks(), set(threading.enumerate())
    yield
    assert support.installed_hooks() == before, "a hook outlived the update window"
    assert support.threads_left(threads) == [], "a test left threads running"


@pytest.mark.parametrize("plain", [False, True], ids=["quiet_fork", "os.fork"])
def test_child_forked_in_the_pause_runs_free_of_hooks(plain):
    with Spinners(4, busy) as spin, Spinners(2, changed, "hot") as hot:

        def update() -> bytes:
            with paused_at_safe_point([changed.__code__], timeout=10):
                report = fork_and_run(child_work, plain=plain)
                assert_still(lambda: spin.snapshot() + hot.snapshot(), 0.02)
                return report

        assert in_thread(update) == b"ok"
        assert spin.wait_progress(10) and hot.wait_progress(10)


def test_fork_while_threads_log_and_submit_heavily():
    """os.fork's before-hooks take logging's lock and concurrent.futures' shutdown lock."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    log = logging.getLogger("gdsu-freeze-test")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    pool = concurrent.futures.ThreadPoolExecutor(2)
    turn = [0]

    def chatter() -> None:
        turn[0] += 1
        logging.getLogger(f"gdsu-freeze-test.{turn[0] % 50}")  # takes logging's module lock
        log.info("turn %d", turn[0])  # takes the handler's lock
        pool.submit(busy)  # takes concurrent.futures' global shutdown lock

    def child() -> bytes:
        log.info("from the child")
        logging.getLogger("gdsu-freeze-test.child")
        return b"ok"

    try:
        with Spinners(4, chatter, "chatter"):

            def update() -> list[bytes]:
                with paused_at_safe_point([changed.__code__], timeout=10):
                    return [fork_and_run(child), fork_and_run(child, plain=True)]

            for _ in range(15):
                assert in_thread(update) == [b"ok", b"ok"]
    finally:
        pool.shutdown()
        log.removeHandler(handler)


def test_fork_after_waiting_for_a_thread_that_holds_the_logging_lock():
    held = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with logging._lock:
            held.set()
            release.wait(10)

    thread = threading.Thread(target=holder, daemon=True)
    thread.start()
    assert held.wait(10)

    def update() -> bytes:
        with paused_at_safe_point([changed.__code__], timeout=10):
            return fork_and_run(lambda: b"ok")

    # The update waits (while the program runs) for the lock, then forks without deadlock.
    timer = threading.Timer(0.1, release.set)
    timer.start()
    try:
        assert in_thread(update) == b"ok"
    finally:
        release.set()
        timer.join()
        thread.join(10)


def test_no_multi_threaded_fork_warning():
    with Spinners(2, busy):

        def update() -> list[str]:
            with paused_at_safe_point([changed.__code__], timeout=10):
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    assert fork_and_run(lambda: b"ok") == b"ok"
                return [str(w.message) for w in caught]

        assert in_thread(update) == []


class Finalized:
    """Counts its finalizations; made in cycles so that only the collector frees them."""

    count = 0

    def __init__(self) -> None:
        self.me = self

    def __del__(self) -> None:
        Finalized.count += 1


def test_finalizers_do_not_run_during_the_pause():
    def litter() -> None:
        Finalized()  # cyclic garbage: finalized by the collector, in whichever thread runs it

    collector = (gc.isenabled(), gc.get_threshold())
    # Hot threads in changed code: parking starts while they run on (and, when one returns,
    # from inside its thread).
    with Spinners(3, litter, "litter"), Spinners(2, changed, "hot"):

        def update() -> None:
            with paused_at_safe_point([changed.__code__], timeout=10):
                before = Finalized.count
                junk = [[] for _ in range(50_000)]  # allocations that would trigger collections
                for item in junk:
                    item.append(item)
                del junk
                assert Finalized.count == before, "a finalizer ran in the pause"

        for _ in range(3):
            in_thread(update)
            assert (gc.isenabled(), gc.get_threshold()) == collector, "collector not restored"
    gc.collect()
    assert Finalized.count > 0


def test_sigint_during_the_freeze_is_delivered_after():
    """The main thread runs Python; SIGINT arrives while it is parked; its handler runs later."""
    handled = []
    delivered = threading.Event()
    during: dict = {}

    def on_sigint(signum, frame) -> None:
        handled.append(signum)
        delivered.set()

    def update() -> None:
        with paused_at_safe_point([changed.__code__], timeout=10):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # let a wrongly delivered handler run, if it can
            during["handled"] = list(handled)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        updater = threading.Thread(target=update, daemon=True)
        updater.start()
        spins = 0
        deadline = time.monotonic() + 20
        while updater.is_alive() and time.monotonic() < deadline:
            spins += 1  # the main thread is busy in Python
        updater.join(10)
        assert delivered.wait(10), "SIGINT was lost"
    finally:
        signal.signal(signal.SIGINT, previous)
    assert during["handled"] == []
    assert handled == [signal.SIGINT]


def test_threads_starting_and_ending_during_the_window():
    started = [0]
    stop = threading.Event()

    def spawner() -> None:
        while not stop.is_set():
            t = threading.Thread(target=busy)
            t.start()
            started[0] += 1
            t.join()

    spawners = [threading.Thread(target=spawner, daemon=True) for _ in range(2)]
    for s in spawners:
        s.start()
    try:
        with Spinners(2, changed, "hot") as hot:

            def update() -> None:
                with paused_at_safe_point([changed.__code__], timeout=10):
                    assert_still(lambda: [started[0], *hot.snapshot()], 0.02)

            for _ in range(10):
                in_thread(update)
    finally:
        stop.set()
        for s in spawners:
            s.join(10)
    assert started[0] > 10


# Threads end as fast as they start while an update thread arms, parks and releases them:
# the hook set-up walks the thread states, which a thread frees when it ends. (Walked from
# Python through ctypes on 3.11, this crashed the process within a second or two.)
_WALK_STRESS = """
import threading, time
from gdsu_fork.freeze import open_freezer

def short():
    return sum(range(50))

stop = threading.Event()

def spawner():
    while not stop.is_set():
        batch = [threading.Thread(target=short) for _ in range(4)]
        for t in batch:
            t.start()
        for t in batch:
            t.join()

def update():
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        with open_freezer([short.__code__]) as fz:
            fz.watch([short.__code__], None)
            assert fz.begin_parking(lock_timeout=1)
            fz.unpark()

spawners = [threading.Thread(target=spawner) for _ in range(3)]
for t in spawners:
    t.start()
updater = threading.Thread(target=update)
updater.start()
updater.join()
stop.set()
for t in spawners:
    t.join()
print("ok")
"""


def run_script(source: str) -> tuple[int, str, str]:
    """Run a test program in its own process: a crash or a deadlock there would be one of the
    program being updated, not of the test run."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(source)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc.returncode, proc.stdout.strip(), proc.stderr[-2000:]


def test_setting_hooks_survives_threads_ending_meanwhile():
    code, out, err = run_script(_WALK_STRESS)
    assert (code, out) == (0, "ok"), err


def test_a_thread_keeps_its_own_trace_function():
    """A debugger's or coverage's tracer set in a thread is back in place after the update."""
    events: list[str] = []
    ready, go, done = threading.Event(), threading.Event(), threading.Event()
    after: dict = {}

    def tracer(frame, event, arg):
        if frame.f_code is busy.__code__:
            events.append(event)
        return tracer

    def traced() -> None:
        sys.settrace(tracer)
        try:
            ready.set()
            while not go.is_set():
                busy()  # parked in here during the update
            events.clear()
            busy()
            after["trace"] = sys.gettrace()
        finally:
            sys.settrace(None)
            done.set()

    thread = threading.Thread(target=traced, name="traced")
    thread.start()
    assert ready.wait(10)

    def update() -> None:
        with paused_at_safe_point([changed.__code__], timeout=10):
            pass

    for _ in range(3):
        in_thread(update)
    go.set()
    assert done.wait(10)
    thread.join(10)
    assert after["trace"] is tracer
    assert "call" in events and "return" in events


def test_threads_in_c_calls_park_when_they_return():
    """Threads blocked in socket recv wake in the pause and must not run before it ends."""
    pairs = [socket.socketpair() for _ in range(4)]
    received = [0] * len(pairs)

    def reader(i: int) -> None:
        sock = pairs[i][1]
        while sock.recv(1) == b"x":
            received[i] += 1

    readers = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(len(pairs))]
    for t in readers:
        t.start()
    try:

        def update() -> None:
            with paused_at_safe_point([changed.__code__], timeout=10):
                for a, _ in pairs:
                    a.send(b"x")  # wakes every reader in its C call
                assert_still(lambda: list(received))
                assert received == [0, 0, 0, 0]

        in_thread(update)
        deadline = time.monotonic() + 10
        while received != [1, 1, 1, 1] and time.monotonic() < deadline:
            select.select([], [], [], 0.005)
        assert received == [1, 1, 1, 1]
    finally:
        for a, _ in pairs:
            a.send(b"q")
        for t in readers:
            t.join(10)
        for a, b in pairs:
            a.close()
            b.close()


def test_200_threads_park_and_resume():
    """192 threads waking up now and then from a C wait, 8 busy in Python."""
    stop = threading.Event()
    waiting = [0] * 192

    def waiter(i: int) -> None:
        while not stop.wait(0.02):
            waiting[i] += 1

    # Started first: starting threads next to busy ones waits on the GIL for seconds.
    waiters = [threading.Thread(target=waiter, args=(i,), daemon=True) for i in range(192)]
    for t in waiters:
        t.start()
    try:
        with Spinners(8, busy, "busy") as spin:

            def update() -> None:
                with paused_at_safe_point([changed.__code__], timeout=20):
                    assert threading.active_count() >= 201
                    assert_still(lambda: spin.snapshot() + waiting, 0.05)

            for _ in range(3):
                in_thread(update)
                assert spin.wait_progress(20)
    finally:
        stop.set()
        for t in waiters:
            t.join(10)


_FORK_LOCK_TAKEN = """
import concurrent.futures.thread as futures
from gdsu_fork.freeze import FreezeError, quiet_fork
from gdsu_fork.safepoint import paused_at_safe_point

def changed():
    return 1

with paused_at_safe_point([changed.__code__], timeout=10):
    # As if a thread blocked in C had won concurrent.futures' lock after the freeze checked it
    # (a thread that then parks holding it): os.fork's before-fork hook would wait forever.
    futures._global_shutdown_lock.acquire()
    try:
        quiet_fork()
    except FreezeError:
        print("refused")
    finally:
        futures._global_shutdown_lock.release()
"""


def test_no_fork_in_the_pause_while_a_fork_lock_is_taken():
    code, out, err = run_script(_FORK_LOCK_TAKEN)
    assert (code, out) == (0, "refused"), err


_PROGRAM_FORKS_WHILE_AN_UPDATE_WAITS = """
import os, select, sys, threading, warnings
from gdsu_fork.freeze import open_freezer

warnings.simplefilter("ignore", DeprecationWarning)  # the multi-threaded fork warning

def blocking():
    return 1

def hooks_left():
    if sys.version_info >= (3, 12):
        return [i for i in range(6) if sys.monitoring.get_tool(i) is not None]
    return sys.gettrace()

outcome = {}
watching = threading.Event()

def program():
    watching.wait(10)
    pid = os.fork()
    if pid == 0:  # a return from the changed code, then a look for our hooks
        blocking()
        os._exit(0 if not hooks_left() else 3)
    if select.select([os.pidfd_open(pid)], [], [], 20)[0]:  # it exited
        outcome["child"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        outcome["child"] = "hung"

thread = threading.Thread(target=program)
thread.start()
with open_freezer([blocking.__code__]) as fz:
    fz.watch([blocking.__code__], None)
    fz.eager = True  # a return from blocking() would begin the parking
    watching.set()
    thread.join(30)
print(outcome.get("child"))
"""


def test_a_process_the_program_forks_while_an_update_waits_is_free_of_our_hooks():
    code, out, err = run_script(_PROGRAM_FORKS_WHILE_AN_UPDATE_WAITS)
    assert (code, out) == (0, "0"), err
