"""Migrating live instances of changed classes, eagerly, inside the update child.

An instance is affected when its class or a base changed its fields or bases, or when a policy is
registered for its class or a base (DESIGN §5). Each affected instance gets a blank instance of
its new class filled by name, then its policy; the result becomes the instance in the commit —
same object, new class and state — through two assignments: `__class__` and `__dict__` (or the
slots).
"""

from __future__ import annotations

import dataclasses
import dis
import types
from array import array
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from . import _migrate
from .analysis import subclasses_of
from .bulk import BulkMigration, FromAttr, Listing, diff_state, diff_values
from .delta import OpKind
from .env import Env, blank, slot_names
from .errors import UpdateRefused, short_repr
from .merge import Merge
from .patch import Patch
from .policies import is_pure, set_field, state_of
from .rewrite import Rewrites

if TYPE_CHECKING:
    from .ahead import Reuse


def qualified(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _reads_new(policy: Any) -> bool:
    """Whether `policy` may use its `new` argument (the blank instance filled by name).

    Building that instance is the largest cost of a big migration; a function whose code never
    loads its second parameter (a split that builds its own instances, say) cannot tell it
    got None instead. Anything else — a Policy object, a callable, a closure over the
    parameter, a call to locals() — counts as reading it.
    """
    code = getattr(policy, "__code__", None)
    if type(policy) is not types.FunctionType or code is None or code.co_argcount < 2:
        return True
    name = code.co_varnames[1]
    if name in code.co_cellvars or "locals" in code.co_names:
        return True
    for instruction in dis.get_instructions(code):
        if instruction.opcode not in _LOCAL_OPCODES:
            continue  # e.g. `env.new`: an attribute, not the parameter
        value = instruction.argval
        if value == name or (isinstance(value, tuple) and name in value):
            return True
    return False


# opcodes naming a local variable (3.13 adds pairs like LOAD_FAST_LOAD_FAST, with tuples)
_LOCAL_OPCODES = frozenset(dis.haslocal)


class _Draft:
    """Collects the fields of a tuple-based instance (a NamedTuple), built once they are known."""


@dataclasses.dataclass
class _ClassPlan:
    """How instances of one live class migrate; computed once per class."""

    cls: type
    target: type  # the new version of `cls` (or `cls` itself)
    policy: Any
    dropped: frozenset[str]
    plain: bool  # instances keep their fields in __dict__ only
    target_plain: bool
    names: list[str]  # "module:qualname" of the classes env.pairs answers for
    removed_as: str | None
    fast: bool  # plain in and out, same layout: the inlined path of Migration.migrate
    same_as: type  # a result of this class keeps the instance's class (after the commit)
    reusable: bool  # its results may be computed ahead of the pause (see ahead.py)
    wants_new: bool  # the policy reads its `new` argument (else it gets None, see _reads_new)
    # (result class, removed names) -> the bulk group its instances go to
    groups: dict[tuple[type, tuple[str, ...]], array] = dataclasses.field(default_factory=dict)
    checked: set[type] = dataclasses.field(default_factory=set)  # result classes found valid
    pairs: list[tuple[Any, type, dict[str, Any], Any]] = dataclasses.field(default_factory=list)

    def fast_entry(self) -> tuple[Any, ...]:
        """What the C loop (`_migrate.run`) needs of a fast plan; the containers are shared,
        so what the Python code adds to them (a checked class, a group) the loop sees."""
        return (
            self.target.__new__ if self.wants_new else None,
            self.target,
            self.dropped or None,
            self.policy,
            self.checked,
            self.groups,
            self.pairs,
        )


class Migration:
    """Finds the affected instances among `objects` and records how each one changes."""

    def __init__(
        self,
        patch: Patch,
        merge: Merge,
        env: Env,
        module_names: Iterable[str],
        rewrites: Rewrites,
        *,
        keep_pairs: bool = True,
        pair_reused: bool = True,
    ) -> None:
        self.patch = patch
        # env.pairs serves validations only: without any, nothing needs the old states; and
        # migrations taken from the rehearsal only for validations of the whole environment
        self.keep_pairs = keep_pairs
        self.pair_reused = pair_reused
        self.merge = merge
        self.env = env
        self.rewrites = rewrites
        self.relaid = {pair.old for pair in merge.classes if pair.layout_changed}
        self.new_of: dict[type, type] = {pair.old: pair.new for pair in merge.classes}
        self._old_fields = {pair.old: pair.old_fields or frozenset() for pair in merge.classes}
        self._new_fields = {pair.new: pair.new_fields or frozenset() for pair in merge.classes}
        self.modules = set(module_names)
        self.bulk = BulkMigration()  # migrated here
        self.reused_bulk: BulkMigration | None = None  # taken from the rehearsal
        self.count = 0
        self.reused = 0
        self._plans: dict[type, _ClassPlan] = {}
        self._fast: dict[type, tuple[Any, ...]] = {}  # fast plans, as the C loop reads them
        self._affected: set[type] = set()
        env.removed_fields = self.removed_fields  # type: ignore[method-assign]

    def removed_fields(self, cls: type) -> frozenset[str]:
        """Fields that `cls` and its bases declared before the update and no longer declare
        after it (a field pulled up into a base is not removed)."""
        before: set[str] = set()
        for base in cls.__mro__:
            before |= self._old_fields.get(base, frozenset())
        after: set[str] = set()
        for base in self.new_of.get(cls, cls).__mro__:
            after |= self._new_fields.get(self.new_of.get(base, base), frozenset())
        return frozenset(before - after)

    def policy_for(self, cls: type) -> Any:
        for base in cls.__mro__:
            policy = self.patch.migrations.get(qualified(base))
            if policy is not None:
                return policy
        return None

    def affected_classes(self) -> set[type]:
        """Live (old) classes whose instances must be migrated, subclasses included."""
        roots = {p.old for p in self.merge.classes if p.fields_changed or p.bases_changed}
        for name in self.patch.migrations:
            cls = self.env.old.get(name)
            if isinstance(cls, type):
                roots.add(cls)
        roots.update(cls for _, cls in self.merge.removed_classes)
        return subclasses_of(roots)

    def _in_new_version(self, cls: type, old_cls: type) -> bool:
        mapped = self.merge.replacements.get(id(cls), cls)
        if mapped is old_cls or cls in self.new_of.values():
            return True
        return cls.__module__ in self.modules and mapped not in {
            c for _, c in self.merge.removed_classes
        }

    def reusable_classes(self) -> set[type]:
        """Live classes whose instances' migrations may be reused in the pause (ahead.py)."""
        return {cls for cls, plan in self._plans.items() if plan.reusable}

    def migrate(self, objects: Listing, reuse: Reuse | None = None) -> None:
        """Migrate every affected instance among `objects`; raise to refuse the update.

        `objects` holds no duplicates (the engine's walk and the objects made since are
        disjoint). With `reuse`, the rehearsal's migrations are taken as they are and only the
        positions it lists, and the objects after the marked ones, are looked at.
        """
        positions = self.begin(objects, reuse)
        if positions is not None:
            self.migrate_positions(objects, positions)

    def begin(self, objects: Listing, reuse: Reuse | None = None) -> Sequence[int] | None:
        """Set the migration up (once): the positions to look at, None if no class is
        affected. See `migrate`."""
        affected = self.affected_classes()
        if not affected:
            return None
        self._affected = affected
        self._check_relaid_subclasses(affected)
        for pair in self.merge.classes:
            if pair.layout_changed:
                self.rewrites.become(pair.old, pair.new, strict=False)
        if reuse is None:
            return range(len(objects))
        self.reused_bulk = reuse.bulk
        self.count = self.reused = len(reuse.bulk)
        if self.pair_reused:
            self._pair_reused(objects, reuse.bulk)
        return [*reuse.todo, *range(reuse.marked, len(objects))]

    def take(self, objects: Listing, bulk: BulkMigration) -> None:
        """Add migrations made elsewhere (a sibling, sibling.py) of positions that all precede
        the ones migrated here."""
        for cls in bulk.old_classes():
            if cls not in self._plans:
                self._plan_of(cls)
        if self.keep_pairs:
            self._pair_reused(objects, bulk)
        self.count += len(bulk)
        self._prepend(bulk)

    def migrate_before(self, objects: Listing, positions: Sequence[int]) -> None:
        """Migrate `positions`, which all precede the ones migrated so far (a sibling's half it
        could not send): the bulk's groups stay sorted."""
        later, self.bulk = self.bulk, BulkMigration()
        for plan in self._plans.values():
            plan.groups.clear()  # they point into the other bulk
        self.migrate_positions(objects, positions)
        self._prepend(self.bulk, later)

    def _prepend(self, first: BulkMigration, later: BulkMigration | None = None) -> None:
        later = self.bulk if later is None else later
        first.extend(later)
        self.bulk = first
        for plan in self._plans.values():
            plan.groups.clear()

    def migrate_positions(self, objects: Listing, positions: Sequence[int]) -> None:
        """The loop over `positions` (sorted), after `begin`. It is the hot path of a large
        migration: plain instances (a `__dict__`, no slots, same layout) go through a C loop
        (`_migrate.run`) straight into the bulk delta; it hands back to `_migrate_whole` and
        `_finish` what it has not seen yet (a new class, result class or group)."""
        taken = objects.take(positions)
        cursor = [0, 0]  # where the C loop stopped, how many it migrated
        while True:
            try:
                stop = _migrate.run(
                    cursor,
                    taken,
                    positions,
                    self._fast,
                    self._affected,
                    self.env,
                    self.merge.replacements,
                    self.merge.keep,
                    self.bulk.changed,
                    FromAttr,
                    self.keep_pairs,
                )
            except Exception as exc:
                at, self.count = cursor[0], self.count + cursor[1]
                self._note(exc, taken[at])
                raise
            at, self.count = cursor[0], self.count + cursor[1]
            if stop is None:
                break
            status, result = stop
            obj = taken[at]
            plan = self._plans.get(type(obj))
            if status == _migrate.FINISH and plan is not None:
                self._finish(positions[at], obj, plan, obj.__dict__, result)
                cursor[0] = at + 1
            else:
                cursor[0] = at + self._migrate_whole(positions[at], obj)
        for plan in self._plans.values():
            self.env.record_pairs(plan.names, plan.pairs)
            plan.pairs.clear()

    def _migrate_whole(self, index: int, obj: Any) -> int:
        """An affected instance the C loop has no fast plan for. Returns 0 if it now has one
        (the loop takes the instance again), 1 if migrated here."""
        cls = type(obj)
        plan = self._plans.get(cls)
        if plan is None:
            plan = self._plan_of(cls)
            if plan.fast:
                return 0
        if not plan.fast:
            self._migrate_one(index, obj, plan)
            return 1
        old_state = obj.__dict__
        new = self._by_name(plan, old_state) if plan.wants_new else None
        self._finish(index, obj, plan, old_state, self._call_policy(plan, obj, new))
        return 1

    def _call_policy(self, plan: _ClassPlan, obj: Any, new: Any) -> Any:
        """The policy's result for `obj` (`new` without a policy); its exception names the
        instance."""
        if plan.policy is None:
            return new
        try:
            return plan.policy(obj, new, self.env)
        except Exception as exc:
            self._note(exc, obj)
            raise

    def _note(self, exc: Exception, obj: Any) -> None:
        exc.add_note(
            f"while migrating {qualified(type(obj))} instance #{self.count + 1}: {short_repr(obj)}"
        )

    def _finish(
        self, index: int, obj: Any, plan: _ClassPlan, old_state: dict[str, Any], result: Any
    ) -> None:
        """Record a plain instance's migration to `result` (the policy's answer)."""
        result_class = type(result)
        if result_class not in plan.checked:
            self._check_result(obj, result, plan)
        result_state = getattr(result, "__dict__", None)
        if result_state is None:  # e.g. a slotted class of the new version
            plan.pairs.append(
                (obj, plan.cls, dict(old_state), self._record(index, obj, plan, result))
            )
            self.count += 1
            return
        if result is not obj:
            self.merge.replacements[id(result)] = obj
            self.merge.keep.append(result)
        removed = tuple(k for k in old_state if k not in result_state)
        changed = diff_values(old_state, result_state)
        if changed:
            self.bulk.changed[index] = (changed, removed)
            removed = ()
        group = plan.groups.get((result_class, removed))
        if group is None:
            group = plan.groups[(result_class, removed)] = self.bulk.group(
                plan.cls, None if result_class is plan.same_as else result_class, removed
            )
        group.append(index)
        if self.keep_pairs:
            # a changed instance gets a new __dict__ (this one stays the old state); one that
            # only loses attributes loses them in place
            state = dict(old_state) if removed and not changed else old_state
            plan.pairs.append((obj, plan.cls, state, obj))
        self.count += 1

    def _pair_reused(self, objects: Listing, bulk: BulkMigration) -> None:
        """env.pairs entries for migrations made elsewhere (the rehearsal, a sibling), before
        this child applies them. A group's instances share their live class; the old state is
        copied only where the commit deletes attributes in place (a changed state gets a new
        `__dict__`, a new class alone leaves the old one as it is)."""
        for (_, _, removed), group in bulk.groups.items():
            instances = objects.take(group)
            cls = type(instances[0])
            plan = self._plans.get(cls) or self._plan_of(cls)
            states = map(dict, map(vars, instances)) if removed else map(vars, instances)
            self.env.record_pairs(
                plan.names, [(o, cls, s, o) for o, s in zip(instances, states, strict=True)]
            )

    def _migrate_one(self, index: int, obj: Any, plan: _ClassPlan) -> None:
        """The general path: slots, named tuples, layout changes, removed classes."""
        old_state = state_of(obj)
        new = None if plan.removed_as is not None else self._by_name(plan, old_state)
        result = self._call_policy(plan, obj, new)
        if isinstance(result, _Draft):
            result = plan.target(**vars(result))
        if type(result) not in plan.checked:
            self._check_result(obj, result, plan)
        migrated = self._record(index, obj, plan, result)
        if self.keep_pairs:
            plan.pairs.append((obj, plan.cls, old_state, migrated))
        self.count += 1

    def _plan_of(self, cls: type) -> _ClassPlan:
        """The plan of `cls`, made now (and given to the C loop if fast)."""
        plan = self._plans[cls] = self._plan(cls)
        if plan.fast:
            self._fast[cls] = plan.fast_entry()
        return plan

    def _plan(self, cls: type) -> _ClassPlan:
        """Everything about migrating instances of `cls` that does not depend on the instance."""
        removed = {c: name for name, c in self.merge.removed_classes}
        policy = self.policy_for(cls)
        if cls in removed and policy is None:
            msg = (
                f"{removed[cls]} is removed but live instances remain; register "
                f"patch.migrate({removed[cls]!r}, policy) returning an instance of a class of "
                f"the new version"
            )
            raise UpdateRefused(msg)
        self.env.old_versions.of(cls)  # copy its code now: the commit changes it in place
        target = self.new_of.get(cls, cls)
        plain = not slot_names(cls) and not issubclass(cls, tuple) and hasattr(cls, "__dict__")
        target_plain = not slot_names(target) and not issubclass(target, tuple)
        fast = plain and target_plain and cls not in self.relaid and cls not in removed
        return _ClassPlan(
            cls=cls,
            target=target,
            policy=policy,
            dropped=self.removed_fields(cls),
            plain=plain,
            target_plain=target_plain,
            names=[qualified(b) for b in cls.__mro__ if b.__module__ in self.modules],
            removed_as=removed.get(cls),
            fast=fast,
            same_as=target if self.merge.replacements.get(id(target), target) is cls else cls,
            reusable=fast and is_pure(policy),
            wants_new=policy is None or _reads_new(policy),
        )

    def _by_name(self, plan: _ClassPlan, old_state: dict[str, Any]) -> Any:
        """A blank instance of the new class holding the old fields it still declares."""
        target = plan.target
        draft = _Draft() if issubclass(target, tuple) else blank(target)
        dropped = plan.dropped
        values = {k: v for k, v in old_state.items() if k not in dropped} if dropped else old_state
        namespace = getattr(draft, "__dict__", None)
        if namespace is not None and plan.target_plain:
            namespace.update(values)  # a plain instance: no descriptor to honour
        else:
            for key, value in values.items():
                set_field(draft, key, value)
        return draft

    def _check_result(self, obj: Any, result: Any, plan: _ClassPlan) -> None:
        policy = plan.policy
        cls = type(result)
        if isinstance(
            result, type | types.ModuleType | types.FunctionType
        ) or not self._in_new_version(cls, type(obj)):
            msg = (
                f"the migration {policy!r} of a {qualified(type(obj))} returned "
                f"{cls.__module__}.{cls.__qualname__}, which is not a class of the new version of "
                f"the patched modules ({', '.join(sorted(self.modules))})"
            )
            raise UpdateRefused(msg)
        plan.checked.add(cls)

    def _check_relaid_subclasses(self, affected: set[type]) -> None:
        for cls in affected:
            relaid_bases = [b for b in cls.__mro__[1:] if b in self.relaid]
            if relaid_bases and cls not in self.relaid:
                self.merge.refusals.append(
                    f"{qualified(cls)} derives from {qualified(relaid_bases[0])}, whose layout "
                    f"changes: give the new source of {cls.__module__} in the same patch"
                )

    def _record(self, index: int, obj: Any, plan: _ClassPlan, result: Any) -> Any:
        """Record how `obj` becomes `result`; return the object that is the migrated instance."""
        if plan.cls in self.relaid:
            self.rewrites.become(obj, result)
            return result
        merge = self.merge
        if result is not obj:
            merge.replacements[id(result)] = obj
            merge.keep.append(result)
        result_class = type(result)
        new_class = merge.replacements.get(id(result_class), result_class)
        if plan.plain and hasattr(result, "__dict__") and not slot_names(result_class):
            removed, changed = diff_state(obj.__dict__, result.__dict__)
            self.bulk.add(
                index,
                plan.cls,
                result_class if new_class is not plan.cls else None,
                removed,
                changed,
            )
            return obj
        if new_class is not plan.cls:
            merge.op(OpKind.SETATTR, obj, "__class__", result_class)
        for name, value in state_of(result).items():
            merge.op(OpKind.SETATTR, obj, name, value)
        return obj
