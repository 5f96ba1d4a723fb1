"""The supervisor's two ZeroMQ sockets: the control endpoint for clients and the agent link.

Both are ROUTER sockets that the main loop polls; neither ever blocks it. Frames are decoded with
`gdsu_fork.protocol` (JSON, size-capped, never pickle).
"""

from __future__ import annotations

import os
from pathlib import Path

import zmq
from zmq.auth.thread import ThreadAuthenticator

from gdsu_fork import protocol

from .registry import RegistryError, check_private_dir
from .security import arm_server

Received = tuple[bytes, protocol.Message | protocol.ProtocolError]


class ControlEndpoint:
    """Where `gdsu-fork` connects: ipc in a private directory, or tcp with CURVE keys only."""

    def __init__(
        self,
        context: zmq.Context,
        endpoint: str,
        *,
        curve_keys: str | os.PathLike[str] | None,
        max_bytes: int = protocol.MAX_MESSAGE_BYTES,
    ) -> None:
        if endpoint.startswith("ipc://"):
            check_private_dir(Path(endpoint[len("ipc://") :]).parent)
        elif curve_keys is None:
            msg = (
                f"refusing to serve updates on {endpoint} without authentication: anyone who "
                "reaches it could run code in the app; pass --curve-keys DIR (create one with "
                "`gdsu-fork keys DIR`) or use the default ipc endpoint"
            )
            raise RegistryError(msg)
        self.max_bytes = max_bytes
        self.socket = context.socket(zmq.ROUTER)
        self.socket.linger = 1000
        # Past twice the cap a peer is cut off without an answer instead of making us buffer it.
        self.socket.maxmsgsize = max(2 * max_bytes, max_bytes + 2**20)
        self.authenticator: ThreadAuthenticator | None = None
        if curve_keys is not None:
            self.authenticator = arm_server(context, self.socket, curve_keys)
        self.socket.bind(endpoint)
        self.endpoint = self.socket.last_endpoint.decode()

    def receive(self) -> Received:
        """One request that is ready: (client identity, message or why it is not one)."""
        frames = self.socket.recv_multipart()
        identity, body = frames[0], frames[1:]
        if len(body) != 1:
            msg = (
                f"message has {len(body)} frames, expected 1 JSON frame; "
                f"speak protocol {protocol.VERSION}"
            )
            return identity, protocol.ProtocolError(protocol.ErrorCode.GARBAGE, msg)
        try:
            return identity, protocol.decode(body[0], max_bytes=self.max_bytes)
        except protocol.ProtocolError as exc:
            return identity, exc

    def send(self, identity: bytes, message: protocol.Message) -> None:
        """Reply to a client (dropped by ZeroMQ if the client has gone)."""
        self.socket.send_multipart([identity, protocol.encode(message)])

    def close(self) -> None:
        """Close the socket and stop the authenticator."""
        self.socket.close(linger=200)
        if self.authenticator is not None:
            self.authenticator.stop()


class AgentLink:
    """The socket the app's agent connects to; it knows which agent identity is the live one."""

    def __init__(self, context: zmq.Context, endpoint: str) -> None:
        self.socket = context.socket(zmq.ROUTER)
        self.socket.linger = 0
        self.socket.router_mandatory = True  # sending to a dead agent must fail, not vanish
        self.socket.bind(endpoint)
        self.endpoint = endpoint

    def receive(self) -> Received:
        """One message from an agent: (its identity, message or why it is not one)."""
        frames = self.socket.recv_multipart()
        try:
            return frames[0], protocol.decode(frames[-1])
        except protocol.ProtocolError as exc:
            return frames[0], exc

    def send(self, identity: bytes, message: protocol.Message) -> None:
        """Send a request to the agent `identity`; raises zmq.ZMQError if it is gone."""
        self.socket.send_multipart([identity, protocol.encode(message)])

    def close(self) -> None:
        """Close the socket."""
        self.socket.close(linger=0)
