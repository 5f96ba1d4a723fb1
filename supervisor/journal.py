"""The per-app journal: append-only, fsync'ed JSON lines, and the patch bundles it refers to.

One line per event (app started, exited, restarted, update finished), written with O_APPEND and
fsync'ed before the supervisor answers, so what a client was told survives a crash. Bundles are
kept by digest so that `replay` can send a committed patch again after a restart.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from gdsu_fork.bundle import bundle_digest, file_digest
from gdsu_fork.protocol import Bundle


def default_state_dir() -> Path:
    """`$XDG_STATE_HOME/gdsu`, else `~/.local/state/gdsu` (the XDG default)."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "gdsu"


@dataclasses.dataclass(frozen=True)
class StalePatch:
    """A committed patch that a restart lost.

    `modules` names the files on disk that lack its source; it is empty for a patch that replaced
    no module file, which cannot be checked against the disk.
    """

    digest: str
    entry: str
    modules: tuple[str, ...]


class Journal:
    """The journal and bundle store of one app under `state_dir/name`."""

    def __init__(self, state_dir: str | os.PathLike[str], name: str) -> None:
        self.directory = Path(state_dir) / name
        (self.directory / "bundles").mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path = self.directory / "journal.jsonl"
        self._end_torn_line()

    def _end_torn_line(self) -> None:
        """If a crash cut the last record short, end its line, so the next record stays whole.

        Only the app's supervisor (it holds the name) writes here, so nobody is mid-write now.
        """
        try:
            with open(self.path, "rb+") as journal:
                if journal.seek(0, os.SEEK_END) == 0:
                    return
                journal.seek(-1, os.SEEK_END)
                if journal.read(1) != b"\n":
                    journal.write(b"\n")
                    journal.flush()
                    os.fsync(journal.fileno())
        except FileNotFoundError:
            pass

    @classmethod
    def open_existing(cls, state_dir: str | os.PathLike[str], name: str) -> Journal | None:
        """The journal of `name` if one was ever written, without creating anything."""
        if not (Path(state_dir) / name / "journal.jsonl").is_file():
            return None
        return cls(state_dir, name)

    def append(self, event: str, **fields: Any) -> dict[str, Any]:
        """Write one record durably and return it."""
        record = {"time": time.time(), "event": event, **fields}
        line = (json.dumps(record, separators=(",", ":"), default=str) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        return record

    def read(self, limit: int = 0) -> list[dict[str, Any]]:
        """The records, oldest first (the last `limit` of them if `limit`); torn lines skipped."""
        try:
            lines = self.path.read_bytes().splitlines()
        except FileNotFoundError:
            return []
        records = []
        for line in lines[-limit:] if limit else lines:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line torn by a crash mid-write: the lines after it are whole
        return records

    def store_bundle(self, bundle: Bundle) -> str:
        """Keep `bundle` for replay; its digest."""
        digest = bundle_digest(bundle)
        path = self.directory / "bundles" / f"{digest}.json"
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            with open(tmp, "w") as out:
                json.dump(dataclasses.asdict(bundle), out)
                out.flush()
                os.fsync(out.fileno())
            tmp.replace(path)
        return digest

    def load_bundle(self, digest: str) -> Bundle:
        """The bundle stored under `digest`."""
        data = json.loads((self.directory / "bundles" / f"{digest}.json").read_text())
        return Bundle(**data)

    def stale_patches(self) -> list[StalePatch]:
        """Committed patches that a fresh start of the app, from the files on disk, would lack.

        Call it before journaling the new start. For each module file, only the last committed
        source counts; a patch is stale if a file on disk does not hold that source (nobody
        deployed it). A patch that replaced no module file (single definitions, migrations)
        cannot be checked against the disk: it is stale if the process that just ended had it.
        """
        latest: dict[str, tuple[str, str]] = {}  # file -> (sha256, digest)
        patches: dict[str, dict[str, Any]] = {}
        unverifiable: set[str] = set()  # committed to the last process, no module file
        for record in self.read():
            if record.get("event") in ("start", "restart"):
                unverifiable.clear()
            if record.get("event") != "update" or record.get("outcome") != "committed":
                continue
            files = [m for m in record.get("modules", []) if m.get("file")]
            for module in files:
                latest[module["file"]] = (module["sha256"], record["digest"])
            if not files:
                unverifiable.add(record["digest"])
            patches.pop(record["digest"], None)
            patches[record["digest"]] = record  # re-insert: order by last commit
        stale: dict[str, list[str]] = {digest: [] for digest in unverifiable}
        for file, (sha, digest) in latest.items():
            try:
                on_disk = hashlib.sha256(Path(file).read_bytes()).hexdigest()
            except OSError:
                on_disk = None
            if on_disk != sha:
                stale.setdefault(digest, []).append(file)
        return [
            StalePatch(digest, record["patch"], tuple(stale[digest]))
            for digest, record in patches.items()
            if digest in stale
        ]


def module_records(bundle: Bundle, module_files: dict[str, str | None]) -> list[dict[str, Any]]:
    """For the journal: each module the patch replaced, its file in the app, its new source hash."""
    return [
        {"module": name, "file": module_files.get(name), "sha256": file_digest(bundle, rel)}
        for name, rel in bundle.modules.items()
        if rel in bundle.files
    ]
