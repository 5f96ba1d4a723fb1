"""Scenario v1: one module with every kind of definition the engine updates in place."""

import functools

REGISTRY = []
CALLBACKS = []
GROWN = []
LIMIT = 3


def register(fn):
    REGISTRY.append(fn)
    return fn


def func(x):
    return f"v1 func {x}"


CALLBACKS.append(func)


@register
def registered():
    return "v1 registered"


def bracket(fn):
    @functools.wraps(fn)
    def wrapper(*args):
        return "[" + fn(*args) + "]"

    return wrapper


def exclaim(fn):
    @functools.wraps(fn)
    def wrapper(*args):
        return fn(*args) + "!"

    return wrapper


@bracket
def wrapped(x):
    return f"v1 wrapped {x}"


@bracket
@exclaim
def stacked():
    return "v1 stacked"


@bracket
def decorated_by_changed():
    return "body"


def make_counter(start):
    count = [start]

    def bump(step):
        count[0] += step
        return ("v1", count[0])

    return bump


def make_lambda():
    return lambda x: ("v1 lambda", x)


def failing():
    raise ValueError("v1 failing")


class Base:
    def describe(self):
        return "v1 base"


class Shape(Base):
    sides = 0
    kind = "v1 kind"

    def __init__(self, name):
        self.name = name

    def describe(self):
        return "v1 shape/" + super().describe()

    def area(self):
        return "v1 area"

    def to_remove(self):
        return "v1 to remove"

    @staticmethod
    def unit():
        return "v1 static"

    @classmethod
    def build(cls):
        return ("v1 classmethod", cls)

    @property
    def label(self):
        return "v1 label " + self.name

    def inner(self):
        def helper():
            return "v1 helper"

        return helper


class Removed:
    pass


def removed_function():
    return "v1 removed"
