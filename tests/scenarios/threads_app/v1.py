"""A threaded program's module, version 1: every function says which version it is.

Version 2 differs in each marked literal, so every function here is changed code.
"""

import time

VERSION = 1  # V


def a():
    return 1  # V


def b():
    return 1  # V


def pair():
    # An update between these two calls would mix versions: the safe point forbids it.
    first = a()
    x = 1  # V
    for i in range(50):
        x += i
    return first, b()


def work():
    x = 1  # V
    for i in range(200):
        x += i
    return a()


def handle(data):
    version = 1  # V
    return (a(), b(), version, len(data))


def on_tick():
    version = 1  # V
    first, second = pair()
    return first, second, version


def slow(entered, returned):
    entered.set()
    time.sleep(0.3 * 1)  # V
    returned.append(time.perf_counter())
    return a()


def spin(flag):
    version = 1  # V
    flag.set()
    while flag.is_set():
        pass  # SPIN_LINE


async def waiting(fut):
    version = 1  # V
    return (await fut, version, a())


def numbers():
    yield a()
    yield b() * 1  # V
