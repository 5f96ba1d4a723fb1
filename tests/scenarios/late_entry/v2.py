"""A signal handler that an update changes: C code calls it, wherever the main thread waits."""

handled = []


def on_signal(signum, frame):
    handled.append("v2")
