"""Updates through gdsu-supervise: under load, one at a time, watched children, replay."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from apps.supervised import GREETER, Supervised, wait_for

from gdsu_fork import protocol
from gdsu_fork.bundle import bundle_patch
from gdsu_fork.client import Client, new_id


@pytest.fixture
def start(tmp_path: Path) -> Iterator:
    started: list[Supervised] = []

    def run(*options: str) -> Supervised:
        app = Supervised(tmp_path, *options)
        started.append(app)
        app.wait_running()
        return app

    yield run
    for app in started:
        app.close()
        print(f"--- output ---\n{app.output()}")  # shown when the test fails


class Hammer:
    """Client threads sending keep-alive GETs until stopped; every answer and failure kept."""

    def __init__(self, port: int, threads: int = 4, path: str = "/h") -> None:
        self.port = port
        self.path = path
        self.stop = threading.Event()
        self.answers: list[list[str]] = [[] for _ in range(threads)]
        self.failures: list[str] = []
        self.threads = [
            threading.Thread(target=self._run, args=(answers,), daemon=True)
            for answers in self.answers
        ]
        for thread in self.threads:
            thread.start()

    def _run(self, answers: list[str]) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        while not self.stop.is_set():
            try:
                connection.request("GET", self.path)
                response = connection.getresponse()
                body = response.read().decode()
                if response.status != 200:
                    self.failures.append(f"status {response.status}: {body}")
                answers.append(body)
            except (OSError, http.client.HTTPException) as exc:
                self.failures.append(repr(exc))
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        connection.close()

    def wait_answers(self, count: int) -> None:
        wait_for(lambda: all(len(a) >= count for a in self.answers), 20, "answers")

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(15)
            assert not thread.is_alive()


def test_update_under_load_loses_no_request(start, tmp_path: Path, monkeypatch) -> None:
    app_tmp = tmp_path / "app-tmp"
    app_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(app_tmp))
    app = start()
    hammer = Hammer(app.port)
    try:
        hammer.wait_answers(20)
        result = app.cli("update", str(GREETER / "patch_v2.py"), "--json")
        counts = [len(a) for a in hammer.answers]
        hammer.wait_answers(max(counts) + 20)
    finally:
        hammer.finish()
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["outcome"] == "committed" and report["timings"]["pause"] > 0
    for phase in ("[rehearsing]", "[waiting]", "[paused]", "[committing]"):
        assert phase in result.stderr
    assert hammer.failures == []
    for answers in hammer.answers:
        assert set(answers) <= {"v1 /h", "v2 /h"}
        first_v2 = answers.index("v2 /h")
        assert "v1 /h" not in answers[first_v2:]  # once new code answered, old code never again
    assert app.get("/z") == "v2 /z"
    (update,) = [r for r in _journal(app) if r["event"] == "update"]
    assert update["outcome"] == "committed" and update["patch"] == "patch_v2.py"
    assert update["modules"][0]["file"] == str(GREETER / "greeting.py")
    (unpacked,) = app_tmp.glob("gdsu-patches-*/patch-*/patch_v2.py")
    app.close()
    assert not unpacked.exists()  # the app removed its unpacked patches when it exited


def test_update_migrating_live_instances_under_load(start) -> None:
    app = start()
    hammer = Hammer(app.port, path="/visit/a")
    try:
        hammer.wait_answers(20)
        identity = app.get("/visitor-id/a")
        result = app.cli("update", str(GREETER / "patch_visitors.py"), "--json")
        counts = [len(a) for a in hammer.answers]
        hammer.wait_answers(max(counts) + 20)
    finally:
        hammer.finish()
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["outcome"] == "committed" and report["migrated"] == 1
    assert hammer.failures == []
    for answers in hammer.answers:
        versions = [a.split()[0] for a in answers]
        assert versions == sorted(versions)  # v1 until the commit, v2 after, never back
        assert "v2" in versions
        numbers = [int(a.rsplit("x", 1)[1]) for a in answers]
        assert numbers == sorted(numbers)  # the count carried over: never reset by the update
    assert app.get("/visitor-id/a") == identity  # the same object, migrated in place


def test_second_update_is_busy_unless_it_waits(tmp_path: Path, monkeypatch) -> None:
    gate = tmp_path / "gate"
    monkeypatch.setenv("GREETER_GATE", str(gate))
    app = Supervised(tmp_path)
    gated = None
    try:
        app.wait_running()
        gated = subprocess.Popen(
            [sys.executable, "-m", "gdsu_fork.cli", "update", str(GREETER / "patch_gated.py")],
            env=app.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_for(lambda: app.status()["state"] == "updating", 20, "the first update to start")
        busy = app.cli("update", str(GREETER / "patch_v2.py"))
        assert busy.returncode == 1
        assert "busy with update patch_gated.py" in busy.stderr and "--wait" in busy.stderr

        events: list[protocol.Message] = []

        def on_event(event: protocol.Message) -> None:
            events.append(event)
            if isinstance(event, protocol.Accepted):
                gate.touch()  # queued behind the first: now let the first one finish

        request = protocol.Update(new_id(), bundle_patch(GREETER / "patch_v2.py"), wait=True)
        with Client(app.endpoint) as client:
            final = client.request(request, on_event=on_event)
        assert isinstance(events[0], protocol.Accepted) and events[0].ahead == 1
        assert isinstance(final, protocol.ReportReply)
        assert final.report["outcome"] == "committed"
        _, err = gated.communicate(timeout=60)
        assert gated.returncode == 0, err
        outcomes = [(r["patch"], r["outcome"]) for r in app.journal() if r["event"] == "update"]
        assert outcomes == [("patch_gated.py", "committed"), ("patch_v2.py", "committed")]
        status = app.status()
        assert status["updates"] == 2 and status["last_update"]["patch"] == "patch_v2.py"
    finally:
        if gated is not None and gated.poll() is None:
            gated.kill()
            gated.communicate()
        app.close()
        print(app.output())


def test_child_over_the_memory_cap_is_killed_and_discarded(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("GREETER_BALLAST_MB", "256")
    app = Supervised(tmp_path, "--child-memory", "64M")
    try:
        app.wait_running()
        result = app.cli("update", str(GREETER / "patch_dirty.py"), "--timeout", "60", "--json")
        assert result.returncode == 1, result.stderr
        report = json.loads(result.stdout)
        assert report["outcome"] == "discarded"
        assert "killed by gdsu-supervise" in report["reason"]
        assert "over the cap of 64 MiB" in report["reason"]
        assert app.get("/m") == "v1 /m"  # the app is untouched
        (update,) = [r for r in _journal(app) if r["event"] == "update"]
        assert update["outcome"] == "discarded" and "64 MiB" in update["reason"]
    finally:
        app.close()
        print(app.output())


def test_hung_child_is_killed_at_the_timeout(start) -> None:
    app = start()
    result = app.cli("update", str(GREETER / "patch_hang.py"), "--timeout", "2", "--json")
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["outcome"] == "discarded" and "killed" in report["reason"]
    assert app.get("/t") == "v1 /t"
    assert app.status()["state"] == "running"


def test_a_blocked_safe_point_aborts_and_names_the_thread(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("GREETER_SPIN", "1")
    app = Supervised(tmp_path)
    try:
        app.wait_running()
        result = app.cli("update", str(GREETER / "patch_spinner.py"), "--timeout", "1")
        assert result.returncode == 1, result.stderr
        assert result.stdout.startswith("aborted")
        assert "[waiting]" in result.stderr
        assert "thread 'spinner'" in result.stderr
        assert "spinner.py:" in result.stderr and "in spin" in result.stderr
        assert app.get("/s") == "v1 /s" and app.status()["state"] == "running"
    finally:
        app.close()
        print(app.output())


def test_app_dying_mid_update_is_reported(start) -> None:
    app = start()
    app_pid = app.status()["app_pid"]
    crash = f"http://127.0.0.1:{app.port}/crash"
    slow = subprocess.Popen(
        [sys.executable, "-m", "gdsu_fork.cli", "update", str(GREETER / "patch_hang.py"), "--json"],
        env=app.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: app.status()["state"] == "updating", 20, "the update to start")
        child = wait_for(lambda: psutil.Process(app_pid).children(), 20, "the update child")[0]
        with pytest.raises(OSError):
            urllib.request.urlopen(crash, timeout=10)
        out, err = slow.communicate(timeout=60)
        child.wait(10)  # the orphaned child of the hanging patch was killed, not left to run
    finally:
        if slow.poll() is None:
            slow.kill()
            slow.communicate()
    assert slow.returncode == 1, err
    report = json.loads(out)
    assert report["outcome"] == "aborted"
    assert "exited with status 3 during the update" in report["reason"]
    assert app.wait_exit() == 3


def test_restart_warns_about_lost_patches_and_replay_restores_them(start) -> None:
    app = start("--restart", "on-failure")
    assert app.cli("update", str(GREETER / "patch_v2.py")).returncode == 0
    assert app.get("/r") == "v2 /r"
    crash = f"http://127.0.0.1:{app.port}/crash"
    app.portfile.unlink()
    with pytest.raises(OSError):
        urllib.request.urlopen(crash, timeout=10)
    wait_for(lambda: app.status()["restarts"] == 1, 20, "the restart")
    status = app.wait_running()
    assert status["stale"] == ["patch_v2.py"]
    assert app.get("/r") == "v1 /r"  # a restart runs the files on disk
    assert "gdsu-fork replay --name greeter" in app.output()
    warnings = [r for r in _journal(app) if r["event"] == "warning"]
    assert len(warnings) == 1 and "patch_v2.py" in warnings[0]["message"]

    # A journal that lost a bundle: the request fails with the cause, supervision goes on.
    (bundle,) = (app.tmp_path / "state" / "gdsu" / "greeter" / "bundles").glob("*.json")
    bundle.rename(bundle.with_suffix(".away"))
    broken = app.cli("replay")
    assert broken.returncode == 1 and "failed on this request" in broken.stderr
    assert "FileNotFoundError" in broken.stderr
    bundle.with_suffix(".away").rename(bundle)

    replay = app.cli("replay")
    assert replay.returncode == 0, replay.stderr
    assert app.get("/r") == "v2 /r"
    assert app.status()["stale"] == []
    sources = [r["source"] for r in _journal(app) if r["event"] == "update"]
    assert sources == ["cli", "replay"]


def _journal(app: Supervised) -> list[dict]:
    return app.journal()
