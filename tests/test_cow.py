"""gdsu_fork.cow: objects changed after a fork read as dirty, untouched ones on other pages as clean.

Every test forks for real. The pattern: make the targets, then a big batch of probes (so that the
probes in the middle of the batch sit on pages nothing else uses), build the list of all of them,
fork a sentinel that blocks on a pipe, take the state pages, change the targets, and ask.

Nothing may touch a probe after the fork: even a refcount change writes its page. So the object
list is built before the fork (`state_pages` only borrows its items), and the collector is off
(a collection writes the GC head of every object it visits).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import sys
import tracemalloc
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from gdsu_fork import cow

PY313 = sys.version_info >= (3, 13)


def _pagemap_readable() -> bool:
    try:
        with open(cow.PAGEMAP, "rb") as f:
            f.read(8)
    except OSError:
        return False
    return True


needs_pagemap = pytest.mark.skipif(
    not _pagemap_readable(), reason="/proc/self/pagemap is not readable here (not Linux, or gVisor)"
)
needs_cow = pytest.mark.skipif(
    not cow.supported(),
    reason="pagemap does not report copy-on-write exclusivity (bit 56) here; the engine falls back",
)


@contextlib.contextmanager
def forked_sentinel() -> Iterator[int]:
    """A child that keeps the pages mapped as at the fork, blocked on a pipe until we close it."""
    read_fd, write_fd = os.pipe()
    with warnings.catch_warnings():
        # 3.12+ warns about forking with threads; pytest's faulthandler watchdog is one.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        try:
            os.close(write_fd)
            os.read(read_fd, 1)
        finally:
            os._exit(0)
    os.close(read_fd)
    try:
        yield pid
    finally:
        os.close(write_fd)
        os.waitpid(pid, 0)


@contextlib.contextmanager
def collector_off() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class Probe:
    def __init__(self) -> None:
        self.a = 1
        self.b = 2


PROBES = 3000
CHECKED = slice(1000, 2000)  # middle of the batch: full pools, GC-list neighbours are probes
FILLER = (
    100_000  # room for the holes a large test before this one leaves (a 20k-instance migration)
)
_filler: list[Probe] = []


def make_probes() -> list[Probe]:
    """A batch of probes on pages of their own.

    The allocator first fills the holes that freed objects left in its pools; a probe placed in
    such a hole shares a page with older objects that may be freed (written) at any time. A filler
    batch, kept until the next call, takes those holes first (the previous filler is freed first,
    or its holes would go to the probes).
    """
    _filler.clear()
    _filler.extend([Probe() for _ in range(FILLER)])
    return [Probe() for _ in range(PROBES)]


def mostly_clean(dirty: set[int], n_targets: int) -> bool:
    """Whether the untouched probes read mostly clean: a check against a gross error (every
    page read as written), not a measure of precision (benchmarks/cow_pages.py measures that).

    A false "dirty" only costs a re-migration, and the run around a test makes some: a probe
    can land in an allocator hole next to objects earlier tests left and free later, and any
    page the sentinel child writes after the fork (at-fork handlers may allocate) becomes the
    parent's own, so it reads as written. In a full suite run more than two hundred of the
    thousand checked probes once read so. What must never happen is a changed object reading
    as clean (asserted exactly by every test).
    """
    checked = set(probe_positions(n_targets))
    return len(dirty & checked) <= len(checked) // 2


def probe_positions(n_targets: int) -> range:
    return range(n_targets + CHECKED.start, n_targets + CHECKED.stop)


# ---- the instances and the changes ------------------------------------------------------------


class Plain:
    def __init__(self) -> None:
        self.a = 1
        self.b = 2
        self.c = 3


class Other:
    """Same layout as Plain, different shared keys."""

    def __init__(self) -> None:
        self.x = 1
        self.y = 2


class Slotted:
    __slots__ = ("a", "b")

    def __init__(self) -> None:
        self.a = 1
        self.b = 2


@dataclasses.dataclass(slots=True)
class SlotsData:
    a: int = 1
    b: int = 2


@dataclasses.dataclass(frozen=True)
class Frozen:
    a: int = 1
    b: int = 2


class DictSub(dict[str, int]):
    pass


class ListSub(list[int]):
    pass


class IntSub(int):
    pass


class TupleSub(tuple[int, ...]):
    pass


class Wide:
    """40 attributes: more than the 30 shared keys allow, so the instance dict is combined."""

    def __init__(self) -> None:
        for i in range(40):
            setattr(self, f"x{i}", i)


def with_attr(obj: Any) -> Any:
    obj.attr = 1
    return obj


@dataclasses.dataclass
class WithDict:
    """A target together with its __dict__, held from before the fork."""

    obj: Any
    d: dict[str, Any]


def materialized(obj: Any) -> WithDict:
    return WithDict(obj, obj.__dict__)


def class_changed(obj: Any) -> WithDict:
    # 3.13: the inline values are copied out and marked invalid; the dict holds the only copy.
    obj.__class__ = Other
    return WithDict(obj, obj.__dict__)


def overflowed() -> WithDict:
    # 3.13: the 31st key does not fit the shared keys: the values go to a combined dict.
    obj = Plain()
    for i in range(35):
        setattr(obj, f"z{i}", i)
    return WithDict(obj, obj.__dict__)


def _set(obj: Any, name: str, value: object) -> None:
    setattr(obj, name, value)


# name -> (make the target before the fork, change it after the fork)
CASES: dict[str, tuple[Callable[[], Any], Callable[[Any], None]]] = {
    "setattr existing": (Plain, lambda o: _set(o, "a", 10)),
    "setattr new": (Plain, lambda o: _set(o, "new", 10)),
    "delattr": (Plain, lambda o: delattr(o, "b")),
    "dict item, dict from before the fork": (
        lambda: materialized(Plain()),
        lambda t: t.d.__setitem__("a", 10),
    ),
    "dict item, new key, dict from before the fork": (
        lambda: materialized(Plain()),
        lambda t: t.d.__setitem__("new", 10),
    ),
    "dict item, dict materialized after the fork": (
        Plain,
        lambda o: o.__dict__.__setitem__("a", 10),
    ),
    "vars().update": (Plain, lambda o: vars(o).update(a=10, z=11)),
    "dict replaced": (Plain, lambda o: _set(o, "__dict__", {"a": 10})),
    "class changed": (Plain, lambda o: _set(o, "__class__", Other)),
    "slots set": (Slotted, lambda o: _set(o, "a", 10)),
    "slots del": (Slotted, lambda o: delattr(o, "b")),
    "dataclass slots": (SlotsData, lambda o: _set(o, "a", 10)),
    "frozen dataclass": (Frozen, lambda o: object.__setattr__(o, "a", 10)),
    "dict subclass attribute": (lambda: with_attr(DictSub(k=1)), lambda o: _set(o, "attr", 10)),
    "dict subclass item": (lambda: with_attr(DictSub(k=1)), lambda o: o.__setitem__("k", 10)),
    "list subclass attribute": (lambda: with_attr(ListSub([1])), lambda o: _set(o, "attr", 10)),
    "list subclass item": (lambda: with_attr(ListSub([1])), lambda o: o.__setitem__(0, 10)),
    "int subclass attribute": (lambda: with_attr(IntSub(10**30)), lambda o: _set(o, "attr", 10)),
    "tuple subclass attribute": (
        lambda: with_attr(TupleSub((1, 2, 3))),
        lambda o: _set(o, "attr", 10),
    ),
    "40 attributes, setattr": (Wide, lambda o: _set(o, "x7", -1)),
    "40 attributes, dict item": (
        lambda: materialized(Wide()),
        lambda t: t.d.__setitem__("x7", -1),
    ),
    "values invalidated by class change, setattr": (
        lambda: class_changed(Plain()),
        lambda t: _set(t.obj, "x", 10),
    ),
    "values invalidated by class change, dict item": (
        lambda: class_changed(Plain()),
        lambda t: t.d.__setitem__("x", 10),
    ),
    "values invalidated by many attributes, setattr": (
        overflowed,
        lambda t: _set(t.obj, "a", 10),
    ),
    "values invalidated by many attributes, dict item": (
        overflowed,
        lambda t: t.d.__setitem__("z3", 10),
    ),
}


def state_owner(target: Any) -> Any:
    """The instance a target stands for (some targets carry their dict along)."""
    return target.obj if isinstance(target, WithDict) else target


@needs_cow
@pytest.mark.parametrize("case", list(CASES))
def test_changed_instance_is_dirty_untouched_probes_clean(case: str) -> None:
    make, change = CASES[case]
    targets = [make() for _ in range(3)]
    probes = make_probes()
    objects = [state_owner(t) for t in targets] + probes
    with collector_off(), forked_sentinel():
        state = cow.state_pages(objects)
        for t in targets:
            change(t)
        dirty = set(cow.dirty(state, cow.written(state.unique())))
    assert dirty >= {0, 1, 2}, f"{case}: a changed instance read as clean"
    assert mostly_clean(dirty, 3), f"{case}: untouched probes read as dirty"


def header_pages(obj: object) -> set[int]:
    """Pages of an object's fixed part and pre-header (GC head, managed dict and weakref pointers),
    from id() and the type alone."""
    lo, hi = id(obj) - 32, id(obj) + type(obj).__basicsize__
    return set(range(lo // cow.PAGE_SIZE, (hi - 1) // cow.PAGE_SIZE + 1))


class Roomy:
    """12 attributes: its values array falls in another allocator size class than the headers."""

    def __init__(self) -> None:
        for i in range(12):
            setattr(self, f"a{i}", i)


# Changes that write a table (values array, keys table) outside the objects' fixed parts.
TABLE_CASES: dict[str, tuple[Callable[[], Any], Callable[[Any], None]]] = {
    "combined keys, dict item": CASES["40 attributes, dict item"],
    "values after class change, dict item": (
        lambda: class_changed(Roomy()),
        lambda t: t.d.__setitem__("a3", 10),
    ),
    "dict subclass item": CASES["dict subclass item"],
}
if not PY313:  # 3.13 keeps these values inline, inside the object block
    TABLE_CASES["split values, dict item"] = (
        lambda: materialized(Roomy()),
        lambda t: t.d.__setitem__("a3", 10),
    )
    TABLE_CASES["split values, new key"] = (
        lambda: materialized(Roomy()),
        lambda t: t.d.__setitem__("new", 10),
    )


@needs_cow
@pytest.mark.parametrize("case", TABLE_CASES)
def test_table_write_lands_on_a_state_page(case: str) -> None:
    """Every change above also writes a refcount in a header, which alone makes the owner dirty;
    here the headers are set aside, and a page of the table itself must read as written."""
    make, change = TABLE_CASES[case]
    targets = [make() for _ in range(8)]
    owners = [state_owner(t) for t in targets]
    headers = [header_pages(o) | header_pages(vars(o)) for o in owners]  # materializes __dict__
    with collector_off(), forked_sentinel():
        state = cow.state_pages(owners)
        for t in targets:
            change(t)
        unique = state.unique()
        flags = cow.written(unique)
    written_pages = {page for page, flag in zip(unique.tolist(), flags, strict=True) if flag}
    beyond = [set(state.pages_of(i).tolist()) - headers[i] for i in range(len(owners))]
    assert any(beyond), f"{case}: no state beyond the headers (tables not covered?)"
    assert any(b & written_pages for b in beyond), f"{case}: the table pages read as unwritten"


@needs_cow
def test_unchanged_targets_stay_clean() -> None:
    """The detector is not trivially 'everything is dirty': the same kinds of objects, untouched."""
    targets = [make() for make, _ in CASES.values()]
    owners = [state_owner(t) for t in targets]
    probes = make_probes()
    objects = owners + probes
    with collector_off(), forked_sentinel():
        state = cow.state_pages(objects)
        flags = cow.written(state.unique())
        dirty = set(cow.dirty(state, flags))
    assert mostly_clean(dirty, len(owners))
    # Targets were made before the probes, so they may share pages with anything the test itself
    # allocated since, and so may the probes at the edges of their batch (where they land depends
    # on the holes earlier tests left); only the middle probes are certain to stay clean.
    assert len(dirty) < len(objects) // 4


@needs_cow
def test_writer_child_does_not_dirty_parent_while_sentinel_lives() -> None:
    probes = make_probes()
    objects = list(probes)
    with collector_off(), forked_sentinel():
        state = cow.state_pages(objects)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:
            code = 1
            try:
                for p in probes:
                    p.a = 10
                    p.new = 11  # type: ignore[attr-defined]
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        dirty = set(cow.dirty(state, cow.written(state.unique())))
        assert mostly_clean(dirty, 0)
    # The sentinel is gone: every page it shared is this process's alone and reads as written.
    assert cow.dirty(state, cow.written(state.unique())) == list(range(len(objects)))


@needs_cow
def test_open_sentinel_detects_like_a_forked_one() -> None:
    targets = [Plain() for _ in range(3)]
    probes = make_probes()
    objects = targets + probes
    with collector_off(), cow.open_sentinel() as sentinel:
        assert sentinel.pid > 0
        state = cow.state_pages(objects)
        for t in targets:
            t.a = 10
        dirty = set(cow.dirty(state, cow.written(state.unique())))
    assert dirty >= {0, 1, 2}
    assert mostly_clean(dirty, 3)
    with pytest.raises(ChildProcessError):
        os.waitpid(sentinel.pid, os.WNOHANG)  # reaped
    assert cow.dirty(state, cow.written(state.unique())) == list(range(len(objects)))


@needs_cow
def test_a_later_fork_hides_earlier_writes_while_its_child_lives() -> None:
    """The hazard the fork canary exists for: after a second fork, pages written before it are
    shared again, so they read as clean until that child is gone."""
    probes = make_probes()
    changed = probes[CHECKED]
    positions = set(range(CHECKED.start, CHECKED.stop))
    with collector_off(), forked_sentinel():
        state = cow.state_pages(probes)
        for p in changed:
            p.a = 10
        unique = state.unique()
        with forked_sentinel():
            hidden = set(cow.dirty(state, cow.written(unique))) & positions
        shown = set(cow.dirty(state, cow.written(unique))) & positions
    assert hidden == set()
    assert shown == positions


@needs_cow
def test_fork_canary_tells_a_later_fork_while_its_child_lives() -> None:
    with cow.open_canary() as canary, forked_sentinel():
        canary.arm()
        assert not canary.forked_since()
        with forked_sentinel():
            assert canary.forked_since()
        assert not canary.forked_since()


@needs_cow
def test_a_canary_armed_without_a_fork_trusts_nothing() -> None:
    """Its check at the reference fork: pages shared with no child cannot tell writes apart."""
    with cow.open_canary() as canary:
        canary.arm()
        assert canary.forked_since()


@needs_pagemap
def test_supported_here() -> None:
    assert cow.supported(), (
        "pagemap is readable but does not report this process's pages as exclusive"
    )


# ---- state_pages without forks ---------------------------------------------------------------


def test_any_object_is_accepted() -> None:
    def gen() -> Iterator[int]:
        yield 1

    objects: list[object] = [
        None, True, 0, 1, -(10**100), 1.5, 1j, "", "a" * 10_000, "é" * 100, b"x" * 10_000,
        bytearray(10_000), (), (1, 2), [], list(range(10_000)), {}, dict.fromkeys(range(1000)),
        set(), set(range(1000)), frozenset(range(10)), range(3), slice(1), object(), type, int,
        Plain, Probe(), sys, os, gen(), gen, len, print, [].append, Plain.__init__,
        sys._getframe(), ValueError("x"), memoryview(b"ab"), Ellipsis, NotImplemented,
        Slotted(), Frozen(), SlotsData(), DictSub(), ListSub(), IntSub(0), TupleSub(),
    ]  # fmt: skip
    state = cow.state_pages(objects)
    assert len(state) == len(objects)
    for i, obj in enumerate(objects):
        pages = state.pages_of(i).tolist()
        assert pages, f"no pages for {obj!r:.60}"
        assert pages == sorted(set(pages))
        assert id(obj) // cow.PAGE_SIZE in pages


def test_unique_and_dirty_bookkeeping() -> None:
    objects = [Plain() for _ in range(1000)]
    state = cow.state_pages(objects)
    unique = state.unique().tolist()
    assert unique == sorted(set(state.pages.tolist()))
    flags = bytearray(len(unique))
    assert cow.dirty(state, bytes(flags)) == []
    # Mark the pages of object 500 only: exactly the objects sharing one of them read as dirty.
    mine = set(state.pages_of(500).tolist())
    for i, page in enumerate(unique):
        flags[i] = page in mine
    expected = [i for i in range(len(objects)) if mine & set(state.pages_of(i).tolist())]
    assert 500 in expected
    assert cow.dirty(state, bytes(flags)) == expected
    with pytest.raises(ValueError, match="unique pages"):
        cow.dirty(state, b"\x00")


@needs_pagemap
def test_everything_reads_written_without_a_fork() -> None:
    objects = [Plain() for _ in range(100)]
    state = cow.state_pages(objects)
    assert set(cow.written(state.unique())) == {1}


def _allocated_sizes(make: Callable[[], Any]) -> tuple[Any, list[int]]:
    """The object made, and the sizes of the live blocks allocated while making it."""
    with collector_off():
        tracemalloc.start(1)
        try:
            obj = make()
            snapshot = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
    here = snapshot.filter_traces([tracemalloc.Filter(True, __file__)])
    return obj, [t.size for t in here.traces]


# Makers that allocate nothing but the blocks of the object's state (no temporary dict or keys
# table: a freed one would stay "live" for tracemalloc in the interpreter's free lists).
def _plain() -> Plain:
    return Plain()


def _plain_dict() -> Plain:
    o = Plain()
    o.__dict__  # noqa: B018 - materializes the dict
    return o


def _plain_class_changed() -> Plain:
    o = Plain()
    o.__class__ = Other  # type: ignore[assignment]
    return o


def _wide() -> Wide:
    return Wide()


def _dict_sub() -> DictSub:
    d = DictSub()
    d["k"] = 1
    d.attr = 1  # type: ignore[attr-defined]
    return d


def _list_sub() -> ListSub:
    items = ListSub()
    items.append(1)
    items.attr = 1  # type: ignore[attr-defined]
    return items


SLACK = 64  # bytes a range may exceed its block by (3.11/3.12 values bound, rounding)


@pytest.mark.parametrize(
    "make", [_plain, _plain_dict, _plain_class_changed, _wide, _dict_sub, _list_sub]
)
def test_ranges_cover_every_block_allocated_for_the_object(make: Callable[[], Any]) -> None:
    """tracemalloc, an independent witness, sees each block the instance's state lives in; every
    such block has a range of its own in state_ranges, larger by at most a little: no underestimate,
    and no gross overestimate."""
    for _ in range(50):  # let the class's shared keys and caches settle first
        make()
    obj, sizes = _allocated_sizes(make)
    lengths = sorted(hi - lo for lo, hi in cow._ext().state_ranges(obj))
    assert sizes
    for size in sorted(sizes):  # equal-width windows: greedy matching in order is optimal
        fits = [n for n in lengths if size <= n <= size + SLACK]
        assert fits, (
            f"no range of {size}..{size + SLACK} bytes for a block of {size} (ranges {lengths}, blocks {sorted(sizes)})"
        )
        lengths.remove(fits[0])


@pytest.mark.skipif(not PY313, reason="inline values are 3.13+")
def test_313_inline_values_are_part_of_the_object_block() -> None:
    o = Plain()
    (lo, hi), *rest = cow._ext().state_ranges(o)
    assert lo < id(o) and hi > id(o) + object.__basicsize__ + 3 * 8
    assert rest == []  # no dict yet, values inline
    d = o.__dict__
    ranges = cow._ext().state_ranges(o)
    assert len(ranges) == 2  # the block and the dict object; its values are the inline ones
    assert ranges[1] == (id(d) - 16, id(d) + type(d).__basicsize__)
