"""Control messages between gdsu-fork, gdsu-supervise and the in-process agent.

A message is one ZeroMQ frame holding a JSON object ``{"v": VERSION, "kind": ..., "id": ...,
...fields}``. It is decoded into a frozen dataclass after checking its size, version, kind and the
type of every field; anything else raises `ProtocolError`, which carries the `ErrorCode` to answer
with. Nothing that arrives on a socket is ever unpickled: a patch is code, and so would be a pickle.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import types
import typing
from typing import Any, ClassVar, Union

from .errors import GdsuError

VERSION = 1
"""The protocol version this module speaks; a message with another one gets an error reply."""

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
"""Default size cap of one message: a patch bundle with its sources fits well below it."""


class ErrorCode(enum.StrEnum):
    """Why a request was refused; part of the protocol, so values never change."""

    GARBAGE = "garbage"
    TOO_LARGE = "too-large"
    VERSION = "version"
    UNKNOWN_KIND = "unknown-kind"
    BAD_FIELD = "bad-field"
    BUSY = "busy"
    APP_EXITED = "app-exited"
    INTERNAL = "internal"


class ProtocolError(GdsuError, ValueError):
    """A frame is not a valid message; `code` says which reply it deserves."""

    def __init__(self, code: ErrorCode, message: str, request_id: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.request_id = request_id


class Kind(enum.StrEnum):
    """Every message kind, requests first, then replies."""

    UPDATE = "update"
    STATUS = "status"
    HISTORY = "history"
    REPLAY = "replay"
    HELLO = "hello"
    ACCEPTED = "accepted"
    PROGRESS = "progress"
    REPORT = "report"
    STATUS_REPLY = "status-reply"
    HISTORY_REPLY = "history-reply"
    REPLAY_REPLY = "replay-reply"
    ERROR = "error"


@dataclasses.dataclass(frozen=True)
class Bundle:
    """A patch file and every file it refers to, so that it can be loaded on another machine.

    `files` maps a relative path ("/"-separated, no "..") to the file's bytes as latin-1 text, so
    the JSON carries any bytes losslessly. `entry` is the patch file's path among them. `modules`
    maps a module name to the path of its new source, as the patch declares them (found without
    running it).
    """

    files: dict[str, str]
    entry: str
    modules: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Message:
    """Fields every message has: `id` ties replies to their request."""

    kind: ClassVar[Kind]
    id: str


@dataclasses.dataclass(frozen=True)
class Update(Message):
    """Apply a patch. `wait`: queue behind a running update instead of getting a busy answer.

    `source` says who sends it ("cli", "watch", ...), for the journal.
    """

    kind: ClassVar[Kind] = Kind.UPDATE
    bundle: Bundle
    timeout: float = 10.0
    rehearse: bool = True
    wait: bool = False
    child_memory: int | None = None
    source: str = "client"


@dataclasses.dataclass(frozen=True)
class Status(Message):
    """Ask what the app and its supervisor are doing."""

    kind: ClassVar[Kind] = Kind.STATUS


@dataclasses.dataclass(frozen=True)
class History(Message):
    """Ask for the last `limit` journal entries of updates (0: all)."""

    kind: ClassVar[Kind] = Kind.HISTORY
    limit: int = 0


@dataclasses.dataclass(frozen=True)
class Replay(Message):
    """Re-apply the committed patches a restart lost, in their original order."""

    kind: ClassVar[Kind] = Kind.REPLAY
    timeout: float = 10.0
    wait: bool = False


@dataclasses.dataclass(frozen=True)
class Hello(Message):
    """The agent's first message to its supervisor: the app process is up and listening."""

    kind: ClassVar[Kind] = Kind.HELLO
    pid: int
    python: str


@dataclasses.dataclass(frozen=True)
class Accepted(Message):
    """An update request was taken; `ahead` updates run or wait before it (0: starting now)."""

    kind: ClassVar[Kind] = Kind.ACCEPTED
    ahead: int = 0


@dataclasses.dataclass(frozen=True)
class ProgressEvent(Message):
    """One `gdsu_fork.progress.Progress` event, as it happened."""

    kind: ClassVar[Kind] = Kind.PROGRESS
    phase: str
    message: str
    data: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class ReportReply(Message):
    """The final answer to an update: `Report.to_dict()`, plus where the patched modules live.

    `module_files` maps each module the patch replaced to its file in the app (None if it has no
    file), so the supervisor can tell after a restart whether the patch is on disk.
    """

    kind: ClassVar[Kind] = Kind.REPORT
    report: dict[str, Any]
    module_files: dict[str, str | None] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class StatusReply(Message):
    """What `Status` asked for, as a JSON object."""

    kind: ClassVar[Kind] = Kind.STATUS_REPLY
    status: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class HistoryReply(Message):
    """Journal entries, oldest first."""

    kind: ClassVar[Kind] = Kind.HISTORY_REPLY
    entries: list[dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class ReplayReply(Message):
    """The end of a replay: one report per patch re-applied, in order."""

    kind: ClassVar[Kind] = Kind.REPLAY_REPLY
    reports: list[dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class Error(Message):
    """A refusal: `code` for programs, `message` naming the cause and the fix for people."""

    kind: ClassVar[Kind] = Kind.ERROR
    code: ErrorCode
    message: str


MESSAGE_TYPES: dict[Kind, type[Message]] = {
    cls.kind: cls
    for cls in (
        Update,
        Status,
        History,
        Replay,
        Hello,
        Accepted,
        ProgressEvent,
        ReportReply,
        StatusReply,
        HistoryReply,
        ReplayReply,
        Error,
    )
}

FINAL_KINDS = frozenset(
    {Kind.REPORT, Kind.STATUS_REPLY, Kind.HISTORY_REPLY, Kind.REPLAY_REPLY, Kind.ERROR}
)
"""Kinds that end the exchange a request started."""


def encode(message: Message) -> bytes:
    """The frame for `message`."""
    body = {"v": VERSION, "kind": str(message.kind)}
    body.update(dataclasses.asdict(message))
    return json.dumps(body, separators=(",", ":")).encode()


def decode(frame: bytes, *, max_bytes: int = MAX_MESSAGE_BYTES) -> Message:
    """The message in `frame`; raises `ProtocolError` for anything that is not a valid one."""
    if len(frame) > max_bytes:
        msg = (
            f"message of {len(frame)} bytes is over the cap of {max_bytes} bytes; "
            "send a smaller patch (bundle fewer or smaller files)"
        )
        raise ProtocolError(ErrorCode.TOO_LARGE, msg)
    try:
        body = json.loads(frame)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        msg = f"message is not JSON ({exc}); speak gdsu-fork protocol version {VERSION}"
        raise ProtocolError(ErrorCode.GARBAGE, msg) from exc
    if not isinstance(body, dict):
        msg = f"message is JSON {type(body).__name__}, not an object; speak protocol {VERSION}"
        raise ProtocolError(ErrorCode.GARBAGE, msg)
    raw_id = body.get("id")
    request_id = raw_id if isinstance(raw_id, str) else ""
    if type(body.get("v")) is not int or body["v"] != VERSION:
        msg = (
            f"message has protocol version {body.get('v')!r}, this side speaks {VERSION}; "
            "use gdsu-fork and gdsu-supervise of the same release"
        )
        raise ProtocolError(ErrorCode.VERSION, msg, request_id)
    try:
        cls = MESSAGE_TYPES[Kind(body.get("kind", ""))]
    except (ValueError, TypeError) as exc:
        known = ", ".join(MESSAGE_TYPES)
        msg = f"unknown message kind {body.get('kind')!r}; known kinds: {known}"
        raise ProtocolError(ErrorCode.UNKNOWN_KIND, msg, request_id) from exc
    try:
        return _build(cls, body, "")
    except (TypeError, ValueError) as exc:
        msg = f"bad {cls.kind} message: {exc}"
        raise ProtocolError(ErrorCode.BAD_FIELD, msg, request_id) from exc


def _build(cls: type, body: dict[str, Any], where: str) -> Any:
    """Instantiate dataclass `cls` from `body`, checking that every field has its declared type."""
    hints = typing.get_type_hints(cls)
    values = {}
    for field in dataclasses.fields(cls):
        name = f"{where}{field.name}"
        if field.name in body:
            values[field.name] = _check(hints[field.name], body[field.name], name)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            msg = f"field {name!r} is missing"
            raise ValueError(msg)
    return cls(**values)


def _check(hint: Any, value: Any, name: str) -> Any:
    """`value` as type `hint` (dataclass, enum, float from int); ValueError naming `name` if not."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _check(option, value, name)
            except (TypeError, ValueError):
                continue
        msg = f"field {name!r} has a value of type {type(value).__name__}, expected {hint}"
        raise ValueError(msg)
    if hint is type(None):
        if value is None:
            return None
    elif hint is Any:
        return value
    elif isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if isinstance(value, dict):
            return _build(hint, value, f"{name}.")
    elif isinstance(hint, type) and issubclass(hint, enum.Enum):
        return hint(value)
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif hint in (int, str, bool):
        if isinstance(value, hint) and (hint is bool or not isinstance(value, bool)):
            return value
    elif origin is dict:
        key_hint, value_hint = typing.get_args(hint)
        if isinstance(value, dict):
            return {
                _check(key_hint, k, name): _check(value_hint, v, f"{name}[{k!r}]")
                for k, v in value.items()
            }
    elif origin is list:
        (item_hint,) = typing.get_args(hint)
        if isinstance(value, list):
            return [_check(item_hint, v, f"{name}[{i}]") for i, v in enumerate(value)]
    msg = f"field {name!r} has a value of type {type(value).__name__}, expected {hint}"
    raise ValueError(msg)


def error_reply(exc: ProtocolError) -> Error:
    """The reply a peer gets for a frame that `decode` refused."""
    return Error(exc.request_id, exc.code, str(exc))
