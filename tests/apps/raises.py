"""Fail at the top level, as a program with a bug does."""


def fail():
    raise ValueError("broken on purpose")


fail()
