"""A patch that rewrites the app's ballast in the update child: copy-on-write grows its memory.

The child's address space does not grow (no rlimit catches it); its own resident pages do.
"""

import sys
import time

from gdsu_fork import Patch

patch = Patch("dirties memory")
patch.module("greeting", "v2/greeting.py")
ballast = sys.modules["__main__"].BALLAST
for start in range(0, len(ballast), 2**20):
    ballast[start : start + 2**20] = b"\x02" * 2**20
    time.sleep(0.002)
time.sleep(600)
