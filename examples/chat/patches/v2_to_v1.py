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


@patch.validate
def messages_kept(env):
    """Every message keeps its room, text and sender, and is a plain ChMessage."""
    cls = env.new["chat.model:ChMessage"]
    return all(
        type(n) is cls and (o.room, o.text, o.sender) == (n.room, n.text, n.sender)
        for o, n in env.pairs("chat.model:ChMessage")
    )
