"""The chat model's two versions: v2 splits messages by kind and serialises them like v1."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

CHAT_DIR = Path(__file__).resolve().parent.parent / "examples" / "chat"


def load(version: str) -> ModuleType:
    """The model source of `version` under a unique module name."""
    path = CHAT_DIR / version / "chat" / "model.py"
    spec = importlib.util.spec_from_file_location(f"chat_model_{version}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def v1() -> ModuleType:
    return load("v1")


@pytest.fixture(scope="module")
def v2() -> ModuleType:
    return load("v2")


def test_v1_source_is_the_running_model() -> None:
    # The revert patch installs v1/chat/model.py: it must be the model the server starts with.
    running = (CHAT_DIR / "chat" / "model.py").read_text()
    assert (CHAT_DIR / "v1" / "chat" / "model.py").read_text() == running


def test_v2_factories_return_the_subclasses(v2: ModuleType) -> None:
    user, room = v2.ChUser("ann", "Ann", "Lee"), v2.ChRoom("r")
    said = v2.ChMessage.from_user(user, room, "hi")
    told = v2.ChMessage.info(room, "news")
    assert type(said) is v2.ChUserMessage and said.sender is user
    assert type(told) is v2.ChInfoMessage and told.sender is None
    assert isinstance(said, v2.ChMessage) and isinstance(told, v2.ChMessage)
    assert "sender" not in vars(told)


def test_v2_message_is_abstract(v2: ModuleType) -> None:
    with pytest.raises(TypeError, match="ChMessage is abstract"):
        v2.ChMessage(v2.ChRoom("r"), "text")


def test_v1_has_one_message_class(v1: ModuleType) -> None:
    user, room = v1.ChUser("ann"), v1.ChRoom("r")
    assert type(v1.ChMessage.from_user(user, room, "x")) is v1.ChMessage
    assert v1.ChMessage.info(room, "x").sender is None
    assert not hasattr(v1, "ChUserMessage") and not hasattr(v1, "ChInfoMessage")


def test_both_versions_serialise_alike(v1: ModuleType, v2: ModuleType) -> None:
    def sample(model: ModuleType) -> list[dict[str, object]]:
        user, room = model.ChUser("ann", "Ann", "Lee"), model.ChRoom("r")
        room.members.append(user)
        messages = [model.ChMessage.from_user(user, room, "hi"), model.ChMessage.info(room, "x")]
        return [m.to_json() for m in messages] + [user.to_json(), room.to_json()]

    assert sample(v1) == sample(v2)
    assert list(sample(v2)[0]) == ["from", "room", "text"]
