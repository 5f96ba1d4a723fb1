"""Pull-up of a field, a changed superclass, a class-level attribute."""


class Person:
    def __init__(self, name):
        self.name = name


class Employee(Person):
    def __init__(self, name, ident):
        super().__init__(name)
        self.ident = ident


class Animal:
    def sound(self):
        return "..."


class Named:
    def title(self):
        return "named " + self.name


class Dog(Animal):
    def __init__(self, name):
        self.name = name


class Counter:
    step = 1

    def __init__(self):
        self.count = 0
