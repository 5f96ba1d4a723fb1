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


@patch.validate_each("chat.model:ChMessage")
def message_kept(old, new, env):
    """The message keeps its room, text and sender, and has the class its sender implies.

    Checked per message where it was migrated: in the rehearsal for the messages taken from it,
    in the pause for those migrated there.
    """
    kind = "ChInfoMessage" if old.sender is None else "ChUserMessage"
    kept = (old.room, old.text, old.sender) == (new.room, new.text, new.sender)
    return kept and type(new) is env.new[f"chat.model:{kind}"]
