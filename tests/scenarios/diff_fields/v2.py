"""Classes whose fields change in v2, one change kind per class."""

import math
from dataclasses import dataclass, field


class Vector:
    """x renamed to a (same uses); z added with an __init__ default; tags added as []."""

    def __init__(self, a, y, z=0.0):
        self.a = a
        self.y = y
        self.z = z
        self.tags = []

    def norm(self):
        return math.hypot(self.a, self.y, self.z)

    def __repr__(self):
        return f"Vector({self.a}, {self.y})"


@dataclass
class Item:
    """Dataclass fields added with a default and with a default_factory."""

    name: str
    qty: int = 1
    price: float = 0.5
    log: list = field(default_factory=list)


class Account:
    """balance added with no evident default (computed from the old state): a TODO."""

    def __init__(self, owner, cents):
        self.owner = owner
        self.cents = cents
        self.balance = cents / 100


class Session:
    """A field removed."""

    def __init__(self, user):
        self.user = user

    def who(self):
        return self.user


class Counter:
    """A literal default set in __init__."""

    def __init__(self):
        self.hits = 0
        self.misses = 0
        self.label = "counter"
