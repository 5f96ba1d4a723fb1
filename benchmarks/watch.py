"""Live programming: time from a save to its effect in the running program (gdsu-supervise --watch).

The program runs under gdsu-supervise --watch, holding N live objects (instances of a class,
tracked by the garbage collector, as an application's are), with a thread that calls a
function of a watched module and prints (value, time) on stdout the moment the value changes.
Each trial saves a new version of that module (alternately by rename and in place) and reads the
program's line: save -> effect is the difference of the two clocks (one machine). Also reported:
the update's own timings from the supervisor's journal. Target (DESIGN §9): median <= 30 ms.

    python benchmarks/watch.py                      # N = 0 and 1M, 25 trials each
    python benchmarks/watch.py --objects 0 --trials 10 --spin
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"

APP = """
import os, sys, threading, time
import latmod



class Item:
    def __init__(self, i):
        self.i = i


heap = [Item(i) for i in range(int(os.environ["WATCH_BENCH_OBJECTS"]))]


def watch():
    last = latmod.value()
    spin = os.environ.get("WATCH_BENCH_SPIN") == "1"
    while True:
        if not spin:
            time.sleep(0.0002)
        value = latmod.value()
        if value != last:
            print(value, time.time(), flush=True)
            last = value


print("ready", flush=True)
watch()
"""


def _save(path: Path, text: str, *, rename: bool) -> float:
    """Write `text` as an editor would; the time of the save."""
    if rename:
        temp = path.with_name(f".{path.name}.tmp")
        temp.write_text(text)
        now = time.time()
        os.replace(temp, path)
        return now
    now = time.time()
    with open(path, "w") as f:
        f.write(text)
    return now


def measure(objects: int, trials: int, *, spin: bool) -> dict[str, Any]:
    """Start a supervised program, save `trials` versions, return latencies and timings."""
    root = Path(tempfile.mkdtemp(prefix="gdsu-watch-bench-", dir="/tmp"))
    src = root / "src"
    src.mkdir()
    module = src / "latmod.py"
    module.write_text("def value():\n    return 0\n")
    (src / "app.py").write_text(APP)
    env = dict(
        os.environ,
        XDG_RUNTIME_DIR=str(root),
        XDG_STATE_HOME=str(root / "state"),
        WATCH_BENCH_OBJECTS=str(objects),
        WATCH_BENCH_SPIN="1" if spin else "0",
    )
    name = f"watchbench{os.getpid()}"
    command = [sys.executable, "-m", "supervisor.cli", "--name", name, "--watch", str(src)]
    with open(root / "supervisor.err", "w") as err:
        proc = subprocess.Popen(
            [*command, "--", str(src / "app.py")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    latencies = []
    try:
        if proc.stdout is None or proc.stdout.readline().strip() != "ready":
            msg = f"the program did not start; see {root / 'supervisor.err'}"
            raise RuntimeError(msg)
        # The first save waits for the agent to connect: not a trial.
        for k in range(trials + 1):
            saved = _save(module, f"def value():\n    return {k + 1}\n", rename=k % 2 == 0)
            value, seen = proc.stdout.readline().split()
            assert int(value) == k + 1, (value, k + 1)
            if k:
                latencies.append((float(seen) - saved) * 1000)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    journal = root / "state" / "gdsu" / name / "journal.jsonl"
    updates = [
        r for r in map(json.loads, journal.read_text().splitlines()) if r["event"] == "update"
    ][1:]
    phases = {
        phase: round(statistics.median(u["timings"].get(phase, 0.0) for u in updates), 1)
        for phase in ("rehearse", "wait", "pause", "commit", "total")
    }
    return {
        "objects": objects,
        "spin": spin,
        "trials": trials,
        "median_ms": round(statistics.median(latencies), 1),
        "p90_ms": round(sorted(latencies)[int(0.9 * len(latencies))], 1),
        "min_ms": round(min(latencies), 1),
        "max_ms": round(max(latencies), 1),
        "update_median_ms": phases,
        "committed": sum(u["outcome"] == "committed" for u in updates),
    }


def main() -> None:
    """Run the sizes asked for; write results/watch.json; print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, nargs="+", default=None)
    parser.add_argument("--trials", type=int, default=None)
    parser.add_argument("--spin", action="store_true", help="a CPU-bound thread in the program")
    parser.add_argument("--quick", action="store_true", help="100k objects, 5 saves (for CI)")
    args = parser.parse_args()
    sizes = args.objects or ([0, 100_000] if args.quick else [0, 1_000_000])
    trials = args.trials or (5 if args.quick else 25)
    rows = [measure(n, trials, spin=args.spin) for n in sizes]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "watch.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"{'objects':>9} {'median':>8} {'p90':>8} {'update':>8} {'rehearse':>9} {'pause':>7}")
    for r in rows:
        u = r["update_median_ms"]
        print(
            f"{r['objects']:>9} {r['median_ms']:>7.1f}ms {r['p90_ms']:>7.1f}ms "
            f"{u['total']:>7.1f}ms {u['rehearse']:>8.1f}ms {u['pause']:>6.1f}ms"
        )


if __name__ == "__main__":
    main()
