"""Closures whose free variables change between versions."""


def make_renamed(a, b):
    def closure():
        return ("v1", a, b)

    return closure


def make_fewer(a, b):
    def closure():
        return ("v1", a, b)

    return closure


def untouched():
    return "v1 untouched"
