"""Layout changes: __slots__, bases, decorators, NamedTuple fields, a removed class."""

from dataclasses import dataclass
from typing import NamedTuple


class Base:
    pass


class Point:
    __slots__ = ("x", "y")

    def __init__(self, x, y):
        self.x = x
        self.y = y


class Child:
    def __init__(self):
        self.n = 1


@dataclass
class Frozen:
    a: int


class Pair(NamedTuple):
    left: int
    right: int


class Obsolete:
    def __init__(self):
        self.v = 1
