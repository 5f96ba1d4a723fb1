"""Count SIGINTs: after the first, give a duplicate half a second to arrive, print the count."""

import signal
import threading
import time

received = []
first = threading.Event()


def on_sigint(signo, frame):
    received.append(signo)
    first.set()


signal.signal(signal.SIGINT, on_sigint)
print("ready", flush=True)
first.wait(60)
time.sleep(0.5)
print(f"sigints {len(received)}", flush=True)
