"""The supervised program: starting it with the agent injected, signalling, stopping, restarting."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time

from gdsu_fork.agent import ENV_ENDPOINT, ENV_SUPERVISOR_PID

BOOTSTRAP = "from gdsu_fork.agent import bootstrap; bootstrap()"


@dataclasses.dataclass(frozen=True)
class Program:
    """What to run: a script path or a module name, and its arguments."""

    script: str | None
    module: str | None
    args: tuple[str, ...] = ()

    @property
    def default_name(self) -> str:
        """The app name when none is given: the module, or the script's file name stem."""
        if self.module:
            return self.module
        assert self.script is not None
        return os.path.splitext(os.path.basename(self.script))[0]

    def command(self) -> list[str]:
        """The app's command line: the bootstrap first, then the program as python would get it."""
        target = ["-m", self.module] if self.module else [self.script or ""]
        return [sys.executable, "-c", BOOTSTRAP, *target, *self.args]


def describe_status(status: int) -> str:
    """A Popen return code in words."""
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exited with status {status}"


def exit_code(status: int) -> int:
    """The supervisor's exit code for an app `status`: the same, or 128+N for signal N."""
    return 128 - status if status < 0 else status


class AppProcess:
    """One run of the program; stdin, stdout and stderr are the supervisor's own."""

    def __init__(self, program: Program, agent_endpoint: str) -> None:
        env = dict(os.environ)
        env[ENV_ENDPOINT] = agent_endpoint
        env[ENV_SUPERVISOR_PID] = str(os.getpid())
        self.started = time.monotonic()
        self.popen = subprocess.Popen(program.command(), env=env, close_fds=True)

    @property
    def pid(self) -> int:
        """The app's process id."""
        return self.popen.pid

    def poll(self) -> int | None:
        """The exit status if the app has ended (reaping it), else None."""
        return self.popen.poll()

    def signal(self, signo: int) -> None:
        """Send `signo` unless the app has already ended."""
        if self.popen.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signo)

    def kill(self) -> None:
        """SIGKILL: the last step of a stop that the app did not honour in time."""
        self.signal(signal.SIGKILL)


class Backoff:
    """Delays between restarts: doubling from `first` up to `cap`, reset after a healthy run."""

    def __init__(self, first: float = 0.5, cap: float = 30.0, healthy: float = 10.0) -> None:
        self.first, self.cap, self.healthy = first, cap, healthy
        self._next = first

    def delay(self, run_seconds: float) -> float:
        """The wait before restarting an app that ran for `run_seconds`."""
        if run_seconds >= self.healthy:
            self._next = self.first
        delay, self._next = self._next, min(self._next * 2, self.cap)
        return delay
