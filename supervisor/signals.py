"""Signals as messages: one thread waits for them and queues each on a pipe the main loop polls.

The signals are blocked in every thread and taken with `sigwaitinfo`, which also says who sent
each one: a Ctrl-C the terminal sent to the whole foreground group (si_code SI_KERNEL) already
reached the app, so forwarding it would deliver it twice; a `kill` from someone (SI_USER) was
meant for the supervisor and is forwarded. The app's bootstrap unblocks them again.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import struct
import threading

HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD)
SI_KERNEL = 0x80
"""si_code of a signal the kernel generated (a terminal's Ctrl-C or hangup), see siginfo.h."""

_RECORD = struct.Struct("iii")


@dataclasses.dataclass(frozen=True)
class SignalInfo:
    """One signal received: its number, si_code and the sending pid."""

    signo: int
    code: int
    pid: int

    @property
    def from_terminal(self) -> bool:
        """True if the kernel sent it to the whole process group (the app got it too)."""
        return self.code == SI_KERNEL


class SignalQueue:
    """Blocks `HANDLED` and turns each arrival into a `SignalInfo` readable from `fileno()`.

    Create it in the main thread before any other thread starts, so every thread inherits the mask.
    """

    def __init__(self) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
        self._read, self._write = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(self._read, False)
        self._thread = threading.Thread(target=self._wait, name="gdsu-signals", daemon=True)
        self._thread.start()

    def _wait(self) -> None:
        while True:
            info = signal.sigwaitinfo(HANDLED)
            os.write(self._write, _RECORD.pack(info.si_signo, info.si_code, info.si_pid))

    def fileno(self) -> int:
        """The pipe end to poll for readability."""
        return self._read

    def read(self) -> list[SignalInfo]:
        """The signals received since the last call."""
        try:
            data = os.read(self._read, _RECORD.size * 256)
        except BlockingIOError:
            return []
        # Records are smaller than PIPE_BUF, so each write, and thus each read, holds whole ones.
        return [SignalInfo(*fields) for fields in _RECORD.iter_unpack(data)]
