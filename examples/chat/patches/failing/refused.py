"""A v1 -> v2 patch whose validation refuses: the rehearsal finds it, the server never pauses."""

from gdsu_fork import Patch

patch = Patch("chat: split messages, refused by its validation")
patch.module("chat.model", "../../v2/chat/model.py")


@patch.migrate("chat.model:ChMessage")
def split(old, new, env):
    """As in v1_to_v2.py."""
    if old.sender is None:
        return env.instance(env.new["chat.model:ChInfoMessage"], room=old.room, text=old.text)
    cls = env.new["chat.model:ChUserMessage"]
    return env.instance(cls, sender=old.sender, room=old.room, text=old.text)


@patch.validate
def refuse(env):
    """Always says no, as a validation that finds a real problem would."""
    return False
