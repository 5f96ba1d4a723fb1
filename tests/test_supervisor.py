"""gdsu-supervise with real processes: lifecycle, signals, restarts, control socket defences."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import pwd
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
import zmq
from apps.supervised import APPS, Supervised, run_cli, wait_for
from hypothesis import given, settings
from hypothesis import strategies as st

from gdsu_fork import protocol
from gdsu_fork.client import Client, ConnectionFailed, new_id
from gdsu_fork.protocol import ErrorCode

Start = Callable[..., Supervised]


@pytest.fixture
def supervise(tmp_path: Path) -> Iterator[Start]:
    started: list[Supervised] = []

    def start(*options: str, **kwargs: object) -> Supervised:
        supervised = Supervised(tmp_path, *options, **kwargs)  # type: ignore[arg-type]
        started.append(supervised)
        return supervised

    yield start
    for supervised in started:
        supervised.close()
        print(f"--- output of {supervised.name} ---\n{supervised.output()}")  # shown on failure


def test_app_runs_unchanged_and_sigterm_stops_it_cleanly(supervise: Start) -> None:
    app = supervise()
    status = app.wait_running()
    assert app.get("/x") == "v1 /x"
    assert status["name"] == "greeter" and status["app_pid"] != status["supervisor_pid"]
    listed = app.cli("list", "--json")
    assert json.loads(listed.stdout)["endpoint"] == app.endpoint

    app.proc.send_signal(signal.SIGTERM)
    assert app.wait_exit() == 0  # the app's own status: it handled SIGTERM and returned
    assert "bye" in app.output()
    with pytest.raises(ProcessLookupError):
        os.kill(status["app_pid"], 0)
    assert app.cli("list").stdout == ""  # the name is free again
    events = [r["event"] for r in _journal(app)]
    assert events == ["start", "exit"]


def test_sighup_is_forwarded_and_does_not_stop(supervise: Start) -> None:
    app = supervise()
    app.wait_running()
    app.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "hup" in app.output(), 10, "the app to print hup")
    assert app.status()["state"] == "running"


@pytest.mark.parametrize(
    ("args", "expected"), [(("7",), 7), (("0", str(int(signal.SIGUSR1))), 138)]
)
def test_supervisor_exits_with_the_app_status(supervise: Start, args: tuple, expected: int) -> None:
    app = supervise(script=APPS / "exit_with.py", args=args, name="exiter")
    assert app.wait_exit() == expected
    assert [r["event"] for r in _journal(app)] == ["start", "exit"]


def test_second_app_with_the_same_name_is_refused(supervise: Start) -> None:
    first = supervise()
    first.wait_running()
    cmd = [sys.executable, "-m", "supervisor.cli", "--name", "greeter", str(APPS / "exit_with.py")]
    result = subprocess.run(cmd, env=first.env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "already supervised" in result.stderr and str(first.proc.pid) in result.stderr
    assert first.status()["state"] == "running"


def test_crash_restarts_with_backoff_when_asked(supervise: Start) -> None:
    app = supervise("--restart", "on-failure")
    first = app.wait_running()
    url = f"http://127.0.0.1:{app.port}/crash"
    app.portfile.unlink()  # the restarted app writes it again
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=10)
    wait_for(lambda: app.status()["restarts"] == 1, 20, "a restart")
    second = app.wait_running()
    assert second["app_pid"] != first["app_pid"]
    assert app.get("/y") == "v1 /y"
    exits = [r for r in _journal(app) if r["event"] == "exit"]
    assert [e["status"] for e in exits] == [3]
    assert "exited with status 3; restarting in 0.5 s" in app.output()


def test_crash_without_restart_policy_ends_the_supervisor(supervise: Start) -> None:
    app = supervise()
    app.wait_running()
    with pytest.raises(OSError):
        app.get("/crash")
    assert app.wait_exit() == 3


def _raw_socket(app: Supervised) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.rcvtimeo = 10_000
    sock.connect(app.endpoint)
    return sock


def test_garbage_oversized_and_unknown_frames_get_error_replies(supervise: Start) -> None:
    app = supervise("--max-message", "64K")
    app.wait_running()
    sock = _raw_socket(app)
    cases = [
        ([b"\x00\xffgarbage"], ErrorCode.GARBAGE),
        ([b'{"v": 1, "kind": "status"', b"second frame"], ErrorCode.GARBAGE),
        ([b"[]"], ErrorCode.GARBAGE),
        ([json.dumps({"v": 2, "kind": "status", "id": "a"}).encode()], ErrorCode.VERSION),
        ([json.dumps({"v": 1, "kind": "reboot", "id": "b"}).encode()], ErrorCode.UNKNOWN_KIND),
        (
            [json.dumps({"v": 1, "kind": "hello", "id": "c", "pid": 1, "python": ""}).encode()],
            ErrorCode.UNKNOWN_KIND,
        ),
        (
            [json.dumps({"v": 1, "kind": "history", "id": "d", "limit": []}).encode()],
            ErrorCode.BAD_FIELD,
        ),
        (
            [json.dumps({"v": 1, "kind": "status", "id": "e", "pad": "x" * 70_000}).encode()],
            ErrorCode.TOO_LARGE,
        ),
    ]
    try:
        for frames, code in cases:
            sock.send_multipart(frames)
            reply = protocol.decode(sock.recv())
            assert isinstance(reply, protocol.Error), (frames[0][:40], reply)
            assert reply.code is code, (frames[0][:40], reply)
            assert reply.message
        # Still serving, on the same connection.
        sock.send(protocol.encode(protocol.Status("f")))
        reply = protocol.decode(sock.recv())
        assert isinstance(reply, protocol.StatusReply) and reply.id == "f"
    finally:
        sock.close()
    assert app.status()["state"] == "running"


def _other_user() -> str:
    name = "gdsu-test-other"
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--no-create-home", name], check=True, timeout=30)
    return name


def _status_as(uid: int | None, endpoint: str) -> str:
    """Ask for the status from a forked process running as `uid`; what happened, in a word."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        result = b"error"
        try:
            if uid is not None:
                os.setgroups([])
                os.setgid(pwd.getpwuid(uid).pw_gid)
                os.setuid(uid)
            try:
                with Client(endpoint, connect_timeout=2.0) as client:
                    reply = client.request(protocol.Status(new_id()))
                result = b"answered" if isinstance(reply, protocol.StatusReply) else b"error"
            except ConnectionFailed:
                result = b"no answer"
        finally:
            os.write(write, result)
            os._exit(0)
    os.close(write)
    try:
        with os.fdopen(read, "rb") as pipe:
            return pipe.read().decode()
    finally:
        os.waitpid(pid, 0)


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
def test_another_user_cannot_reach_the_control_socket(supervise: Start) -> None:
    app = supervise()
    app.wait_running()
    other = pwd.getpwnam(_other_user()).pw_uid
    assert _status_as(None, app.endpoint) == "answered"  # the same code works for the owner
    assert _status_as(other, app.endpoint) == "no answer"
    assert oct(os.stat(app.runtime / "gdsu").st_mode & 0o777) == "0o700"
    assert app.status()["state"] == "running"


def test_tcp_control_without_keys_is_refused(supervise: Start) -> None:
    app = supervise("--control", "tcp://127.0.0.1:0")
    assert app.wait_exit() == 2
    assert "--curve-keys" in app.output()


def test_tcp_control_accepts_only_known_curve_keys(supervise: Start, tmp_path: Path) -> None:
    keys, stranger = tmp_path / "keys", tmp_path / "stranger"
    for directory in (keys, stranger):
        made = run_cli(dict(os.environ), tmp_path, "keys", str(directory))
        assert made.returncode == 0, made.stderr
    assert oct(os.stat(keys).st_mode & 0o777) == "0o700"
    app = supervise("--control", "tcp://127.0.0.1:0", "--curve-keys", str(keys))
    record = wait_for(lambda: json.loads(app.cli("list", "--json").stdout or "null"), 20, "record")
    endpoint = record["endpoint"]
    assert endpoint.startswith("tcp://127.0.0.1:") and record["curve"]

    ok = app.cli("status", "--name", "greeter", "--curve-keys", str(keys))
    assert ok.returncode == 0, ok.stderr
    patch = str(APPS / "greeter" / "patch_v2.py")
    update = app.cli("update", patch, "--endpoint", endpoint, "--curve-keys", str(keys))
    assert update.returncode == 0, update.stderr
    wait_for(app.portfile.exists, 20, "the app to listen")
    assert app.get("/tcp") == "v2 /tcp"
    no_keys = app.cli("status", "--name", "greeter")
    assert no_keys.returncode == 2 and "--curve-keys" in no_keys.stderr
    plain = app.cli("status", "--endpoint", endpoint, "--connect-timeout", "10")
    assert plain.returncode == 2 and "handshake with" in plain.stderr
    # A client whose pair the server does not know, trusting the right server key.
    (stranger / "server.key").unlink()
    (stranger / "server.key").write_bytes((keys / "server.key").read_bytes())
    wrong = app.cli(
        "status", "--endpoint", endpoint, "--curve-keys", str(stranger), "--connect-timeout", "10"
    )
    assert wrong.returncode == 2 and "refused this client's CURVE key" in wrong.stderr


def _journal(app: Supervised) -> list[dict]:
    return app.journal()


def _read_until(fd: int, needle: bytes, timeout: float) -> bytes:
    """Read a pty until `needle` appears or the other side closes; fail at the deadline."""
    data = b""
    deadline = time.monotonic() + timeout
    while needle not in data:
        left = deadline - time.monotonic()
        assert left > 0, f"no {needle!r} within {timeout} s; got {data!r}"
        if select.select([fd], [], [], left)[0]:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: every process holding the terminal has exited
                return data
            if not chunk:
                return data
            data += chunk
    return data


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
@pytest.mark.parametrize("sender", ["terminal", "kill"])
def test_sigint_reaches_the_app_exactly_once(tmp_path: Path, sender: str) -> None:
    runtime = Path(tempfile.mkdtemp(prefix="gdsu-rt-", dir="/tmp"))
    env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime), XDG_STATE_HOME=str(tmp_path))
    cmd = [sys.executable, "-m", "supervisor.cli", "--name", "counter"]
    cmd.append(str(APPS / "count_sigint.py"))
    pid, fd = pty.fork()
    if pid == 0:  # the supervisor, session leader of a new terminal, as in a shell
        try:
            os.execve(sys.executable, cmd, env)
        finally:
            os._exit(127)
    try:
        _read_until(fd, b"ready", 30)
        endpoint = f"ipc://{runtime}/gdsu/counter.ipc"
        with Client(endpoint, connect_timeout=10) as client:
            wait_for(
                lambda: client.request(protocol.Status(new_id())).status["state"] == "running",
                20,
                "the agent",
            )
        if sender == "terminal":
            os.write(fd, b"\x03")  # Ctrl-C: the terminal signals the whole foreground group
        else:
            os.kill(pid, signal.SIGINT)  # only the supervisor: it must forward the signal
        output = _read_until(fd, b"sigints", 30) + _read_until(fd, b"\n", 10)
        assert b"sigints 1" in output
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG) == (0, 0):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
        os.close(fd)
        shutil.rmtree(runtime, ignore_errors=True)


def test_app_stops_when_the_supervisor_is_killed(supervise: Start) -> None:
    app = supervise()
    pid = app.wait_running()["app_pid"]
    app.proc.kill()  # SIGKILL: the supervisor cannot forward anything
    app.proc.wait(10)
    wait_for(lambda: not psutil.pid_exists(pid), 10, "the orphaned app to stop")
    assert "bye" in app.output()  # it got SIGTERM (parent-death signal) and shut down cleanly


def _supervise_once(tmp_path: Path, *argv: str, stdin: str = "") -> subprocess.CompletedProcess:
    runtime = Path(tempfile.mkdtemp(prefix="gdsu-rt-", dir="/tmp"))
    env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime), XDG_STATE_HOME=str(tmp_path))
    try:
        return subprocess.run(
            [sys.executable, "-m", "supervisor.cli", *argv],
            input=stdin,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=APPS,
        )
    finally:
        shutil.rmtree(runtime, ignore_errors=True)


def test_stdin_stdout_and_stderr_pass_through(tmp_path: Path) -> None:
    result = _supervise_once(tmp_path, "echo_stdin.py", stdin="hello\nworld\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "HELLO\nWORLD\n"
    assert result.stderr == "12 bytes\n"  # nothing of the supervisor's own on a clean run


def test_module_mode_runs_python_m_and_keeps_the_status(tmp_path: Path) -> None:
    result = _supervise_once(tmp_path, "-m", "exit_with", "5")
    assert result.returncode == 5, result.stderr
    journal = tmp_path / "gdsu" / "exit_with" / "journal.jsonl"  # the module names the app
    assert [json.loads(line)["event"] for line in journal.read_text().splitlines()] == [
        "start",
        "exit",
    ]


frames = st.one_of(
    st.binary(max_size=300),
    st.dictionaries(
        st.sampled_from(["v", "kind", "id", "limit", "bundle", "timeout", "wait", "junk"]),
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(-2, 2),
            st.sampled_from(["status", "history", "update", "hello", "report", "nope"]),
            st.text(max_size=5),
            st.lists(st.integers(), max_size=2),
        ),
    ).map(lambda body: json.dumps(body).encode()),
)


def test_a_live_supervisor_answers_every_frame_and_keeps_serving(supervise: Start) -> None:
    app = supervise()
    app.wait_running()
    sock = _raw_socket(app)

    @settings(max_examples=150, deadline=None, derandomize=True)
    @given(frames)
    def answers(frame: bytes) -> None:
        sock.send(frame)
        reply = protocol.decode(sock.recv())
        while reply.kind not in protocol.FINAL_KINDS:  # an update that decoded: its stream
            reply = protocol.decode(sock.recv())

    try:
        answers()
        sock.send(protocol.encode(protocol.Status("last")))
        reply = protocol.decode(sock.recv())
        assert isinstance(reply, protocol.StatusReply) and reply.status["state"] == "running"
    finally:
        sock.close()
