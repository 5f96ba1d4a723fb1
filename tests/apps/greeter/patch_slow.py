"""v2, after a pause in the update child long enough for a second request to arrive."""

import time

from gdsu_fork import Patch

patch = Patch("greeting v2, slowly")
patch.module("greeting", "v2/greeting.py")
time.sleep(1.5)
