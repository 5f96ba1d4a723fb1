"""Migrations and validations declared next to the code, for watch mode."""

from gdsu_fork import policies


def _to_celsius(old, new, env):
    new.celsius = (old.fahrenheit - 32) * 5 / 9
    return new


class Temperature:
    __gdsu_migrate__ = staticmethod(_to_celsius)

    def __init__(self, celsius):
        self.celsius = celsius


class Plain:
    __gdsu_migrate__ = policies.ByName()

    def __init__(self):
        self.a = 1

    def get(self):
        return self.a + 0


def __gdsu_validate__(env):
    return all(abs(n.celsius - (o.fahrenheit - 32) * 5 / 9) < 1e-9 for o, n in env.pairs(__name__ + ":Temperature"))
