"""Random request sequences against the chat server, checked reply by reply against a small model."""

from __future__ import annotations

import dataclasses
import sys
import threading
from pathlib import Path
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

CHAT_DIR = Path(__file__).resolve().parent.parent / "examples" / "chat"
sys.path.insert(0, str(CHAT_DIR))

from chat.client import Call, Connection, Response  # noqa: E402
from chat.server import ChatServer  # noqa: E402
from chat.service import Chat  # noqa: E402

# Small name pools, so that sequences hit existing and unknown names alike.
users = st.sampled_from(["ann", "bob", "cid"])
rooms = st.sampled_from(["r1", "r2"])
names = st.one_of(st.none(), st.sampled_from(["A", "B", "Ç"]))
texts = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=8)


@dataclasses.dataclass
class User:
    first: str = ""
    last: str = ""
    pending: list[tuple[str | None, str, str]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Room:
    members: list[str] = dataclasses.field(default_factory=list)
    history: list[tuple[str | None, str, str]] = dataclasses.field(default_factory=list)


class ChatModel(RuleBasedStateMachine):
    """The chat as the issue specifies it: users, rooms, messages as (sender, room, text)."""

    def __init__(self) -> None:
        super().__init__()
        self.server = ChatServer(0, Chat())
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.01,), daemon=True)
        self.thread.start()
        self.conn = Connection("127.0.0.1", self.server.server_address[1])
        self.users: dict[str, User] = {}
        self.rooms: dict[str, Room] = {}

    def teardown(self) -> None:
        self.conn.close()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    # -- the model's JSON ------------------------------------------------------------------

    def room_json(self, name: str) -> dict[str, Any]:
        return {"name": name, "members": list(self.rooms[name].members)}

    def user_json(self, name: str) -> dict[str, Any]:
        user = self.users[name]
        return {
            "username": name,
            "fullName": f"{user.first} {user.last}",
            "pendingMessages": len(user.pending),
        }

    def message_json(self, message: tuple[str | None, str, str]) -> dict[str, Any]:
        sender, room, text = message
        head = {} if sender is None else {"from": sender}
        return {**head, "room": self.room_json(room), "text": text}

    def send(self, room: str, message: tuple[str | None, str, str]) -> None:
        self.rooms[room].history.append(message)
        for member in self.rooms[room].members:
            self.users[member].pending.append(message)

    def expect(self, response: Response, status: int, body: Any = None) -> None:
        assert response.status == status, (response.status, response.body)
        if body is not None:
            assert response.json() == body

    def known(self, user: str, room: str | None = None) -> bool:
        return user in self.users and (room is None or room in self.rooms)

    # -- rules -------------------------------------------------------------------------------

    @initialize()
    def some_users_and_a_room(self) -> None:
        # cid and r2 start unknown; most steps then meet real members.
        for user in ("ann", "bob"):
            self.put_user(user, user.title(), "X")
        self.put_room("r1")

    @rule(user=users, first=names, last=names)
    def put_user(self, user: str, first: str | None, last: str | None) -> None:
        form = {k: v for k, v in (("firstName", first), ("lastName", last)) if v is not None}
        response = self.conn.put(f"/user/{user}", form)
        model = self.users.setdefault(user, User())
        model.first = first if first is not None else model.first
        model.last = last if last is not None else model.last
        self.expect(response, 201, self.user_json(user))

    @rule(room=rooms)
    def put_room(self, room: str) -> None:
        response = self.conn.put(f"/room/{room}")
        self.rooms.setdefault(room, Room())
        self.expect(response, 201, self.room_json(room))

    @rule(room=rooms, user=users)
    def join(self, room: str, user: str) -> None:
        response = self.conn.put(f"/room/{room}/{user}")
        if not self.known(user, room):
            self.expect(response, 500)
            return
        model = self.rooms[room]
        if user not in model.members:
            self.users[user].pending.extend(model.history)
            model.members.append(user)
            u = self.users[user]
            self.send(room, (None, room, f"User {u.first} {u.last} has entered to the room."))
        self.expect(response, 200, self.room_json(room))

    @rule(room=rooms, user=users)
    def leave(self, room: str, user: str) -> None:
        response = self.conn.delete(f"/room/{room}/{user}")
        if not self.known(user, room):
            self.expect(response, 500)
            return
        model = self.rooms[room]
        if user in model.members:
            model.members.remove(user)
            u = self.users[user]
            self.send(room, (None, room, f"User {u.first} {u.last} has left the room."))
        self.expect(response, 200, self.room_json(room))

    @rule(room=rooms, user=users, text=texts)
    def post(self, room: str, user: str, text: str) -> None:
        response = self.conn.post(f"/room/{room}/{user}", text)
        if not self.known(user, room):
            self.expect(response, 500)
            return
        message = (user, room, text)
        self.send(room, message)
        self.expect(response, 200, self.message_json(message))

    @rule(user=users)
    def fetch(self, user: str) -> None:
        response = self.conn.post(f"/user/{user}/pendingMessages")
        if not self.known(user):
            self.expect(response, 500)
            return
        pending, self.users[user].pending = self.users[user].pending, []
        self.expect(response, 200, [self.message_json(m) for m in pending])

    @rule(user=users)
    def get_user(self, user: str) -> None:
        response = self.conn.get(f"/user/{user}")
        if not self.known(user):
            self.expect(response, 500)
            return
        self.expect(response, 200, self.user_json(user))

    @rule(path=st.sampled_from(["/", "/users", "/room", "/user/ann/x/y", "/rooms/r1"]))
    def unmatched(self, path: str) -> None:
        self.expect(self.conn.request(Call("GET", path)), 404)

    @invariant()
    def rooms_and_queue_lengths_agree(self) -> None:
        self.expect(self.conn.get("/rooms"), 200, [self.room_json(r) for r in self.rooms])
        for user in self.users:
            self.expect(self.conn.get(f"/user/{user}"), 200, self.user_json(user))


ChatModel.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
TestChatModel = ChatModel.TestCase
