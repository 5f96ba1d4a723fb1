"""v2: the counter is called `hits`; existing visitors keep their counts (patch_visitors.py)."""


class Visitor:
    def __init__(self, path):
        self.path = path
        self.hits = 0

    def visit(self):
        self.hits += 1
        return f"v2 {self.path} x{self.hits}"


VISITORS = {}


def visit(path):
    visitor = VISITORS.get(path)
    if visitor is None:
        visitor = VISITORS[path] = Visitor(path)
    return visitor.visit()
