"""Field changes: added, renamed, removed, computed."""


class Vector3D:
    def __init__(self, x, y, z):
        self.x = x
        self.y = y
        self.z = z

    def length(self):
        return (self.x**2 + self.y**2 + self.z**2) ** 0.5


class Account:
    def __init__(self, owner, amount, legacy):
        self.owner = owner
        self.amount = amount
        self.legacy = legacy


class Plain:
    """Only a method changes: no instance is migrated."""

    def __init__(self, value):
        self.value = value

    def show(self):
        return f"v1 {self.value}"
