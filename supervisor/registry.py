"""Where a user's supervised apps are found: a private runtime directory with one entry per name.

Each app holds an exclusive `flock` on `<name>.lock` for the supervisor's lifetime, so a name is
taken exactly while its supervisor lives, a crashed supervisor frees it, and `list` can tell a live
record from a stale one without trusting pids.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Any

from gdsu_fork.errors import GdsuError

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
IPC_PATH_MAX = 107
"""sockaddr_un.sun_path holds 108 bytes on Linux, the last one a NUL."""


class RegistryError(GdsuError, RuntimeError):
    """The runtime directory is unsafe, or an app name is invalid, taken or unknown."""


def runtime_dir() -> Path:
    """`$XDG_RUNTIME_DIR/gdsu`, else `<tempdir>/gdsu-<uid>`; made 0700, refused if not private."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    path = Path(base) / "gdsu" if base else Path(tempfile.gettempdir()) / f"gdsu-{os.geteuid()}"
    try:
        path.mkdir(mode=0o700, parents=bool(base), exist_ok=True)
    except OSError as exc:
        msg = f"cannot create the runtime directory {path}: {exc.strerror}; set XDG_RUNTIME_DIR"
        raise RegistryError(msg) from exc
    check_private_dir(path)
    return path


def check_private_dir(path: Path) -> None:
    """Refuse a directory another user could enter or swap: control sockets live in it."""
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode):
        msg = f"{path} is not a directory (a symlink?); remove it so a private one can be made"
        raise RegistryError(msg)
    if info.st_uid != os.geteuid():
        msg = (
            f"directory {path} belongs to uid {info.st_uid}, not to you (uid {os.geteuid()}); "
            "another user could reach its control sockets: remove it or set XDG_RUNTIME_DIR"
        )
        raise RegistryError(msg)
    if info.st_mode & 0o077:
        msg = (
            f"directory {path} has mode {stat.S_IMODE(info.st_mode):o}; other users could reach "
            f"its control sockets: run `chmod 700 {path}`"
        )
        raise RegistryError(msg)


def check_name(name: str) -> str:
    """`name` if it can name an app (letters, digits, '.', '_', '-'; at most 64)."""
    if not _NAME.fullmatch(name):
        msg = (
            f"app name {name!r} is not allowed: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
        raise RegistryError(msg)
    return name


def ipc_endpoint(path: Path) -> str:
    """The `ipc://` endpoint for `path`, refused if Unix sockets cannot hold it."""
    if len(os.fsencode(path)) > IPC_PATH_MAX:
        msg = (
            f"socket path {path} is longer than the {IPC_PATH_MAX} bytes a Unix socket allows; "
            "set XDG_RUNTIME_DIR to a shorter directory or choose a shorter --name"
        )
        raise RegistryError(msg)
    return f"ipc://{path}"


@dataclasses.dataclass(frozen=True)
class AppRecord:
    """What `gdsu-fork` needs to reach a supervised app."""

    name: str
    supervisor_pid: int
    endpoint: str
    state_dir: str
    started: float
    curve: bool = False

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return dataclasses.asdict(self)


class NameClaim:
    """The exclusive hold of an app name; release it (or exit) to free the name."""

    def __init__(self, directory: Path, name: str) -> None:
        self.directory = directory
        self.name = check_name(name)
        self._lock_path = directory / f"{name}.lock"
        self._record_path = directory / f"{name}.json"
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            other = read_record(directory, name)
            owner = f" (gdsu-supervise pid {other.supervisor_pid})" if other else ""
            msg = (
                f"an app named {name!r} is already supervised{owner}; "
                "stop it or choose another --name"
            )
            raise RegistryError(msg) from None
        self._fd: int | None = fd

    def socket_path(self, suffix: str) -> Path:
        """A socket file for this app in the runtime directory."""
        return self.directory / f"{self.name}.{suffix}"

    def publish(self, record: AppRecord) -> None:
        """Write the record that `gdsu-fork` reads (atomically: write, then rename)."""
        tmp = self._record_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record.to_dict()))
        tmp.replace(self._record_path)

    def release(self) -> None:
        """Remove the record and free the name."""
        if self._fd is None:
            return
        self._record_path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None


def read_record(directory: Path, name: str) -> AppRecord | None:
    """The record of app `name`, or None if there is none or its supervisor is gone."""
    lock_path = directory / f"{name}.lock"
    try:
        fd = os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # held: the supervisor is alive
        else:
            return None  # nobody holds it: a stale record
        try:
            data = json.loads((directory / f"{name}.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None  # starting up: the record is not published yet
        return AppRecord(**data)
    finally:
        os.close(fd)


def list_apps(directory: Path) -> list[AppRecord]:
    """The live apps of this user, by name."""
    records = (read_record(directory, p.stem) for p in sorted(directory.glob("*.lock")))
    return [r for r in records if r is not None]
