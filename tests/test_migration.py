"""State migration: live instances migrated by policies, identity kept."""

from __future__ import annotations

import math

import pytest
from scenario import committed

import gdsu_fork
from gdsu_fork import Outcome


def account_policy(scn) -> str:
    """A patch line giving Account a composed policy: renamed, added, dropped fields."""
    return (
        f"patch.migrate({scn.module_name + ':Account'!r}, policies.Rename(amount='balance')"
        " | policies.AddDefault('currency', 'EUR')"
        " | policies.AddDefault('tags', factory=list)"
        " | policies.Drop('legacy'))\n"
    )


def test_added_renamed_removed_fields(scenario):
    scn = scenario("mig_fields")
    mod = scn.module
    accounts = [mod.Account("ada", 10, legacy="x"), mod.Account("bob", 5, legacy="y")]
    by_owner = {a.owner: a for a in accounts}
    holder = {"first": accounts[0]}
    extra = account_policy(scn)
    report = committed(gdsu_fork.update(scn.patch_file(extra=extra)))
    assert report.migrated == 2
    first = accounts[0]
    assert holder["first"] is first and by_owner["ada"] is first
    assert vars(first) == {"owner": "ada", "balance": 10, "currency": "EUR", "tags": []}
    assert accounts[0].tags is not accounts[1].tags  # the factory ran per instance
    assert isinstance(first, mod.Account)


def test_thousands_of_instances_each_migrate_by_their_own_state(scenario):
    """The migration's loop repeats what it decided for the first instances of each shape."""
    scn = scenario("mig_fields")
    mod = scn.module
    accounts = [mod.Account(f"o{i}", i * 1_000, legacy=f"l{i}") for i in range(3_000)]
    for i, account in enumerate(accounts):
        if i % 3 == 1:
            account.note = f"n{i}"  # not declared by either version: kept
        elif i % 3 == 2:
            account.legacy = account.amount  # the renamed value, under a dropped name too
    ids = list(map(id, accounts))
    extra = account_policy(scn)
    report = committed(gdsu_fork.update(scn.patch_file(extra=extra)))
    assert report.migrated == len(accounts) and list(map(id, accounts)) == ids
    for i, account in enumerate(accounts):
        expected = {"owner": f"o{i}", "balance": i * 1_000, "currency": "EUR", "tags": []}
        if i % 3 == 1:
            expected["note"] = f"n{i}"
        assert vars(account) == expected and type(account) is mod.Account
    assert len({id(a.tags) for a in accounts}) == len(accounts)


def test_instances_changing_in_many_ways_each_get_their_own_change(scenario):
    """More groups than the migration loop keeps at hand, and more removed names than it
    tracks itself: each instance still gets exactly its own change."""
    scn = scenario("mig_fields")
    mod = scn.module
    accounts = [mod.Account(f"o{i}", i, legacy="l") for i in range(2_000)]
    for i, account in enumerate(accounts):
        vars(account).update({f"x{k}": k for k in range(20)})
        if i % 50 == 0:
            vars(account).update({f"y{k}": k for k in range(40)})
    extra = (
        f"@patch.migrate({scn.module_name + ':Account'!r})\n"
        "def drop_some(old, new, env):\n"
        "    del vars(new)[f'x{int(old.owner[1:]) % 20}']\n"
        "    for name in [n for n in vars(new) if n.startswith('y')]:\n"
        "        del vars(new)[name]\n"
        "    return new\n"
    )
    report = committed(gdsu_fork.update(scn.patch_file(extra=extra)))
    assert report.migrated == len(accounts)
    for i, account in enumerate(accounts):
        expected = {"owner": f"o{i}", **{f"x{k}": k for k in range(20) if k != i % 20}}
        assert vars(account) == expected


def test_removed_field_is_dropped_by_the_default_policy(scenario):
    scn = scenario("mig_fields")
    account = scn.module.Account("ada", 10, legacy="x")
    committed(gdsu_fork.update(scn.patch_file()))
    # by name: fields v2 declares keep their values, fields it no longer declares are dropped
    assert vars(account) == {"owner": "ada"}


def test_computed_fields_with_a_validation_on_pairs(scenario):
    scn = scenario("mig_fields")
    mod = scn.module
    vectors = [mod.Vector3D(1.0, 2.0, 2.0), mod.Vector3D(3.0, 4.0, 12.0)]
    name = f"{scn.module_name}:Vector3D"
    extra = (
        "import math\n"
        f"@patch.migrate({name!r})\n"
        "def to_spherical(old, new, env):\n"
        "    r = math.sqrt(old.x ** 2 + old.y ** 2 + old.z ** 2)\n"
        "    return env.instance(type(new), radius=r, theta=math.acos(old.z / r),"
        " phi=math.atan2(old.y, old.x))\n"
        "@patch.validate\n"
        "def same_lengths(env):\n"
        f"    pairs = env.pairs({name!r})\n"
        "    return len(pairs) == 2 and all(\n"
        "        math.isclose(old.length(), new.length()) for old, new in pairs)\n"
    )
    committed(gdsu_fork.update(scn.patch_file(extra=extra)))
    assert [v.length() for v in vectors] == [3.0, 13.0]
    assert vars(vectors[0]).keys() == {"radius", "theta", "phi"}
    assert math.isclose(vectors[1].theta, math.acos(12 / 13))


def test_failing_length_validation_discards(scenario):
    scn = scenario("mig_fields")
    vector = scn.module.Vector3D(1.0, 2.0, 2.0)
    name = f"{scn.module_name}:Vector3D"
    extra = (
        f"@patch.migrate({name!r})\n"
        "def wrong(old, new, env):\n"
        "    return env.instance(type(new), radius=1.0, theta=0.0, phi=0.0)\n"
        "@patch.validate\n"
        "def same_lengths(env):\n"
        f"    return all(o.length() == n.length() for o, n in env.pairs({name!r}))\n"
    )
    report = gdsu_fork.update(scn.patch_file(extra=extra))
    assert report.outcome == Outcome.DISCARDED and "same_lengths returned False" in report.reason
    assert vars(vector) == {"x": 1.0, "y": 2.0, "z": 2.0} and vector.length() == 3.0


def test_method_only_change_migrates_nothing(scenario):
    scn = scenario("mig_fields")
    plain = scn.module.Plain(1)
    before = vars(plain)
    report = committed(gdsu_fork.update(scn.patch_file()))
    assert plain.show() == "v2 1" and vars(plain) is before
    assert report.migrated == 0


SPLIT = """
@patch.migrate("{mod}:ChMessage")
def split(old, new, env):
    if old.sender is None:
        return env.instance(env.new["{mod}:ChInfoMessage"], room=old.room, text=old.text)
    return env.instance(env.new["{mod}:ChUserMessage"], sender=old.sender, room=old.room, text=old.text)

@patch.validate
def texts_kept(env):
    return all(o.text == n.text for o, n in env.pairs("{mod}:ChMessage"))
"""

MERGE = """
@patch.migrate("{mod}:ChMessage")
def merge(old, new, env):
    return env.instance(env.new["{mod}:ChMessage"], sender=getattr(old, "sender", None),
                        room=old.room, text=old.text)
"""


def test_split_by_state_and_merge_back(scenario):
    scn = scenario("mig_chat")
    mod = scn.module
    room = mod.ChRoom("r1")
    user = mod.ChMessage("ada", room, "hello")
    info = mod.ChMessage(None, room, "ada joined")
    room.history.extend([user, info])
    message_class = mod.ChMessage
    report = committed(gdsu_fork.update(scn.patch_file(extra=SPLIT.format(mod=scn.module_name))))
    assert report.migrated == 2
    assert room.history[0] is user and room.history[1] is info
    assert type(user) is mod.ChUserMessage and type(info) is mod.ChInfoMessage
    assert isinstance(user, message_class) and mod.ChMessage is message_class
    assert user.describe() == "ada@r1: hello" and info.describe() == "system@r1: ada joined"
    assert user.room is room and not hasattr(info, "sender")
    committed(gdsu_fork.update(scn.patch_file("v1", extra=MERGE.format(mod=scn.module_name))))
    assert type(user) is message_class is type(info)
    assert user.describe() == "ada@r1: hello" and info.describe() == "system@r1: ada joined"
    committed(gdsu_fork.update(scn.patch_file(extra=SPLIT.format(mod=scn.module_name))))
    assert type(user) is mod.ChUserMessage and room.history == [user, info]


def test_migration_raising_on_the_70000th_instance_changes_nothing(scenario):
    scn = scenario("mig_chat")
    mod = scn.module
    room = mod.ChRoom("big")
    messages = [mod.ChMessage(f"u{i}", room, f"t{i}") for i in range(100_000)]
    extra = (
        "count = [0]\n"
        f"@patch.migrate('{scn.module_name}:ChMessage')\n"
        "def flaky(old, new, env):\n"
        "    count[0] += 1\n"
        "    if count[0] == 70_000:\n"
        "        raise RuntimeError('instance 70000 is corrupt')\n"
        "    return new\n"
    )
    report = gdsu_fork.update(scn.patch_file(extra=extra), timeout=60)
    assert report.outcome == Outcome.DISCARDED and "instance 70000 is corrupt" in report.reason
    assert "ChMessage instance #70000" in report.reason
    assert all(type(m) is mod.ChMessage for m in messages)
    assert vars(messages[69_999]) == {"sender": "u69999", "room": room, "text": "t69999"}


def test_migration_returning_an_unrelated_object_is_refused(scenario):
    scn = scenario("mig_chat")
    message = scn.module.ChMessage("ada", scn.module.ChRoom("r"), "t")
    extra = f"patch.migrate('{scn.module_name}:ChMessage', lambda old, new, env: 'not a message')\n"
    report = gdsu_fork.update(scn.patch_file(extra=extra))
    assert report.outcome == Outcome.DISCARDED
    assert "builtins.str, which is not a class of the new version" in report.reason
    assert vars(message)["sender"] == "ada" and type(message) is scn.module.ChMessage


def test_pull_up_superclass_change_and_class_attribute(scenario):
    scn = scenario("mig_hierarchy")
    mod = scn.module
    employee = mod.Employee("ada", 7)
    person = mod.Person("bob")
    dog = mod.Dog("rex")
    counter = mod.Counter()
    counter.count = 3
    name = f"{scn.module_name}:Person"
    extra = f"patch.migrate({name!r}, policies.PullUp() | policies.AddDefault('ident', None))\n"
    committed(gdsu_fork.update(scn.patch_file(extra=extra)))
    assert vars(employee) == {"name": "ada", "ident": 7}
    assert vars(person) == {"name": "bob", "ident": None}
    assert dog.title() == "named rex" and dog.sound() == "..."
    assert isinstance(dog, mod.Named) and vars(dog) == {"name": "rex"}
    assert mod.Counter.step == 10 and counter.count == 3


def test_identity_sensitive_things_still_work(scenario):
    import copy
    import pickle
    import weakref

    scn = scenario("mig_identity")
    mod = scn.module
    red = mod.Color.RED
    by_color = {mod.Color.RED: "stop", mod.Color.GREEN: "go"}
    item = mod.Item("pen")
    ref = weakref.ref(item)
    item_class = mod.Item
    extra = f"patch.migrate('{scn.module_name}:Item', policies.AddDefault('qty', 1))\n"
    report = committed(gdsu_fork.update(scn.patch_file(extra=extra)))
    assert report.migrated == 1
    assert mod.Color.RED is red and mod.Color(1) is red and by_color[mod.Color.RED] == "stop"
    assert red.label() == "v2 red" and list(mod.Color) == [red, mod.Color.GREEN]
    assert mod.render("x") == "v2 generic" and mod.render(3) == "v2 int 3"
    assert ref() is item and isinstance(item, item_class) and mod.Item is item_class
    assert vars(item) == {"name": "pen", "qty": 1}
    clone = pickle.loads(pickle.dumps(item))
    assert type(clone) is item_class and clone == item
    assert copy.copy(item) == item and copy.copy(item) is not item


def test_frozen_dataclass_gaining_a_field_migrates_in_place(scenario):
    scn = scenario("mig_layout")
    frozen = scn.module.FrozenData(1)
    holder = [frozen]
    source = "@dataclasses.dataclass(frozen=True)\nclass FrozenData:\n    a: int\n    b: int = 0\n"
    patch = gdsu_fork.Patch("frozen")
    patch.define(f"{scn.module_name}:FrozenData", source)
    patch.migrate(f"{scn.module_name}:FrozenData", gdsu_fork.policies.AddDefault("b", 5))
    report = committed(gdsu_fork.update(patch))
    assert report.migrated == 1 and holder[0] is frozen
    assert (frozen.a, frozen.b) == (1, 5) and frozen == scn.module.FrozenData(1, 5)
    with pytest.raises(AttributeError):
        frozen.a = 2  # still frozen


LAYOUT_CASES = [
    ("DictToSlots", "lambda m: m.DictToSlots(1)", {"a": 1}),
    ("SlotAdded", "lambda m: m.SlotAdded(1)", {"a": 1, "b": 7}),
    ("SlotsData", "lambda m: m.SlotsData(1)", {"a": 1, "b": 7}),
    ("Pair", "lambda m: m.Pair(1)", {"a": 1, "b": 7}),
]


class Holder:
    """An object holding a reference in an attribute."""

    def __init__(self, item):
        self.item = item


@pytest.mark.parametrize(("name", "make", "expected"), LAYOUT_CASES)
def test_layout_changes_lead_every_reference_to_the_migrated_object(scenario, name, make, expected):
    from gdsu_fork.policies import state_of

    scn = scenario("mig_layout")
    mod = scn.module
    item = eval(make)(mod)
    old_class = type(item)
    in_list, in_dict, keyed, in_set = [item], {"k": item}, {item: "v"}, {item}
    holder = Holder(item)
    closure = (lambda held: lambda: held)(item)
    extra = ""
    if "b" in expected:
        extra = f"patch.migrate('{scn.module_name}:{name}', policies.AddDefault('b', 7))\n"
    report = committed(gdsu_fork.update(scn.patch_file(extra=extra)))
    new = in_list[0]
    assert new is not item and type(new) is getattr(mod, name) is not old_class
    assert in_dict["k"] is new and keyed[new] == "v" and in_set == {new}
    assert holder.item is new and closure() is new
    if name == "DictToSlots":
        assert state_of(new) == {"a": 1}
    else:
        assert {k: getattr(new, k) for k in expected} == expected
    assert report.migrated >= 1


def test_layout_change_with_a_reference_in_a_tuple_is_refused(scenario):
    scn = scenario("mig_layout")
    item = scn.module.SlotAdded(1)
    frozen = (item, "other")
    report = gdsu_fork.update(scn.patch_file())
    assert report.outcome == Outcome.DISCARDED
    assert "but a tuple (" in report.reason and "SlotAdded" in report.reason
    assert frozen[0] is item and type(item) is scn.module.SlotAdded and item.a == 1


def test_layout_change_with_a_reference_in_a_running_threads_locals_is_refused(scenario):
    import threading

    scn = scenario("mig_layout")
    ready, release = threading.Event(), threading.Event()

    def worker(held=None):
        local_item = scn.module.DictToSlots(1)
        ready.set()
        release.wait(30)
        return local_item

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        assert ready.wait(10)
        report = gdsu_fork.update(scn.patch_file())
    finally:
        release.set()
        thread.join(10)
    assert report.outcome == Outcome.DISCARDED
    assert "local variable 'local_item'" in report.reason


def test_validations_see_the_classes_of_the_committed_environment(scenario):
    scn = scenario("mig_chat")
    message = scn.module.ChMessage("ada", scn.module.ChRoom("r"), "hi")
    mod = scn.module_name
    extra = SPLIT.format(mod=mod) + (
        "@patch.validate\n"
        "def classes_match(env):\n"
        f"    user = env.new['{mod}:ChUserMessage']\n"
        f"    return all(type(n) is user for o, n in env.pairs('{mod}:ChMessage'))\n"
    )
    committed(gdsu_fork.update(scn.patch_file(extra=extra)))
    assert type(message) is scn.module.ChUserMessage


class _WithProperty:
    @property
    def shown(self) -> str:
        return "computed"


class _Counted:
    made = 0

    def __new__(cls):
        cls.made += 1
        return super().__new__(cls)


def test_env_instance_is_the_same_on_its_first_and_later_calls():
    """Later calls for a plain class take a C path: same result as the first, Python one."""
    from gdsu_fork.env import Env

    env = Env({}, {})
    first, later = (env.instance(_WithProperty, a=1, cls="c") for _ in range(2))
    for obj in (first, later):
        assert type(obj) is _WithProperty and vars(obj) == {"a": 1, "cls": "c"}
    assert type(env.instance(_WithProperty)) is _WithProperty  # no attributes at all
    for _ in range(3):  # a class with its own __new__ keeps going through it
        env.instance(_Counted, x=1)
    assert _Counted.made == 3
