"""gdsu-supervise --watch end to end: real supervisor, real app, saves made by renaming a temp file."""

from __future__ import annotations

import os
import shutil
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from apps.supervised import GREETER, Supervised, wait_for

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="saves are detected by inotify close events"
)

DEADLINE = 30.0


def save(path: Path, text: str) -> None:
    """Save as many editors do: write a temporary file, then rename it over the original."""
    temp = path.with_name(f".{path.name}.swp")
    temp.write_text(text)
    os.replace(temp, path)


def copy_app(tmp_path: Path) -> Path:
    """The test app's modules (not its patches) in a fresh source directory to edit."""
    source = tmp_path / "src"
    source.mkdir()
    for module in GREETER.glob("*.py"):
        if not module.name.startswith("patch"):
            shutil.copy(module, source / module.name)
    return source


@pytest.fixture
def app(tmp_path: Path) -> Iterator[tuple[Supervised, Path]]:
    source = copy_app(tmp_path)
    supervised = Supervised(tmp_path, "--watch", str(source), script=source / "server.py")
    try:
        yield supervised, source
    finally:
        supervised.close()
        print(f"--- output ---\n{supervised.output()}")  # shown when the test fails


def test_saves_apply_live_and_a_bad_save_keeps_the_last_good_version(app):
    supervised, source = app
    supervised.wait_running()
    assert supervised.get("/x") == "v1 /x"
    greeting = source / "greeting.py"

    save(greeting, 'def greet(path):\n    return "v2 " + path\n')
    wait_for(
        lambda: "watch: greeting.py: changed greeting:greet -> committed" in supervised.output(),
        DEADLINE,
        "the first save to be committed",
    )
    assert supervised.get("/x") == "v2 /x"

    save(greeting, "def greet(path):\n    return 'v3 ' +\n")
    wait_for(
        lambda: "greeting.py does not compile yet (line 2" in supervised.output(),
        DEADLINE,
        "the broken save to be reported",
    )
    save(greeting, 'raise RuntimeError("top level fails")\n')
    wait_for(
        lambda: "RuntimeError: top level fails" in supervised.output(),
        DEADLINE,
        "the failing save to be discarded",
    )
    assert supervised.get("/x") == "v2 /x", "a failed save leaves the last good version running"

    save(greeting, 'def greet(path):\n    return "v4 " + path\n')
    wait_for(lambda: supervised.get("/x") == "v4 /x", DEADLINE, "the next good save to apply")
    journal = supervised.cli("history", "--name", "greeter", "--json").stdout
    assert journal.count('"source": "watch"') >= 3, journal


def test_after_a_restart_saves_apply_on_top_of_the_files_on_disk(tmp_path):
    source = copy_app(tmp_path)
    supervised = Supervised(
        tmp_path, "--watch", str(source), "--restart", "on-failure", script=source / "server.py"
    )
    refused = (
        "def extra():\n    return 1\n\n\n"
        'def greet(path):\n    return "vb " + path\n\n\n'
        "def __gdsu_validate__(env):\n    return False\n"
    )
    try:
        first = supervised.wait_running()
        greeting = source / "greeting.py"
        # Refused by the running program, but on disk: the restarted program imports it.
        save(greeting, refused)
        wait_for(lambda: "-> discarded" in supervised.output(), DEADLINE, "a refusal")
        assert supervised.get("/x") == "v1 /x"
        crash = f"http://127.0.0.1:{supervised.port}/crash"
        supervised.portfile.unlink()  # the restarted program writes it again
        with pytest.raises(OSError):
            urllib.request.urlopen(crash, timeout=10)
        assert supervised.wait_running()["app_pid"] != first["app_pid"]
        assert supervised.get("/x") == "vb /x"
        save(greeting, refused.replace('"vb "', '"v3 "').replace("False", "True"))
        wait_for(lambda: supervised.get("/x") == "v3 /x", DEADLINE, "a save after the restart")
        # Diffed against the files the restarted program loaded: `extra` is not new any more.
        line = "watch: greeting.py: changed greeting:greet, greeting:__gdsu_validate__ -> committed"
        wait_for(lambda: line in supervised.output(), DEADLINE, "the line of the last save")
    finally:
        supervised.close()
        print(f"--- output ---\n{supervised.output()}")


def test_watching_a_missing_directory_is_a_usage_error(tmp_path, capsys):
    from supervisor.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["--watch", str(tmp_path / "nope"), str(GREETER / "server.py")])
    assert exited.value.code == 2
    assert f"--watch {tmp_path / 'nope'}: not a directory" in capsys.readouterr().err
