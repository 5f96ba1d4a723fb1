"""chat v1 -> v2 as `v1_to_v2.py`, without its validation over every migrated message.

For benchmarks: what the pause costs when no validation needs the pairs of old and migrated
instances (`env.pairs`). With one, the pause child rebuilds every pair, the reused ones too,
and runs the check on all of them.
"""

from gdsu_fork import Patch, policies

patch = Patch("chat: split messages into user and info messages (no validation)")
patch.module("chat.model", "../v2/chat/model.py")


@patch.migrate("chat.model:ChMessage")
@policies.pure  # reads only the message's own fields
def split(old, new, env):
    """A message with a sender becomes a ChUserMessage, one without a ChInfoMessage."""
    if old.sender is None:
        return env.instance(env.new["chat.model:ChInfoMessage"], room=old.room, text=old.text)
    cls = env.new["chat.model:ChUserMessage"]
    return env.instance(cls, sender=old.sender, room=old.room, text=old.text)
