"""Revert core_queue.py: queue.Queue forgets its high-water mark again."""

from gdsu_fork import Patch

patch = Patch("queue: back to the standard library's Queue")

patch.define(
    "queue:Queue._init",
    """
def _init(self, maxsize):
    self.queue = deque()
""",
)
patch.define(
    "queue:Queue._put",
    """
def _put(self, item):
    self.queue.append(item)
""",
)


@patch.migrate("queue:Queue")
def drop_high_water(old, new, env):
    """The mark goes; every other attribute stays as it was."""
    vars(new).pop("high_water", None)
    return new


@patch.validate
def no_queue_keeps_a_mark(env):
    """No live queue keeps the attribute."""
    return all(not hasattr(n, "high_water") for _, n in env.pairs("queue:Queue"))
