"""How fast the safe-point wait reacts, what it costs a busy program, and what the freeze adds.

Three questions, each against `paused_at_safe_point` with real threads:

1. reaction: a thread returns from the changed function that blocked the update; how long until
   every thread is parked (median, p99)? Alone, and next to 4 busy threads.
2. throughput: 8 threads busy in unchanged code; their loop rate while an update waits for a
   blocked thread, relative to the same program with no update (alternating windows).
3. freeze: with 10 and 200 threads (8 busy, the rest waking from waits), the time from the
   start of the freeze to the pause, and from the end of the pause to the threads' release.

Writes benchmarks/results/safepoint.json and prints a table. `--quick` for a short run.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

from gdsu_fork.safepoint import paused_at_safe_point

RESULTS = Path(__file__).parent / "results" / "safepoint.json"


def changed(release: threading.Event, returned: list[float]) -> None:
    """The function the update changes: a thread waits inside it, then returns."""
    release.wait(30)
    returned.append(time.perf_counter())


def work() -> int:
    x = 0
    for i in range(100):
        x += i
    return x


class Busy:
    """`n` threads looping over unchanged code, counting loops."""

    def __init__(self, n: int) -> None:
        self.counts = [0] * n
        self.stop = False
        self.threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(n)
        ]

    def _run(self, i: int) -> None:
        counts = self.counts
        while not self.stop:
            work()
            counts[i] += 1

    def __enter__(self) -> Busy:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop = True
        for t in self.threads:
            t.join(10)

    def total(self) -> int:
        return sum(self.counts)


def in_updater(fn) -> object:
    """Run `fn` in an update thread (as the agent does) and return its result."""
    out: list[object] = []
    thread = threading.Thread(target=lambda: out.append(fn()))
    thread.start()
    thread.join(60)
    if not out:
        raise RuntimeError("the update thread failed or hung")
    return out[0]


def one_reaction() -> float:
    """Seconds from the blocking frame's return to the pause."""
    release = threading.Event()
    returned: list[float] = []
    inside = threading.Event()

    def blocker() -> None:
        inside.set()
        changed(release, returned)

    thread = threading.Thread(target=blocker, daemon=True)
    thread.start()
    inside.wait(10)

    def update() -> float:
        with paused_at_safe_point(
            [changed.__code__], timeout=20, on_blocked=lambda _: release.set()
        ):
            return time.perf_counter()

    frozen = in_updater(update)
    thread.join(10)
    return frozen - returned[0]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def reaction(trials: int, busy: int) -> dict[str, float]:
    with Busy(busy):
        samples = [one_reaction() for _ in range(trials)]
    ms = [s * 1000 for s in samples]
    return {
        "trials": trials,
        "busy_threads": busy,
        "median_ms": statistics.median(ms),
        "p99_ms": percentile(ms, 0.99),
        "max_ms": max(ms),
    }


def rate_while_waiting(busy: Busy, window: float) -> float:
    """Loops per second of `busy` while an update waits for a thread inside changed code."""
    release = threading.Event()
    returned: list[float] = []
    blocker = threading.Thread(target=changed, args=(release, returned), daemon=True)
    blocker.start()
    armed = threading.Event()

    def update() -> None:
        with paused_at_safe_point([changed.__code__], timeout=60, on_blocked=lambda _: armed.set()):
            pass

    updater = threading.Thread(target=update)
    updater.start()
    armed.wait(10)
    start = busy.total()
    time.sleep(window)
    rate = (busy.total() - start) / window
    release.set()
    updater.join(30)
    blocker.join(10)
    return rate


def throughput(window: float, rounds: int) -> dict[str, float]:
    """Loop rate of 8 busy threads during an update's wait, relative to no update.

    Each round is a pair of adjacent windows, plain then waiting; the ratio is the median of
    the pairs' ratios, so that the shared machine's slow drifts cancel out within a pair."""
    plain: list[float] = []
    waiting: list[float] = []
    with Busy(8) as busy:
        time.sleep(window)  # warm-up
        for _ in range(rounds):
            start = busy.total()
            time.sleep(window)
            plain.append((busy.total() - start) / window)

            waiting.append(rate_while_waiting(busy, window))
    ratios = [w / p for w, p in zip(waiting, plain, strict=True)]
    quartiles = statistics.quantiles(ratios, n=4)
    return {
        "window_s": window,
        "rounds": rounds,
        "loops_per_s_plain": statistics.median(plain),
        "loops_per_s_waiting": statistics.median(waiting),
        "ratio": statistics.median(ratios),
        "ratio_q1": quartiles[0],
        "ratio_q3": quartiles[2],
    }


def freeze(threads: int, trials: int) -> dict[str, float]:
    """Time to freeze and to release `threads` threads (8 busy, the rest in short waits)."""
    stop = threading.Event()

    def waiter() -> None:
        while not stop.wait(0.01):
            pass

    waiters = [threading.Thread(target=waiter, daemon=True) for _ in range(threads - 8)]
    for t in waiters:
        t.start()
    enter: list[float] = []
    leave: list[float] = []
    try:
        with Busy(8) as busy:

            def update() -> tuple[float, float, float]:
                started = time.perf_counter()
                with paused_at_safe_point([changed.__code__], timeout=20):
                    frozen = time.perf_counter()
                return started, frozen, time.perf_counter()

            for _ in range(trials):
                before = busy.total()
                started, frozen, left = in_updater(update)
                enter.append((frozen - started) * 1000)
                leave.append((left - frozen) * 1000)
                deadline = time.monotonic() + 10
                while busy.total() == before and time.monotonic() < deadline:
                    time.sleep(0.001)
    finally:
        stop.set()
        for t in waiters:
            t.join(10)
    return {
        "threads": threads,
        "trials": trials,
        "freeze_median_ms": statistics.median(enter),
        "freeze_p99_ms": percentile(enter, 0.99),
        "release_median_ms": statistics.median(leave),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer trials, shorter windows")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the JSON")
    args = parser.parse_args(argv)
    trials = 40 if args.quick else 250
    results = {
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {platform.system()}",
        "quick": args.quick,
        "reaction": [reaction(trials, 0), reaction(trials, 4)],
        "throughput": throughput(0.2 if args.quick else 1.0, 3 if args.quick else 12),
        "freeze": [freeze(10, 10 if args.quick else 50), freeze(200, 5 if args.quick else 20)],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")

    print(f"safe point and freeze, Python {results['python']}")
    print(f"{'measure':<44} {'median':>9} {'p99':>9}")
    for r in results["reaction"]:
        label = f"reaction, return -> frozen ({r['busy_threads']} busy threads)"
        print(f"{label:<44} {r['median_ms']:>7.3f}ms {r['p99_ms']:>7.3f}ms")
    t = results["throughput"]
    label = "busy throughput while an update waits"
    quartiles = f"({100 * t['ratio_q1']:.1f}-{100 * t['ratio_q3']:.1f}%)"
    print(f"{label:<44} {100 * t['ratio']:>8.1f}% {quartiles}")
    for f in results["freeze"]:
        label = f"freeze, {f['threads']} threads"
        print(f"{label:<44} {f['freeze_median_ms']:>7.3f}ms {f['freeze_p99_ms']:>7.3f}ms")
        label = f"release, {f['threads']} threads"
        print(f"{label:<44} {f['release_median_ms']:>7.3f}ms")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
