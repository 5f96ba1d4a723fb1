"""What a patch affects: which statements changed, which code is equivalent, which code may block.

The child compares old and new sources statement by statement (a global whose defining statement
did not change keeps its live value) and code object by code object (a function whose code only
moved keeps running: it does not block the safe point). The parent turns the child's *paths* into
its own code objects: addresses from the child would not be safe to follow once the program has
run on.
"""

from __future__ import annotations

import ast
import sys
import types
from collections.abc import Iterator
from typing import Any

# A path from a module to a function, followed with plain dict and slot reads only:
#   ("g", name) module global, ("a", name) class attribute, ("f", "") staticmethod/classmethod
#   function, ("p", "fget"|"fset"|"fdel") property accessor, ("c", name) closure cell,
#   ("w", "") __wrapped__.
Step = tuple[str, str]
Path = tuple[str, tuple[Step, ...]]


def _bound_names(node: ast.AST) -> Iterator[str]:
    """Names a top-level statement binds in its namespace (not inside nested scopes)."""
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        yield node.name
        return
    if isinstance(node, ast.Import | ast.ImportFrom):
        for alias in node.names:
            yield (alias.asname or alias.name).split(".")[0]
        return
    if isinstance(node, ast.Lambda | ast.GeneratorExp | ast.ListComp | ast.SetComp | ast.DictComp):
        return
    if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
        yield node.id
        return
    for child in ast.iter_child_nodes(node):
        yield from _bound_names(child)


def bindings(body: list[ast.stmt]) -> dict[str, list[ast.stmt]]:
    """For each name a body binds, the statements that bind it, in order."""
    result: dict[str, list[ast.stmt]] = {}
    for stmt in body:
        for name in dict.fromkeys(_bound_names(stmt)):
            result.setdefault(name, []).append(stmt)
    return result


def same_statements(old: list[ast.stmt] | None, new: list[ast.stmt] | None) -> bool:
    """Whether a name is bound by the same statements in both versions, positions aside.

    Dumping a statement is the costly part of building a new environment (a class statement
    dumps its whole body): done only for the names compared, and stopped at the first change.
    """
    if old is None or new is None or len(old) != len(new):
        return False
    return all(a is b or ast.dump(a) == ast.dump(b) for a, b in zip(old, new, strict=True))


def definitions(
    body: list[ast.stmt],
) -> dict[str, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef]:
    """The def and class statements of a body by name (the last one wins, as at run time)."""
    found = {}
    for stmt in body:
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            found[stmt.name] = stmt
    return found


def class_body(tree_body: list[ast.stmt] | None, name: str) -> list[ast.stmt] | None:
    """The body of class `name` defined in `tree_body`, if there is one."""
    if tree_body is None:
        return None
    node = definitions(tree_body).get(name)
    return node.body if isinstance(node, ast.ClassDef) else None


_CODE_FIELDS = (
    "co_code",
    "co_names",
    "co_varnames",
    "co_freevars",
    "co_cellvars",
    "co_argcount",
    "co_posonlyargcount",
    "co_kwonlyargcount",
    "co_flags",
)


def code_equivalent(a: types.CodeType, b: types.CodeType) -> bool:
    """Same behaviour: equal bytecode, names and constants; positions and file ignored."""
    if any(getattr(a, f) != getattr(b, f) for f in _CODE_FIELDS):
        return False
    if len(a.co_consts) != len(b.co_consts):
        return False
    for x, y in zip(a.co_consts, b.co_consts, strict=True):
        if isinstance(x, types.CodeType) and isinstance(y, types.CodeType):
            if not code_equivalent(x, y):
                return False
        elif type(x) is not type(y) or x != y:
            return False
    return True


def nested_codes(code: types.CodeType) -> Iterator[types.CodeType]:
    """Every code object defined inside `code` (lambdas, inner functions, comprehensions)."""
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield const
            yield from nested_codes(const)


def pair_nested(
    old: types.CodeType, new: types.CodeType
) -> Iterator[tuple[types.CodeType, types.CodeType]]:
    """Pairs of nested code objects matched by qualified name, in order of appearance."""
    olds: dict[str, list[types.CodeType]] = {}
    for code in nested_codes(old):
        olds.setdefault(code.co_qualname, []).append(code)
    for code in nested_codes(new):
        bucket = olds.get(code.co_qualname)
        if bucket:
            yield bucket.pop(0), code


def follow(path: Path) -> Any:
    """The object at the end of `path` in this process, or None if it is not there."""
    module_name, steps = path
    obj: Any = sys.modules.get(module_name)
    try:
        for kind, key in steps:
            if kind in ("g", "a"):
                obj = vars(obj)[key]
            elif kind == "f":
                obj = obj.__func__
            elif kind == "p":
                obj = getattr(obj, key) if isinstance(obj, property) else None
            elif kind == "c":
                obj = obj.__closure__[obj.__code__.co_freevars.index(key)].cell_contents
            elif kind == "w":
                obj = vars(obj)["__wrapped__"]
            if obj is None:
                return None
    except (KeyError, TypeError, ValueError, AttributeError, IndexError):
        return None
    return obj


def blocking_codes(paths: list[Path]) -> set[types.CodeType]:
    """The code objects (nested ones included) of the functions at `paths`, in this process."""
    codes: set[types.CodeType] = set()
    for path in paths:
        fn = follow(path)
        if isinstance(fn, types.FunctionType):
            codes.add(fn.__code__)
            codes.update(nested_codes(fn.__code__))
    return codes


def resolve_qualname(module: str, qualname: str) -> Any:
    """Find "module:qualname" through namespaces only (no attribute hooks run)."""
    obj: Any = sys.modules.get(module)
    for part in qualname.split("."):
        namespace = getattr(obj, "__dict__", None)
        if namespace is None or part not in namespace:
            return None
        obj = namespace[part]
    if isinstance(obj, staticmethod | classmethod):
        obj = obj.__func__
    return obj


def _self_attribute(node: ast.AST, self_name: str) -> str | None:
    if (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == self_name
        and isinstance(node.ctx, ast.Store)
    ):
        return node.attr
    return None


def _method_fields(method: ast.FunctionDef | ast.AsyncFunctionDef) -> Iterator[str]:
    args = method.args.posonlyargs + method.args.args
    if not args or any(
        isinstance(d, ast.Name) and d.id in ("staticmethod", "classmethod")
        for d in method.decorator_list
    ):
        return
    self_name = args[0].arg
    for node in ast.walk(method):
        name = _self_attribute(node, self_name)
        if name is not None:
            yield name
        if (
            (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "setattr"
            )
            and node.args
            and isinstance(node.args[0], ast.Name)
            and node.args[0].id == self_name
        ):
            key = node.args[1] if len(node.args) > 1 else None
            if isinstance(key, ast.Constant) and isinstance(key.value, str):
                yield key.value


def _is_classvar(annotation: ast.expr) -> bool:
    target = annotation.value if isinstance(annotation, ast.Subscript) else annotation
    return (isinstance(target, ast.Name) and target.id == "ClassVar") or (
        isinstance(target, ast.Attribute) and target.attr == "ClassVar"
    )


def class_fields(body: list[ast.stmt]) -> frozenset[str]:
    """The instance fields a class body declares: `self.x = ...` in its methods, annotated class
    attributes (dataclasses, NamedTuples) that are not ClassVars, and `__slots__`."""
    fields: set[str] = set()
    for stmt in body:
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
            fields.update(_method_fields(stmt))
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            if not _is_classvar(stmt.annotation):
                fields.add(stmt.target.id)
        elif isinstance(stmt, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__slots__" for t in stmt.targets
        ):
            value = stmt.value
            items = value.elts if isinstance(value, ast.Tuple | ast.List) else [value]
            fields.update(
                e.value for e in items if isinstance(e, ast.Constant) and isinstance(e.value, str)
            )
    return frozenset(fields)


def subclasses_of(classes: set[type]) -> set[type]:
    """The classes and all their subclasses, transitively."""
    found: set[type] = set()
    pending = list(classes)
    while pending:
        cls = pending.pop()
        if cls in found:
            continue
        found.add(cls)
        try:
            pending.extend(type.__subclasses__(cls))
        except TypeError:
            continue
    return found
