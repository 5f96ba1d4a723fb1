"""Closures whose free variables change between versions."""


def make_renamed(a, c):
    def closure():
        return ("v2", a, c)

    return closure


def make_fewer(a, b):
    def closure():
        return ("v2", a)

    return closure


def untouched():
    return "v2 untouched"
