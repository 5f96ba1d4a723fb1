"""Standard library update: every queue.Queue remembers its high-water mark.

The chat keeps each user's pending messages in a `queue.Queue` (pure Python), so the running
server has one live instance per user. New queues start at 0; a live queue starts at its
current length.
"""

from gdsu_fork import Patch

patch = Patch("queue: remember each queue's high-water mark")

patch.define(
    "queue:Queue._init",
    """
def _init(self, maxsize):
    self.queue = deque()
    self.high_water = 0
""",
)
patch.define(
    "queue:Queue._put",
    """
def _put(self, item):
    self.queue.append(item)
    if len(self.queue) > self.high_water:
        self.high_water = len(self.queue)
""",
)


@patch.migrate("queue:Queue")
def start_high_water(old, new, env):
    """A live queue's mark starts at its length (read without its mutex, which is not ours)."""
    new.high_water = len(old.queue)
    return new


@patch.validate
def every_queue_has_a_mark(env):
    """No live queue is left without the attribute the new _put reads."""
    return all(n.high_water == len(o.queue) for o, n in env.pairs("queue:Queue"))
