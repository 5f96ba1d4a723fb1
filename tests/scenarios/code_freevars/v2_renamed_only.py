"""Only one closure changes its free variables' names."""


def make_renamed(a, c):
    def closure():
        return ("v2", a, c)

    return closure


def make_fewer(a, b):
    def closure():
        return ("v1", a, b)

    return closure


def untouched():
    return "v2 untouched"
