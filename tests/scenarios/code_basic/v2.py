"""Scenario v2: one module with every kind of definition the engine updates in place."""

import functools

REGISTRY = []
CALLBACKS = []
GROWN = []
LIMIT = 5
NEW_GLOBAL = "v2 new global"


def register(fn):
    REGISTRY.append(fn)
    return fn


def func(x):
    return f"v2 func {x}"


CALLBACKS.append(func)


@register
def registered():
    return "v2 registered"


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


def brace(fn):
    @functools.wraps(fn)
    def wrapper(*args):
        return "{" + fn(*args) + "}"

    return wrapper


@bracket
def wrapped(x):
    return f"v2 wrapped {x}"


@bracket
@exclaim
def stacked():
    return "v2 stacked"


@brace
def decorated_by_changed():
    return "body"


def make_counter(start):
    count = [start]

    def bump(step):
        count[0] += step
        return ("v2", count[0])

    return bump


def make_lambda():
    return lambda x: ("v2 lambda", x)


def failing():
    raise ValueError("v2 failing")


class Base:
    def describe(self):
        return "v2 base"


class Shape(Base):
    sides = 0
    kind = "v2 kind"

    def __init__(self, name):
        self.name = name

    def describe(self):
        return "v2 shape/" + super().describe()

    def area(self):
        return "v2 area"

    def perimeter(self):
        return "v2 perimeter"

    @staticmethod
    def unit():
        return "v2 static"

    @classmethod
    def build(cls):
        return ("v2 classmethod", cls)

    @property
    def label(self):
        return "v2 label " + self.name

    def inner(self):
        def helper():
            return "v2 helper"

        return helper


class Added(Shape):
    def describe(self):
        return "v2 added/" + super().describe()


def added_function():
    return "v2 added"
