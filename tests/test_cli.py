"""gdsu-fork: subcommands against a real supervised app, exit codes and messages."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from apps.supervised import GREETER, Supervised

from gdsu_fork import cli


@pytest.fixture
def greeter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Supervised]:
    app = Supervised(tmp_path)
    for key in ("XDG_RUNTIME_DIR", "XDG_STATE_HOME"):
        monkeypatch.setenv(key, app.env[key])
    try:
        app.wait_running()
        yield app
    finally:
        app.close()
        print(app.output())


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_status_list_and_history(greeter: Supervised, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "status")
    assert code == 0 and out.startswith("greeter: running (app pid ")
    code, out, _ = _run(capsys, "status", "--name", "greeter", "--json")
    assert json.loads(out)["state"] == "running"
    code, out, _ = _run(capsys, "list")
    assert code == 0 and out.startswith("greeter\tpid ")
    code, out, _ = _run(capsys, "history", "--json")
    assert code == 0 and [json.loads(line)["event"] for line in out.splitlines()] == ["start"]


def test_history_of_a_stopped_app_is_read_from_its_journal(
    greeter: Supervised, capsys: pytest.CaptureFixture[str]
) -> None:
    greeter.close()
    assert greeter.wait_exit() == 0
    code, out, _ = _run(capsys, "history", "--name", "greeter")
    assert code == 0
    assert [line.split()[2] for line in out.splitlines()] == ["start", "exit"]


def test_unknown_app_names_the_ones_that_exist(
    greeter: Supervised, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run(capsys, "status", "--name", "nope")
    assert code == 2
    assert "no app named 'nope'" in err and "running: greeter" in err


def test_no_app_at_all_says_how_to_start_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    runtime = tmp_path / "rt"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    code, _, err = _run(capsys, "update", str(GREETER / "patch_v2.py"))
    assert code == 2 and "gdsu-supervise app.py" in err


def test_unreadable_and_unbundlable_patches_are_usage_errors(
    greeter: Supervised, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run(capsys, "update", str(tmp_path / "missing.py"))
    assert code == 2 and "cannot read patch file" in err
    dynamic = tmp_path / "dynamic.py"
    dynamic.write_text("patch.module('greeting', 'v' + '2.py')\n")
    code, _, err = _run(capsys, "update", str(dynamic))
    assert code == 2 and "string literals" in err


def test_replay_with_nothing_lost(greeter: Supervised, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "replay")
    assert code == 0 and "nothing to replay" in out


def test_keys_never_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, _ = _run(capsys, "keys", str(tmp_path / "k"))
    assert code == 0
    assert {p.name for p in (tmp_path / "k").iterdir()} == {
        "server.key",
        "server.key_secret",
        "client.key",
        "client.key_secret",
        "authorized",
    }
    code, _, err = _run(capsys, "keys", str(tmp_path / "k"))
    assert code == 2 and "not empty" in err


def test_every_subcommand_is_listed_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for name in ("update", "status", "history", "list", "replay", "keys"):
        assert name in out


def test_exit_codes_as_a_separate_process(greeter: Supervised) -> None:
    result = greeter.cli("status", "--name", "nope")
    assert result.returncode == 2 and "nope" in result.stderr
    result = greeter.cli("status")
    assert result.returncode == 0, result.stderr


def test_a_malformed_endpoint_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "status", "--endpoint", "carrier-pigeon://home")
    assert code == 2 and "an endpoint looks like" in err
