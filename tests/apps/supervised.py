"""Test harness: a real gdsu-supervise process running a test app, killed and reaped in `close`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from gdsu_fork import protocol
from gdsu_fork.client import Client, new_id

APPS = Path(__file__).parent
GREETER = APPS / "greeter"


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.02) -> Any:
    """Poll `predicate` until it returns something true; AssertionError naming `what` if late."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            msg = f"timed out after {timeout} s waiting for {what}"
            raise AssertionError(msg)
        time.sleep(interval)


def run_cli(
    env: dict[str, str], cwd: Path, *args: str, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run `gdsu-fork ARGS` as a separate process."""
    return subprocess.run(
        [sys.executable, "-m", "gdsu_fork.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


class Supervised:
    """gdsu-supervise [options] -- script args, with private runtime and state directories.

    `launcher` replaces the gdsu-supervise command, for programs that use the supervisor as a
    library.
    """

    def __init__(
        self,
        tmp_path: Path,
        *options: str,
        script: Path = GREETER / "server.py",
        args: tuple[str, ...] | None = None,
        name: str = "greeter",
        launcher: tuple[str, ...] = (sys.executable, "-m", "supervisor.cli"),
    ) -> None:
        self.tmp_path = tmp_path
        # A short runtime dir: a Unix socket path holds 107 bytes, pytest's tmp_path is long.
        self.runtime = Path(tempfile.mkdtemp(prefix="gdsu-rt-", dir="/tmp"))
        self.env = dict(
            os.environ,
            XDG_RUNTIME_DIR=str(self.runtime),
            XDG_STATE_HOME=str(tmp_path / "state"),
            PYTHONUNBUFFERED="1",
        )
        self.name = name
        self.portfile = tmp_path / f"{name}.port"
        self.out_path, self.err_path = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
        program = [str(script), *(args if args is not None else (str(self.portfile),))]
        cmd = [*launcher, "--name", name, *options, "--", *program]
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(cmd, env=self.env, stdout=out, stderr=err, cwd=tmp_path)

    @property
    def endpoint(self) -> str:
        """The ipc control endpoint of the app."""
        return f"ipc://{self.runtime}/gdsu/{self.name}.ipc"

    def output(self) -> str:
        """What the supervisor and the app wrote so far (stdout, then stderr)."""
        return self.out_path.read_text() + self.err_path.read_text()

    def request(self, message: protocol.Message, **kwargs: Any) -> protocol.Message:
        """Send one request from this process and return the final reply."""
        with Client(self.endpoint, connect_timeout=kwargs.pop("connect_timeout", 10.0)) as client:
            return client.request(message, **kwargs)

    def status(self) -> dict[str, Any]:
        """The supervisor's status of the app."""
        reply = self.request(protocol.Status(new_id()))
        assert isinstance(reply, protocol.StatusReply), reply
        return reply.status

    def wait_running(self, timeout: float = 30.0) -> dict[str, Any]:
        """Wait until the agent said hello and the app wrote its port; the status."""

        def ready() -> dict[str, Any] | None:
            assert self.proc.poll() is None, f"supervisor exited early:\n{self.output()}"
            if not Path(self.endpoint[len("ipc://") :]).exists():
                return None
            status = self.status()
            return status if status["state"] == "running" and self.portfile.exists() else None

        return wait_for(ready, timeout, f"app {self.name} to run\n{self.output()}")

    def journal(self) -> list[dict[str, Any]]:
        """The app's journal records, oldest first."""
        path = self.tmp_path / "state" / "gdsu" / self.name / "journal.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    @property
    def port(self) -> int:
        """The port the app listens on."""
        return int(self.portfile.read_text())

    def get(self, path: str = "/", timeout: float = 10.0) -> str:
        """GET a path from the app."""
        url = f"http://127.0.0.1:{self.port}{path}"
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read().decode()

    def cli(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run `gdsu-fork ARGS` as a separate process in this harness's environment."""
        return run_cli(self.env, self.tmp_path, *args, timeout=timeout)

    def wait_exit(self, timeout: float = 30.0) -> int:
        """The supervisor's exit code, waiting at most `timeout`."""
        return self.proc.wait(timeout)

    def close(self) -> None:
        """Stop the supervisor (SIGTERM, then SIGKILL) and reap it; remove the runtime dir."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(15)
        finally:
            shutil.rmtree(self.runtime, ignore_errors=True)
