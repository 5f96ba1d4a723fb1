"""The supervisor's main loop: the one place that owns the app's state and every transition of it.

Signals, client requests and agent messages all arrive as readable sockets or pipes; the loop
handles each without blocking, so it always answers (a second update gets "busy" at once) and a
stop request is honoured in the middle of an update.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import os
import signal
import subprocess
import sys
import time
import traceback
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq

from gdsu_fork import protocol
from gdsu_fork.report import Outcome

from .control import AgentLink, ControlEndpoint
from .journal import Journal, StalePatch, module_records
from .process import AppProcess, Backoff, Program, describe_status, exit_code
from .registry import AppRecord, NameClaim, ipc_endpoint, runtime_dir
from .signals import SignalQueue
from .watch import ChildWatch

if TYPE_CHECKING:
    from gdsu_fork.watch import Watcher

WATCH_INTERVAL = 0.05
"""Seconds between two looks at the update children while an update runs."""


class RestartPolicy(enum.StrEnum):
    """When an app that exited is started again."""

    NO = "no"
    ON_FAILURE = "on-failure"


class AppState(enum.StrEnum):
    """What the supervised app is doing, as `gdsu-fork status` shows it."""

    STARTING = "starting"
    RUNNING = "running"
    UPDATING = "updating"
    RESTARTING = "restarting"
    STOPPING = "stopping"


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything gdsu-supervise was told on its command line."""

    program: Program
    name: str
    state_dir: Path
    control: str | None = None
    curve_keys: str | None = None
    restart: RestartPolicy = RestartPolicy.NO
    child_memory: int | None = None
    stop_timeout: float = 10.0
    max_message: int = protocol.MAX_MESSAGE_BYTES
    watch: tuple[Path, ...] = ()


@dataclasses.dataclass
class ReplayGroup:
    """A replay request: several patches, one final answer."""

    client: bytes
    request_id: str
    pending: int
    reports: list[dict[str, Any]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Job:
    """One update, queued or running. `client` is None for updates nobody waits on."""

    request: protocol.Update
    client: bytes | None
    source: str = "client"
    group: ReplayGroup | None = None
    agent_id: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex)
    started: float = 0.0
    deadline: float = 0.0
    watch: ChildWatch | None = None

    @property
    def entry(self) -> str:
        """The patch file's name, for messages."""
        return self.request.bundle.entry


def _log(name: str, message: str) -> None:
    print(f"gdsu-supervise[{name}]: {message}", file=sys.stderr, flush=True)


class Supervisor:
    """Runs one app under supervision until it ends for good; `run()` returns the exit code."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.name = config.name
        self.journal = Journal(config.state_dir, config.name)
        updates = [r for r in self.journal.read() if r.get("event") == "update"]
        self.update_count = len(updates)  # over the journal's life, not this run's
        self.last_update: dict[str, Any] | None = updates[-1] if updates else None
        self.app: AppProcess | None = None
        self.agent: bytes | None = None
        self.current: Job | None = None
        self.queue: collections.deque[Job] = collections.deque()
        self.stale: list[StalePatch] = []
        self.stopping = False
        self.restarts = 0
        self.restart_at: float | None = None
        self.kill_at: float | None = None
        self.exit_status: int | None = None
        self.started = time.time()
        self.backoff = Backoff()
        self.endpoint = ""
        self.watcher: Watcher | None = None

    # -- lifetime -----------------------------------------------------------------------------

    def run(self) -> int:
        """Start the app and serve until it has ended and will not be restarted."""
        signals = SignalQueue()  # first: every thread started later inherits the blocked mask
        claim = NameClaim(runtime_dir(), self.name)
        context = zmq.Context()
        control = agents = watcher = None
        try:
            endpoint = self.config.control or ipc_endpoint(claim.socket_path("ipc"))
            control = ControlEndpoint(
                context,
                endpoint,
                curve_keys=self.config.curve_keys,
                max_bytes=self.config.max_message,
            )
            agents = AgentLink(context, ipc_endpoint(claim.socket_path("agent.ipc")))
            self.control, self.agents = control, agents
            self.endpoint = control.endpoint
            claim.publish(
                AppRecord(
                    name=self.name,
                    supervisor_pid=os.getpid(),
                    endpoint=self.endpoint,
                    state_dir=str(self.config.state_dir),
                    started=self.started,
                    curve=self.config.curve_keys is not None,
                )
            )
            self._start_app()
            if self.config.watch:
                watcher = self._start_watcher()
            self._serve(signals)
        finally:
            if watcher is not None:
                watcher.stop()
            if self.app is not None:
                self._stop_app(self.app)  # only after a crash of our own: the app outlived us
            for sock in (control, agents):
                if sock is not None:
                    sock.close()
            context.term()
            claim.release()
        assert self.exit_status is not None
        return exit_code(self.exit_status)

    def _start_watcher(self) -> Watcher:
        """--watch: each save becomes an update sent to our own control endpoint (journaled)."""
        from gdsu_fork.watch import Watcher, apply_through  # watchdog: only when asked for

        script = self.config.program.script
        watcher = Watcher(
            self.config.watch,
            apply_through(self.endpoint, curve_keys=self.config.curve_keys),
            names={script: "__main__"} if script else None,
            main_module=self.config.program.module,
        )
        watcher.start()
        self.watcher = watcher
        return watcher

    def _serve(self, signals: SignalQueue) -> None:
        poller = zmq.Poller()
        poller.register(signals.fileno(), zmq.POLLIN)
        poller.register(self.control.socket, zmq.POLLIN)
        poller.register(self.agents.socket, zmq.POLLIN)
        while self.exit_status is None:
            ready = dict(poller.poll(self._poll_timeout()))
            if signals.fileno() in ready:
                for info in signals.read():
                    self._on_signal(info.signo, from_terminal=info.from_terminal)
            if self.agents.socket in ready:
                self._drain(self.agents, self._on_agent)
            if self.control.socket in ready:
                self._drain(self.control, self._on_client)
            self._tick()

    def _drain(self, source: ControlEndpoint | AgentLink, handle: Any) -> None:
        while source.socket.poll(0, zmq.POLLIN):
            identity, message = source.receive()
            try:
                handle(identity, message)
            except Exception as exc:
                # A bug (or a full disk) while handling one message must not stop the app's
                # supervision: report it to whoever asked and keep serving.
                detail = "".join(traceback.format_exception_only(exc)).strip()
                _log(self.name, f"internal error while handling a message: {detail}")
                if source is self.control and not isinstance(message, protocol.ProtocolError):
                    msg = f"gdsu-supervise failed on this request: {detail}; see its stderr"
                    error = protocol.Error(message.id, protocol.ErrorCode.INTERNAL, msg)
                    self.control.send(identity, error)

    def _stop_app(self, app: AppProcess) -> None:
        """SIGTERM, wait up to --stop-timeout, SIGKILL, reap; each step logged."""
        if app.poll() is not None:
            return
        _log(self.name, f"stopping app pid {app.pid}: SIGTERM")
        app.signal(signal.SIGTERM)
        try:
            app.popen.wait(self.config.stop_timeout)
        except subprocess.TimeoutExpired:
            _log(self.name, f"app pid {app.pid} still running after SIGTERM: SIGKILL")
            app.kill()
            app.popen.wait()
        _log(self.name, f"app pid {app.pid} {describe_status(app.popen.returncode)}")

    def _poll_timeout(self) -> int | None:
        now = time.monotonic()
        due = [t for t in (self.restart_at, self.kill_at) if t is not None]
        if self.current is not None:
            due.append(self.current.deadline)
            if self.current.watch is not None and self.current.watch.active:
                due.append(now + WATCH_INTERVAL)
        if self.app is not None and self.app.poll() is None:
            due.append(now + 1.0)  # SIGCHLD wakes us; this only bounds a missed one
        if not due:
            return None
        return max(0, int((min(due) - now) * 1000) + 1)

    def _tick(self) -> None:
        now = time.monotonic()
        if self.app is not None:
            status = self.app.poll()
            if status is not None:
                self._on_app_exit(status)
        if self.restart_at is not None and now >= self.restart_at:
            self.restart_at = None
            self.restarts += 1
            self._start_app()
        if self.kill_at is not None and now >= self.kill_at and self.app is not None:
            _log(self.name, f"app pid {self.app.pid} ignored SIGTERM; sending SIGKILL")
            self.kill_at = None
            self.app.kill()
        job = self.current
        if job is not None:
            if job.watch is not None:
                for reason in job.watch.check():
                    _log(self.name, reason)
            if now >= job.deadline:
                reason = (
                    f"the agent did not answer within {job.deadline - job.started:.0f} s; the "
                    "app may be stuck: check it with `gdsu-fork status` and py-spy"
                )
                self._finish(job, error=protocol.Error("", protocol.ErrorCode.INTERNAL, reason))

    # -- the app ------------------------------------------------------------------------------

    def _start_app(self) -> None:
        self.app = AppProcess(self.config.program, self.agents.endpoint)
        self.agent = None
        if self.watcher is not None:
            self.watcher.reload()  # the new process runs the files on disk
        self.stale = self.journal.stale_patches()  # before the start: it ends the last run
        event = "restart" if self.restarts else "start"
        self.journal.append(event, pid=self.app.pid, restarts=self.restarts)
        if self.stale:
            names = ", ".join(
                f"{p.entry} ({', '.join(p.modules) or 'no module file to compare'})"
                for p in self.stale
            )
            warning = (
                f"{len(self.stale)} committed patch(es) are not in the files on disk and are "
                f"lost to this run: {names}; run `gdsu-fork replay --name {self.name}` to apply "
                "them again, or deploy their sources"
            )
            _log(self.name, f"warning: {warning}")
            self.journal.append(
                "warning", message=warning, stale=[dataclasses.asdict(p) for p in self.stale]
            )

    def _on_app_exit(self, status: int) -> None:
        app, self.app, self.agent = self.app, None, None
        assert app is not None
        ran = time.monotonic() - app.started
        self.kill_at = None
        self.journal.append("exit", pid=app.pid, status=status, ran=round(ran, 3))
        gone = f"app {self.name!r} (pid {app.pid}) {describe_status(status)}"
        if self.current is not None:
            reason = f"{gone} during the update; nothing is known about the outcome"
            self._finish(self.current, report={"outcome": "aborted", "reason": reason})
        restart = (
            not self.stopping and self.config.restart is RestartPolicy.ON_FAILURE and status != 0
        )
        for job in list(self.queue):
            self.queue.remove(job)
            err = protocol.Error(
                "", protocol.ErrorCode.APP_EXITED, f"{gone} before the update could start"
            )
            self._finish(job, error=err)
        if restart:
            delay = self.backoff.delay(ran)
            _log(self.name, f"{gone}; restarting in {delay:g} s")
            self.restart_at = time.monotonic() + delay
        else:
            self.exit_status = status

    def _on_signal(self, signo: int, *, from_terminal: bool) -> None:
        if signo == signal.SIGCHLD:
            return  # _tick reaps
        if signo in (signal.SIGTERM, signal.SIGINT):
            self.stopping = True
            if self.app is None:  # waiting to restart: nothing to stop
                self.restart_at = None
                self.exit_status = 128 + signo
                return
        if self.app is not None and not from_terminal:
            self.app.signal(signo)
        if signo == signal.SIGTERM and self.app is not None:
            self.kill_at = time.monotonic() + self.config.stop_timeout

    # -- requests -----------------------------------------------------------------------------

    def state(self) -> AppState:
        """The app's state right now."""
        if self.stopping:
            return AppState.STOPPING
        if self.app is None:
            return AppState.RESTARTING
        if self.agent is None:
            return AppState.STARTING
        return AppState.UPDATING if self.current is not None else AppState.RUNNING

    def status(self) -> dict[str, Any]:
        """What `gdsu-fork status` shows."""
        current = None
        if self.current is not None:
            current = {
                "patch": self.current.entry,
                "elapsed": round(time.monotonic() - self.current.started, 3),
            }
        return {
            "name": self.name,
            "state": str(self.state()),
            "app_pid": self.app.pid if self.app is not None else None,
            "supervisor_pid": os.getpid(),
            "endpoint": self.endpoint,
            "uptime": round(time.time() - self.started, 3),
            "restarts": self.restarts,
            "updates": self.update_count,
            "last_update": self.last_update,
            "current": current,
            "queued": len(self.queue),
            "stale": [p.entry for p in self.stale],
        }

    def _on_client(self, client: bytes, message: protocol.Message | protocol.ProtocolError) -> None:
        if isinstance(message, protocol.ProtocolError):
            self.control.send(client, protocol.error_reply(message))
        elif isinstance(message, protocol.Update):
            self._submit(Job(message, client, source=message.source), wait=message.wait)
        elif isinstance(message, protocol.Status):
            self.control.send(client, protocol.StatusReply(message.id, self.status()))
        elif isinstance(message, protocol.History):
            entries = self.journal.read(message.limit)
            self.control.send(client, protocol.HistoryReply(message.id, entries))
        elif isinstance(message, protocol.Replay):
            self._replay(client, message)
        else:
            msg = f"{message.kind} is not a request; send update, status, history or replay"
            error = protocol.Error(message.id, protocol.ErrorCode.UNKNOWN_KIND, msg)
            self.control.send(client, error)

    def _busy_error(self, request_id: str) -> protocol.Error:
        running = self.current or self.queue[0]
        elapsed = time.monotonic() - running.started if running.started else 0.0
        msg = (
            f"app {self.name!r} is busy with update {running.entry} (running {elapsed:.1f} s, "
            f"{len(self.queue)} queued); retry when it has ended, or pass --wait to queue"
        )
        return protocol.Error(request_id, protocol.ErrorCode.BUSY, msg)

    def _submit(self, job: Job, *, wait: bool) -> None:
        busy = self.current is not None or bool(self.queue)
        if busy and not wait:
            if job.client is not None:
                self.control.send(job.client, self._busy_error(job.request.id))
            return
        self.queue.append(job)
        if job.client is not None:
            ahead = len(self.queue) - 1 + (self.current is not None)
            self.control.send(job.client, protocol.Accepted(job.request.id, ahead))
        self._start_next()

    def submit_update(self, bundle: protocol.Bundle, *, source: str, timeout: float = 10.0) -> None:
        """Queue an update nobody waits on (e.g. one made by a file watcher); it is journaled."""
        request = protocol.Update(uuid.uuid4().hex, bundle, timeout=timeout, wait=True)
        self._submit(Job(request, None, source=source), wait=True)

    def _replay(self, client: bytes, message: protocol.Replay) -> None:
        if not self.stale:
            self.control.send(client, protocol.ReplayReply(message.id, []))
            return
        if (self.current is not None or self.queue) and not message.wait:
            self.control.send(client, self._busy_error(message.id))
            return
        group = ReplayGroup(client, message.id, pending=len(self.stale))
        for patch in self.stale:
            bundle = self.journal.load_bundle(patch.digest)
            request = protocol.Update(message.id, bundle, timeout=message.timeout, wait=True)
            self.queue.append(Job(request, client, source="replay", group=group))
        ahead = len(self.queue) - len(self.stale) + (self.current is not None)
        self.control.send(client, protocol.Accepted(message.id, ahead))
        self._start_next()

    def _start_next(self) -> None:
        if self.current is not None or not self.queue or self.agent is None:
            return
        job = self.current = self.queue.popleft()
        request = job.request
        # The operator's --child-memory is a ceiling a client may lower, never raise.
        caps = [c for c in (request.child_memory, self.config.child_memory) if c]
        child_memory = min(caps) if caps else None
        job.started = time.monotonic()
        # The engine bounds each of its steps by `timeout`; this bounds the agent as a whole.
        job.deadline = job.started + 4 * request.timeout + 60.0
        job.watch = ChildWatch(memory_cap=child_memory, lifetime=request.timeout)
        forward = dataclasses.replace(
            request, id=job.agent_id, wait=False, child_memory=child_memory
        )
        try:
            self.agents.send(self.agent, forward)
        except zmq.ZMQError as exc:
            msg = f"could not reach the agent of app {self.name!r} ({exc}); retry"
            self._finish(job, error=protocol.Error("", protocol.ErrorCode.APP_EXITED, msg))

    def _reply(self, job: Job, message: protocol.Message) -> None:
        if job.client is not None:
            self.control.send(job.client, dataclasses.replace(message, id=job.request.id))

    # -- the agent ----------------------------------------------------------------------------

    def _on_agent(
        self, identity: bytes, message: protocol.Message | protocol.ProtocolError
    ) -> None:
        if isinstance(message, protocol.ProtocolError):
            _log(self.name, f"ignoring a bad message from the agent: {message}")
            return
        if isinstance(message, protocol.Hello):
            if self.app is not None and message.pid == self.app.pid:
                self.agent = identity
                self._start_next()
            return
        job = self.current
        if job is None or identity != self.agent or message.id != job.agent_id:
            return  # a late answer to an update already given up on
        if isinstance(message, protocol.ProgressEvent):
            pid = message.data.get("pid")
            if isinstance(pid, int) and job.watch is not None:
                job.watch.add(pid)
            self._reply(job, message)
        elif isinstance(message, protocol.ReportReply):
            self._finish(job, report=message.report, module_files=message.module_files)
        elif isinstance(message, protocol.Error):
            self._finish(job, error=message)

    def _finish(
        self,
        job: Job,
        *,
        report: dict[str, Any] | None = None,
        error: protocol.Error | None = None,
        module_files: dict[str, str | None] | None = None,
    ) -> None:
        """Journal the end of `job`, answer its client, and start the next update."""
        if job.watch is not None:
            for pid in job.watch.kill_all():
                _log(self.name, f"killed update child {pid}, left over from a finished update")
        if report is not None:
            report = dict(report)
            killed = job.watch.killed if job.watch is not None else []
            if killed and report.get("outcome") != str(Outcome.COMMITTED):
                report["outcome"] = str(Outcome.DISCARDED)
                engine = f"\nthe engine said: {report['reason']}" if report.get("reason") else ""
                report["reason"] = "; ".join(killed) + engine
        bundle = job.request.bundle
        digest = self.journal.store_bundle(bundle)
        outcome = report.get("outcome") if report else "error"
        self.update_count += 1
        self.last_update = self.journal.append(
            "update",
            source=job.source,
            patch=job.entry,
            digest=digest,
            files=sorted(bundle.files),
            outcome=outcome,
            reason=report.get("reason") if report else error.message if error else None,
            timings=report.get("timings", {}) if report else {},
            changes=report.get("changes", []) if report else [],
            migrated=report.get("migrated", 0) if report else 0,
            modules=module_records(bundle, module_files or {}),
        )
        if job is self.current:
            self.current = None
        group = job.group
        if group is None:
            if report is not None:
                self._reply(job, protocol.ReportReply("", report))
            elif error is not None:
                self._reply(job, error)
        else:
            group.pending -= 1
            group.reports.append(report or {"outcome": "error", "reason": error and error.message})
            if outcome == str(Outcome.COMMITTED):
                self.stale = [p for p in self.stale if p.digest != digest]
            if group.pending == 0:
                reply = protocol.ReplayReply(group.request_id, group.reports)
                self.control.send(group.client, reply)
        self._start_next()
