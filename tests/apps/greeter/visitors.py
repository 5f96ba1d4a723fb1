"""Live objects for migration tests: one Visitor per path, counting its visits."""


class Visitor:
    def __init__(self, path):
        self.path = path
        self.count = 0

    def visit(self):
        self.count += 1
        return f"v1 {self.path} x{self.count}"


VISITORS = {}


def visit(path):
    visitor = VISITORS.get(path)
    if visitor is None:
        visitor = VISITORS[path] = Visitor(path)
    return visitor.visit()
