"""Migrations done ahead of the pause: instances changed while the update waits."""


class Point:
    def __init__(self, x, doubled, label):
        self.x = x
        self.doubled = doubled
        self.label = label


class Basket:
    def __init__(self, items, count):
        self.items = items
        self.count = count


def hold(release):
    """A thread waiting in here keeps the update from its safe point (the patch changes it)."""
    release.wait(30)
    return "v2"
