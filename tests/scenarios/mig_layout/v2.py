"""Layouts `__class__` assignment cannot reach, and one it can (frozen dataclass)."""

import dataclasses
from typing import NamedTuple


class DictToSlots:
    __slots__ = ("a",)

    def __init__(self, a):
        self.a = a


class SlotAdded:
    __slots__ = ("a", "b")

    def __init__(self, a, b=0):
        self.a = a
        self.b = b


@dataclasses.dataclass(slots=True, eq=False)
class SlotsData:
    a: int
    b: int = 0


@dataclasses.dataclass(frozen=True)
class FrozenData:
    a: int
    b: int = 0


class Pair(NamedTuple):
    a: int
    b: int = 0
