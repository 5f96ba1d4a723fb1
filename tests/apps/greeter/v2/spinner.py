"""v2 of spinner: `spin` changed, so a thread inside it blocks the update."""

import time


def spin():
    while True:
        time.sleep(0.02)
