"""The supervisor's state on disk: journal, stale-patch detection, runtime directory, names."""

from __future__ import annotations

import argparse
import hashlib
import os
from pathlib import Path

import pytest

from gdsu_fork.protocol import Bundle
from supervisor.cli import parse_size
from supervisor.journal import Journal, module_records
from supervisor.process import Backoff
from supervisor.registry import (
    NameClaim,
    RegistryError,
    check_name,
    check_private_dir,
    ipc_endpoint,
    list_apps,
    read_record,
)


def test_journal_appends_and_skips_a_torn_last_line(tmp_path: Path) -> None:
    journal = Journal(tmp_path, "app")
    journal.append("start", pid=1)
    journal.append("exit", pid=1, status=0)
    with open(journal.path, "ab") as out:
        out.write(b'{"time": 1, "event": "upd')  # a crash in the middle of a write
    assert [r["event"] for r in journal.read()] == ["start", "exit"]
    journal = Journal(tmp_path, "app")  # the next supervisor of the app
    journal.append("start", pid=2)
    assert [r["event"] for r in journal.read()] == ["start", "exit", "start"]
    assert [r["pid"] for r in journal.read(limit=1)] == [2]
    assert oct(journal.path.stat().st_mode & 0o777) == "0o600"


def _commit(journal: Journal, bundle: Bundle, module_file: Path) -> str:
    digest = journal.store_bundle(bundle)
    modules = module_records(bundle, {"m": str(module_file)})
    journal.append(
        "update", outcome="committed", digest=digest, patch=bundle.entry, modules=modules
    )
    return digest


def test_stale_patches_are_those_whose_latest_source_is_not_on_disk(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "state", "app")
    disk = tmp_path / "m.py"
    disk.write_text("v1\n")
    first = Bundle({"p1.py": "", "m.py": "v2\n"}, "p1.py", {"m": "m.py"})
    second = Bundle({"p2.py": "", "m.py": "v3\n"}, "p2.py", {"m": "m.py"})
    assert journal.stale_patches() == []

    d1 = _commit(journal, first, disk)
    assert [p.digest for p in journal.stale_patches()] == [d1]
    d2 = _commit(journal, second, disk)
    # Only the newest source of a file counts: the second patch superseded the first.
    assert [p.digest for p in journal.stale_patches()] == [d2]
    disk.write_text("v3\n")  # the operator deployed it
    assert journal.stale_patches() == []
    assert journal.load_bundle(d1) == first
    assert module_records(second, {})[0]["sha256"] == hashlib.sha256(b"v3\n").hexdigest()


def test_a_patch_without_module_files_is_lost_with_the_process_that_had_it(
    tmp_path: Path,
) -> None:
    journal = Journal(tmp_path, "app")
    journal.append("start", pid=1)
    defines_only = Bundle({"p.py": "patch.define(...)"}, "p.py", {})
    digest = _commit(journal, defines_only, tmp_path / "unused.py")
    (stale,) = journal.stale_patches()
    assert (stale.digest, stale.modules) == (digest, ())
    journal.append("restart", pid=2)  # that restart was warned about; replay or not, it is past
    assert journal.stale_patches() == []


def test_backoff_doubles_to_a_cap_and_resets_after_a_healthy_run() -> None:
    backoff = Backoff(first=0.5, cap=4.0, healthy=10.0)
    assert [backoff.delay(1.0) for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert backoff.delay(60.0) == 0.5


def test_private_dir_checks_name_the_fix(tmp_path: Path) -> None:
    open_dir = tmp_path / "open"
    open_dir.mkdir(mode=0o755)
    open_dir.chmod(0o755)
    with pytest.raises(RegistryError, match="chmod 700"):
        check_private_dir(open_dir)
    link = tmp_path / "link"
    link.symlink_to(open_dir)
    with pytest.raises(RegistryError, match="not a directory"):
        check_private_dir(link)
    if os.geteuid() == 0:
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o700)
        os.chown(theirs, 12345, 12345)
        with pytest.raises(RegistryError, match="belongs to uid 12345"):
            check_private_dir(theirs)


@pytest.mark.parametrize("name", ["", "-x", "a/b", "a b", "x" * 65, "..", "é"])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(RegistryError, match="not allowed"):
        check_name(name)


def test_long_socket_paths_are_refused_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="XDG_RUNTIME_DIR"):
        ipc_endpoint(tmp_path / ("x" * 120))


def test_a_name_is_held_while_claimed_and_free_after(tmp_path: Path) -> None:
    claim = NameClaim(tmp_path, "app")
    with pytest.raises(RegistryError, match="already supervised"):
        NameClaim(tmp_path, "app")
    assert read_record(tmp_path, "app") is None  # claimed, not yet published
    claim.release()
    NameClaim(tmp_path, "app").release()
    assert list_apps(tmp_path) == []


@pytest.mark.parametrize(
    ("text", "size"), [("512M", 512 * 2**20), ("2g", 2 * 2**30), ("64KiB", 65536), ("100", 100)]
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_a_bad_size_says_how_to_write_one() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="512M"):
        parse_size("lots")
