"""The chat's operations: users, rooms, joining, leaving, posting and fetching messages.

Every operation looks up all the names it needs before it changes anything, so an unknown user
or room leaves the chat exactly as it was. One lock orders the operations that change rooms, so a
member who joins gets each message once: either in the copied history or in the queue.
Messages are built through `model.ChMessage.from_user` / `.info`, looked up at each call, so a
live update of `chat.model` takes effect at the next message.
"""

from __future__ import annotations

import queue
import threading

from . import model


class UnknownName(LookupError):
    """A request named a user or a room that does not exist."""


class Chat:
    """All users and rooms of one chat server."""

    def __init__(self) -> None:
        self.users: dict[str, model.ChUser] = {}
        self.rooms: dict[str, model.ChRoom] = {}
        self._lock = threading.Lock()

    def user(self, username: str) -> model.ChUser:
        """The user called `username`, or UnknownName."""
        try:
            return self.users[username]
        except KeyError:
            msg = f"no user {username!r}; create it first with PUT /user/{username}"
            raise UnknownName(msg) from None

    def room(self, name: str) -> model.ChRoom:
        """The room called `name`, or UnknownName."""
        try:
            return self.rooms[name]
        except KeyError:
            msg = f"no room {name!r}; create it first with PUT /room/{name}"
            raise UnknownName(msg) from None

    def put_user(
        self, username: str, first_name: str | None, last_name: str | None
    ) -> model.ChUser:
        """Create the user, or rename an existing one (its pending messages are kept)."""
        with self._lock:
            user = self.users.get(username)
            if user is None:
                user = self.users[username] = model.ChUser(
                    username, first_name or "", last_name or ""
                )
            else:
                if first_name is not None:
                    user.first_name = first_name
                if last_name is not None:
                    user.last_name = last_name
            return user

    def put_room(self, name: str) -> model.ChRoom:
        """Create the room; an existing room is left as it is."""
        with self._lock:
            room = self.rooms.get(name)
            if room is None:
                room = self.rooms[name] = model.ChRoom(name)
            return room

    def join(self, room_name: str, username: str) -> model.ChRoom:
        """Copy the room's history to the user's queue, then announce the user to all members.

        Joining a room one is a member of already changes nothing.
        """
        room, user = self.room(room_name), self.user(username)
        with self._lock:
            if user in room.members:
                return room
            for message in room.history:
                user.pending.put(message)
            room.members.append(user)
            self._send(
                room, model.ChMessage.info(room, f"User {user.full_name} has entered to the room.")
            )
            return room

    def leave(self, room_name: str, username: str) -> model.ChRoom:
        """Remove the user from the room, then announce it to the remaining members."""
        room, user = self.room(room_name), self.user(username)
        with self._lock:
            if user not in room.members:
                return room
            room.members.remove(user)
            self._send(
                room, model.ChMessage.info(room, f"User {user.full_name} has left the room.")
            )
            return room

    def post(self, room_name: str, username: str, text: str) -> model.ChMessage:
        """Send a user's message to the room; the sender need not be a member."""
        room, user = self.room(room_name), self.user(username)
        with self._lock:
            message = model.ChMessage.from_user(user, room, text)
            self._send(room, message)
            return message

    def fetch(self, username: str) -> list[model.ChMessage]:
        """Empty the user's queue; the messages, oldest first."""
        pending = self.user(username).pending
        messages = []
        while True:
            try:
                messages.append(pending.get_nowait())
            except queue.Empty:
                return messages

    def messages(self) -> list[model.ChMessage]:
        """Every message the chat holds: each is in the history of the room it was sent to."""
        with self._lock:
            return [message for room in self.rooms.values() for message in room.history]

    @staticmethod
    def _send(room: model.ChRoom, message: model.ChMessage) -> None:
        # Caller holds the lock: history and queues must agree for a concurrent join.
        room.history.append(message)
        for member in room.members:
            member.pending.put(message)
