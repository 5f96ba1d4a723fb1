"""A thread that never leaves `spin`: an update changing `spin` can never reach a safe point."""

import time


def spin():
    while True:
        time.sleep(0.01)
