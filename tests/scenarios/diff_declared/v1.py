"""Migrations and validations declared next to the code, for watch mode."""


class Temperature:
    def __init__(self, fahrenheit):
        self.fahrenheit = fahrenheit


class Plain:
    def __init__(self):
        self.a = 1

    def get(self):
        return self.a
