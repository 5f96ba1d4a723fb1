"""chat v2 -> v1: merge ChUserMessage and ChInfoMessage back into one ChMessage class."""

from gdsu_fork import Patch, policies

patch = Patch("chat: merge user and info messages into ChMessage")
patch.module("chat.model", "../v1/chat/model.py")


@patch.migrate("chat.model:ChMessage")
@policies.pure  # reads only the message's own fields (an info message's sender: its class's None)
def merge(old, new, env):
    """Every message becomes a ChMessage; an info message's sender is None."""
    cls = env.new["chat.model:ChMessage"]
    return env.instance(cls, sender=old.sender, room=old.room, text=old.text)


@patch.validate_each("chat.model:ChMessage")
def message_kept(old, new, env):
    """The message keeps its room, text and sender, and is a plain ChMessage."""
    kept = (old.room, old.text, old.sender) == (new.room, new.text, new.sender)
    return kept and type(new) is env.new["chat.model:ChMessage"]
