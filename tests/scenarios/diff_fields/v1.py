"""Classes whose fields change in v2, one change kind per class."""

import math
from dataclasses import dataclass


class Vector:
    """x renamed to a (same uses); z added with an __init__ default; tags added as []."""

    def __init__(self, x, y):
        self.x = x
        self.y = y

    def norm(self):
        return math.hypot(self.x, self.y)

    def __repr__(self):
        return f"Vector({self.x}, {self.y})"


@dataclass
class Item:
    """Dataclass fields added with a default and with a default_factory."""

    name: str
    qty: int = 1


class Account:
    """balance added with no evident default (computed from the old state): a TODO."""

    def __init__(self, owner, cents):
        self.owner = owner
        self.cents = cents


class Session:
    """A field removed."""

    def __init__(self, user):
        self.user = user
        self.cache = {}

    def who(self):
        return self.user


class Counter:
    """A literal default set in __init__."""

    def __init__(self):
        self.hits = 0
