"""What the copy-on-write write detector (gdsu_fork.cow) costs, per object and per page.

For N plain instances (three attributes each): `state_pages` (taken after the fork), `unique`
(sorting once, also before the pause), then in the pause `written` (pagemap reads for the unique
pages, a sentinel alive) and `dirty`; 1% of the instances are changed after the fork, either
next to each other or spread evenly (every 100th: most pages then hold a changed instance, so most
instances read as dirty). Each size runs in a fresh process; times are medians of the repeats and
are shown for the clustered changes.

    python benchmarks/cow_pages.py                # 100k and 1M instances, 5 repeats
    python benchmarks/cow_pages.py --quick        # 10k and 100k, 3 repeats
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from typing import Any

WORKER = """
import gc, json, statistics, sys, time
from gdsu_fork import cow

class Plain:
    def __init__(self, i):
        self.a = i
        self.b = None
        self.c = "x"

count, repeats = int(sys.argv[1]), int(sys.argv[2])
objects = [Plain(i) for i in range(count)]
gc.collect()
gc.disable()

def timed(fn):
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        runs.append(time.perf_counter() - t)
    return result, statistics.median(runs)

def measure(changed):
    with cow.open_sentinel():
        state, t_state = timed(lambda: cow.state_pages(objects))
        for o in changed:
            o.a = -1
        _, t_unique = timed(lambda: cow.StatePages(state.pages, state.starts).unique())
        unique = state.unique()
        flags, t_written = timed(lambda: cow.written(unique))
        dirty, t_dirty = timed(lambda: cow.dirty(state, flags))
        few = unique[: 10_000]
        _, t_written_10k = timed(lambda: cow.written(few))
    return {
        "entries": len(state.pages),
        "unique": len(unique),
        "written": sum(flags),
        "dirty": len(dirty),
        "state_pages_s": t_state,
        "unique_s": t_unique,
        "written_s": t_written,
        "written_10k_s": t_written_10k,
        "dirty_s": t_dirty,
    }

# The same number of changed instances (1%), next to each other or spread evenly.
clustered = measure(objects[: count // 100])
spread = measure(objects[:: 100])
print(json.dumps({"count": count, "clustered": clustered, "spread": spread}))
"""


def run(count: int, repeats: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", WORKER, str(count), str(repeats)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10k and 100k, 3 repeats")
    args = parser.parse_args()
    sizes, repeats = ([10_000, 100_000], 3) if args.quick else ([100_000, 1_000_000], 5)
    print(f"Python {platform.python_version()}, {platform.machine()}; 1% of the instances changed")
    print(
        f"{'objects':>9} {'unique pages':>12} {'pages/100k':>10} {'state_pages':>14}"
        f" {'unique':>9} {'written':>9} {'written 10k':>11} {'dirty':>9}"
        f" {'dirty if changes clustered':>26} {'if spread':>9}"
    )
    for count in sizes:
        r = run(count, repeats)
        c, s = r["clustered"], r["spread"]
        print(
            f"{count:>9} {c['unique']:>12} {c['unique'] * 100_000 / count:>10.0f}"
            f" {c['state_pages_s'] * 1e3:>7.1f} ms {c['state_pages_s'] / count * 1e9:>3.0f}ns"
            f" {c['unique_s'] * 1e3:>6.1f} ms {c['written_s'] * 1e3:>6.2f} ms"
            f" {c['written_10k_s'] * 1e3:>8.2f} ms {c['dirty_s'] * 1e3:>6.2f} ms"
            f" {c['dirty'] / count:>26.1%} {s['dirty'] / count:>9.1%}"
        )


if __name__ == "__main__":
    main()
