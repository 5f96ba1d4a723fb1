"""CURVE keys for control over TCP: generating them, and arming server and client sockets.

A keys directory holds `server.key`/`server.key_secret`, `client.key`/`client.key_secret` and
`authorized/`, the public keys of the clients the server accepts. `gdsu-fork keys DIR` writes all
of them; copy DIR (or just `server.key` and a client's pair) to the machines that send updates, and
add a public key to `authorized/` for each further client.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from gdsu_fork.errors import GdsuError

AUTHORIZED = "authorized"


class KeysError(GdsuError, ValueError):
    """A keys directory is missing a file or cannot be created."""


def generate_keys(directory: str | os.PathLike[str]) -> Path:
    """Create a private keys directory with a server pair, a client pair and `authorized/`."""
    path = Path(directory)
    if path.exists() and any(path.iterdir()):
        msg = f"keys directory {path} is not empty; name a new one (keys are never overwritten)"
        raise KeysError(msg)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    zmq.auth.create_certificates(path, "server")
    client_public, _ = zmq.auth.create_certificates(path, "client")
    (path / AUTHORIZED).mkdir(mode=0o700)
    shutil.copy(client_public, path / AUTHORIZED / "client.key")
    return path


def _load(path: Path, *, secret: bool) -> tuple[bytes, bytes | None]:
    try:
        return zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        kind = "secret" if secret else "public"
        msg = f"cannot read the {kind} key {path} ({exc}); create keys with `gdsu-fork keys DIR`"
        raise KeysError(msg) from exc


def arm_server(
    context: zmq.Context, socket: zmq.Socket, directory: str | os.PathLike[str]
) -> ThreadAuthenticator:
    """Make `socket` a CURVE server for the keys in `directory/authorized`; stop the result."""
    path = Path(directory)
    public, secret = _load(path / "server.key_secret", secret=True)
    authorized = path / AUTHORIZED
    if not authorized.is_dir():
        msg = (
            f"keys directory {path} has no {AUTHORIZED}/ of client public keys; see gdsu-fork keys"
        )
        raise KeysError(msg)
    auth = ThreadAuthenticator(context)
    auth.start()
    auth.configure_curve(domain="*", location=str(authorized))
    socket.curve_secretkey = secret
    socket.curve_publickey = public
    socket.curve_server = True
    return auth


def arm_client(socket: zmq.Socket, directory: str | os.PathLike[str]) -> None:
    """Give `socket` the client pair of `directory` and make it trust only `server.key`."""
    path = Path(directory)
    public, secret = _load(path / "client.key_secret", secret=True)
    server_public, _ = _load(path / "server.key", secret=False)
    socket.curve_secretkey = secret
    socket.curve_publickey = public
    socket.curve_serverkey = server_public
