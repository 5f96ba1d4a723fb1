"""A small keep-alive HTTP/1.1 client for the chat, cheap enough to load the server with.

`http.client` parses every reply's headers with the email package; a load generator on the same
two cores would then measure itself more than the server. This client only reads the status line
and Content-Length.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import urllib.parse
from collections.abc import Iterable
from typing import Any


class HTTPFailure(ConnectionError):
    """The server closed the connection or sent something that is not an HTTP reply."""


@dataclasses.dataclass(frozen=True)
class Response:
    """A reply: the status code and the body."""

    status: int
    body: bytes

    def json(self) -> Any:
        """The body decoded as JSON."""
        return json.loads(self.body)


@dataclasses.dataclass(frozen=True)
class Call:
    """One request to send: method, path (already quoted), body, content type."""

    method: str
    path: str
    body: bytes = b""
    content_type: str | None = None

    def encode(self, host: str) -> bytes:
        """The request's bytes."""
        head = f"{self.method} {self.path} HTTP/1.1\r\nHost: {host}\r\n"
        if self.content_type:
            head += f"Content-Type: {self.content_type}\r\n"
        head += f"Content-Length: {len(self.body)}\r\n\r\n"
        return head.encode("latin-1") + self.body


def parse_url(url: str) -> tuple[str, int]:
    """Host and port of an http:// URL (port 80 when absent)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        msg = f"chat URL {url!r} is not http://HOST:PORT; pass e.g. http://127.0.0.1:1701"
        raise ValueError(msg)
    return parts.hostname, parts.port or 80


class Connection:
    """One keep-alive connection; not thread-safe (use one per thread)."""

    def __init__(self, host: str, port: int, *, timeout: float = 10.0) -> None:
        self.host = f"{host}:{port}"
        self._sock = socket.create_connection((host, port), timeout=timeout)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._file = self._sock.makefile("rb")

    @classmethod
    def to(cls, url: str, *, timeout: float = 10.0) -> Connection:
        """A connection to the server at `url` (http://HOST:PORT)."""
        host, port = parse_url(url)
        return cls(host, port, timeout=timeout)

    def request(self, call: Call) -> Response:
        """Send one request and read its reply."""
        self._sock.sendall(call.encode(self.host))
        return self._read()

    def pipeline(self, calls: Iterable[Call], *, batch: int = 100) -> list[Response]:
        """Send requests in batches without waiting between them; the replies in order.

        Batches stay small so that neither side fills its socket buffer while the other is
        still writing.
        """
        calls = list(calls)
        responses: list[Response] = []
        for start in range(0, len(calls), batch):
            chunk = calls[start : start + batch]
            self._sock.sendall(b"".join(c.encode(self.host) for c in chunk))
            responses.extend(self._read() for _ in chunk)
        return responses

    def get(self, path: str) -> Response:
        """GET path."""
        return self.request(Call("GET", path))

    def put(self, path: str, form: dict[str, str] | None = None) -> Response:
        """PUT path, with a urlencoded form body when `form` is given."""
        if form is None:
            return self.request(Call("PUT", path))
        body = urllib.parse.urlencode(form).encode()
        return self.request(Call("PUT", path, body, "application/x-www-form-urlencoded"))

    def post(self, path: str, text: str = "") -> Response:
        """POST path with `text` as the body."""
        return self.request(Call("POST", path, text.encode(), "text/plain; charset=utf-8"))

    def delete(self, path: str) -> Response:
        """DELETE path."""
        return self.request(Call("DELETE", path))

    def close(self) -> None:
        """Close the connection."""
        self._file.close()
        self._sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read(self) -> Response:
        status_line = self._file.readline(65537)
        if not status_line:
            msg = f"chat server at {self.host} closed the connection before replying"
            raise HTTPFailure(msg)
        try:
            status = int(status_line.split(None, 2)[1])
        except (IndexError, ValueError):
            msg = f"chat server at {self.host} sent {status_line[:80]!r}, not an HTTP status line"
            raise HTTPFailure(msg) from None
        length = 0
        while (line := self._file.readline(65537)) not in (b"\r\n", b"\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = self._file.read(length) if length else b""
        if len(body) != length:
            msg = f"chat server at {self.host} closed the connection in the middle of a reply"
            raise HTTPFailure(msg)
        return Response(status, body)


def quote(name: str) -> str:
    """A user or room name as one path segment."""
    return urllib.parse.quote(name, safe="")
