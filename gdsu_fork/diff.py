"""Patch generation: turn two versions of a source tree into a patch file.

Production patches come from version control (`diff_git`), development patches from two trees or
files (`diff_paths`) and from the editor's saves (`watch.py` calls `diff_sources`). The analysis is
static (the AST of both versions, never an import), so it can run anywhere, and it only proposes:
the generated file is ready to apply when the defaults are safe and says TODO where business logic
is needed.

Developers can declare, next to the code, what the generator cannot guess:

- a class attribute ``__gdsu_migrate__`` holding a migration policy (``policies.Rename(x="a")``,
  a composition with ``|``, or a function ``(old, new, env) -> object``) replaces the generated
  guesses for that class;
- a module-level function ``__gdsu_validate__(env) -> bool`` becomes a validation.

Both are used by the patch that introduces or changes them, and by any patch that migrates that
class (resp. any class of that module); a declaration left in place after its update is inert.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import io
import os
import re
import subprocess
import tokenize
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath

from .errors import PatchError
from .report import Change, ChangeKind

MIGRATE_ATTR = "__gdsu_migrate__"
VALIDATE_FUNC = "__gdsu_validate__"

# Directories never holding the application's own modules.
_SKIP_DIRS = frozenset({"__pycache__", "node_modules", "site-packages", "build", "dist"})

# Rename guesses need this share of the old field's uses to reappear under the new name.
_RENAME_SIMILARITY = 0.5


# --------------------------------------------------------------------------------------------
# What one version of a module defines


@dataclasses.dataclass(frozen=True)
class Default:
    """An evident default of a new field: a literal value, or a zero-argument factory."""

    value: str | None = None
    factory: str | None = None

    def policy(self, field: str) -> str:
        """The `policies.AddDefault(...)` expression for `field`."""
        if self.factory is not None:
            return f"policies.AddDefault({field!r}, factory={self.factory})"
        return f"policies.AddDefault({field!r}, {self.value})"


@dataclasses.dataclass
class ClassInfo:
    """The instance layout and the declarations of one class, as far as the AST shows them."""

    qualname: str
    bases: tuple[str, ...]
    decorators: tuple[str, ...]
    kind: str  # "plain", "dataclass" (attrs too), "namedtuple" or "model" (pydantic)
    slots: tuple[str, ...] | None
    fields: dict[str, Default | None]
    uses: dict[str, Counter[str]]
    declared_migration: str | None  # ast.dump of the `__gdsu_migrate__` statement

    def layout(self) -> tuple[object, ...]:
        """What decides whether live instances must be migrated."""
        return (sorted(self.fields), self.slots, self.bases, self.kind)


@dataclasses.dataclass(frozen=True)
class Piece:
    """Part of a module version: its source text (cheap to compare) and its syntax tree."""

    text: str
    node: ast.AST

    def same_as(self, other: Piece) -> bool:
        """Equal text, or equal trees: a definition that only moved or was reformatted is the
        same. The text test settles the common case (untouched code) without dumping trees."""
        return self.text == other.text or _dump(self.node) == _dump(other.node)


@dataclasses.dataclass
class ModuleInfo:
    """Every definition of one module version, to compare; classes are analysed on demand."""

    functions: dict[str, Piece]
    classes: dict[str, ast.ClassDef]
    class_bodies: dict[str, Piece]
    globals: dict[str, Piece]
    declared_validation: Piece | None
    lines: list[str]

    layouts: dict[str, ClassInfo] = dataclasses.field(default_factory=dict)

    def class_info(self, qualname: str) -> ClassInfo:
        """The layout of a class, analysed once per module version (the costly part)."""
        if qualname not in self.layouts:
            self.layouts[qualname] = _class_info(self.classes[qualname], qualname)
        return self.layouts[qualname]

    def class_text(self, qualname: str) -> str:
        """The source of a class as written, decorators included."""
        node = self.classes[qualname]
        return "".join(self.lines[_first_line(node) - 1 : node.end_lineno])


def _dump(node: ast.AST) -> str:
    # Without attributes: a definition that only moved (line numbers) is not a change.
    return ast.dump(node, include_attributes=False)


def _decorator_names(node: ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    names = []
    for dec in node.decorator_list:
        target = dec.func if isinstance(dec, ast.Call) else dec
        names.append(ast.unparse(target).rsplit(".", 1)[-1])
    return names


# Classes whose annotated class-level names are their instances' fields.
_FIELD_DECORATORS = frozenset({"dataclass", "define", "frozen", "mutable"})  # dataclasses, attrs
_FIELD_BASES = {"NamedTuple": "namedtuple", "BaseModel": "model"}  # typing, pydantic


def _class_kind(node: ast.ClassDef) -> str:
    if _FIELD_DECORATORS & set(_decorator_names(node)):
        return "dataclass"
    for base in node.bases:
        kind = _FIELD_BASES.get(ast.unparse(base).rsplit(".", 1)[-1])
        if kind is not None:
            return kind
    return "plain"


def _literal_default(expr: ast.expr) -> Default | None:
    """The default an expression evidently stands for, or None when it needs the module's names."""
    if isinstance(expr, ast.List | ast.Dict | ast.Set) or (
        isinstance(expr, ast.Call)
        and isinstance(expr.func, ast.Name)
        and expr.func.id in {"list", "dict", "set", "bytearray"}
        and not expr.args
        and not expr.keywords
    ):
        if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name):
            return Default(factory=expr.func.id)
        try:
            ast.literal_eval(expr)
        except ValueError:
            return None
        empty = {ast.List: "list", ast.Dict: "dict"}
        kind = type(expr)
        if kind in empty and not getattr(expr, "elts", getattr(expr, "keys", None)):
            return Default(factory=empty[kind])
        return Default(factory=f"lambda: {ast.unparse(expr)}")
    try:
        ast.literal_eval(expr)
    except ValueError:
        return None
    return Default(value=ast.unparse(expr))


def _dataclass_default(value: ast.expr | None) -> Default | None:
    if value is None:
        return None
    if isinstance(value, ast.Call) and ast.unparse(value.func).rsplit(".", 1)[-1] == "field":
        for kw in value.keywords:
            if kw.arg == "default":
                return _literal_default(kw.value)
            if kw.arg == "default_factory":
                if isinstance(kw.value, ast.Name) and kw.value.id in {"list", "dict", "set"}:
                    return Default(factory=kw.value.id)
                return None
        return None
    return _literal_default(value)


def _first_arg(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> str | None:
    if {"staticmethod", "classmethod"} & set(_decorator_names(fn)):
        return None
    args = fn.args.posonlyargs + fn.args.args
    return args[0].arg if args else None


def _init_defaults(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> dict[str, ast.expr]:
    positional = fn.args.posonlyargs + fn.args.args
    with_default = positional[len(positional) - len(fn.args.defaults) :]
    pairs = {a.arg: d for a, d in zip(with_default, fn.args.defaults, strict=True)}
    for arg, default in zip(fn.args.kwonlyargs, fn.args.kw_defaults, strict=True):
        if default is not None:
            pairs[arg.arg] = default
    return pairs


def _role(node: ast.AST, parent: ast.AST | None) -> str:
    """Where `node` sits in `parent`, e.g. "Call.args[0]": a field's use, whatever its name."""
    if parent is None:
        return "-"
    for name, value in ast.iter_fields(parent):
        if value is node:
            return f"{type(parent).__name__}.{name}"
        if isinstance(value, list) and node in value:
            return f"{type(parent).__name__}.{name}[{value.index(node)}]"
    return type(parent).__name__


def _self_attributes(
    fn: ast.FunctionDef | ast.AsyncFunctionDef, self_name: str
) -> Iterator[tuple[ast.Attribute, ast.AST, ast.AST | None]]:
    """Every `self.<name>` in a method, in source order, with its parent and grandparent nodes."""
    found = []
    stack: list[tuple[ast.AST, ast.AST | None, ast.AST | None]] = [(fn, None, None)]
    while stack:
        node, parent, grandparent = stack.pop()
        if parent is not None and isinstance(node, ast.Attribute) and _self_attr(node, self_name):
            found.append((node, parent, grandparent))
        stack.extend((child, node, parent) for child in ast.iter_child_nodes(node))
    found.sort(key=lambda item: (item[0].lineno, item[0].col_offset))
    return iter(found)


def _self_attr(node: ast.AST, self_name: str) -> str | None:
    if (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == self_name
    ):
        return node.attr
    return None


def _class_info(node: ast.ClassDef, qualname: str) -> ClassInfo:
    kind = _class_kind(node)
    fields: dict[str, Default | None] = {}
    uses: dict[str, Counter[str]] = {}
    slots: tuple[str, ...] | None = None
    declared: str | None = None

    for stmt in node.body:
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            declared_field = stmt.target.id
            if kind != "plain" and "ClassVar" not in ast.unparse(stmt.annotation):
                fields[declared_field] = _dataclass_default(stmt.value)
                has_default = stmt.value is not None
                uses[declared_field] = Counter([f"<class>:{_dump(stmt.annotation)}:{has_default}"])
        elif isinstance(stmt, ast.Assign):
            targets = [t.id for t in stmt.targets if isinstance(t, ast.Name)]
            if "__slots__" in targets:
                slots = _slot_names(stmt.value)
            if MIGRATE_ATTR in targets:
                declared = _dump(stmt)
        elif isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef) and stmt.name == MIGRATE_ATTR:
            declared = _dump(stmt)

    for stmt in node.body:
        if not isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        self_name = _first_arg(stmt)
        if self_name is None or stmt.name == MIGRATE_ATTR:
            continue
        init_defaults = _init_defaults(stmt) if stmt.name == "__init__" else {}
        params = [a.arg for a in stmt.args.posonlyargs + stmt.args.args + stmt.args.kwonlyargs]
        for sub, parent, grandparent in _self_attributes(stmt, self_name):
            name = sub.attr
            # A use is where the field sits (two levels up), so `math.hypot(self.x, ...)` and
            # `math.hypot(self.a, ...)` match whatever else the statement holds.
            feature = f"{stmt.name}:{_role(sub, parent)}<{_role(parent, grandparent)}"
            value = parent.value if isinstance(parent, ast.Assign) else None
            assigned = isinstance(parent, ast.Assign) and parent.targets == [sub]
            if assigned and isinstance(value, ast.Name) and value.id in params:
                feature += f":param{params.index(value.id)}"
            uses.setdefault(name, Counter())[feature] += 1
            if isinstance(sub.ctx, ast.Store) and name not in fields:
                fields[name] = None
            if stmt.name == "__init__" and assigned and value and fields.get(name) is None:
                if isinstance(value, ast.Name) and value.id in init_defaults:
                    value = init_defaults[value.id]
                fields[name] = _literal_default(value)
    for name in slots or ():
        fields.setdefault(name, None)
    return ClassInfo(
        qualname=qualname,
        bases=tuple(ast.unparse(b) for b in node.bases)
        + tuple(ast.unparse(k) for k in node.keywords),
        decorators=tuple(ast.unparse(d) for d in node.decorator_list),
        kind=kind,
        slots=slots,
        fields=fields,
        uses=uses,
        declared_migration=declared,
    )


def _slot_names(value: ast.expr) -> tuple[str, ...] | None:
    try:
        slots = ast.literal_eval(value)
    except ValueError:
        return None
    if isinstance(slots, str):
        return (slots,)
    if isinstance(slots, dict):
        return tuple(slots)
    return tuple(slots) if isinstance(slots, list | tuple) else None


@functools.lru_cache(maxsize=16)
def module_info(source: str, filename: str = "<source>") -> ModuleInfo:
    """Split one module version into definitions (raises SyntaxError when it does not compile).

    Cached: in watch mode each save's new version is the next save's old one. Read-only.
    """
    tree = ast.parse(source, filename)
    lines = source.splitlines(keepends=True)
    info = ModuleInfo(
        functions={}, classes={}, class_bodies={}, globals={}, declared_validation=None, lines=lines
    )

    def piece(nodes: list[ast.stmt]) -> Piece:
        text = "".join("".join(lines[_first_line(n) - 1 : n.end_lineno]) for n in nodes)
        return Piece(text, ast.Module(body=nodes, type_ignores=[]))

    assignments: dict[str, list[ast.stmt]] = {}

    def visit(body: list[ast.stmt], prefix: str) -> None:
        for stmt in body:
            if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
                info.functions[prefix + stmt.name] = piece([stmt])
                if not prefix and stmt.name == VALIDATE_FUNC:
                    info.declared_validation = info.functions[stmt.name]
            elif isinstance(stmt, ast.ClassDef):
                qualname = prefix + stmt.name
                info.classes[qualname] = stmt
                info.class_bodies[qualname] = piece(
                    [s for s in stmt.body if not isinstance(s, _DEFS)]
                )
                visit(stmt.body, qualname + ".")
            elif not prefix and isinstance(stmt, ast.Assign | ast.AnnAssign | ast.AugAssign):
                targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                for target in targets:
                    for sub in ast.walk(target):
                        if isinstance(sub, ast.Name):
                            assignments.setdefault(sub.id, []).append(stmt)

    visit(tree.body, "")
    info.globals = {name: piece(stmts) for name, stmts in assignments.items()}
    return info


def _first_line(node: ast.stmt) -> int:
    decorators = getattr(node, "decorator_list", [])
    return min([d.lineno for d in decorators] + [node.lineno])


_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


# --------------------------------------------------------------------------------------------
# What changed between two versions of a module


@dataclasses.dataclass
class ClassDiff:
    """How one class present in both versions changed, and the migration that follows."""

    qualname: str
    old: ClassInfo
    new: ClassInfo
    renames: dict[str, str]
    added: dict[str, Default | None]
    removed: list[str]
    notes: list[str]

    @property
    def needs_migration(self) -> bool:
        """Whether live instances must be migrated (fields, slots, bases or kind changed)."""
        return self.old.layout() != self.new.layout()

    @property
    def declared(self) -> bool:
        """Whether the new version declares its own migration policy."""
        return self.new.declared_migration is not None

    @property
    def declaration_changed(self) -> bool:
        """Whether this version introduces or edits the `__gdsu_migrate__` declaration."""
        return self.declared and self.new.declared_migration != self.old.declared_migration

    @property
    def todo_fields(self) -> list[str]:
        """New fields without an evident default: business logic is needed."""
        return [f for f, d in self.added.items() if d is None]


def _similarity(a: Counter[str], b: Counter[str]) -> float:
    union = sum((a | b).values())
    return sum((a & b).values()) / union if union else 0.0


def _class_diff(old: ClassInfo, new: ClassInfo) -> ClassDiff:
    added = {f: d for f, d in new.fields.items() if f not in old.fields}
    removed = [f for f in old.fields if f not in new.fields]
    renames: dict[str, str] = {}
    # A rename is guessed only when it is unambiguous: the new field whose uses are most like the
    # vanished one's, clearly so (no tie), and alike enough.
    for gone in list(removed):
        scores = sorted(
            (
                (_similarity(old.uses.get(gone, Counter()), new.uses.get(f, Counter())), f)
                for f in added
            ),
            reverse=True,
        )
        if not scores or scores[0][0] < _RENAME_SIMILARITY:
            continue
        if len(scores) > 1 and scores[1][0] == scores[0][0]:
            continue
        came = scores[0][1]
        renames[gone] = came
        removed.remove(gone)
        del added[came]
    notes = []
    if old.fields.keys() != new.fields.keys():
        notes.append(f"fields {_names(old.fields)} -> {_names(new.fields)}")
    if old.slots != new.slots:
        notes.append(f"__slots__ {_names(old.slots)} -> {_names(new.slots)}")
    if old.bases != new.bases:
        notes.append(f"bases ({', '.join(old.bases)}) -> ({', '.join(new.bases)})")
    if old.decorators != new.decorators:
        notes.append(f"decorators {_decos(old.decorators)} -> {_decos(new.decorators)}")
    if old.kind != new.kind:
        notes.append(f"kind {old.kind} -> {new.kind}")
    return ClassDiff(new.qualname, old, new, renames, added, removed, notes)


def _names(names: Iterable[str] | None) -> str:
    if names is None:
        return "(none)"
    return ", ".join(names) or "(none)"


def _first(names: Sequence[str], limit: int) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _decos(decorators: Sequence[str]) -> str:
    return " ".join(f"@{d}" for d in decorators) or "(none)"


@dataclasses.dataclass
class ModuleDiff:
    """One changed module: its sources, what changed, and the classes to migrate."""

    name: str
    path: str
    old_source: str | None
    new_source: str | None
    changes: list[Change]
    classes: list[ClassDiff]
    removed_classes: list[str]
    globals_changed: list[str]
    validation_declared: bool
    validation_changed: bool

    @property
    def migrated(self) -> list[ClassDiff]:
        """Classes the patch migrates: layout changed, or a declared policy is new or edited."""
        return [c for c in self.classes if c.needs_migration or c.declaration_changed]

    def comment(self) -> list[str]:
        """The comment block listing the structural changes of this module."""
        state = "added" if self.old_source is None else "removed" if self.new_source is None else ""
        lines = [f"# {self.name} ({self.path}){' ' + state if state else ''}"]
        for kind in ChangeKind:
            names = [c.name.split(":", 1)[1] for c in self.changes if c.kind is kind]
            if names:
                lines.append(f"#   {kind}: {', '.join(names)}")
        if self.globals_changed:
            lines.append(f"#   globals changed: {', '.join(self.globals_changed)}")
        for cls in self.classes:
            for note in cls.notes:
                lines.append(f"#   class {cls.qualname}: {note}")
        if not self.changes and not self.globals_changed and not self.classes:
            lines.append("#   no definition changed (comments, docstrings or layout only)")
        return lines


def _compare(module: str, old: Mapping[str, Piece], new: Mapping[str, Piece]) -> list[Change]:
    """Definitions changed, added and removed, by qualname."""
    return [
        *(
            Change(f"{module}:{q}", ChangeKind.CHANGED)
            for q in new
            if q in old and not old[q].same_as(new[q])
        ),
        *(Change(f"{module}:{q}", ChangeKind.ADDED) for q in new if q not in old),
        *(Change(f"{module}:{q}", ChangeKind.REMOVED) for q in old if q not in new),
    ]


def diff_module(name: str, path: str, old_source: str | None, new_source: str | None) -> ModuleDiff:
    """Compare two versions of one module (None for a side where it does not exist)."""
    old = module_info(old_source, path) if old_source is not None else _EMPTY
    new = module_info(new_source, path) if new_source is not None else _EMPTY
    changes = _compare(name, old.functions, new.functions)
    changes += _compare(name, old.class_bodies, new.class_bodies)
    # Layouts are analysed only for classes whose source changed: the costly part of a diff.
    touched = [
        q for q in new.classes if q in old.classes and old.class_text(q) != new.class_text(q)
    ]
    classes = [_class_diff(old.class_info(q), new.class_info(q)) for q in touched]
    classes = [c for c in classes if c.notes or c.declaration_changed]
    return ModuleDiff(
        name=name,
        path=path,
        old_source=old_source,
        new_source=new_source,
        changes=changes,
        classes=classes,
        removed_classes=[q for q in old.classes if q not in new.classes],
        globals_changed=sorted(
            c.name.split(":", 1)[1] for c in _compare(name, old.globals, new.globals)
        ),
        validation_declared=new.declared_validation is not None,
        validation_changed=new.declared_validation is not None
        and (
            old.declared_validation is None
            or not old.declared_validation.same_as(new.declared_validation)
        ),
    )


_EMPTY = ModuleInfo(
    functions={}, classes={}, class_bodies={}, globals={}, declared_validation=None, lines=[]
)


# --------------------------------------------------------------------------------------------
# The patch file


def _identifier(text: str) -> str:
    return re.sub(r"\W", "_", text).strip("_").lower() or "x"


def _string_literal(source: str) -> str:
    """A literal for `source`, as readable as possible: a raw triple-quoted string if safe."""
    candidate = f"r'''{source}'''"
    # A raw literal keeps the text as it is, so it must not hold what a file read changes (\r).
    if "'''" not in source and not source.endswith("\\") and "\r" not in source:
        try:
            if ast.literal_eval(candidate) == source:
                return candidate
        except (SyntaxError, ValueError):
            pass
    return repr(source)


def _migration_lines(module: str, cls: ClassDiff) -> list[str]:
    target = f"{module}:{cls.qualname}"
    fn = f"migrate_{_identifier(cls.qualname)}"
    lines = [f"# Instances of {target}: {'; '.join(cls.notes) or 'declared migration changed'}"]
    if cls.declared:
        lines += [
            f"# Declared next to the class ({MIGRATE_ATTR}); it replaces the generated guesses.",
            f"@patch.migrate({target!r})",
            f"def {fn}(old, new, env):",
            f"    return env.new[{target!r}].{MIGRATE_ATTR}(old, new, env)",
        ]
        return lines
    parts = ["policies.ByName()"]
    if cls.renames:
        guessed = ", ".join(f"{old}={new!r}" for old, new in cls.renames.items())
        lines.append(f"# Rename guessed from the uses of the fields: {guessed}")
        parts.append(f"policies.Rename({guessed})")
    parts += [d.policy(f) for f, d in cls.added.items() if d is not None]
    parts += [f"policies.Drop({f!r})" for f in cls.removed]
    policy = " | ".join(parts)
    todo = cls.todo_fields
    if not todo:
        call = f"patch.migrate({target!r}, {policy})"
        if len(call) > 100:
            call = "\n    | ".join([f"patch.migrate(\n    {target!r},\n    {parts[0]}", *parts[1:]])
            call += ",\n)"
        return [*lines, call]
    missing = ", ".join(todo)
    message = (
        f"{target} gains field(s) {missing} with no evident default; give each a default, "
        f"declare a {MIGRATE_ATTR} policy on the class, or edit this generated migration"
    )
    return [
        *lines,
        f"@patch.migrate({target!r})",
        f"def {fn}(old, new, env):",
        f"    new = ({policy})(old, new, env)",
        f"    # TODO: set {missing} from the old state (business logic), e.g.",
        *(f"    # new.{f} = ...  (old has: {_names(cls.old.fields)})" for f in todo),
        "    # then delete the raise below.",
        f"    raise NotImplementedError({message!r})",
        "    return new",
    ]


def _validation_lines(module: str, cls: ClassDiff) -> list[str]:
    target = f"{module}:{cls.qualname}"
    example = next(iter(cls.renames.items()), None)
    check = (
        f"all(n.{example[1]} == o.{example[0]} for o, n in env.pairs({target!r}))"
        if example
        else f"all(... for o, n in env.pairs({target!r}))"
    )
    return [
        "@patch.validate",
        f"def check_{_identifier(cls.qualname)}(env):",
        f'    """TODO: check the migrated {cls.qualname} instances, e.g. {check}."""',
        "    return True",
    ]


def _removed_class_lines(module: str, qualname: str) -> list[str]:
    target = f"{module}:{qualname}"
    return [
        f"# {target} was removed. Live instances of it need a migration, or the update is",
        "# refused; if the running program may hold some, turn them into instances of a new class:",
        f"# @patch.migrate({target!r})",
        f"# def migrate_{_identifier(qualname)}(old, new, env):",
        '#     return env.instance(env.new["module:NewClass"], ...)  # TODO',
    ]


@dataclasses.dataclass
class GeneratedPatch:
    """A patch derived from two versions of some modules; `write` turns it into a patch file."""

    title: str
    modules: list[ModuleDiff]

    @property
    def changes(self) -> list[Change]:
        """Every definition changed, added or removed, named "module:qualname"."""
        return [c for m in self.modules for c in m.changes]

    @property
    def migrated(self) -> list[str]:
        """The classes ("module:qualname") whose live instances the patch migrates."""
        return [f"{m.name}:{c.qualname}" for m in self.modules for c in m.migrated]

    @property
    def needs_edit(self) -> bool:
        """True when a TODO must be filled before the patch can apply."""
        return any(c.todo_fields and not c.declared for m in self.modules for c in m.migrated)

    def summary(self, limit: int = 4) -> str:
        """One short line: what changed and what is migrated (at most `limit` names per kind)."""
        parts = []
        for kind in ChangeKind:
            names = [c.name for c in self.changes if c.kind is kind]
            if names:
                parts.append(f"{kind} {_first(names, limit)}")
        if self.migrated:
            parts.append(f"migrates {_first(self.migrated, limit)}")
        guesses = [
            f"{old}->{new}"
            for m in self.modules
            for c in m.migrated
            if not c.declared
            for old, new in c.renames.items()
        ]
        if guesses:
            # A guess moves data: say it, so a wrong one is noticed at once.
            parts.append(f"renames guessed: {_first(guesses, limit)}")
        if not parts:
            parts.append(f"new source of {', '.join(m.name for m in self.modules)}")
        return "; ".join(parts)

    def text(self, sources: Mapping[str, str] | None = None) -> str:
        """The patch file text; `sources` maps module names to paths to reference, not embed."""
        out = [
            repr(self.title),  # the docstring, safe whatever the title holds
            "",
            "# Generated by gdsu-fork diff. Structural changes per module:",
        ]
        for m in self.modules:
            out += m.comment()
        out += ["", "from gdsu_fork import Patch, policies", "", f"patch = Patch({self.title!r})"]
        for m in self.modules:
            section: list[str] = []
            for cls in m.migrated:
                section += ["", *_migration_lines(m.name, cls)]
                if not cls.declared:
                    section += ["", *_validation_lines(m.name, cls)]
            if m.validation_declared and (m.validation_changed or m.migrated):
                section += [
                    "",
                    f"# Declared in {m.name} ({VALIDATE_FUNC}).",
                    "@patch.validate",
                    f"def declared_validation_{_identifier(m.name)}(env):",
                    f"    return env.new[{m.name + ':' + VALIDATE_FUNC!r}](env)",
                ]
            for qualname in m.removed_classes:
                section += ["", *_removed_class_lines(m.name, qualname)]
            out += section
        out += ["", "# New module sources."]
        for m in self.modules:
            if m.new_source is None:
                out.append(f"# {m.name}: removed; the running program keeps what it has loaded.")
            elif sources is not None and m.name in sources:
                out.append(f"patch.module({m.name!r}, {sources[m.name]!r})")
            else:
                source = m.new_source if m.new_source.endswith("\n") else m.new_source + "\n"
                out.append(f"patch.module({m.name!r}, {_string_literal(source)})")
        return "\n".join(out) + "\n"

    def write(self, path: str | os.PathLike[str], *, copy_sources: bool = False) -> Path:
        """Write the patch file; with `copy_sources`, new sources go to `<stem>_sources/` beside it.

        Embedding (the default) gives one self-contained file that can be shipped as it is.
        """
        path = Path(path)
        sources: dict[str, str] = {}
        if copy_sources:
            folder = path.with_name(f"{path.stem}_sources")
            for m in self.modules:
                if m.new_source is None:
                    continue
                relative = PurePosixPath(folder.name, *m.name.split(".")).with_suffix(".py")
                if Path(m.path).name == "__init__.py":
                    relative = relative.with_suffix("") / "__init__.py"
                target = path.parent / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(m.new_source, encoding="utf-8")
                sources[m.name] = str(relative)
        path.write_text(self.text(sources), encoding="utf-8")
        return path


def diff_sources(
    versions: Mapping[str, tuple[str | None, str | None]],
    *,
    paths: Mapping[str, str] | None = None,
    title: str = "generated patch",
) -> GeneratedPatch:
    """Build a patch from module name -> (old source or None, new source or None).

    Modules whose two sources are identical are left out. Raises `PatchError` naming the file when
    a version does not compile.
    """
    paths = paths or {}
    modules = []
    for name in sorted(versions):
        old, new = versions[name]
        if old == new:
            continue
        path = paths.get(name, name)
        try:
            modules.append(diff_module(name, path, old, new))
        except (SyntaxError, ValueError) as exc:  # ValueError: a NUL byte, on 3.11
            side = "new" if new is not None and _compiles(old) else "old"
            where = f"line {exc.lineno}: {exc.msg}" if isinstance(exc, SyntaxError) else exc
            msg = f"{path}: the {side} version does not compile ({where}); fix it first"
            raise PatchError(msg) from exc
    return GeneratedPatch(title=title, modules=modules)


def _compiles(source: str | None) -> bool:
    if source is None:
        return True
    try:
        module_info(source)
    except (SyntaxError, ValueError):
        return False
    return True


# --------------------------------------------------------------------------------------------
# Module names from file paths


def module_name(relative: PurePosixPath, is_package: Callable[[PurePosixPath], bool]) -> str:
    """The module name of a file, climbing while the directory holds an `__init__.py`.

    `relative` is the file's path below a directory assumed to be on `sys.path` (the tree root or
    `--root`); `is_package(dir)` says whether `dir` holds an `__init__.py`.
    """
    parts = list(relative.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    folder = relative.parent
    depth = 0
    while folder != PurePosixPath(".") and folder.parts and is_package(folder):
        depth += 1
        folder = folder.parent
    # Keep the innermost run of package directories and the module itself.
    keep = depth + (0 if relative.stem == "__init__" else 1)
    name = ".".join(parts[-keep:]) if keep else ""
    if not name:
        msg = f"{relative}: cannot name its module; pass --root with the directory on sys.path"
        raise PatchError(msg)
    return name


def read_source(path: Path) -> str:
    """A source file's text, decoded as the import system would (PEP 263 coding cookies)."""
    with tokenize.open(path) as f:
        return f.read()


def decode_source(data: bytes) -> str:
    """Source bytes as text, honouring a PEP 263 coding cookie."""
    encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
    return data.decode(encoding)


def ignored(relative: PurePosixPath) -> bool:
    """Whether a file is no module of the program: hidden, or in a hidden, cache or venv folder."""
    if relative.name.startswith("."):
        return True
    return any(
        p.startswith(".") or p in _SKIP_DIRS or p.endswith(".egg-info") for p in relative.parts[:-1]
    )


def python_files(root: Path) -> dict[PurePosixPath, Path]:
    """The `.py` files below `root` by relative path, skipping hidden, cache and venv folders."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [
            d
            for d in dirnames
            if not (d.startswith(".") or d in _SKIP_DIRS or d.endswith(".egg-info"))
            and not (here / d / "pyvenv.cfg").exists()
        ]
        for filename in filenames:
            if filename.endswith(".py"):
                found[PurePosixPath((here / filename).relative_to(root).as_posix())] = (
                    here / filename
                )
    return found


def _naming(
    root: PurePosixPath | None, is_package: Callable[[PurePosixPath], bool]
) -> Callable[[PurePosixPath], str | None]:
    """Name files by their path in a tree: below `root` if given, else by the package layout.

    Files outside `root` (setup scripts, tools beside a `src/` layout) are not modules of the
    program: their name is None.
    """
    if root is None:
        return lambda rel: module_name(rel, is_package)

    def name(rel: PurePosixPath) -> str | None:
        if not rel.is_relative_to(root):
            return None
        return module_name(rel.relative_to(root), lambda d: True)

    return name


def _root_in_tree(root: str | os.PathLike[str], tree: Path) -> PurePosixPath:
    """`root` as a path inside `tree`: given as an existing path inside it, or relative to it."""
    given = Path(root)
    if given.exists() and given.resolve().is_relative_to(tree.resolve()):
        return PurePosixPath(given.resolve().relative_to(tree.resolve()).as_posix())
    if given.is_absolute() or not (tree / given).is_dir():
        msg = f"--root {root}: not a directory of {tree}; give the directory on sys.path"
        raise PatchError(msg)
    return PurePosixPath(given.as_posix())


def diff_paths(
    old: str | os.PathLike[str],
    new: str | os.PathLike[str],
    *,
    root: str | os.PathLike[str] | None = None,
    title: str | None = None,
) -> GeneratedPatch:
    """Generate a patch from two source trees, or from two versions of one file.

    Module names follow the package layout (directories with `__init__.py`); pass `root`, the
    directory on `sys.path` (inside the new tree, or relative to both trees), when that is
    ambiguous, as for namespace packages or a `src/` layout. For two files, the name comes from
    the new file's place on disk.
    """
    old_path, new_path = Path(old), Path(new)
    title = title or f"diff {old_path} -> {new_path}"
    for p in (old_path, new_path):
        if not p.exists():
            msg = f"{p}: no such file or directory; pass two source trees or two files"
            raise PatchError(msg)
    if old_path.is_file() != new_path.is_file():
        msg = f"{old_path} and {new_path}: one is a file, the other a directory; pass two of a kind"
        raise PatchError(msg)
    if new_path.is_file():
        return _diff_files(old_path, new_path, root=root, title=title)
    return _diff_trees(old_path, new_path, root=root, title=title)


def _diff_files(
    old: Path, new: Path, *, root: str | os.PathLike[str] | None, title: str
) -> GeneratedPatch:
    folder = new.resolve().parent
    if root is not None:
        folder = Path(root).resolve()
    else:
        while (folder / "__init__.py").exists() and folder.parent != folder:
            folder = folder.parent
    try:
        rel = PurePosixPath(new.resolve().relative_to(folder).as_posix())
    except ValueError:
        msg = f"{new}: lies outside the root {root}; pass a --root that contains it"
        raise PatchError(msg) from None
    name = module_name(rel, lambda d: True)
    versions: dict[str, tuple[str | None, str | None]] = {
        name: (read_source(old), read_source(new))
    }
    return diff_sources(versions, paths={name: str(rel)}, title=title)


def _diff_trees(
    old: Path, new: Path, *, root: str | os.PathLike[str] | None, title: str
) -> GeneratedPatch:
    old_files, new_files = python_files(old), python_files(new)
    packages = {f.parent for f in [*old_files, *new_files] if f.name == "__init__.py"}
    namer = _naming(_root_in_tree(root, new) if root is not None else None, packages.__contains__)
    versions: dict[str, tuple[str | None, str | None]] = {}
    paths: dict[str, str] = {}
    for rel in sorted(old_files.keys() | new_files.keys()):
        name = namer(rel)
        if name is None:
            continue
        versions[name] = (
            read_source(old_files[rel]) if rel in old_files else None,
            read_source(new_files[rel]) if rel in new_files else None,
        )
        paths[name] = str(rel)
    return diff_sources(versions, paths=paths, title=title)


def _git(repo: Path, *args: str) -> bytes:
    try:
        done = subprocess.run(
            ["git", *args], cwd=repo, capture_output=True, check=False, timeout=60
        )
    except FileNotFoundError as exc:
        msg = "git: not found; install git or diff two checked-out trees instead"
        raise PatchError(msg) from exc
    if done.returncode != 0:
        err = done.stderr.decode(errors="replace").strip()
        msg = f"git {' '.join(args)} in {repo} failed: {err}"
        raise PatchError(msg)
    return done.stdout


def _git_tree(top: Path, rev: str) -> set[PurePosixPath]:
    listing = _git(top, "ls-tree", "-r", "--name-only", "-z", rev).decode()
    return {PurePosixPath(p) for p in listing.split("\0") if p}


def diff_git(
    rev_range: str,
    *,
    repo: str | os.PathLike[str] = ".",
    paths: Sequence[str] = (),
    root: str | None = None,
) -> GeneratedPatch:
    """Generate a patch from `REV1..REV2` in a git repository, reading both versions from git.

    No checkout happens. `paths` limits the diff (as after `--` on git's command line); `root` is
    the directory on `sys.path`, relative to the repository's top level.
    """
    if ".." not in rev_range:
        msg = f"{rev_range!r}: not a range; write REV1..REV2 (e.g. v1.0..HEAD)"
        raise PatchError(msg)
    rev1, rev2 = rev_range.replace("...", "..").split("..", 1)
    rev1, rev2 = rev1 or "HEAD", rev2 or "HEAD"
    if "..." in rev_range:
        rev1 = _git(Path(repo), "merge-base", rev1, rev2).decode().strip()
    top = Path(_git(Path(repo), "rev-parse", "--show-toplevel").decode().strip())
    limits = [str((Path(repo) / p).resolve().relative_to(top.resolve())) for p in paths]
    names = ["diff", "--name-status", "--no-renames", "-z", rev1, rev2, "--", *limits]
    listing = _git(top, *names).decode().split("\0")
    changed = [
        PurePosixPath(path)
        for status, path in zip(listing[::2], listing[1::2], strict=False)
        if path.endswith(".py") and status and not ignored(PurePosixPath(path))
    ]
    trees = [_git_tree(top, rev) for rev in (rev1, rev2)]
    packages = {p.parent for tree in trees for p in tree if p.name == "__init__.py"}
    namer = _naming(PurePosixPath(root) if root else None, packages.__contains__)
    versions: dict[str, tuple[str | None, str | None]] = {}
    where: dict[str, str] = {}
    for rel in changed:
        name = namer(rel)
        if name is None:
            continue
        old, new = (
            decode_source(_git(top, "show", f"{rev}:{rel}")) if rel in tree else None
            for rev, tree in zip((rev1, rev2), trees, strict=True)
        )
        versions[name] = (old, new)
        where[name] = str(rel)
    return diff_sources(versions, paths=where, title=f"git {rev_range}")
