"""Pause of a code-only update, and the bare cost of a fork, as the process's heap grows.

A code-only update migrates nothing: its pause should grow only with the fork's page-table copy
(about 20 ms per GB), never with a walk of the heap. Each size runs in a fresh process; medians
over the trials.

    python benchmarks/code_pause.py            # 0.1, 0.5 and 1 GB heaps, 5 trials
    python benchmarks/code_pause.py --quick    # 0.1 GB, 3 trials
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

V1 = "def handler(x):\n    return x + 1\n"
V2 = "def handler(x):\n    return x + 2\n"

WORKER = """
import gc, json, os, sys, time
import psutil
sys.path.insert(0, sys.argv[1])
import codebench, gdsu_fork
megabytes, trials = int(sys.argv[2]), int(sys.argv[3])
# about 1 KiB per entry: a dict holding a list and a string, as live program state would
heap = [{"id": i, "tags": [i, str(i)], "blob": str(i).ljust(900)} for i in range(megabytes * 1024)]
rss = psutil.Process().memory_info().rss / 2**20
forks, pauses, totals = [], [], []
for trial in range(trials):
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    forks.append((time.perf_counter() - started) * 1000)
    os.waitpid(pid, 0)
    version = "v2" if trial % 2 == 0 else "v1"
    report = gdsu_fork.update(sys.argv[1] + f"/patch_{version}.py", timeout=120)
    assert report.outcome == "committed", report.reason
    assert codebench.handler(1) == (3 if version == "v2" else 2)
    pauses.append(report.timings["pause"])
    totals.append(report.timings["total"])
print(json.dumps({"rss_mib": rss, "fork_ms": forks, "pause_ms": pauses, "total_ms": totals}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one small heap, 3 trials (for CI)")
    parser.add_argument("--sizes-mb", type=int, nargs="*", default=None)
    parser.add_argument("--trials", type=int, default=None)
    args = parser.parse_args()
    sizes = args.sizes_mb or ([100] if args.quick else [100, 500, 1000])
    trials = args.trials or (3 if args.quick else 5)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "codebench.py").write_text(V1)
        for version, source in (("v1", V1), ("v2", V2)):
            (work / f"codebench_{version}.py").write_text(source)
            (work / f"patch_{version}.py").write_text(
                "from gdsu_fork import Patch\n"
                f"patch = Patch('code only {version}')\n"
                f"patch.module('codebench', 'codebench_{version}.py')\n"
            )
        for size in sizes:
            done = subprocess.run(
                [sys.executable, "-c", WORKER, str(work), str(size), str(trials)],
                capture_output=True,
                text=True,
                timeout=1800,
            )
            if done.returncode != 0:
                raise RuntimeError(done.stderr[-3000:])
            result = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append(
                {
                    "heap_mb": size,
                    "rss_mib": result["rss_mib"],
                    "fork_ms": statistics.median(result["fork_ms"]),
                    "pause_ms": statistics.median(result["pause_ms"]),
                    "total_ms": statistics.median(result["total_ms"]),
                    "raw": result,
                }
            )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "code_pause.json"
    meta = {"python": platform.python_version(), "cpus": os.cpu_count(), "trials": trials}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"{'heap':>8} {'RSS MiB':>8} {'fork ms':>8} {'pause ms':>9} {'total ms':>9}")
    for r in rows:
        print(
            f"{r['heap_mb']:>6}MB {r['rss_mib']:>8.0f} {r['fork_ms']:>8.1f} "
            f"{r['pause_ms']:>9.1f} {r['total_ms']:>9.1f}"
        )
    print(f"(medians of {trials}; Python {meta['python']}; {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
