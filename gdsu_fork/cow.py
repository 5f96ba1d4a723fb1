"""Which objects this process wrote since a fork, told by the kernel's copy-on-write bookkeeping.

The engine migrates instances in a forked rehearsal child while the program runs, and reuses those
results in the pause for every instance whose own state did not change since the fork. While a
sentinel child still maps the pages as they were at the fork, the first write to a page gives this
process a private copy, which /proc/self/pagemap reports as exclusively mapped (bit 56). Soft-dirty
bits would say the same, but not every kernel has them; bit 56 is there since Linux 4.2.

"Written" means exclusively mapped: written since the most recent fork whose child still maps the
page. Hence the order: open the sentinel, then fork the rehearsal child (its memory is the
reference), then fork nothing else until the pause has read `written`. A page written between the
two forks reads as clean while the rehearsal child still maps it, and that child saw the write; a
sentinel forked after the rehearsal child would hide such writes. A fork by the program itself
after the rehearsal child hides the writes made before it for as long as its child lives: a
`ForkCanary` made before the rehearsal fork and armed right after it tells whether that happened
(and checks that this kernel tells written pages at all).

Take `state_pages` of the objects after the rehearsal fork (in the parent or in the child: the
child's memory is the fork-time layout; taken before the fork, a dict materialized in between
would be missed), call `unique()` while the program still runs, and in the pause
`dirty(state, written(state.unique()))`. Between the fork and the pause the engine must not touch
the objects itself: building a new list of them, or any reference taken from Python, writes their
refcounts and makes them dirty.

Where the answer can be wrong, it errs on the safe side: a page not present (swapped out, never
touched, freed) counts as written, and so does every page once the sentinel is gone; refcount
changes and the collector write object headers too. "Dirty" may be false, "clean" is not, except
for pages merged by KSM (only under madvise(MADV_MERGEABLE) or prctl(PR_SET_MEMORY_MERGE)), which
read as shared.
"""

from __future__ import annotations

import contextlib
import functools
import mmap
import os
import signal
from array import array
from collections.abc import Sequence
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Self

if TYPE_CHECKING:
    from typing_extensions import Buffer  # collections.abc.Buffer is 3.12+

PAGE_SIZE = 4096
PAGEMAP = "/proc/self/pagemap"

try:
    from gdsu_fork import _statepages
except ImportError:  # not built: supported() says False and the engine falls back
    _statepages = None


def _ext() -> ModuleType:
    if _statepages is None:
        msg = "gdsu_fork._statepages is not built; check gdsu_fork.cow.supported() before using it"
        raise ImportError(msg)
    return _statepages


class StatePages:
    """The pages holding each object's own state, as the objects were laid out when it was taken.

    `pages` holds every object's sorted unique page numbers one after the other, `starts` the n+1
    offsets where each object's run begins (both uint64).
    """

    __slots__ = ("_index", "pages", "starts")

    def __init__(self, pages: Buffer, starts: Buffer) -> None:
        self.pages = memoryview(pages).cast("B").cast("Q")
        self.starts = memoryview(starts).cast("B").cast("Q")
        if not self.starts or self.starts[-1] != len(self.pages):
            msg = f"starts ({len(self.starts)} offsets) does not end at the {len(self.pages)} pages"
            raise ValueError(msg)
        self._index: tuple[memoryview, memoryview] | None = None

    def __len__(self) -> int:
        return len(self.starts) - 1

    def pages_of(self, i: int) -> memoryview:
        """Page numbers of the i-th object's state."""
        return self.pages[self.starts[i] : self.starts[i + 1]]

    def unique(self) -> memoryview:
        """Sorted unique pages of all objects: the pages `written` should be asked about."""
        return self._unique_and_slots()[0]

    def _unique_and_slots(self) -> tuple[memoryview, memoryview]:
        # Sorting once also gives each entry its position among the unique pages, so that `dirty`
        # is one pass over the entries instead of a search per entry.
        if self._index is None:
            unique, slots = _ext().unique_pages(self.pages)
            self._index = (memoryview(unique).cast("Q"), memoryview(slots).cast("I"))
        return self._index


def state_pages(objects: Sequence[object]) -> StatePages:
    """The pages of each object's own state (object block, instance dict, values or keys table).

    Pass a list or tuple made before the fork: it is read without touching a refcount, while any
    other sequence is copied into a list, which writes the refcount of every object."""
    if not isinstance(objects, list | tuple):
        objects = list(objects)
    pages, starts = _ext().state_pages(objects)
    return StatePages(pages, starts)


def written(pages: Buffer) -> bytes:
    """One flag per page of `pages` (sorted unique page numbers): 1 if this process wrote it since
    the last fork of a process still mapping it, or if it is not present; else 0."""
    fd = os.open(PAGEMAP, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return _ext().read_written(fd, pages)
    finally:
        os.close(fd)


def dirty(state: StatePages, flags: bytes) -> list[int]:
    """Positions of the objects with any written page; `flags` is `written(state.unique())`."""
    unique, slots = state._unique_and_slots()
    if len(flags) != len(unique):
        msg = f"flags has {len(flags)} entries but the state has {len(unique)} unique pages; pass written(state.unique())"
        raise ValueError(msg)
    return _ext().dirty_positions(state.starts, slots, flags)


class _Closing:
    """A context manager whose exit is its `close()`."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Sentinel(_Closing):
    """A child that keeps this process's pages mapped as they were when it was forked.

    It runs no Python code (forked from C, no at-fork hooks), closes every inherited descriptor
    and waits for end of file on a pipe; it also dies with the thread that opened it.
    """

    def __init__(self) -> None:
        read_fd, self._write_fd = os.pipe()
        try:
            self.pid: int = _ext().fork_sentinel(read_fd)
        except BaseException:
            os.close(self._write_fd)
            raise
        finally:
            os.close(read_fd)
        self._open = True

    def close(self) -> None:
        """Ends and reaps the child; from then on every page shared with it reads as written."""
        if not self._open:
            return
        self._open = False
        os.close(self._write_fd)
        # A process forked meanwhile may hold the write end too: do not count on end of file.
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)


def open_sentinel() -> Sentinel:
    """Forks a sentinel child; close it (or use it as a context manager) to end it."""
    return Sentinel()


class ForkCanary(_Closing):
    """Two private pages, made before the reference fork: at that fork they check that the kernel
    tells written pages here, and later whether this process forked again since.

    Right after the reference fork (the rehearsal child's), both pages are shared with the child,
    so neither reads as written; `arm()` writes the first, which must then read as written while
    its neighbour does not (gVisor and some kernels do not report bit 56). A later fork shares the
    first page with the new child for as long as that child lives, and with it every page written
    since, which would then read as clean: the page reads as not written again. The pages are an
    anonymous mapping of their own, which no other code writes.
    """

    def __init__(self) -> None:
        self._page = mmap.mmap(-1, 2 * PAGE_SIZE, flags=mmap.MAP_PRIVATE)
        self._page[0] = self._page[PAGE_SIZE] = 1  # both present at the fork
        first = _ext().buffer_address(self._page) // PAGE_SIZE
        self._pages = array("Q", [first, first + 1])
        self._works = False

    def arm(self) -> None:
        """Call right after the reference fork."""
        if written(self._pages) != b"\x00\x00":
            return  # not shared with the child: written pages cannot be told apart
        self._page[0] = 2
        self._works = written(self._pages) == b"\x01\x00"

    def forked_since(self) -> bool:
        """Whether a process forked since `arm()` still lives, or writes cannot be told here:
        `dirty` cannot be trusted then."""
        return not self._works or written(self._pages[:1]) != b"\x01"

    def close(self) -> None:
        """Unmaps the pages."""
        self._page.close()


def open_canary() -> ForkCanary:
    """A fork canary; close it (or use it as a context manager) to unmap its page."""
    return ForkCanary()


@functools.cache
def supported() -> bool:
    """Whether pagemap may tell written pages here: the extension is built, pagemap is readable
    and reports pages of this process's alone as exclusive. Whether a page shared by a fork reads
    otherwise, each reference fork checks (`ForkCanary.arm`): finding out here would take a fork
    of the whole program."""
    if _statepages is None or mmap.PAGESIZE != PAGE_SIZE:
        return False
    buf = mmap.mmap(-1, 2 * PAGE_SIZE, flags=mmap.MAP_PRIVATE)
    try:
        buf[0] = buf[PAGE_SIZE] = 1  # present, and private to this process
        first = _ext().buffer_address(buf) // PAGE_SIZE
        return written(array("Q", [first, first + 1])) == b"\x01\x01"
    except OSError:
        return False
    finally:
        buf.close()
