"""Identity-sensitive things: Enum members, singledispatch, weakrefs, pickle, copy."""

import enum
import functools


class Color(enum.Enum):
    RED = 1
    GREEN = 2

    def label(self):
        return "v2 " + self.name.lower()


@functools.singledispatch
def render(value):
    return "v2 generic"


@render.register
def _(value: int):
    return f"v2 int {value}"


class Item:
    def __init__(self, name, qty=1):
        self.name = name
        self.qty = qty

    def __eq__(self, other):
        return isinstance(other, Item) and vars(self) == vars(other)

    __hash__ = object.__hash__
