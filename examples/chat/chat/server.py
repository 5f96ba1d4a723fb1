"""The chat's REST interface: a threaded HTTP/1.1 server with keep-alive.

Run it with `python -m chat.server [--port 1701]` (with this package's parent on `sys.path`).
It prints one line, "chat server listening on http://HOST:PORT", once it accepts connections.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import gc
import json
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .service import Chat, UnknownName

DEFAULT_PORT = 1701
HOST = "127.0.0.1"


@dataclasses.dataclass(frozen=True)
class Request:
    """What a route needs from a request: the path's names, the parameters and the body."""

    args: tuple[str, ...]
    params: dict[str, str]
    body: bytes


Reply = tuple[int, Any]
Route = Callable[[Chat, Request], Reply]


def _get_user(chat: Chat, req: Request) -> Reply:
    return 200, chat.user(req.args[0]).to_json()


def _fetch(chat: Chat, req: Request) -> Reply:
    return 200, [message.to_json() for message in chat.fetch(req.args[0])]


def _put_user(chat: Chat, req: Request) -> Reply:
    user = chat.put_user(req.args[0], req.params.get("firstName"), req.params.get("lastName"))
    return 201, user.to_json()


def _put_room(chat: Chat, req: Request) -> Reply:
    return 201, chat.put_room(req.args[0]).to_json()


def _rooms(chat: Chat, req: Request) -> Reply:
    return 200, [room.to_json() for room in list(chat.rooms.values())]


def _join(chat: Chat, req: Request) -> Reply:
    return 200, chat.join(*req.args).to_json()


def _leave(chat: Chat, req: Request) -> Reply:
    return 200, chat.leave(*req.args).to_json()


def _post(chat: Chat, req: Request) -> Reply:
    text = req.body.decode("utf-8", errors="replace")
    return 200, chat.post(req.args[0], req.args[1], text).to_json()


def _stats(chat: Chat, req: Request) -> Reply:
    """For benchmarks and tests of live updates: what the REST routes cannot show.

    How many messages of each class, of each class how many have no sender, and each user's
    queue's `high_water` attribute (None unless the core_queue patch gave queues one). With
    `?detail=0` only the message count, cheap enough to ask under load; with `?class=NAME` the
    texts of (up to 20) messages of that class, to find the ones an update missed.
    """
    if req.params.get("detail") == "0":  # cheap: no walk over the messages, no lock held long
        return 200, {"messages": sum(len(room.history) for room in list(chat.rooms.values()))}
    messages = chat.messages()
    if "class" in req.params:  # which messages have this class: up to 20, for diagnosis
        texts = [m.text for m in messages if type(m).__name__ == req.params["class"]]
        return 200, {"count": len(texts), "texts": texts[:20]}
    classes = collections.Counter(type(m).__name__ for m in messages)
    senderless = collections.Counter(type(m).__name__ for m in messages if m.sender is None)
    high_water = {u.username: getattr(u.pending, "high_water", None) for u in chat.users.values()}
    return 200, {
        "messages": len(messages),
        "classes": classes,
        "senderless": senderless,
        "high_water": high_water,
    }


# (method, path pattern) -> route; "*" matches one path segment and becomes an argument.
ROUTES: dict[tuple[str, tuple[str, ...]], Route] = {
    ("GET", ("user", "*")): _get_user,
    ("POST", ("user", "*", "pendingMessages")): _fetch,
    ("PUT", ("user", "*")): _put_user,
    ("PUT", ("room", "*")): _put_room,
    ("GET", ("rooms",)): _rooms,
    ("PUT", ("room", "*", "*")): _join,
    ("DELETE", ("room", "*", "*")): _leave,
    ("POST", ("room", "*", "*")): _post,
}
STATS_ROUTE: dict[tuple[str, tuple[str, ...]], Route] = {("GET", ("_stats",)): _stats}


def match(
    routes: dict[tuple[str, tuple[str, ...]], Route], method: str, segments: list[str]
) -> tuple[Route, tuple[str, ...]] | None:
    """The route for `method` and the path's segments, and the segments its "*" matched."""
    for (route_method, pattern), route in routes.items():
        if route_method != method or len(pattern) != len(segments):
            continue
        if all(p == "*" or p == s for p, s in zip(pattern, segments, strict=True)):
            return route, tuple(s for p, s in zip(pattern, segments, strict=True) if p == "*")
    return None


class ChatServer(ThreadingHTTPServer):
    """One thread per connection; the connections stay open between requests."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, chat: Chat, *, stats: bool = False) -> None:
        super().__init__((HOST, port), ChatHandler)
        self.chat = chat
        # GET /_stats (message count per class) is off by default: the original has no such route.
        self.routes = {**ROUTES, **STATS_ROUTE} if stats else ROUTES


class ChatHandler(BaseHTTPRequestHandler):
    """Dispatches each request to a route and answers it with one write."""

    protocol_version = "HTTP/1.1"  # keep-alive: connections stay open between requests
    disable_nagle_algorithm = True  # TCP_NODELAY: without it each small reply waits ~40 ms
    server: ChatServer

    def _dispatch(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        url = urllib.parse.urlsplit(self.path)
        segments = [urllib.parse.unquote(s) for s in url.path.split("/") if s]
        found = match(self.server.routes, self.command, segments)
        if found is None:
            self._reply(404, {"error": f"no route for {self.command} {url.path}"})
            return
        route, args = found
        params = dict(urllib.parse.parse_qsl(url.query))
        if self.headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded"):
            params.update(urllib.parse.parse_qsl(body.decode("utf-8", errors="replace")))
        try:
            status, value = route(self.server.chat, Request(args, params, body))
        except UnknownName as exc:
            status, value = 500, {"error": str(exc)}
        self._reply(status, value)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _dispatch

    def _reply(self, status: int, value: Any) -> None:
        body = json.dumps(value).encode()
        head = (
            f"HTTP/1.1 {status} {self.responses.get(status, ('',))[0]}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        )
        if self.close_connection:
            head += "Connection: close\r\n"
        self.wfile.write(head.encode("latin-1") + b"\r\n" + body)

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: a line per request would cost more than the request."""


def main(argv: list[str] | None = None) -> None:
    """Serve the chat on the loopback address until interrupted."""
    parser = argparse.ArgumentParser(prog="chat.server", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="0 picks a free port")
    parser.add_argument("--stats", action="store_true", help="serve GET /_stats")
    parser.add_argument(
        "--no-gc-freeze",
        dest="gc_freeze",
        action="store_false",
        help="leave the startup heap to the cyclic collector's full collections",
    )
    args = parser.parse_args(argv)
    server = ChatServer(args.port, Chat(), stats=args.stats)
    if args.gc_freeze:
        # What exists now (modules, classes, the server) lives as long as the process: keep it
        # out of every full collection, as servers do after startup. gdsu-fork finds frozen
        # objects too, and freezes what exists after each update (see examples/chat/README.md).
        gc.freeze()
    print(f"chat server listening on http://{HOST}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
