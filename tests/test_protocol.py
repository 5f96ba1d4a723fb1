"""The control protocol: round trips, and refusals of everything that is not a valid message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gdsu_fork import protocol
from gdsu_fork.bundle import bundle_digest, bundle_patch, unpack_bundle
from gdsu_fork.errors import PatchError
from gdsu_fork.protocol import ErrorCode, ProtocolError

texts = st.text(max_size=20)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=10,
)
bundles = st.builds(
    protocol.Bundle,
    files=st.dictionaries(texts, st.text(alphabet=st.characters(max_codepoint=255)), max_size=3),
    entry=texts,
    modules=st.dictionaries(texts, texts, max_size=2),
)
messages = st.one_of(
    st.builds(
        protocol.Update,
        id=texts,
        bundle=bundles,
        timeout=st.floats(0, 1e6),
        rehearse=st.booleans(),
        wait=st.booleans(),
        child_memory=st.none() | st.integers(0, 2**40),
        source=texts,
    ),
    st.builds(protocol.Status, id=texts),
    st.builds(protocol.History, id=texts, limit=st.integers(0, 1000)),
    st.builds(protocol.Replay, id=texts, timeout=st.floats(0, 100), wait=st.booleans()),
    st.builds(protocol.Hello, id=texts, pid=st.integers(1, 2**22), python=texts),
    st.builds(protocol.Accepted, id=texts, ahead=st.integers(0, 10)),
    st.builds(
        protocol.ProgressEvent,
        id=texts,
        phase=texts,
        message=texts,
        data=st.dictionaries(texts, json_values, max_size=3),
    ),
    st.builds(
        protocol.ReportReply,
        id=texts,
        report=st.dictionaries(texts, json_values, max_size=3),
        module_files=st.dictionaries(texts, st.none() | texts, max_size=2),
    ),
    st.builds(protocol.StatusReply, id=texts, status=st.dictionaries(texts, json_values)),
    st.builds(protocol.HistoryReply, id=texts, entries=st.lists(st.dictionaries(texts, texts))),
    st.builds(protocol.ReplayReply, id=texts, reports=st.lists(st.dictionaries(texts, texts))),
    st.builds(protocol.Error, id=texts, code=st.sampled_from(ErrorCode), message=texts),
)


@given(messages)
def test_every_message_survives_a_round_trip(message: protocol.Message) -> None:
    assert protocol.decode(protocol.encode(message)) == message


@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_protocol_error(frame: bytes) -> None:
    try:
        protocol.decode(frame)
    except ProtocolError as exc:
        assert exc.code in ErrorCode
        assert str(exc)


@given(st.dictionaries(st.sampled_from(["v", "kind", "id", "bundle", "timeout", "x"]), json_values))
def test_arbitrary_json_objects_decode_or_raise_protocol_error(body: dict) -> None:
    try:
        protocol.decode(json.dumps(body).encode())
    except ProtocolError as exc:
        assert exc.code in ErrorCode


def _frame(**body: object) -> bytes:
    return json.dumps({"v": protocol.VERSION, "id": "r1", **body}).encode()


@pytest.mark.parametrize(
    ("frame", "code", "words"),
    [
        (b"\xff\xfe not json", ErrorCode.GARBAGE, "not JSON"),
        (b"[1, 2]", ErrorCode.GARBAGE, "not an object"),
        (json.dumps({"v": 99, "kind": "status", "id": "r1"}).encode(), ErrorCode.VERSION, "99"),
        (json.dumps({"v": True, "kind": "status", "id": "r1"}).encode(), ErrorCode.VERSION, "True"),
        (_frame(kind="frobnicate"), ErrorCode.UNKNOWN_KIND, "frobnicate"),
        (_frame(kind="history", limit="ten"), ErrorCode.BAD_FIELD, "limit"),
        (_frame(kind="history", limit=True), ErrorCode.BAD_FIELD, "limit"),
        (_frame(kind="update"), ErrorCode.BAD_FIELD, "bundle"),
        (_frame(kind="update", bundle={"files": {}, "entry": 3}), ErrorCode.BAD_FIELD, "entry"),
    ],
)
def test_refusals_name_the_problem(frame: bytes, code: ErrorCode, words: str) -> None:
    with pytest.raises(ProtocolError) as info:
        protocol.decode(frame)
    assert info.value.code is code
    assert words in str(info.value)
    if code is not ErrorCode.GARBAGE:
        assert info.value.request_id == "r1"  # so the error reply reaches the right request


def test_size_cap_is_checked_before_parsing() -> None:
    frame = _frame(kind="status", pad="x" * 2000)
    assert protocol.decode(frame, max_bytes=len(frame)).kind is protocol.Kind.STATUS
    with pytest.raises(ProtocolError) as info:
        protocol.decode(frame, max_bytes=len(frame) - 1)
    assert info.value.code is ErrorCode.TOO_LARGE
    assert "cap" in str(info.value)


def test_integers_are_accepted_as_floats_and_defaults_fill_in() -> None:
    message = protocol.decode(_frame(kind="replay", timeout=3))
    assert message == protocol.Replay("r1", timeout=3.0, wait=False)


# -- bundles ----------------------------------------------------------------------------------


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_bundle_holds_the_patch_and_every_module_it_names(tmp_path: Path) -> None:
    _write(tmp_path / "src" / "v2" / "model.py", "X = 2\n")
    _write(tmp_path / "src" / "v2" / "util.py", "Y = 'é'\n")
    _write(tmp_path / "shared" / "policies.py", "P = 1\n")
    patch = _write(
        tmp_path / "patches" / "p.py",
        "from gdsu_fork import Patch\n"
        "patch = Patch('t')\n"
        "patch.module('app.model', '../src/v2/model.py')\n"
        "patch.module(name='app.util', path_or_source='../src/v2/util.py')\n"
        "patch.module('app.inline', 'X = 1\\n')\n"
        "raise SystemExit('bundling must not run the patch')\n",
    )
    bundle = bundle_patch(patch, include=[tmp_path / "shared" / "policies.py"])
    assert bundle.entry == "patches/p.py"
    assert bundle.modules == {"app.model": "src/v2/model.py", "app.util": "src/v2/util.py"}
    assert set(bundle.files) == {
        "patches/p.py",
        "src/v2/model.py",
        "src/v2/util.py",
        "shared/policies.py",
    }
    # Through JSON and back, then unpacked elsewhere: byte-identical files, same layout.
    again = protocol.decode(protocol.encode(protocol.Update("u", bundle)))
    assert isinstance(again, protocol.Update)
    assert bundle_digest(again.bundle) == bundle_digest(bundle)
    entry = unpack_bundle(again.bundle, tmp_path / "elsewhere")
    assert entry == tmp_path / "elsewhere" / "patches" / "p.py"
    unpacked = (entry.parent / "../src/v2/util.py").resolve()
    assert unpacked.read_bytes() == (tmp_path / "src/v2/util.py").read_bytes()


def test_bundle_refuses_a_path_it_cannot_know_without_running_the_patch(tmp_path: Path) -> None:
    patch = _write(tmp_path / "p.py", "import os\npatch.module('m', os.environ['WHERE'])\n")
    with pytest.raises(PatchError, match=r"p.py:2: .*string literals.*--include"):
        bundle_patch(patch)


def test_bundle_names_a_missing_module_file(tmp_path: Path) -> None:
    patch = _write(tmp_path / "p.py", "patch.module('m', 'v2/m.py')\n")
    with pytest.raises(PatchError, match=r"refers to .*v2/m.py"):
        bundle_patch(patch)


@pytest.mark.parametrize("path", ["../evil.py", "/etc/evil.py", "a/../../evil.py", ""])
def test_unpack_refuses_paths_that_leave_the_directory(tmp_path: Path, path: str) -> None:
    bundle = protocol.Bundle(files={path: "x = 1\n"}, entry=path)
    with pytest.raises(PatchError, match="leaves the bundle directory"):
        unpack_bundle(bundle, tmp_path / "out")
    assert not (tmp_path / "evil.py").exists()
