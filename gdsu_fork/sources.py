"""The source text each live module currently runs, and splicing single definitions into it.

The registry below is process-wide on purpose: it describes the process's modules, and it must
survive updates of gdsu_fork itself (its defining statement never changes, so an update keeps its
live value).
"""

from __future__ import annotations

import ast
import linecache
import textwrap
from types import ModuleType

from .errors import PatchError
from .patch import Definition, Target

# module name -> the source text committed by the last update of that module
CURRENT_SOURCES: dict[str, str] = {}


def current_source(module: ModuleType) -> str:
    """The source the module runs now: the last committed update's, or its file's."""
    name = module.__name__
    if name in CURRENT_SOURCES:
        return CURRENT_SOURCES[name]
    file = getattr(module, "__file__", None)
    if file and file.endswith(".py"):
        lines = linecache.getlines(file, module.__dict__)
        if lines:
            return "".join(lines)
    msg = (
        f"module {name} has no Python source to update from (file: {file!r}); "
        f"give its whole new source with patch.module({name!r}, ...)"
    )
    raise PatchError(msg)


def source_filename(module: ModuleType | None, name: str) -> str:
    """The file name new code of `name` is compiled under: the module's own file if it has one.

    Keeping the real file name lets tracebacks, `inspect` and debuggers find the lines, which the
    commit registers in `linecache`.
    """
    file = getattr(module, "__file__", None) if module is not None else None
    return file if file else f"<gdsu:{name}>"


def linecache_entry(filename: str, source: str) -> tuple[int, None, list[str], str]:
    """A `linecache.cache` value that `checkcache` leaves alone (mtime None)."""
    lines = source.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    return (len(source), None, lines, filename)


def _find(body: list[ast.stmt], name: str) -> ast.stmt | None:
    found = None
    for node in body:
        if (
            isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
            and node.name == name
        ):
            found = node
    return found


def _locate(tree: ast.Module, target: Target) -> tuple[list[ast.stmt], ast.stmt | None, ast.AST]:
    """The body holding the target's definition, the definition (or None) and its container."""
    container: ast.AST = tree
    body = tree.body
    *outer, last = target.qualname.split(".")
    for part in outer:
        node = _find(body, part)
        if not isinstance(node, ast.ClassDef):
            msg = (
                f"{target}: {part!r} is not a class defined at that place in module {target.module}"
            )
            raise PatchError(msg)
        container, body = node, node.body
    return body, _find(body, last), container


def _indent_of(container: ast.AST, lines: list[str]) -> str:
    if isinstance(container, ast.ClassDef):
        first = container.body[0]
        line = lines[first.lineno - 1]
        return line[: len(line) - len(line.lstrip())]
    return ""


def splice(source: str, module: str, definitions: list[Definition], removals: list[Target]) -> str:
    """Return `source` with each definition replaced (or appended) and each removal cut out."""
    for target, new_text in [
        *((d.target, d.source) for d in definitions),
        *((r, None) for r in removals),
    ]:
        tree = ast.parse(source)
        lines = source.splitlines(keepends=True)
        body, node, container = _locate(tree, target)
        if node is None and new_text is None:
            msg = f"patch.remove({str(target)!r}): module {module} defines no {target.qualname}"
            raise PatchError(msg)
        indent = _indent_of(container, lines)
        text = (
            ""
            if new_text is None
            else textwrap.indent(textwrap.dedent(new_text).strip("\n") + "\n", indent)
        )
        if node is None:
            end = body[-1].end_lineno if body else len(lines)
            assert end is not None
            lines[end:end] = ["\n", text]
        else:
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            assert node.end_lineno is not None
            lines[start - 1 : node.end_lineno] = [text]
        source = "".join(lines)
    return source
