"""Field changes: added, renamed, removed, computed."""

import math


class Vector3D:
    def __init__(self, radius, theta, phi):
        self.radius = radius
        self.theta = theta
        self.phi = phi

    def length(self):
        return self.radius


class Account:
    def __init__(self, owner, balance, currency="EUR", tags=None):
        self.owner = owner
        self.balance = balance
        self.currency = currency
        self.tags = tags if tags is not None else []


class Plain:
    """Only a method changes: no instance is migrated."""

    def __init__(self, value):
        self.value = value

    def show(self):
        return f"v2 {self.value}"


def spherical(v):
    radius = math.sqrt(v.x**2 + v.y**2 + v.z**2)
    return radius, math.acos(v.z / radius), math.atan2(v.y, v.x)
