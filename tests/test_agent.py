"""The agent thread, against a real ROUTER socket, and the bootstrap, in real processes."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from apps.supervised import APPS

from gdsu_fork import protocol
from gdsu_fork.agent import Agent
from gdsu_fork.progress import Phase, Progress
from gdsu_fork.report import Outcome, Report
from supervisor.process import BOOTSTRAP

TIMEOUT_MS = 10_000


class FakeEngine:
    """Stands in for gdsu_fork.update: records calls, emits progress, can hold until released."""

    def __init__(self) -> None:
        self.calls: list[tuple[Path, dict[str, Any], str]] = []
        self.release = threading.Event()
        self.hold = False
        self.fail = False

    def __call__(self, patch: Path, **options: Any) -> Report:
        self.calls.append((patch, options, patch.read_text()))
        progress = options["progress"]
        progress(Progress(Phase.REHEARSING, "rehearsing", {"pid": 4242, "odd": object()}))
        deadline = time.monotonic() + 10
        while self.hold and not self.release.wait(0.01):  # a safe-point wait, reporting
            assert time.monotonic() < deadline, "the test never released the engine"
            progress(Progress(Phase.WAITING, "waiting", {}))
        if self.fail:
            raise RuntimeError("engine bug")
        progress(Progress(Phase.COMMITTED, "committed", {}))
        return Report(Outcome.COMMITTED, title="t")


@pytest.fixture
def link(tmp_path: Path) -> Iterator[tuple[zmq.Socket, FakeEngine, Agent]]:
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.linger = 0
    router.rcvtimeo = TIMEOUT_MS
    endpoint = f"ipc://{tmp_path}/agent.ipc"
    router.bind(endpoint)
    engine = FakeEngine()
    agent = Agent(endpoint, updater=engine, context=context).start()
    try:
        yield router, engine, agent
    finally:
        engine.release.set()
        agent.stop()
        router.close()
        context.term()


def _recv(router: zmq.Socket) -> tuple[bytes, protocol.Message]:
    identity, frame = router.recv_multipart()
    return identity, protocol.decode(frame)


def _update(request_id: str) -> protocol.Update:
    bundle = protocol.Bundle(
        files={"p.py": "patch = 1\n", "v2/m.py": "X = 2\n"},
        entry="p.py",
        modules={"json": "v2/m.py", "not.loaded": "v2/m.py"},
    )
    return protocol.Update(request_id, bundle, timeout=3.0, rehearse=False, child_memory=2**20)


def test_agent_says_hello_runs_the_engine_and_streams_progress(link: Any) -> None:
    router, engine, agent = link
    identity, hello = _recv(router)
    assert isinstance(hello, protocol.Hello) and hello.pid > 0
    router.send_multipart([identity, protocol.encode(_update("u1"))])

    _, first = _recv(router)
    assert isinstance(first, protocol.ProgressEvent) and first.id == "u1"
    assert first.phase == "rehearsing" and first.data["pid"] == 4242
    assert first.data["odd"].startswith("<object")  # made JSON-safe, not dropped
    _, second = _recv(router)
    assert isinstance(second, protocol.ProgressEvent) and second.phase == "committed"
    _, final = _recv(router)
    assert isinstance(final, protocol.ReportReply) and final.id == "u1"
    assert final.report["outcome"] == "committed"
    assert final.module_files == {"json": json.__file__, "not.loaded": None}

    ((patch, options, text),) = engine.calls
    assert text == "patch = 1\n" and (patch.parent / "v2" / "m.py").read_text() == "X = 2\n"
    assert options["timeout"] == 3.0 and options["rehearse"] is False
    assert options["child_memory"] == 2**20
    assert agent.thread.name == "gdsu-agent"


def test_requests_during_an_update_get_busy(link: Any) -> None:
    router, engine, _ = link
    engine.hold = True
    identity, _ = _recv(router)
    router.send_multipart([identity, protocol.encode(_update("u1"))])
    _, first = _recv(router)
    assert isinstance(first, protocol.ProgressEvent)
    router.send_multipart([identity, protocol.encode(_update("u2"))])
    reply = _recv(router)[1]
    while isinstance(reply, protocol.ProgressEvent):  # answered at the engine's next event
        assert reply.id == "u1"
        reply = _recv(router)[1]
    assert isinstance(reply, protocol.Error)
    assert (reply.id, reply.code) == ("u2", protocol.ErrorCode.BUSY)
    engine.release.set()
    reply = _recv(router)[1]
    while isinstance(reply, protocol.ProgressEvent):
        reply = _recv(router)[1]
    assert isinstance(reply, protocol.ReportReply) and reply.id == "u1"
    assert len(engine.calls) == 1


def test_an_engine_exception_is_a_discarded_report_and_the_agent_serves_on(link: Any) -> None:
    router, engine, _ = link
    engine.fail = True
    identity, _ = _recv(router)
    router.send_multipart([identity, protocol.encode(_update("u1"))])
    replies = [_recv(router)[1] for _ in range(2)]
    assert isinstance(replies[-1], protocol.ReportReply)
    assert replies[-1].report["outcome"] == "discarded"
    assert "RuntimeError: engine bug" in replies[-1].report["reason"]
    router.send_multipart([identity, b"garbage"])
    _, error = _recv(router)
    assert isinstance(error, protocol.Error) and error.code is protocol.ErrorCode.GARBAGE
    router.send_multipart([identity, protocol.encode(protocol.Status("s"))])
    _, status = _recv(router)
    assert isinstance(status, protocol.StatusReply) and status.status["updating"] is False


def test_a_bundle_escaping_its_directory_is_refused(link: Any) -> None:
    router, engine, _ = link
    identity, _ = _recv(router)
    bundle = protocol.Bundle(files={"../../escape.py": "x"}, entry="../../escape.py")
    router.send_multipart([identity, protocol.encode(protocol.Update("u", bundle))])
    _, reply = _recv(router)
    assert isinstance(reply, protocol.ReportReply) and reply.report["outcome"] == "discarded"
    assert "leaves the bundle directory" in reply.report["reason"]
    assert engine.calls == []


def _boot(*argv: str, cwd: Path) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-c", BOOTSTRAP, *argv],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_bootstrap_runs_a_script_as_python_would(tmp_path: Path) -> None:
    script = APPS / "show_main.py"
    seen = _boot(str(script), "a", "--b", cwd=tmp_path)
    assert seen["name"] == "__main__" and seen["main_is_us"]
    assert seen["argv"] == [str(script), "a", "--b"]
    assert seen["file"] == str(script)
    assert seen["path0"] == str(APPS)
    assert seen["globals"] == ["json", "sys"]  # nothing of the bootstrap leaks in


def test_bootstrap_runs_a_module_as_python_m_would(tmp_path: Path) -> None:
    (tmp_path / "showmod.py").write_text((APPS / "show_main.py").read_text())
    seen = _boot("-m", "showmod", "x", cwd=tmp_path)
    assert seen["name"] == "__main__"
    assert seen["argv"] == [str(tmp_path / "showmod.py"), "x"]
    assert seen["path0"] == str(tmp_path)


def test_an_uncaught_exception_reads_as_with_plain_python(tmp_path: Path) -> None:
    script = APPS / "raises.py"
    result = subprocess.run(
        [sys.executable, "-c", BOOTSTRAP, str(script)], capture_output=True, text=True, timeout=60
    )
    plain = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == plain.returncode == 1
    assert result.stderr == plain.stderr  # no frame of the bootstrap in the traceback
