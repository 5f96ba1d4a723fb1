"""A module whose v2 changes only function and method bodies."""

import math

CALLS = []


def area(r):
    # Moved down a line and now exact: the line shift alone is no change, the body is.
    return math.pi * r * r


class Circle:
    def __init__(self, r):
        self.r = r

    def area(self):
        return area(self.r)

    @staticmethod
    def unit():
        return Circle(1.0)

    @property
    def diameter(self):
        return self.r * 2
