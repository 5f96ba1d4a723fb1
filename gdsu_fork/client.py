"""Talking to a supervisor: send one request, receive its replies until the final one.

Every wait has a deadline: the supervisor acknowledges each request at once, so silence after
`connect_timeout` means nobody is listening (or the CURVE handshake was refused); after that,
`idle_timeout` bounds the gap between two replies.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

import zmq

from . import protocol
from .errors import GdsuError

OnEvent = Callable[[protocol.Message], None]

_HANDSHAKE_FAILURES = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)


class ConnectionFailed(GdsuError, ConnectionError):
    """No valid answer came from the endpoint in time."""


def new_id() -> str:
    """A fresh request id."""
    return uuid.uuid4().hex


class Client:
    """A DEALER connection to one control endpoint; use as a context manager."""

    def __init__(
        self,
        endpoint: str,
        *,
        curve_keys: str | os.PathLike[str] | None = None,
        connect_timeout: float = 5.0,
    ) -> None:
        self.endpoint = endpoint
        self.connect_timeout = connect_timeout
        self._context = zmq.Context()
        self.socket = self._context.socket(zmq.DEALER)
        self.socket.linger = 0
        if curve_keys is not None:
            from supervisor.security import arm_client

            arm_client(self.socket, curve_keys)
        # A refused handshake (unknown CURVE key, CURVE on one side only) shows up only as a
        # socket event; watching for it turns a silent timeout into a precise error.
        self._monitor = self.socket.get_monitor_socket(_HANDSHAKE_FAILURES)
        try:
            self.socket.connect(endpoint)
        except zmq.ZMQError as exc:
            self.close()
            msg = (
                f"cannot connect to {endpoint!r} ({exc}); an endpoint looks like "
                "ipc:///run/user/1000/gdsu/app.ipc or tcp://host:7700"
            )
            raise ConnectionFailed(msg) from exc

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the sockets and their context, dropping anything unsent."""
        self.socket.disable_monitor()
        # destroy, not term: it closes every socket of the context first, so nothing left open
        # (the monitor's own, inside libzmq included) can make the wait for them hang.
        self._context.destroy(linger=0)

    def request(
        self,
        message: protocol.Message,
        *,
        idle_timeout: float = 60.0,
        on_event: OnEvent | None = None,
    ) -> protocol.Message:
        """Send `message`; pass each intermediate reply to `on_event`; return the final reply."""
        self.socket.send(protocol.encode(message))
        timeout, first = self.connect_timeout, True
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        poller.register(self._monitor, zmq.POLLIN)
        while True:
            ready = dict(poller.poll(int(timeout * 1000)))
            if self._monitor in ready:
                # Imported here: it pulls in asyncio, a third of the command's start-up.
                from zmq.utils.monitor import recv_monitor_message

                raise ConnectionFailed(self._refusal(recv_monitor_message(self._monitor)))
            if self.socket not in ready:
                raise ConnectionFailed(self._silence(timeout, first=first))
            try:
                reply = protocol.decode(self.socket.recv(), max_bytes=2**31)
            except protocol.ProtocolError as exc:
                msg = f"{self.endpoint} answered with something that is not a gdsu message: {exc}"
                raise ConnectionFailed(msg) from exc
            if reply.id not in (message.id, ""):
                continue  # a late reply to an earlier request
            if reply.kind in protocol.FINAL_KINDS:
                return reply
            if on_event is not None:
                on_event(reply)
            timeout, first = idle_timeout, False

    def _refusal(self, event: Mapping[str, Any]) -> str:
        if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            return (
                f"{self.endpoint} refused this client's CURVE key (ZAP status {event['value']}); "
                "add the client's public key to the server's authorized/ directory, or pass "
                "the --curve-keys DIR that holds an authorized key"
            )
        return (
            f"the security handshake with {self.endpoint} failed: one side uses CURVE and the "
            "other does not, or the server key is wrong; pass the --curve-keys DIR made for "
            "this server"
        )

    def _silence(self, timeout: float, *, first: bool) -> str:
        if first:
            return (
                f"no answer from {self.endpoint} within {timeout:g} s: no gdsu-supervise listens "
                "there, or it refused this client (another user, or a CURVE key it does not "
                "accept); check `gdsu-fork list` and --curve-keys"
            )
        return f"{self.endpoint} went silent for {timeout:g} s in the middle of the request"
