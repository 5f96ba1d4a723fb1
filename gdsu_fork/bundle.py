"""Packing a patch file with the files it refers to, and unpacking it where the app runs.

The files are found by reading the patch's syntax tree, never by running it: patch code runs
only in the update's forked child (DESIGN §3), and the machine that sends a patch is no exception.
"""

from __future__ import annotations

import ast
import hashlib
import os
import posixpath
from collections.abc import Iterable
from pathlib import Path

from .errors import PatchError
from .protocol import Bundle

_PATH_KEYWORDS = ("path_or_source", "path", "source", "file")


def _module_references(tree: ast.AST, patch_file: Path) -> dict[str, str]:
    """Module name -> path literal of every `<patch>.module("name", "path")` call in `tree`."""
    found: dict[str, str] = {}
    for node in ast.walk(tree):
        if not (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "module"
        ):
            continue
        args = list(node.args)
        args += [kw.value for kw in node.keywords if kw.arg in ("name", "module")]
        args += [kw.value for kw in node.keywords if kw.arg in _PATH_KEYWORDS]
        literal = [isinstance(a, ast.Constant) and isinstance(a.value, str) for a in args[:2]]
        if len(args) < 2 or not all(literal):
            msg = (
                f"{patch_file}:{node.lineno}: patch.module(...) does not give its module name and "
                "path as string literals, so the files to send cannot be found without running "
                "the patch; write them as literals or name the file with --include"
            )
            raise PatchError(msg)
        name, path = (_literal(a) for a in args[:2])
        if "\n" not in path:  # a string with a newline is the module's source text itself
            found[name] = path
    return found


def _literal(node: ast.expr) -> str:
    """The value of a string constant node (checked by the caller)."""
    assert isinstance(node, ast.Constant) and isinstance(node.value, str)
    return node.value


def bundle_patch(patch_file: str | os.PathLike[str], include: Iterable[str] = ()) -> Bundle:
    """The patch file, every module source it names, and `include`, relative to a common root."""
    entry = Path(patch_file).resolve()
    try:
        source = entry.read_bytes()
    except OSError as exc:
        msg = f"cannot read patch file {patch_file}: {exc.strerror}; check the path"
        raise PatchError(msg) from exc
    try:
        tree = ast.parse(source, filename=str(entry))
    except SyntaxError as exc:
        msg = f"patch file {patch_file} does not compile: {exc}; fix it before sending it"
        raise PatchError(msg) from exc
    modules = {
        name: (entry.parent / ref).resolve()
        for name, ref in _module_references(tree, entry).items()
    }
    extra = [Path(p).resolve() for p in include]
    paths = [entry, *modules.values(), *extra]
    root = Path(os.path.commonpath([p.parent for p in paths]))
    files: dict[str, str] = {}
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError as exc:
            msg = f"patch file {patch_file} refers to {path}, which cannot be read ({exc.strerror})"
            raise PatchError(msg) from exc
        files[path.relative_to(root).as_posix()] = data.decode("latin-1")
    rel = {name: path.relative_to(root).as_posix() for name, path in modules.items()}
    return Bundle(files=files, entry=entry.relative_to(root).as_posix(), modules=rel)


def bundle_digest(bundle: Bundle) -> str:
    """A sha256 over the bundle's paths and contents, naming the patch in journals."""
    digest = hashlib.sha256()
    for path in sorted(bundle.files):
        digest.update(path.encode() + b"\0" + bundle.files[path].encode("latin-1") + b"\0")
    return digest.hexdigest()


def file_digest(bundle: Bundle, path: str) -> str:
    """The sha256 of one file of the bundle, comparable with `hashlib.sha256(disk bytes)`."""
    return hashlib.sha256(bundle.files[path].encode("latin-1")).hexdigest()


def _safe_relpath(path: str) -> str:
    norm = posixpath.normpath(path)
    if (
        not path
        or path.startswith("/")
        or "\\" in path
        or "\0" in path
        or norm == ".."
        or norm.startswith("../")
    ):
        msg = f"bundle holds the path {path!r}, which leaves the bundle directory; refusing it"
        raise PatchError(msg)
    return norm


def unpack_bundle(bundle: Bundle, directory: str | os.PathLike[str]) -> Path:
    """Write the bundle's files under `directory` (private to this user); the patch file's path."""
    base = Path(directory)
    for rel, text in bundle.files.items():
        target = base / _safe_relpath(rel)
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(text.encode("latin-1"))
    entry = base / _safe_relpath(bundle.entry)
    if bundle.entry not in bundle.files:
        msg = f"bundle names {bundle.entry!r} as its patch file but does not hold it"
        raise PatchError(msg)
    return entry
