"""The new environment, built inside the forked update child.

The child loads the patch, executes the new sources into its copy of the modules, pairs old and
new objects (merge.py), encodes the delta, and then *rehearses the commit*: it puts its modules
back as they were, applies the decoded delta with the very function the parent will use, and runs
the validations on the result. Only then does the parent see the delta. (A rehearsal whose patch
has no validation of instances tries each group of like instances on one of them.)
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import gc
import json
import linecache
import struct
import sys
import types
from collections.abc import Callable
from typing import Any

from . import ahead as ahead_
from . import delta as delta_codec
from . import sibling
from .analysis import bindings, definitions
from .bulk import Listing
from .commit import apply_delta
from .delta import Delta, Op, OpKind
from .env import Env
from .errors import PatchError, UpdateRefused
from .merge import Merge
from .migrate import Migration, qualified
from .patch import Patch, load_patch
from .report import ChangeKind
from .rewrite import Rewrites
from .sources import CURRENT_SOURCES, current_source, linecache_entry, source_filename, splice
from .validations import (
    APP_VALIDATIONS,
    check_code_installed,
    check_definitions_resolve,
    run_pair_validations,
    run_validations,
)


class Mode(enum.StrEnum):
    """How far the child goes."""

    ANALYSE = "analyse"  # only what the patch affects (for the safe-point wait)
    REHEARSE = "rehearse"  # everything, while the program runs on; the delta is thrown away
    COMMIT = "commit"  # everything, in the pause; the parent applies the delta


@dataclasses.dataclass
class Job:
    """What the parent hands to each child: the patch and the closures it found."""

    patch: Patch | str
    # objects the parent found while the program ran: closures and instances the update needs
    prior_objects: list[Any] = dataclasses.field(default_factory=list)
    # the stacks of the program's other threads at the pause (for references held in locals)
    frames: list[types.FrameType] = dataclasses.field(default_factory=list)
    # in a pause: gc.get_objects() taken by the parent just before the fork, so that parent and
    # child index the same list (bulk.py)
    young: list[Any] | None = None
    # rehearsing without the parent's heap mark: stop after the analysis if instances are
    # affected (the engine marks the heap and rehearses the migration in a second child)
    defer_instances: bool = False
    # rehearsing on the marked heap: send the migrations the pause may reuse (ahead.py)
    speculate: bool = False
    # in the pause: the rehearsal's migrations, and the marked positions written since
    ahead: ahead_.Ahead | None = None
    written: frozenset[int] | None = None
    # how long the engine lets a child work (a sibling may not take longer)
    timeout: float = 3600.0


@dataclasses.dataclass
class Analysis:
    """What the child tells the parent besides the delta (plain data, sent as JSON)."""

    title: str = ""
    changes: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    blocking: list[tuple[str, list[tuple[str, str]]]] = dataclasses.field(default_factory=list)
    allowed: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    nested: bool = False
    migrated: int = 0
    affected: list[str] = dataclasses.field(default_factory=list)  # "module:qualname" of classes
    deferred: bool = False  # instances are affected: the migration was not rehearsed yet
    reused: int = 0  # migrations taken from the rehearsal


def pack(analysis: Analysis, delta: bytes = b"") -> bytes:
    """The child's answer: a length-prefixed JSON analysis, then the delta. The JSON is padded
    with spaces so that the delta starts at a multiple of 8 bytes (it may hold uint64 arrays,
    read in place)."""
    header = json.dumps(dataclasses.asdict(analysis)).encode()
    header += b" " * (-(4 + len(header)) % 8)
    return b"".join([struct.pack("!I", len(header)), header, delta])


def unpack(data: bytes) -> tuple[Analysis, memoryview]:
    """Split the child's answer (parent side); the delta is a view into `data`, not a copy."""
    (size,) = struct.unpack("!I", data[:4])
    fields = json.loads(data[4 : 4 + size])
    analysis = Analysis(
        title=fields["title"],
        changes=[tuple(c) for c in fields["changes"]],
        blocking=[(m, [tuple(s) for s in steps]) for m, steps in fields["blocking"]],
        allowed=[tuple(a) for a in fields["allowed"]],
        nested=fields["nested"],
        migrated=fields["migrated"],
        affected=list(fields["affected"]),
        deferred=fields["deferred"],
        reused=fields["reused"],
    )
    return analysis, memoryview(data)[4 + size :]


def _is_main_guard(node: ast.stmt) -> bool:
    """`if __name__ == "__main__":` (either way round)."""
    if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare):
        return False
    test = node.test
    if len(test.ops) != 1 or not isinstance(test.ops[0], ast.Eq):
        return False
    sides = [test.left, test.comparators[0]]
    names = [s for s in sides if isinstance(s, ast.Name) and s.id == "__name__"]
    mains = [s for s in sides if isinstance(s, ast.Constant) and s.value == "__main__"]
    return len(names) == 1 and len(mains) == 1


def _without_main_block(tree: ast.Module) -> ast.Module:
    """The module without its `if __name__ == "__main__":` blocks: re-executing the main
    module's source must define its new functions, not start the program a second time."""
    tree.body = [node for node in tree.body if not _is_main_guard(node)]
    return tree


class NewEnvironment:
    """Builds the new version of every module a patch touches, in this (child) process."""

    def __init__(self, patch: Patch) -> None:
        self.patch = patch
        self.merge = Merge()
        self.snapshots: dict[str, dict[str, Any]] = {}
        self.new_modules: list[types.ModuleType] = []
        self.new_trees: dict[str, ast.Module] = {}

    def build(self, functions: Callable[[], list[types.FunctionType]]) -> None:
        """Execute and merge every touched module, then the global migrations and closures."""
        for name in self.patch.touched_modules():
            module = sys.modules.get(name)
            if module is not None:
                self._update_module(module)
            elif name in self.patch.modules:
                self._add_module(name)
            else:
                msg = (
                    f"the patch changes module {name}, which the running program has not "
                    f"imported; give its whole source with patch.module({name!r}, ...) to add it"
                )
                raise PatchError(msg)
        self._migrate_globals()
        self._update_closures(functions)
        self.refuse_if_needed()

    def refuse_if_needed(self) -> None:
        """Raise if anything found so far makes the update unsafe."""
        if self.merge.refusals:
            reasons = "\n".join(self.merge.refusals)
            raise UpdateRefused(f"the update cannot keep identities:\n{reasons}")

    def _new_source(self, name: str, old_source: str) -> str:
        """The module's whole new source: given, or the old one with definitions spliced in."""
        definitions_ = [d for d in self.patch.definitions if d.target.module == name]
        removals = [r for r in self.patch.removals if r.module == name]
        base = self.patch.modules[name].source if name in self.patch.modules else old_source
        return splice(base, name, definitions_, removals) if definitions_ or removals else base

    def _update_module(self, module: types.ModuleType) -> None:
        name = module.__name__
        try:
            old_source = current_source(module)
        except PatchError:
            if name not in self.patch.modules:
                raise
            old_source = ""
        new_source = self._new_source(name, old_source)
        filename = source_filename(module, name)
        old_tree = _without_main_block(ast.parse(old_source))
        new_tree = _without_main_block(ast.parse(new_source, filename))
        code = compile(new_tree, filename, "exec", dont_inherit=True)
        # tracebacks of the new top level (here, in the child) must show the new lines
        linecache.cache[filename] = linecache_entry(filename, new_source)
        namespace = module.__dict__
        snapshot = dict(namespace)
        self.snapshots[name] = snapshot
        for gone in bindings(old_tree.body).keys() - bindings(new_tree.body).keys():  # names only
            namespace.pop(gone, None)
        exec(code, namespace)
        self.merge.merge_module(module, snapshot, old_tree, new_tree)
        self.new_trees[name] = new_tree
        self._register_source(name, filename, new_source)

    def _add_module(self, name: str) -> None:
        parent_name, _, leaf = name.rpartition(".")
        parent = sys.modules.get(parent_name) if parent_name else None
        if parent_name and parent is None:
            msg = f"the patch adds module {name}, but its package {parent_name} is not imported"
            raise PatchError(msg)
        origin = self.patch.modules[name].origin
        source = self._new_source(name, "")
        module = types.ModuleType(name)
        filename = origin if origin.endswith(".py") else f"<gdsu:{name}>"
        module.__file__ = filename
        if parent is not None:
            module.__package__ = parent_name
        tree = ast.parse(source, filename)
        sys.modules[name] = module
        exec(compile(tree, filename, "exec", dont_inherit=True), module.__dict__)
        self.new_modules.append(module)
        self.new_trees[name] = tree
        self.merge.op(OpKind.SETITEM, sys.modules, name, module)
        if parent is not None:
            self.merge.op(OpKind.SETATTR, parent, leaf, module)
        for defined in definitions(tree.body):
            self.merge.change(name, defined, ChangeKind.ADDED)
        self._register_source(name, filename, source)

    def _register_source(self, name: str, filename: str, source: str) -> None:
        self.merge.op(OpKind.SETITEM, linecache.cache, filename, linecache_entry(filename, source))
        self.merge.op(OpKind.SETITEM, CURRENT_SOURCES, name, source)

    def _migrate_globals(self) -> None:
        env = self.env()
        for name, fn in self.patch.global_migrations.items():
            module_name, _, key = name.partition(":")
            module = sys.modules.get(module_name)
            if module is None or key not in module.__dict__:
                msg = f"patch.migrate_global({name!r}): the running program has no global {name}"
                raise PatchError(msg)
            old_value = self.snapshots.get(module_name, module.__dict__).get(key)
            value = fn(old_value, env)
            module.__dict__[key] = value
            self.merge.op(OpKind.SETITEM, module.__dict__, key, value)

    def _update_closures(self, functions: Callable[[], list[types.FunctionType]]) -> None:
        nested = self.merge.nested
        if not nested:
            return
        for fn in functions():
            new_code = nested.get(fn.__code__)
            if new_code is None:
                continue
            if fn.__code__.co_freevars != new_code.co_freevars:
                self.merge.refusals.append(
                    f"{fn.__module__}:{fn.__qualname__}: a live closure's free variables changed "
                    f"from {fn.__code__.co_freevars} to {new_code.co_freevars}"
                )
                continue
            self.merge.op(OpKind.SETATTR, fn, "__code__", new_code)

    def restore(self) -> None:
        """Put the modules back as they were at the fork, before applying the delta here."""
        for name, snapshot in self.snapshots.items():
            namespace = sys.modules[name].__dict__
            namespace.clear()
            namespace.update(snapshot)
        for module in self.new_modules:
            sys.modules.pop(module.__name__, None)
            parent_name, _, leaf = module.__name__.rpartition(".")
            parent = sys.modules.get(parent_name)
            if parent is not None and parent.__dict__.get(leaf) is module:
                del parent.__dict__[leaf]

    def env(self) -> Env:
        """The view given to migrations and validations."""
        new = {
            name: sys.modules[name].__dict__
            for name in self.patch.touched_modules()
            if name in sys.modules
        }
        return Env(self.snapshots, new)

    def analysis(self) -> Analysis:
        """The plain-data summary the parent needs."""
        allowed = [(t.module, t.qualname) for t in self.patch.allowed_running]
        return Analysis(
            title=self.patch.title,
            changes=[(c.name, str(c.kind)) for c in self.merge.changes],
            blocking=[(module, list(steps)) for module, steps in self.merge.blocking],
            allowed=allowed,
            nested=bool(self.merge.nested),
        )


def _validate(environment: NewEnvironment, ops: list[Op], env: Env) -> None:
    installed = [
        (op.target, op.value)
        for op in ops
        if op.kind is OpKind.SETATTR
        and op.key == "__code__"
        and isinstance(op.target, types.FunctionType)
    ]
    check_code_installed(installed)
    for name, tree in environment.new_trees.items():
        check_definitions_resolve(sys.modules[name], definitions(tree.body))
    run_validations("application", list(APP_VALIDATIONS), env)
    run_validations("patch", environment.patch.validations, env)
    run_pair_validations(environment.patch.pair_validations, env)


class _Heap:
    """The program's objects as the child needs them, listed only if it needs them.

    In a pause the parent lists them (`job.prior_objects` from its walk, `job.young` made
    since), so that both sides index the same list. In a rehearsal nothing is listed unless the
    update migrates instances or live closures: then the whole heap is walked once, in the
    child, while the program runs on. A code-only rehearsal costs no walk.
    """

    def __init__(self, job: Job) -> None:
        self.job = job
        self._objects: Listing | None = None
        self.made_here: set[int] = set()  # objects this child made before walking the heap

    def objects(self) -> Listing:
        if self._objects is None:
            if self.job.young is not None:
                self._objects = Listing(self.job.prior_objects, self.job.young)
            else:
                # Everything old is in the permanent generation, which gc.get_objects() skips:
                # bring it back for one listing, and keep apart what this child made.
                self.made_here = delta_codec.young_object_ids()
                gc.unfreeze()
                listed = gc.get_objects()
                gc.freeze()
                made = self.made_here
                self._objects = Listing([o for o in listed if id(o) not in made])
        return self._objects

    def functions(self) -> list[types.FunctionType]:
        return [o for part in self.objects().parts for o in part if type(o) is types.FunctionType]


def run(job: Job, mode: Mode) -> bytes:
    """The child's whole work; returns what `unpack` reads. Raises on any failure."""
    gc.freeze()  # from here on, gc.get_objects() lists only what this child creates
    # A short-lived process: collections would only re-traverse what it creates, ever more often.
    gc.disable()
    heap = _Heap(job)
    patch = job.patch if isinstance(job.patch, Patch) else load_patch(job.patch)
    environment = NewEnvironment(patch)
    environment.build(heap.functions)
    merge = environment.merge
    rewrites = Rewrites(merge)
    # Validations of the whole environment see every pair, reused or not, on the state the
    # program will have; a per-pair check only the pairs migrated here (patch.validate_each).
    whole = bool(APP_VALIDATIONS or patch.validations)
    migration = Migration(
        patch,
        merge,
        environment.env(),
        environment.snapshots,
        rewrites,
        keep_pairs=whole or bool(patch.pair_validations),
        pair_reused=whole,
    )
    analysis = environment.analysis()
    analysis.affected = sorted(qualified(c) for c in migration.affected_classes())
    if mode is Mode.ANALYSE:
        return pack(analysis)
    if job.defer_instances and analysis.affected:
        analysis.deferred = True
        return pack(analysis)
    objects = heap.objects() if analysis.affected else Listing()
    pages = ahead_.state_pages(objects.parts[0]) if job.speculate and len(objects) else None
    reuse = (
        ahead_.Reuse.load(job.ahead, job.written, len(job.prior_objects), merge.replacements)
        if job.ahead is not None and job.written is not None
        else None
    )
    new_ids = delta_codec.young_object_ids() | heap.made_here  # what building it made
    ops_before = len(merge.ops)
    sibling.migrate(migration, objects, rewrites, reuse=reuse, timeout=job.timeout)
    analysis.migrated = migration.count
    analysis.reused = migration.reused
    bulk = migration.bulk
    if rewrites.pairs or len(merge.ops) > ops_before or bulk.has_tracked_values(merge.replacements):
        # migrations made values the delta carries
        new_ids = delta_codec.young_object_ids() | heap.made_here
    else:
        new_ids |= {id(c) for c in bulk.containers()}
    # the heap's list and the job's lists are the engine's: never rewrite inside them
    engine_lists = {id(objects), id(job.prior_objects), id(job.young), id(job.frames)}
    engine_lists.update(id(part) for part in objects.parts)
    rewrites.plan(new_ids | engine_lists, job.frames)
    environment.refuse_if_needed()
    captured = (
        ahead_.capture(
            bulk, migration.reusable_classes(), objects, pages, new_ids, merge.replacements
        )
        if pages is not None and not rewrites.pairs
        else None
    )
    delta = Delta(environment.new_modules, merge.ops, bulk, migration.reused_bulk)
    data = delta_codec.encode(delta, replacements=merge.replacements, new_ids=new_ids)
    environment.restore()
    decoded = delta_codec.decode(data)
    if mode is Mode.REHEARSE and not whole and not patch.pair_validations and decoded.bulk:
        # no validation looks at instances: try each group's change on one of them (the pause
        # child and the commit apply them all)
        decoded = decoded._replace(bulk=decoded.bulk.sample())
    apply_delta(decoded, objects, reused=whole)
    migration.env.forget_lookups()
    _validate(environment, decoded.ops, migration.env)
    return pack(analysis, data if mode is Mode.COMMIT else captured or b"")
