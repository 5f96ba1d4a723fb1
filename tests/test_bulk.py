"""The bulk migration: grouped positions, their selection, the apply and its undo."""

from __future__ import annotations

from array import array

import pytest
from gdsu_fork._assign import of_types
from hypothesis import given
from hypothesis import strategies as st

from gdsu_fork.bulk import BulkMigration, FromAttr, Listing, apply_bulk, diff_values


class Old:
    def __init__(self, a, b) -> None:
        self.a = a
        self.b = b


class New(Old):
    b = "class default"


class Slotted:
    __slots__ = ("a",)


@given(
    st.lists(st.integers(), max_size=30),
    st.lists(st.integers(), max_size=30),
    st.data(),
)
def test_listing_takes_sorted_positions_from_both_parts(first, second, data):
    listing = Listing(first, second)
    joined = first + second
    positions = sorted(data.draw(st.sets(st.integers(0, len(joined) - 1))) if joined else set())
    assert listing.take(positions) == [joined[p] for p in positions]
    assert listing.take(array("q", positions)) == [joined[p] for p in positions]  # the groups
    assert len(listing) == len(joined)
    if joined:
        assert listing[len(joined) - 1] == joined[-1]


def test_a_position_past_the_listing_is_an_index_error_not_a_wrong_object():
    listing = Listing([1, 2], [3])
    with pytest.raises(IndexError, match="position 3"):
        listing.take(array("q", [0, 3]))
    with pytest.raises(IndexError, match="position 5"):
        listing.take([5])


@given(st.sets(st.integers(0, 199)), st.sets(st.integers(0, 199)))
def test_without_drops_exactly_the_given_positions(migrated, dropped):
    bulk = BulkMigration()
    for index in sorted(migrated):
        bulk.add(index, Old, New if index % 2 else None, ("b",) if index % 3 else (), {})
    rest = bulk.without(dropped)
    assert sorted(rest.indices()) == sorted(migrated - dropped)
    assert all(list(g) == sorted(g) for g in rest.groups.values())


def test_apply_moves_classes_deletes_in_place_and_renames():
    objects = [Old(i, f"b{i}") for i in range(6)]
    keep = [id(o) for o in objects]
    bulk = BulkMigration()
    for i in range(3):
        bulk.add(i, Old, New, ("b",), {})  # loses b: reads the class default afterwards
    bulk.add(3, Old, None, (), {"c": FromAttr("a"), "d": 7})  # a renamed, d set
    apply_bulk(bulk, Listing(objects[:4], objects[4:]))
    assert [id(o) for o in objects] == keep
    assert all(type(o) is New and vars(o) == {"a": i} for i, o in enumerate(objects[:3]))
    assert objects[0].b == "class default"
    assert vars(objects[3]) == {"a": 3, "b": "b3", "c": 3, "d": 7}
    assert type(objects[4]) is Old and vars(objects[4]) == {"a": 4, "b": "b4"}


def test_a_failing_group_undoes_everything_applied_before_it():
    objects = [Old(i, f"b{i}") for i in range(4)]
    bulk = BulkMigration()
    bulk.add(0, Old, None, (), {"a": 100})
    bulk.add(1, Old, New, ("b",), {})
    bulk.add(2, Old, Slotted, (), {})  # layout differs: the assignment raises
    with pytest.raises(TypeError):
        apply_bulk(bulk, Listing(objects))
    assert all(type(o) is Old for o in objects)
    assert [vars(o) for o in objects] == [{"a": i, "b": f"b{i}"} for i in range(4)]


def test_diff_values_by_identity():
    same, equal = [1], [1]
    assert diff_values({"x": same, "y": 2}, {"x": same, "y": 2}) == {}
    assert diff_values({"x": same}, {"x": equal}) == {"x": equal}  # equal is not the same
    assert diff_values({"x": same}, {"z": same}) == {"z": FromAttr("x")}
    assert diff_values({"x": 1}, {"x": 1, "n": None}) == {"n": None}


def test_groups_are_arrays_of_positions():
    bulk = BulkMigration()
    bulk.add(5, Old, New, (), {})
    bulk.add(9, Old, New, (), {})
    (group,) = bulk.groups.values()
    assert isinstance(group, array) and list(group) == [5, 9]
    assert bulk.old_classes() == {Old} and len(bulk) == 2


@given(st.lists(st.sampled_from([Old, New, Slotted, int, str]), max_size=60))
def test_of_types_keeps_exactly_the_given_classes_in_order(kinds_in_order):
    """The heap mark's pick of affected instances: exact classes, not subclasses."""
    makers = {Old: lambda: Old(1, 2), New: lambda: New(1, 2), Slotted: Slotted, int: int, str: str}
    objects = [makers[kind]() for kind in kinds_in_order]
    wanted = {Old, Slotted}
    picked = of_types(objects, wanted)
    assert list(map(id, picked)) == [id(o) for o in objects if type(o) in wanted]
