"""The chat model, v2: user and system messages are separate subclasses."""


class ChRoom:
    def __init__(self, name):
        self.name = name
        self.history = []


class ChMessage:
    def __init__(self, room, text):
        self.room = room
        self.text = text

    def describe(self):
        return f"{self.author()}@{self.room.name}: {self.text}"

    def author(self):
        raise NotImplementedError


class ChUserMessage(ChMessage):
    def __init__(self, sender, room, text):
        super().__init__(room, text)
        self.sender = sender

    def author(self):
        return self.sender


class ChInfoMessage(ChMessage):
    def author(self):
        return "system"
