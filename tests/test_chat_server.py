"""The chat bench server's REST behaviour, over real sockets."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

CHAT_DIR = Path(__file__).resolve().parent.parent / "examples" / "chat"
sys.path.insert(0, str(CHAT_DIR))

from chat import seed as chat_seed  # noqa: E402
from chat.client import Call, Connection  # noqa: E402
from chat.server import ChatServer  # noqa: E402
from chat.service import Chat  # noqa: E402


@contextlib.contextmanager
def running_server(*, stats: bool = False) -> Iterator[ChatServer]:
    """A chat server on a free loopback port, served by a thread, shut down at exit."""
    server = ChatServer(0, Chat(), stats=stats)
    # A short poll interval: shutdown() waits for serve_forever to look at its flag.
    thread = threading.Thread(
        target=server.serve_forever, args=(0.01,), name="chat-server", daemon=True
    )
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def server() -> Iterator[ChatServer]:
    with running_server(stats=True) as srv:
        yield srv


@pytest.fixture
def conn(server: ChatServer) -> Iterator[Connection]:
    with Connection("127.0.0.1", server.server_address[1], timeout=10) as c:
        yield c


def make_users(conn: Connection, *names: str) -> None:
    for name in names:
        assert conn.put(f"/user/{name}", {"firstName": name.title(), "lastName": "X"}).status == 201


def texts(conn: Connection, user: str) -> list[str]:
    response = conn.post(f"/user/{user}/pendingMessages")
    assert response.status == 200
    return [m["text"] for m in response.json()]


def snapshot(conn: Connection, *users: str) -> tuple[object, ...]:
    """Everything a client can see without changing it."""
    return (conn.get("/rooms").json(), *(conn.get(f"/user/{u}").json() for u in users))


def test_put_and_get_user(conn: Connection) -> None:
    created = conn.put("/user/ann", {"firstName": "Ann", "lastName": "Lee"})
    assert created.status == 201
    got = conn.get("/user/ann")
    assert got.status == 200
    assert got.json() == {"username": "ann", "fullName": "Ann Lee", "pendingMessages": 0}


def test_put_user_by_query_updates_and_keeps_queue(conn: Connection) -> None:
    assert conn.put("/user/bob?firstName=Bob&lastName=Ray").status == 201
    conn.put("/room/r")
    conn.put("/room/r/bob")
    assert conn.put("/user/bob?lastName=Roy").status == 201
    assert conn.get("/user/bob").json() == {
        "username": "bob",
        "fullName": "Bob Roy",
        "pendingMessages": 1,
    }


def test_rooms_listed_in_creation_order_and_put_room_is_idempotent(conn: Connection) -> None:
    make_users(conn, "ann")
    assert conn.put("/room/b").status == 201
    assert conn.put("/room/a").status == 201
    conn.put("/room/b/ann")
    assert conn.put("/room/b").status == 201
    assert conn.get("/rooms").json() == [
        {"name": "b", "members": ["ann"]},
        {"name": "a", "members": []},
    ]


def test_post_queues_for_every_member_and_fetch_empties(conn: Connection) -> None:
    make_users(conn, "ann", "bob", "cid")
    conn.put("/room/r")
    conn.put("/room/r/ann")
    conn.put("/room/r/bob")
    conn.post("/user/ann/pendingMessages")
    conn.post("/user/bob/pendingMessages")
    posted = conn.post("/room/r/cid", "hello")  # cid is no member: senders need not be
    assert posted.status == 200
    expected = {"from": "cid", "room": {"name": "r", "members": ["ann", "bob"]}, "text": "hello"}
    assert posted.json() == expected
    for user in ("ann", "bob"):
        fetched = conn.post(f"/user/{user}/pendingMessages")
        assert fetched.status == 200
        assert fetched.json() == [expected]
        assert conn.post(f"/user/{user}/pendingMessages").json() == []
    assert conn.get("/user/cid").json()["pendingMessages"] == 0


def test_join_copies_history_then_announces_to_all_members(conn: Connection) -> None:
    make_users(conn, "ann", "bob")
    conn.put("/room/r")
    conn.put("/room/r/ann")
    conn.post("/room/r/ann", "one")
    conn.post("/room/r/ann", "two")
    texts(conn, "ann")
    joined = conn.put("/room/r/bob")
    assert joined.status == 200
    assert joined.json() == {"name": "r", "members": ["ann", "bob"]}
    assert texts(conn, "bob") == [
        "User Ann X has entered to the room.",
        "one",
        "two",
        "User Bob X has entered to the room.",
    ]
    assert texts(conn, "ann") == ["User Bob X has entered to the room."]


def test_announcements_have_no_sender(conn: Connection) -> None:
    make_users(conn, "ann")
    conn.put("/room/r")
    conn.put("/room/r/ann")
    (message,) = conn.post("/user/ann/pendingMessages").json()
    assert message == {
        "room": {"name": "r", "members": ["ann"]},
        "text": "User Ann X has entered to the room.",
    }


def test_rejoin_changes_nothing(conn: Connection) -> None:
    make_users(conn, "ann")
    conn.put("/room/r")
    conn.put("/room/r/ann")
    before = snapshot(conn, "ann")
    assert conn.put("/room/r/ann").status == 200
    assert snapshot(conn, "ann") == before


def test_leave_removes_first_then_tells_the_rest(conn: Connection) -> None:
    make_users(conn, "ann", "bob")
    conn.put("/room/r")
    conn.put("/room/r/ann")
    conn.put("/room/r/bob")
    texts(conn, "ann")
    texts(conn, "bob")
    left = conn.delete("/room/r/ann")
    assert left.status == 200
    assert left.json() == {"name": "r", "members": ["bob"]}
    assert texts(conn, "ann") == []
    assert texts(conn, "bob") == ["User Ann X has left the room."]
    before = snapshot(conn, "ann", "bob")
    assert conn.delete("/room/r/ann").status == 200  # not a member: no-op
    assert snapshot(conn, "ann", "bob") == before


@pytest.mark.parametrize(
    "call",
    [
        Call("GET", "/user/nobody"),
        Call("POST", "/user/nobody/pendingMessages"),
        Call("PUT", "/room/r/nobody"),
        Call("PUT", "/room/nowhere/ann"),
        Call("DELETE", "/room/r/nobody"),
        Call("DELETE", "/room/nowhere/ann"),
        Call("POST", "/room/r/nobody", b"hi"),
        Call("POST", "/room/nowhere/ann", b"hi"),
    ],
    ids=lambda c: f"{c.method} {c.path}",
)
def test_unknown_user_or_room_is_500_and_changes_nothing(conn: Connection, call: Call) -> None:
    make_users(conn, "ann")
    conn.put("/room/r")
    conn.put("/room/r/ann")
    conn.post("/room/r/ann", "kept")
    before = snapshot(conn, "ann")
    response = conn.request(call)
    assert response.status == 500
    assert "nobody" in response.json()["error"] or "nowhere" in response.json()["error"]
    assert snapshot(conn, "ann") == before
    assert texts(conn, "ann")[-1] == "kept"


@pytest.mark.parametrize(
    "call",
    [
        Call("GET", "/"),
        Call("GET", "/user"),
        Call("GET", "/user/ann/extra"),
        Call("GET", "/room/r"),
        Call("POST", "/rooms"),
        Call("DELETE", "/user/ann"),
        Call("PATCH", "/user/ann"),
        Call("PUT", "/room/r/ann/x", b"body is read and dropped"),
    ],
    ids=lambda c: f"{c.method} {c.path}",
)
def test_unmatched_route_is_404_and_connection_stays_usable(conn: Connection, call: Call) -> None:
    make_users(conn, "ann")
    assert conn.request(call).status == 404
    assert conn.get("/user/ann").status == 200


def test_names_are_url_decoded(conn: Connection) -> None:
    assert conn.put("/user/a%20b", {"firstName": "Ä", "lastName": "Ø"}).status == 201
    assert conn.get("/user/a%20b").json()["fullName"] == "Ä Ø"
    conn.put("/room/r%2Fs")
    assert conn.post("/room/r%2Fs/a%20b", "ünï").json()["room"]["name"] == "r/s"


def test_keep_alive_without_nagle_stalls(conn: Connection) -> None:
    # With Nagle's algorithm and delayed ACKs each small request/reply pair stalls ~40 ms;
    # 200 requests on one connection would then take ~8 s.
    make_users(conn, "ann")
    start = time.monotonic()
    for _ in range(200):
        assert conn.get("/user/ann").status == 200
    assert time.monotonic() - start < 2.0


def test_concurrent_clients_lose_and_duplicate_nothing(server: ChatServer) -> None:
    port = server.server_address[1]
    with Connection("127.0.0.1", port) as setup:
        make_users(setup, *(f"u{i}" for i in range(4)))
        setup.put("/room/r")
        for i in range(4):
            setup.put(f"/room/r/u{i}")
        for i in range(4):
            texts(setup, f"u{i}")
    received: dict[str, list[str]] = {f"u{i}": [] for i in range(4)}
    errors: list[BaseException] = []

    def client(i: int) -> None:
        try:
            with Connection("127.0.0.1", port) as c:
                for k in range(100):
                    assert c.post(f"/room/r/u{i}", f"{i}-{k}").status == 200
                    if k % 10 == 0:
                        received[f"u{i}"].extend(texts(c, f"u{i}"))
                received[f"u{i}"].extend(texts(c, f"u{i}"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors
    with Connection("127.0.0.1", port) as c:
        for i in range(4):
            received[f"u{i}"].extend(texts(c, f"u{i}"))
        assert c.get("/_stats").json() == {
            "messages": 404,
            "classes": {"ChMessage": 404},
            "senderless": {"ChMessage": 4},
            "high_water": dict.fromkeys(received),
        }
    expected = sorted(f"{i}-{k}" for i in range(4) for k in range(100))
    for user, got in received.items():
        assert sorted(got) == expected, user
        for i in range(4):  # each sender's messages arrive in the order they were sent
            own = [t for t in got if t.startswith(f"{i}-")]
            assert own == [f"{i}-{k}" for k in range(100)]


def test_stats_count_only(conn: Connection) -> None:
    make_users(conn, "ann")
    conn.put("/room/r")
    conn.post("/room/r/ann", "x")
    assert conn.get("/_stats?detail=0").json() == {"messages": 1}


def test_stats_names_the_messages_of_a_class(conn: Connection) -> None:
    make_users(conn, "ann")
    conn.put("/room/r")
    conn.put("/room/r/ann")
    conn.post("/room/r/ann", "x")
    assert conn.get("/_stats?class=ChMessage").json() == {
        "count": 2,
        "texts": ["User Ann X has entered to the room.", "x"],
    }
    assert conn.get("/_stats?class=Nope").json() == {"count": 0, "texts": []}


def test_stats_route_is_off_by_default() -> None:
    with running_server() as srv, Connection("127.0.0.1", srv.server_address[1]) as c:
        assert c.get("/_stats").status == 404


def test_seed_creates_users_rooms_memberships_and_messages(conn: Connection) -> None:
    chat_seed.seed(conn, 250)
    rooms = conn.get("/rooms").json()
    assert [r["name"] for r in rooms] == [f"room{i}" for i in range(1, 11)]
    assert rooms[0]["members"] == ["user1", "user10"]
    assert rooms[4]["members"] == ["user4", "user5"]
    assert conn.get("/user/user7").json()["fullName"] == "Name 7 Last 7"
    assert conn.get("/_stats").json()["messages"] == 250 + 20
    # user1 is in room1 and room2, which get 30 messages each (10 per block of 100), and hears
    # 4 entries: its own in both rooms, user2's in room2 and user10's in room1.
    assert conn.get("/user/user1").json()["pendingMessages"] == 64


@pytest.mark.parametrize("launch", [["-m", "chat.server"], [str(CHAT_DIR / "app.py")]])
def test_server_and_seed_as_commands(launch: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": str(CHAT_DIR)}
    server = subprocess.Popen(
        [sys.executable, *launch, "--port", "0", "--stats"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()  # the readiness line; the pipe closes if it dies
        assert line.startswith("chat server listening on http://127.0.0.1:"), line
        url = line.split()[-1]
        seeded = subprocess.run(
            [sys.executable, "-m", "chat.seed", "--url", url, "-n", "30"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert seeded.returncode == 0, seeded.stderr
        with Connection.to(url) as c:
            assert json.loads(c.get("/_stats").body)["messages"] == 50
    finally:
        server.kill()
        server.wait(timeout=10)
