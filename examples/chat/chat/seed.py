"""Fill a running chat: users user1..user10 (Name i / Last i), rooms room1..room10, N messages.

User i joins room i and the next room (room10's neighbour is room1), so every room has two
members and each message is queued twice. Message k is written by user (k mod 10) + 1 to room
(k div 10 mod 10) + 1 with the text "seed k". Run `python -m chat.seed --url URL -n N`.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from .client import Call, Connection, quote

USERS = 10
ROOMS = 10


def user_name(i: int) -> str:
    """The name of user i (1-based)."""
    return f"user{i}"


def room_name(i: int) -> str:
    """The name of room i (1-based)."""
    return f"room{i}"


def rooms_of(user: int) -> tuple[int, int]:
    """The two rooms user `user` joins."""
    return user, user % ROOMS + 1


def _calls(messages: int) -> Iterator[Call]:
    for i in range(1, USERS + 1):
        body = f"firstName=Name+{i}&lastName=Last+{i}".encode()
        yield Call("PUT", f"/user/{user_name(i)}", body, "application/x-www-form-urlencoded")
    for i in range(1, ROOMS + 1):
        yield Call("PUT", f"/room/{room_name(i)}")
    for i in range(1, USERS + 1):
        for room in rooms_of(i):
            yield Call("PUT", f"/room/{room_name(room)}/{user_name(i)}")
    for k in range(messages):
        user, room = k % USERS + 1, k // USERS % ROOMS + 1
        path = f"/room/{quote(room_name(room))}/{quote(user_name(user))}"
        yield Call("POST", path, f"seed {k}".encode(), "text/plain; charset=utf-8")


def seed(conn: Connection, messages: int) -> None:
    """Create the users, rooms, memberships and `messages` messages; raise if any request fails."""
    for call, response in zip(calls := list(_calls(messages)), conn.pipeline(calls), strict=True):
        if response.status not in (200, 201):
            msg = (
                f"seeding failed: {call.method} {call.path} answered {response.status} "
                f"{response.body[:200]!r}; is the chat server fresh and of this version?"
            )
            raise RuntimeError(msg)


def main(argv: list[str] | None = None) -> None:
    """Seed the chat at --url."""
    parser = argparse.ArgumentParser(prog="chat.seed", description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:1701")
    parser.add_argument("-n", "--messages", type=int, default=1000)
    args = parser.parse_args(argv)
    with Connection.to(args.url) as conn:
        seed(conn, args.messages)
    print(f"seeded {args.url}: {USERS} users, {ROOMS} rooms, {args.messages} messages")


if __name__ == "__main__":
    main()
