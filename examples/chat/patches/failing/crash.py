"""A v1 -> v2 patch whose migration kills the update child with SIGSEGV."""

import os
import signal

from gdsu_fork import Patch

patch = Patch("chat: split messages, crashing the update child")
patch.module("chat.model", "../../v2/chat/model.py")


@patch.migrate("chat.model:ChMessage")
def crash(old, new, env):
    """Dies the way a faulty C extension would."""
    os.kill(os.getpid(), signal.SIGSEGV)
