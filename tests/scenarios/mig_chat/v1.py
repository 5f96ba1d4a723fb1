"""The chat model, v1: one message class for user and system messages."""


class ChRoom:
    def __init__(self, name):
        self.name = name
        self.history = []


class ChMessage:
    def __init__(self, sender, room, text):
        self.sender = sender
        self.room = room
        self.text = text

    def describe(self):
        who = self.sender if self.sender is not None else "system"
        return f"{who}@{self.room.name}: {self.text}"
