"""The agent: one thread inside the app that receives update requests and runs the engine.

`bootstrap()` is what gdsu-supervise runs in the app process: it starts the agent, then runs the
program exactly as `python script.py` or `python -m module` would. The agent thread is the update
thread of every update it runs, so the engine exempts it from the safe-point check; between
updates it is blocked in a poll, the only trace of gdsu-fork in the program (DESIGN §1.5).
"""

from __future__ import annotations

import atexit
import builtins
import ctypes
import json
import os
import runpy
import shutil
import signal
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from . import protocol
from .bundle import unpack_bundle
from .progress import Progress
from .report import Outcome, Report

ENV_ENDPOINT = "GDSU_AGENT_ENDPOINT"
"""The supervisor's agent endpoint; bootstrap removes it so the program's children never see it."""
ENV_SUPERVISOR_PID = "GDSU_SUPERVISOR_PID"

Updater = Callable[..., Report]

_PR_SET_PDEATHSIG = 1
_OUR_FILES = frozenset({__file__, runpy.__file__})


def _engine_update(patch: Path, **options: Any) -> Report:
    # Imported on first use: the engine stays out of the program until an update arrives.
    from . import update

    return update(patch, **options)


def _jsonable(data: dict[str, Any]) -> dict[str, Any]:
    """`data` with anything JSON cannot carry turned into its str()."""
    return json.loads(json.dumps(data, default=str))


class Agent:
    """Serves update requests from a supervisor over ZeroMQ, one at a time, in its own thread."""

    def __init__(
        self, endpoint: str, *, updater: Updater | None = None, context: zmq.Context | None = None
    ) -> None:
        self.endpoint = endpoint
        self._update = updater or _engine_update
        # A context of our own: a program that terminates zmq's shared instance at exit must
        # not wait on (or break) the agent's socket.
        self._context = context or zmq.Context()
        self._stop_endpoint = f"inproc://gdsu-agent-stop-{id(self)}"
        self._stopper = self._context.socket(zmq.PAIR)
        self._stopper.bind(self._stop_endpoint)
        self._patch_root: Path | None = None  # made at the first update
        self.thread = threading.Thread(target=self._serve, name="gdsu-agent", daemon=True)

    def start(self) -> Agent:
        """Start the agent thread; it says hello to the supervisor once connected."""
        self.thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """End the agent thread (after the update it runs, if any) and remove unpacked patches."""
        self._stopper.send(b"stop")
        self.thread.join(timeout)
        self._stopper.close(linger=0)
        self._remove_patches(os.getpid())

    def _remove_patches(self, owner: int) -> None:
        # A child the program forks may run atexit handlers too; only the agent's process owns
        # the unpacked patches.
        if self._patch_root is not None and os.getpid() == owner:
            shutil.rmtree(self._patch_root, ignore_errors=True)

    def _unpack(self, bundle: protocol.Bundle) -> Path:
        """Unpack `bundle` privately; kept while the process lives, for tracebacks to read."""
        if self._patch_root is None:
            self._patch_root = Path(tempfile.mkdtemp(prefix="gdsu-patches-"))
            atexit.register(self._remove_patches, os.getpid())
        return unpack_bundle(bundle, tempfile.mkdtemp(prefix="patch-", dir=self._patch_root))

    def _serve(self) -> None:
        sock = self._context.socket(zmq.DEALER)
        sock.linger = 1000
        stop = self._context.socket(zmq.PAIR)
        stop.connect(self._stop_endpoint)
        sock.connect(self.endpoint)
        self._sock = sock
        self._send(protocol.Hello("", os.getpid(), sys.version.split()[0]))
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(stop, zmq.POLLIN)
        try:
            while True:
                ready = dict(poller.poll())
                if stop in ready:
                    return
                if sock in ready:
                    self._handle(sock.recv())
        finally:
            sock.close(linger=1000)
            stop.close(linger=0)

    def _send(self, message: protocol.Message) -> None:
        self._sock.send(protocol.encode(message))

    def _handle(self, frame: bytes) -> None:
        try:
            message = protocol.decode(frame)
        except protocol.ProtocolError as exc:
            self._send(protocol.error_reply(exc))
            return
        if isinstance(message, protocol.Update):
            self._send(self._run_update(message))
        elif isinstance(message, protocol.Status):
            status = {"pid": os.getpid(), "python": sys.version.split()[0], "updating": False}
            self._send(protocol.StatusReply(message.id, status))
        else:
            msg = f"the agent answers update and status requests, not {message.kind}"
            self._send(protocol.Error(message.id, protocol.ErrorCode.UNKNOWN_KIND, msg))

    def _refuse_while_busy(self, request_id: str) -> None:
        """Answer requests that arrive during an update: busy (the supervisor queues, we do not)."""
        while self._sock.poll(0, zmq.POLLIN):
            try:
                other = protocol.decode(self._sock.recv())
            except protocol.ProtocolError as exc:
                self._send(protocol.error_reply(exc))
                continue
            msg = f"the app is running update {request_id}; retry when it has finished"
            self._send(protocol.Error(other.id, protocol.ErrorCode.BUSY, msg))

    def _run_update(self, request: protocol.Update) -> protocol.Message:
        # The engine calls back in the thread that called update(), this one, so the socket
        # stays single-threaded, as ZeroMQ requires.
        def on_progress(event: Progress) -> None:
            data = _jsonable(dict(event.data))
            self._send(protocol.ProgressEvent(request.id, str(event.phase), event.message, data))
            self._refuse_while_busy(request.id)

        # Where the modules live before the update: the engine may point __file__ elsewhere.
        module_files = {
            name: getattr(sys.modules.get(name), "__file__", None)
            for name in request.bundle.modules
        }
        try:
            entry = self._unpack(request.bundle)
            report = self._update(
                entry,
                timeout=request.timeout,
                rehearse=request.rehearse,
                progress=on_progress,
                child_memory=request.child_memory,
            )
        except Exception as exc:
            # The engine reports failures in its Report; an exception here is a bug or a bad
            # bundle, and the app must keep running either way.
            reason = "".join(traceback.format_exception(exc)).rstrip()
            report = Report(
                Outcome.DISCARDED, reason=f"the agent could not run the update:\n{reason}"
            )
        return protocol.ReportReply(request.id, report.to_dict(), module_files)


def _die_with_supervisor() -> None:
    """Ask Linux to SIGTERM us when the supervisor dies, so no app outlives it unsupervised."""
    supervisor = os.environ.pop(ENV_SUPERVISOR_PID, None)
    if not sys.platform.startswith("linux") or supervisor is None:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != int(supervisor):  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _run_program(argv: list[str]) -> None:
    """Run `script [args]` or `-m module [args]` as __main__, as the python command would."""

    if argv[:1] == ["-m"] and len(argv) >= 2:
        sys.argv = argv[1:]
        if not sys.flags.safe_path:
            sys.path.insert(0, os.getcwd())
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        return
    script = argv[0]
    sys.argv = list(argv)
    if not sys.flags.safe_path:
        sys.path.insert(0, os.path.dirname(os.path.realpath(script)))
    main = sys.modules["__main__"]
    with open(script, "rb") as source:
        code = compile(source.read(), script, "exec")
    main.__dict__.clear()
    main.__dict__.update(
        __name__="__main__",
        __file__=script,
        __builtins__=builtins,
        __doc__=None,
        __package__=None,
        __spec__=None,
        __loader__=None,
        __cached__=None,
    )
    exec(code, main.__dict__)


def bootstrap() -> None:
    """Entry of the app process: start the agent, then run the program given in sys.argv[1:]."""
    # gdsu-supervise blocks these signals to wait for them in one thread; the program gets the
    # ordinary dispositions back before its first line runs.
    signal.pthread_sigmask(
        signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD}
    )
    _die_with_supervisor()
    endpoint = os.environ.pop(ENV_ENDPOINT, None)
    if endpoint:
        Agent(endpoint).start()
    if sys.path[:1] == [""]:  # from `python -c`; the program's own directory goes there instead
        del sys.path[0]
    try:
        _run_program(sys.argv[1:])
    except (SystemExit, KeyboardInterrupt):
        raise  # the interpreter turns these into the exit status, as for any program
    except BaseException as exc:
        # Report it as python would, through the program's excepthook, without our frames.
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename in _OUR_FILES:
            tb = tb.tb_next
        sys.excepthook(type(exc), exc.with_traceback(tb), tb)  # the hook prints __traceback__
        sys.exit(1)
