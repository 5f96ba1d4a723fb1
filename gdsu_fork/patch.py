"""The patch: a declarative description of an update, and the loading of patch files.

A patch only *declares* things (new sources, migrations, validations); the engine decides when and
how to apply them. Patch files are executed only inside the forked update child, never in the
running program (DESIGN §3).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, overload

from .errors import PatchError

Policy = Callable[[Any, Any, Any], Any]
Validation = Callable[[Any], Any]
PairValidation = Callable[[Any, Any, Any], Any]
GlobalMigration = Callable[[Any, Any], Any]


@dataclasses.dataclass(frozen=True)
class Target:
    """A definition named "module:qualname" (qualname may be empty for the module itself)."""

    module: str
    qualname: str

    @classmethod
    def parse(cls, name: str, *, what: str = "name") -> Target:
        """Split "pkg.mod:Class.method"; refuse anything else with a message that shows the form."""
        if not isinstance(name, str) or name.count(":") != 1:
            msg = f"{what} {name!r} is not of the form 'module:qualname' (e.g. 'chat.model:ChMessage')"
            raise PatchError(msg)
        module, qualname = name.split(":")
        parts = [*module.split("."), *qualname.split(".")]
        if not module or not qualname or not all(p.isidentifier() for p in parts):
            msg = f"{what} {name!r} is not of the form 'module:qualname' with identifiers on both sides"
            raise PatchError(msg)
        return cls(module, qualname)

    def __str__(self) -> str:
        return f"{self.module}:{self.qualname}"


@dataclasses.dataclass(frozen=True)
class ModuleSource:
    """The whole new source of one module, and where it came from (for messages)."""

    source: str
    origin: str


@dataclasses.dataclass(frozen=True)
class Definition:
    """New source for one definition inside a module (a function, a class, a method)."""

    target: Target
    source: str


def _caller_dir(depth: int) -> Path:
    """The directory of the file that called us, so relative paths in patches mean what they say."""
    frame = sys._getframe(depth + 1)
    file = frame.f_globals.get("__file__")
    return Path(file).resolve().parent if file else Path.cwd()


class Patch:
    """An update: new module sources or definitions, migration policies and validations.

    A patch file binds one at top level under the name ``patch`` (DESIGN §5).
    """

    def __init__(self, title: str = "", *, base: str | os.PathLike[str] | None = None) -> None:
        self.title = title
        self.base = Path(base).resolve() if base is not None else _caller_dir(1)
        self.modules: dict[str, ModuleSource] = {}
        self.definitions: list[Definition] = []
        self.removals: list[Target] = []
        self.migrations: dict[str, Policy] = {}
        self.global_migrations: dict[str, GlobalMigration] = {}
        self.validations: list[Validation] = []
        self.pair_validations: list[tuple[str, PairValidation]] = []
        self.allowed_running: list[Target] = []

    def __repr__(self) -> str:
        return f"<Patch {self.title!r}: {len(self.modules)} module(s), {len(self.definitions)} definition(s)>"

    def module(self, name: str, path_or_source: str | os.PathLike[str]) -> None:
        """Give the whole new source of module `name`: a path (relative to the patch) or the text.

        A string holding a newline is source text; anything else is a path.
        """
        if not isinstance(name, str) or not all(p.isidentifier() for p in name.split(".")):
            msg = f"patch.module: {name!r} is not a dotted module name"
            raise PatchError(msg)
        if isinstance(path_or_source, str) and "\n" in path_or_source:
            self.modules[name] = ModuleSource(path_or_source, f"<patch {self.title!r}: {name}>")
            return
        path = self.base / Path(path_or_source)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            msg = (
                f"patch.module({name!r}, {str(path_or_source)!r}): cannot read {path}: "
                f"{exc.strerror}; give a path relative to the patch file, or source text"
            )
            raise PatchError(msg) from exc
        self.modules[name] = ModuleSource(text, str(path))

    def define(self, name: str, source: str) -> None:
        """Give the new source of one definition, e.g. ``define("m:Cls.meth", "def meth(self): ...")``."""
        if not isinstance(source, str) or not source.strip():
            msg = f"patch.define({name!r}, ...): the source must be non-empty text"
            raise PatchError(msg)
        self.definitions.append(Definition(Target.parse(name, what="patch.define"), source))

    def remove(self, name: str) -> None:
        """Remove a function, method or class from its module or class."""
        self.removals.append(Target.parse(name, what="patch.remove"))

    @overload
    def migrate(self, name: str) -> Callable[[Policy], Policy]: ...
    @overload
    def migrate(self, name: str, policy: Policy) -> Policy: ...

    def migrate(self, name: str, policy: Policy | None = None) -> Any:
        """Register a migration policy for live instances of a class and its subclasses.

        Usable as ``patch.migrate("m:C", policy)`` or as a decorator ``@patch.migrate("m:C")``.
        """
        Target.parse(name, what="patch.migrate")

        def register(fn: Policy) -> Policy:
            if not callable(fn):
                msg = f"patch.migrate({name!r}, ...): the policy {fn!r} is not callable"
                raise PatchError(msg)
            self.migrations[name] = fn
            return fn

        return register if policy is None else register(policy)

    def migrate_global(self, name: str, fn: GlobalMigration) -> GlobalMigration:
        """Compute a module global's new value from its live one: ``fn(old_value, env)``."""
        Target.parse(name, what="patch.migrate_global")
        if not callable(fn):
            msg = f"patch.migrate_global({name!r}, ...): {fn!r} is not callable"
            raise PatchError(msg)
        self.global_migrations[name] = fn
        return fn

    def validate(self, fn: Validation) -> Validation:
        """Register a validation run on the new environment; False or an exception refuses."""
        if not callable(fn):
            msg = f"patch.validate: {fn!r} is not callable"
            raise PatchError(msg)
        self.validations.append(fn)
        return fn

    @overload
    def validate_each(self, name: str) -> Callable[[PairValidation], PairValidation]: ...
    @overload
    def validate_each(self, name: str, fn: PairValidation) -> PairValidation: ...

    def validate_each(self, name: str, fn: PairValidation | None = None) -> Any:
        """Check every migrated instance of a class (and its subclasses) on its own:
        ``fn(old, new, env)``, with `old` the instance as it was (a snapshot) and `new` the
        migrated one; False or an exception refuses the update.

        `fn` must look only at the two instances' own fields, as a pure policy does: a migration
        taken from the rehearsal was checked there, on the same instance, and is not checked
        again in the pause. Usable as a decorator ``@patch.validate_each("m:C")``.
        """
        Target.parse(name, what="patch.validate_each")

        def register(check: PairValidation) -> PairValidation:
            if not callable(check):
                msg = f"patch.validate_each({name!r}, ...): {check!r} is not callable"
                raise PatchError(msg)
            self.pair_validations.append((name, check))
            return check

        return register if fn is None else register(fn)

    def allow_running(self, name: str) -> None:
        """Let frames of this function stay on stacks and finish in their old code.

        For loops that never return (a server's accept loop). Risk: that frame keeps running the old
        code of *its own* body, and may call new code with old assumptions.
        """
        self.allowed_running.append(Target.parse(name, what="patch.allow_running"))

    def touched_modules(self) -> list[str]:
        """Every module whose source this patch changes, in declaration order."""
        names = list(self.modules)
        for target in [*(d.target for d in self.definitions), *self.removals]:
            if target.module not in names:
                names.append(target.module)
        return names


def load_patch(path: str | os.PathLike[str]) -> Patch:
    """Execute a patch file and return the `Patch` it binds to ``patch``.

    Only ever called in the forked update child: the file is arbitrary code.
    """
    file = Path(path).resolve()
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        msg = f"cannot read the patch file {file}: {exc.strerror}"
        raise PatchError(msg) from exc
    namespace: dict[str, Any] = {"__name__": "__gdsu_patch__", "__file__": str(file)}
    exec(compile(text, str(file), "exec", dont_inherit=True), namespace)
    patch = namespace.get("patch")
    if not isinstance(patch, Patch):
        msg = f"the patch file {file} must bind a gdsu_fork.Patch to the name 'patch' at top level"
        raise PatchError(msg)
    return patch
