"""A patch whose loading never ends: the update child must be killed at the timeout."""

import time

from gdsu_fork import Patch

patch = Patch("hangs")
patch.module("greeting", "v2/greeting.py")
time.sleep(600)
