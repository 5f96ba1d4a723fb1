"""A v1 -> v2 patch whose migration hangs: the update child is killed at the update timeout."""

import time

from gdsu_fork import Patch

patch = Patch("chat: split messages, hanging in the update child")
patch.module("chat.model", "../../v2/chat/model.py")


@patch.migrate("chat.model:ChMessage")
def hang(old, new, env):
    """Never returns in time (an hour is far past any update timeout)."""
    time.sleep(3600)
