"""Layout changes: __slots__, bases, decorators, NamedTuple fields, a removed class."""

from dataclasses import dataclass
from typing import NamedTuple


class Base:
    pass


class Point:
    __slots__ = ("x", "y", "z")

    def __init__(self, x, y, z=0):
        self.x = x
        self.y = y
        self.z = z


class Child(Base):
    def __init__(self):
        self.n = 1


@dataclass(frozen=True)
class Frozen:
    a: int


class Pair(NamedTuple):
    left: int
    right: int
    weight: float = 1.0
