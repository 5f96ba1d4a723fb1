"""Live programming: every save of a watched source file becomes an update of the running program.

The watcher keeps the last applied version of each file. A save is read only once the editor has
finished it: on Linux when the file is closed after writing (IN_CLOSE_WRITE) or renamed into place
(write-temp-then-rename saves), and then under a read lease, which the kernel grants only while no
process has the file open for writing; so a half-written file is never read, and no long
debounce is needed. Elsewhere a save is taken after a short quiet period. Saves that arrive
together (an editor's "save all") are gathered into one patch. A file that does not compile yet is
waited on. Each batch becomes a patch from the last applied version to the saved one
(`diff.diff_sources`), handed to the `apply` callable (in the supervisor: the normal pipeline of
rehearsal, safe point, commit). A failed update leaves the last applied version in place, so the
next save is diffed against the last good version.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import os
import queue
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path, PurePosixPath

from watchdog.events import (
    FileClosedEvent,
    FileClosedNoWriteEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from .diff import (
    GeneratedPatch,
    decode_source,
    diff_sources,
    ignored,
    module_name,
    python_files,
)
from .errors import GdsuError
from .report import Outcome, Report

# Linux reports the end of a write (IN_CLOSE_WRITE); other platforms only report modifications,
# so there a save is taken once no event came for `_QUIET_WITHOUT_CLOSE` seconds.
_HAS_CLOSE_EVENTS = sys.platform.startswith("linux")
_QUIET_WITHOUT_CLOSE = 0.05
# Under a continuous stream of saves, a batch is cut after this long so updates keep flowing.
_MAX_GATHER = 0.5
_STOP = object()
_RELOAD = object()

ApplyFn = Callable[[Path], Report]


@dataclasses.dataclass(frozen=True)
class SaveResult:
    """What one save (or one burst of saves) did; `line()` is what the developer sees."""

    files: tuple[str, ...]
    summary: str = ""
    report: Report | None = None
    error: str | None = None
    waiting: bool = False
    show_reason: bool = True

    @property
    def committed(self) -> bool:
        """True when the save took effect in the running program."""
        return self.report is not None and self.report.committed

    @property
    def reason(self) -> str | None:
        """Why the save did not take effect (None when it did, or had nothing to apply)."""
        if self.error is not None:
            return self.error
        return self.report.reason if self.report is not None else None

    def line(self) -> str:
        """One line per save, followed by the full reason the first time that reason is seen."""
        head = f"watch: {', '.join(self.files)}: "
        if self.report is None:
            return head + " -> ".join(part for part in (self.summary, self.error) if part)
        pause = self.report.timings.get("pause", 0.0)
        text = f"{head}{self.summary} -> {self.report.outcome}, pause {pause:.1f} ms"
        if self.report.committed:
            return text
        reason = (self.report.reason or "no reason given").strip()
        first = reason.splitlines()[-1] if reason else ""
        text += f": {first}"
        if self.show_reason and "\n" in reason:
            text += "\n" + "\n".join(f"    {line}" for line in reason.splitlines())
        return text


def _print_line(result: SaveResult) -> None:
    print(result.line(), file=sys.stderr, flush=True)


class _Events(FileSystemEventHandler):
    """Follows writes per file and posts a notice `(path, version)` when a save completes.

    Invariants, guarded by `cond`: `writing` holds the files modified since their last close or
    rename (a save in progress); `version[path]` grows on every write, close-after-write and
    rename; `reads[path]` counts closes without writing. Inotify delivers the events of one watch
    in order, so once the close of our own read is seen, every write before it has been seen too:
    that is the barrier `Watcher._read_whole` uses to know that nobody wrote during its read.
    """

    def __init__(self, notices: queue.SimpleQueue[object], wanted: Callable[[Path], bool]) -> None:
        self.notices = notices
        self.wanted = wanted
        self.cond = threading.Condition()
        self.writing: set[Path] = set()
        self.version: Counter[Path] = Counter()
        self.reads: Counter[Path] = Counter()

    def on_any_event(self, event: FileSystemEvent) -> None:
        raw = event.dest_path if isinstance(event, FileMovedEvent) else event.src_path
        name = raw.decode() if isinstance(raw, bytes) else raw
        if not name.endswith(".py"):
            return
        path = Path(name)
        if not self.wanted(path):
            return
        with self.cond:
            if isinstance(event, FileClosedNoWriteEvent):
                self.reads[path] += 1
                self.cond.notify_all()
                return
            if isinstance(event, FileModifiedEvent | FileCreatedEvent):
                self.version[path] += 1
                if _HAS_CLOSE_EVENTS:
                    self.writing.add(path)
                    return
            elif isinstance(event, FileClosedEvent | FileMovedEvent):
                self.version[path] += 1
                self.writing.discard(path)
            else:
                return
            self.notices.put((path, self.version[path]))


class Watcher:
    """Watches source directories and applies each save to the running program.

    `apply(patch_path) -> Report` runs the update (in the supervisor: the normal pipeline).
    `root` is the directory on `sys.path` when the package layout is ambiguous; `names` maps
    files to module names that the layout cannot give (the main script is `__main__`), and
    `main_module` names the module run with `python -m`, which runs as `__main__` too.
    `on_result` receives one `SaveResult` per save (default: its line on stderr).
    """

    def __init__(
        self,
        dirs: Iterable[str | Path],
        apply: ApplyFn,
        *,
        root: str | Path | None = None,
        names: Mapping[str | Path, str] | None = None,
        main_module: str | None = None,
        on_result: Callable[[SaveResult], None] = _print_line,
        debounce: float = 0.003,
        patch_dir: str | Path | None = None,
    ) -> None:
        self.dirs = [Path(d).resolve() for d in dirs]
        for d in self.dirs:
            if not d.is_dir():
                msg = f"--watch {d}: not a directory; give the source directory of the program"
                raise GdsuError(msg)
        self.apply = apply
        self.root = Path(root).resolve() if root is not None else None
        self.names = {Path(p).resolve(): n for p, n in (names or {}).items()}
        self.main_module = main_module
        self.on_result = on_result
        self.debounce = debounce if _HAS_CLOSE_EVENTS else max(debounce, _QUIET_WITHOUT_CLOSE)
        self._own_patch_dir = patch_dir is None
        self.patch_dir = Path(patch_dir or tempfile.mkdtemp(prefix="gdsu-watch-"))
        self.patch_dir.mkdir(parents=True, exist_ok=True)
        self._applied: dict[Path, str] = {}
        self._pending: set[Path] = set()
        self._last_reason: str | None = None
        self._count = 0
        self._notices: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._events = _Events(self._notices, self._wanted)
        self._seen: Counter[Path] = Counter()  # file version at our last whole read
        self._observer = Observer()
        self._worker = threading.Thread(target=self._run, name="gdsu-watch", daemon=True)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Record the current sources as the running version and start watching."""
        self._load_baseline()
        for d in self.dirs:
            self._observer.schedule(self._events, str(d), recursive=True)
        self._observer.start()
        self._worker.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop watching; a save being applied finishes first (bounded by `timeout`)."""
        self._observer.stop()
        self._notices.put(_STOP)
        self._observer.join(timeout)
        if self._worker.is_alive():
            self._worker.join(timeout)
        if self._own_patch_dir:
            shutil.rmtree(self.patch_dir, ignore_errors=True)

    def __enter__(self) -> Watcher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reload(self) -> None:
        """The program was restarted and loaded the files on disk: take them as applied.

        The files are read now, when the program reads them; saves noticed before this call are
        still handled first (against the old baseline).
        """
        self._notices.put((_RELOAD, self._read_tree()))

    def _read_tree(self) -> dict[Path, str]:
        sources = {}
        for d in self.dirs:
            for path in python_files(d).values():
                with contextlib.suppress(OSError, UnicodeDecodeError, SyntaxError):
                    # Decoded as saves are (`_read_alone`), keyed by paths as events give them.
                    sources[path] = decode_source(path.read_bytes())
        return sources

    def _load_baseline(self, sources: dict[Path, str] | None = None) -> None:
        self._applied = sources if sources is not None else self._read_tree()
        self._pending.clear()

    def applied_source(self, path: str | Path) -> str | None:
        """The last applied version of a file (what the running program runs), or None."""
        return self._applied.get(Path(path).resolve())

    # -- the loop --------------------------------------------------------------------------

    def _run(self) -> None:
        """The worker: one save (or burst of saves) at a time, in the order they happened."""
        notice: object = None
        while True:
            if notice is None:
                notice = self._notices.get()
            if notice is _STOP:
                return
            if _is_reload(notice):
                self._load_baseline(notice[1])  # type: ignore[index]
                notice = None
                continue
            batch, notice = self._gather(notice)  # type: ignore[arg-type]
            saved = {path for path, version in batch if version > self._seen[path]}
            if not saved:
                continue  # notices of writes already read
            try:
                result = self._handle(saved)
            except Exception as exc:  # the loop must survive anything one save does
                result = SaveResult(self._display(saved), error=f"internal error: {exc!r}")
            if result is not None:
                self.on_result(result)

    def _gather(self, first: tuple[Path, int]) -> tuple[list[tuple[Path, int]], object]:
        """A burst of save notices (an editor's "save all" comes a few ms apart).

        Returns the batch and the control notice (stop, reload) that ended it, if one did: it is
        handled after the saves noticed before it.
        """
        batch = [first]
        cut = time.monotonic() + _MAX_GATHER
        while time.monotonic() < cut:
            try:
                more = self._notices.get(timeout=self.debounce)
            except queue.Empty:
                break
            if more is _STOP or _is_reload(more):
                return batch, more
            batch.append(more)  # type: ignore[arg-type]
        return batch, None

    def _read_whole(self, path: Path) -> str | None:
        """The file's text if no write was in progress or happened during the read, else None.

        None means "not now": the write under way ends with a close or rename, which posts a
        new notice. Where leases work, the read itself excludes writers (`_read_alone`); else
        our read's own close-without-write event is a barrier (see `_Events`), which misses a
        write whose event the kernel queues after we read (a truncation, say) only rarely.
        """
        events = self._events
        with events.cond:
            if path in events.writing:
                return None
            version, reads = events.version[path], events.reads[path]
        data, leased = _read_alone(path)
        if data is None:
            return None
        if _HAS_CLOSE_EVENTS and not leased:
            with events.cond:
                # Bounded: a full inotify queue may drop our event; the version check stands.
                events.cond.wait_for(lambda: events.reads[path] > reads, timeout=0.2)
                if events.version[path] != version or path in events.writing:
                    return None
        self._seen[path] = version
        return decode_source(data)

    def _wanted(self, path: Path) -> bool:
        """Files of the program: not hidden, not in a cache or virtualenv folder."""
        for d in self.dirs:
            if path.is_relative_to(d):
                return not ignored(PurePosixPath(path.relative_to(d).as_posix()))
        return False

    def _display(self, paths: Iterable[Path]) -> tuple[str, ...]:
        return tuple(sorted(self._relative(p) for p in paths))

    def _relative(self, path: Path) -> str:
        for d in self.dirs:
            if path.is_relative_to(d):
                return str(path.relative_to(d))
        return str(path)

    def _name(self, path: Path) -> str:
        if path in self.names:
            return self.names[path]
        if self.root is not None:
            name = module_name(PurePosixPath(path.relative_to(self.root).as_posix()), bool)
        else:
            folder = path.parent
            while (folder / "__init__.py").exists() and folder.parent != folder:
                folder = folder.parent
            name = module_name(PurePosixPath(path.relative_to(folder).as_posix()), bool)
        # `python -m pkg.app` runs pkg/app.py, and `-m pkg` runs pkg/__main__.py, as __main__.
        if self.main_module and name in (self.main_module, f"{self.main_module}.__main__"):
            return "__main__"
        return name

    def _handle(self, saved: set[Path]) -> SaveResult | None:
        self._pending |= saved
        current: dict[Path, str] = {}
        for path in sorted(self._pending):
            try:
                text = self._read_whole(path)
            except OSError:
                continue  # deleted or moved away since: nothing to apply for it
            except (UnicodeDecodeError, SyntaxError) as exc:  # bytes its coding cannot decode
                msg = f"{self._relative(path)} cannot be decoded yet ({exc}); waiting for the next save"
                return SaveResult(self._display(saved), error=msg, waiting=True)
            if text is None:
                return None  # a save is still being written; its end posts a new notice
            current[path] = text
        fresh = [p for p in current if p not in self._applied]
        for path in fresh:
            # A file the program has not loaded yet: it imports it from disk when it wants it.
            self._applied[path] = current.pop(path)
        changed = {p: s for p, s in current.items() if s != self._applied[p]}
        self._pending = set(changed)
        files = self._display(saved)
        try:
            names = {p: self._name(p) for p in changed}
        except GdsuError as exc:
            return SaveResult(files, error=str(exc))
        main = [p for p in changed if names[p] == "__main__"]
        if main:
            # Running the new source of __main__ would run the program's top level (its
            # `if __name__ == "__main__":` block) a second time, in the update child.
            for path in main:
                del changed[path]
                self._pending.discard(path)
            msg = (
                "is the main script (__main__): not updated live, as that would start the "
                "program again; move the code you edit into a module, or restart"
            )
            self.on_result(SaveResult(self._display(main), error=msg))
            if not changed:
                return None
        if not changed:
            summary = "new file, recorded as loaded from disk" if fresh else "no change"
            return SaveResult(files, summary=summary)
        try:
            generated = self._generate(changed)
        except GdsuError as exc:
            cause = exc.__cause__
            if isinstance(cause, SyntaxError | ValueError):
                where = (
                    f"line {cause.lineno}: {cause.msg}" if isinstance(cause, SyntaxError) else cause
                )
                name = cause.filename if isinstance(cause, SyntaxError) else "a file"
                msg = f"{name} does not compile yet ({where}); waiting for the next save"
                return SaveResult(files, error=msg, waiting=True)
            return SaveResult(files, error=str(exc))
        self._count += 1
        patch_path = generated.write(self.patch_dir / f"save-{self._count:04d}.py")
        try:
            report = self.apply(patch_path)
        except Exception as exc:  # a broken connection must not end live programming
            return SaveResult(files, summary=generated.summary(), error=f"not applied: {exc}")
        show = report.reason != self._last_reason
        self._last_reason = report.reason
        if report.committed:
            self._applied.update(changed)
            self._pending.clear()
        return SaveResult(
            self._display(changed), summary=generated.summary(), report=report, show_reason=show
        )

    def _generate(self, changed: Mapping[Path, str]) -> GeneratedPatch:
        versions: dict[str, tuple[str | None, str | None]] = {}
        paths: dict[str, str] = {}
        for path, source in changed.items():
            name = self._name(path)
            versions[name] = (self._applied[path], source)
            paths[name] = self._relative(path)
        title = f"watch: {', '.join(sorted(paths.values()))}"
        return diff_sources(versions, paths=paths, title=title)


def _read_alone(path: Path) -> tuple[bytes | None, bool]:
    """Read a file while no process has it open for writing: (data, True), or (None, True).

    On Linux a read lease is granted only when nobody has the file open for writing, and it
    holds off new writers until released, so what is read is a finished save; we hold it for
    the read only. Without leases (other systems, some filesystems, another user's file) the
    file is read plainly: (data, False).
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        leased = _take_read_lease(fd)
        if leased is None:
            return None, True
        try:
            chunks = []
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
        finally:
            if leased:
                fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        return b"".join(chunks), leased
    finally:
        os.close(fd)


def _take_read_lease(fd: int) -> bool | None:
    """True if leased, None if a writer has the file open, False if leases are unavailable."""
    if not hasattr(fcntl, "F_SETLEASE"):
        return False
    # A writer's open breaks the lease with a signal to the holder, SIGIO by default, whose
    # default action ends the process: send SIGURG (ignored by default) and no one owns it.
    fcntl.fcntl(fd, fcntl.F_SETSIG, signal.SIGURG)
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EBUSY):
            return None
        return False  # EINVAL, EACCES, ENOLCK: no leases here
    fcntl.fcntl(fd, fcntl.F_SETOWN, 0)
    return True


def _is_reload(notice: object) -> bool:
    return isinstance(notice, tuple) and notice[0] is _RELOAD


def apply_through(
    endpoint: str, *, curve_keys: str | None = None, timeout: float = 10.0, rehearse: bool = True
) -> ApplyFn:
    """An `apply` that sends each patch to a supervisor, as `gdsu-fork update --wait` would.

    The update then takes the normal path: queued behind any other, journaled, rehearsed, applied
    at a safe point. A connection failure raises; the watcher reports it and keeps watching.
    """
    from . import protocol
    from .bundle import bundle_patch
    from .client import Client, new_id

    def apply(patch_path: Path) -> Report:
        bundle = bundle_patch(patch_path)
        request = protocol.Update(
            new_id(), bundle, timeout=timeout, rehearse=rehearse, wait=True, source="watch"
        )
        with Client(endpoint, curve_keys=curve_keys) as client:
            reply = client.request(request, idle_timeout=4 * timeout + 90.0)
        if isinstance(reply, protocol.Error):
            return Report(outcome=Outcome.ABORTED, reason=reply.message)
        assert isinstance(reply, protocol.ReportReply)
        return Report.from_dict(reply.report)

    return apply
