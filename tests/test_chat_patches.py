"""The chat's patches applied to a supervised server with `gdsu-fork update`, then checked over REST."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

BENCH_DIR = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH_DIR))

import chatbench as cb  # noqa: E402
from chat.client import Connection  # noqa: E402
from chat.seed import seed  # noqa: E402
from chat.server import ChatServer  # noqa: E402
from chat.service import Chat  # noqa: E402

pytestmark = pytest.mark.skipif(
    cb.supervisor_command() is None, reason="gdsu-supervise is not installed"
)
SEEDED = 200
USERS = [f"user{i}" for i in range(1, 11)]


@pytest.fixture
def server() -> Iterator[cb.ServerProcess]:
    with cb.open_server(supervised=True, name=f"chat-test-{uuid.uuid4().hex[:8]}") as srv:
        with Connection.to(srv.url) as conn:
            seed(conn, SEEDED)
        try:
            yield srv
        finally:
            if srv.proc.poll() is not None:
                print("".join(srv.output))


@contextlib.contextmanager
def reference_chat() -> Iterator[Connection]:
    """A plain in-process v1 server seeded like the fixture's, to compare replies with."""
    srv = ChatServer(0, Chat())
    thread = threading.Thread(target=srv.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        with Connection("127.0.0.1", srv.server_address[1]) as conn:
            seed(conn, SEEDED)
            yield conn
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=10)


def update(server: cb.ServerProcess, patch: str) -> dict[str, Any]:
    """`gdsu-fork update` with the chat patch `patch`; the JSON report, which must say committed."""
    command = [str(Path(sys.executable).parent / "gdsu-fork"), "update"]
    command += [str(cb.PATCHES / patch), "--name", str(server.name), "--json", "--timeout", "20"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["outcome"] == "committed", f"{patch}: {report.get('reason')}\n{done.stderr}"
    return report


def visible(conn: Connection) -> list[Any]:
    """What clients can see without changing anything."""
    return [conn.get("/rooms").json(), *(conn.get(f"/user/{u}").json() for u in USERS)]


def stats(conn: Connection) -> dict[str, Any]:
    return conn.get("/_stats").json()


def test_v1_v2_round_trip_keeps_every_message(server: cb.ServerProcess) -> None:
    with Connection.to(server.url) as conn, reference_chat() as ref:
        before = visible(conn)
        assert before == visible(ref)
        assert update(server, "v1_to_v2.py")["migrated"] == SEEDED + 20
        assert visible(conn) == before
        counted = stats(conn)
        assert counted["classes"] == {"ChUserMessage": SEEDED, "ChInfoMessage": 20}
        assert counted["senderless"] == {"ChInfoMessage": 20}
        # Replies are byte-for-byte those of v1, queue order included.
        assert (
            conn.post("/user/user1/pendingMessages").body
            == ref.post("/user/user1/pendingMessages").body
        )
        assert conn.post("/room/room1/user3", "after v2").status == 200
        assert conn.put("/room/room1/user5").status == 200  # an info message, built by v2
        update(server, "v2_to_v1.py")
        assert stats(conn)["classes"] == {"ChMessage": SEEDED + 20 + 2}
        update(server, "v1_to_v2.py")
        counted = stats(conn)
        assert counted["classes"] == {"ChUserMessage": SEEDED + 1, "ChInfoMessage": 21}
        ref.post("/room/room1/user3", "after v2")
        ref.put("/room/room1/user5")
        for user in USERS:
            path = f"/user/{user}/pendingMessages"
            assert conn.post(path).body == ref.post(path).body, user


def test_core_queue_patch_and_revert(server: cb.ServerProcess) -> None:
    with Connection.to(server.url) as conn:
        pending = {u: conn.get(f"/user/{u}").json()["pendingMessages"] for u in USERS}
        assert stats(conn)["high_water"] == dict.fromkeys(USERS)
        assert update(server, "core_queue.py")["migrated"] == len(USERS)
        assert stats(conn)["high_water"] == pending  # live queues start at their length
        conn.post("/user/user1/pendingMessages")
        conn.post("/room/room1/user2", "new")  # room1: user1 and user10
        marks = stats(conn)["high_water"]
        assert marks["user1"] == pending["user1"]
        assert marks["user10"] == pending["user10"] + 1
        assert conn.put("/user/newbie", {"firstName": "New", "lastName": "Bie"}).status == 201
        conn.put("/room/room1/newbie")
        newbie = conn.get("/user/newbie").json()["pendingMessages"]
        assert stats(conn)["high_water"]["newbie"] == newbie == 24  # room1's history, its entry
        update(server, "core_queue_revert.py")
        assert set(stats(conn)["high_water"].values()) == {None}
        assert conn.post("/room/room1/user2", "still works").status == 200
        texts = [m["text"] for m in conn.post("/user/user1/pendingMessages").json()]
        assert texts == ["new", "User New Bie has entered to the room.", "still works"]


MARKER = " [self-updated engine]"


def test_engine_self_update_and_revert(server: cb.ServerProcess) -> None:
    # The report is serialised after the commit, by the engine code then in place.
    report = update(server, "engine_self.py")
    assert report["title"].endswith(MARKER)
    report = update(server, "engine_self_revert.py")
    assert report["title"] == "gdsu-fork: back to the installed report module"
    report = update(server, "engine_self.py")
    assert report["title"].endswith(MARKER)


def test_update_after_a_self_update_runs_the_new_engine(server: cb.ServerProcess) -> None:
    report = update(server, "core_queue.py")
    assert not report["title"].endswith(MARKER)
    update(server, "engine_self.py")
    report = update(server, "core_queue_revert.py")
    assert report["title"] == "queue: back to the standard library's Queue" + MARKER
    with Connection.to(server.url) as conn:
        assert set(stats(conn)["high_water"].values()) == {None}
    update(server, "engine_self_revert.py")
    report = update(server, "core_queue.py")
    assert report["title"] == "queue: remember each queue's high-water mark"
