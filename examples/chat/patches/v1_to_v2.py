"""chat v1 -> v2: split each message by its state into a ChUserMessage or a ChInfoMessage."""

from gdsu_fork import Patch, policies

patch = Patch("chat: split messages into user and info messages")
patch.module("chat.model", "../v2/chat/model.py")


@patch.migrate("chat.model:ChMessage")
@policies.pure  # reads only the message's own fields
def split(old, new, env):
    """A message with a sender becomes a ChUserMessage, one without a ChInfoMessage."""
    if old.sender is None:
        return env.instance(env.new["chat.model:ChInfoMessage"], room=old.room, text=old.text)
    cls = env.new["chat.model:ChUserMessage"]
    return env.instance(cls, sender=old.sender, room=old.room, text=old.text)


@patch.validate
def messages_kept(env):
    """Every message keeps its room, text and sender, and has the class its sender implies."""
    user_cls, info_cls = env.new["chat.model:ChUserMessage"], env.new["chat.model:ChInfoMessage"]
    return all(
        type(n) is (info_cls if o.sender is None else user_cls)
        and (o.room, o.text, o.sender) == (n.room, n.text, n.sender)
        for o, n in env.pairs("chat.model:ChMessage")
    )
