"""The chat's data: users, rooms and messages.

Version 2: `ChMessage` is abstract; a user's message is a `ChUserMessage`, the chat's own
announcement a `ChInfoMessage`, whose sender is always None.
Build messages with `ChMessage.from_user` and `ChMessage.info`, which every version keeps, so
the code that posts messages does not change when the message classes do.
"""

from __future__ import annotations

import queue
from typing import Any


class ChUser:
    """A chat user; `pending` holds the messages not fetched yet, oldest first."""

    def __init__(self, username: str, first_name: str = "", last_name: str = "") -> None:
        self.username = username
        self.first_name = first_name
        self.last_name = last_name
        self.pending: queue.Queue[ChMessage] = queue.Queue()

    @property
    def full_name(self) -> str:
        """First and last name, as the chat shows them."""
        return f"{self.first_name} {self.last_name}"

    def to_json(self) -> dict[str, Any]:
        """The user as `GET /user/{u}` returns it."""
        return {
            "username": self.username,
            "fullName": self.full_name,
            "pendingMessages": self.pending.qsize(),
        }


class ChRoom:
    """A room: its members in joining order and every message ever sent to it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.members: list[ChUser] = []
        self.history: list[ChMessage] = []

    def to_json(self) -> dict[str, Any]:
        """The room as `GET /rooms` returns it."""
        return {"name": self.name, "members": [user.username for user in self.members]}


class ChMessage:
    """A message sent to a room (abstract: instances are `ChUserMessage` or `ChInfoMessage`)."""

    def __init__(self, room: ChRoom, text: str) -> None:
        if type(self) is ChMessage:
            msg = "ChMessage is abstract; build messages with ChMessage.from_user or ChMessage.info"
            raise TypeError(msg)
        self.room = room
        self.text = text

    @classmethod
    def from_user(cls, sender: ChUser, room: ChRoom, text: str) -> ChMessage:
        """A message a user wrote."""
        return ChUserMessage(sender, room, text)

    @classmethod
    def info(cls, room: ChRoom, text: str) -> ChMessage:
        """An announcement of the chat itself (someone entered or left the room)."""
        return ChInfoMessage(room, text)

    def to_json(self) -> dict[str, Any]:
        """`{"room", "text"}`; subclasses add "from" when there is a sender."""
        return {"room": self.room.to_json(), "text": self.text}


class ChUserMessage(ChMessage):
    """A message a user wrote."""

    def __init__(self, sender: ChUser, room: ChRoom, text: str) -> None:
        super().__init__(room, text)
        self.sender = sender

    def to_json(self) -> dict[str, Any]:
        """`{"from", "room", "text"}`."""
        return {"from": self.sender.username, **super().to_json()}


class ChInfoMessage(ChMessage):
    """An announcement of the chat itself; it has no sender."""

    sender: ChUser | None = None
