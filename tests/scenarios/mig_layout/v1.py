"""Layouts `__class__` assignment cannot reach, and one it can (frozen dataclass)."""

import dataclasses
from typing import NamedTuple


class DictToSlots:
    def __init__(self, a):
        self.a = a


class SlotAdded:
    __slots__ = ("a",)

    def __init__(self, a):
        self.a = a


@dataclasses.dataclass(slots=True, eq=False)
class SlotsData:
    a: int


@dataclasses.dataclass(frozen=True)
class FrozenData:
    a: int


class Pair(NamedTuple):
    a: int
