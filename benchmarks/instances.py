"""Pause, total time, child peak memory and delta size as the number of migrated instances grows.

The migration is the chat model's message split (one class into a user and an info subclass,
chosen by state), in a process that also holds 1M unrelated objects. It runs twice per size: with
the split declared pure (`@policies.pure`: migrated ahead of the pause, reused in it where the
instance did not change) and undeclared (every instance migrated in the pause). Each measurement
runs in a fresh process; the table shows medians over the trials.

    python benchmarks/instances.py            # 0, 1k, 10k, 100k, 1M instances, 3 trials
    python benchmarks/instances.py --quick    # 0, 1k, 10k, 1 trial, 100k unrelated objects
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

HERE = Path(__file__).resolve().parent
MODEL = HERE.parent / "tests" / "scenarios" / "mig_chat"
RESULTS = HERE / "results"

PATCH = """
from gdsu_fork import Patch, policies

patch = Patch("chat: split messages")
patch.module("benchchat", "benchchat_v2.py")


@patch.migrate("benchchat:ChMessage")
{decorator}
def split(old, new, env):
    if old.sender is None:
        return env.instance(env.new["benchchat:ChInfoMessage"], room=old.room, text=old.text)
    return env.instance(
        env.new["benchchat:ChUserMessage"], sender=old.sender, room=old.room, text=old.text
    )
"""

WORKER = """
import json, resource, sys
sys.path.insert(0, sys.argv[1])
import benchchat, gdsu_fork
count, unrelated_count = int(sys.argv[2]), int(sys.argv[3])
unrelated = [{"k": i} for i in range(unrelated_count)]
rooms = [benchchat.ChRoom(f"room{i}") for i in range(10)]
messages = [
    benchchat.ChMessage(None if i % 3 == 0 else f"user{i % 10}", rooms[i % 10], f"text {i}")
    for i in range(count)
]
report = gdsu_fork.update(sys.argv[1] + "/patch.py", timeout=600)
assert report.outcome == "committed", report.reason
assert report.migrated == count, (report.migrated, count)
kinds = {type(m).__name__ for m in messages}
assert kinds <= {"ChUserMessage", "ChInfoMessage"}, kinds
child_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"timings": report.timings, "delta_bytes": report.delta_bytes,
                  "reused": report.reused, "child_peak_rss_mib": child_kib / 1024}))
"""


POLICIES = {"pure": "@policies.pure", "impure": ""}


def run_once(workdir: Path, policy: str, count: int, unrelated: int) -> dict:
    (workdir / "patch.py").write_text(PATCH.format(decorator=POLICIES[policy]))
    done = subprocess.run(
        [sys.executable, "-c", WORKER, str(workdir), str(count), str(unrelated)],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if done.returncode != 0:
        raise RuntimeError(f"worker failed for {count} instances:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarize(policy: str, count: int, runs: list[dict]) -> dict:
    def median(key: str) -> float:
        return statistics.median(r["timings"][key] for r in runs)

    return {
        "policy": policy,
        "instances": count,
        "pause_ms": median("pause"),
        "total_ms": median("total"),
        "rehearse_ms": median("rehearse"),
        "child_ms": median("child"),
        "commit_ms": median("commit"),
        "reused": statistics.median(r["reused"] for r in runs),
        "child_peak_rss_mib": statistics.median(r["child_peak_rss_mib"] for r in runs),
        "delta_bytes": statistics.median(r["delta_bytes"] for r in runs),
        "trials": runs,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one trial (for CI)")
    parser.add_argument("--trials", type=int, default=None)
    parser.add_argument("--sizes", type=int, nargs="*", default=None)
    parser.add_argument("--unrelated", type=int, default=None)
    parser.add_argument(
        "--policies", nargs="*", choices=sorted(POLICIES), default=["pure", "impure"]
    )
    args = parser.parse_args()
    sizes = args.sizes or (
        [0, 1_000, 10_000] if args.quick else [0, 1_000, 10_000, 100_000, 1_000_000]
    )
    trials = args.trials or (1 if args.quick else 3)
    unrelated = (
        args.unrelated if args.unrelated is not None else (100_000 if args.quick else 1_000_000)
    )

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "benchchat.py").write_text((MODEL / "v1.py").read_text())
        (workdir / "benchchat_v2.py").write_text((MODEL / "v2.py").read_text())
        for policy in args.policies:
            for count in sizes:
                runs = [run_once(workdir, policy, count, unrelated) for _ in range(trials)]
                rows.append(summarize(policy, count, runs))
                print(
                    f"{policy:>6} {count:>9,} instances: pause {rows[-1]['pause_ms']:8.1f} ms  "
                    f"total {rows[-1]['total_ms']:8.1f} ms",
                    file=sys.stderr,
                )

    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "instances.json"
    meta = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "unrelated_objects": unrelated,
        "trials": trials,
    }
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))

    header = (
        f"{'policy':>6} {'instances':>10} {'reused':>9} {'pause ms':>9} {'child ms':>9} "
        f"{'commit ms':>9} {'total ms':>9} {'rehearse':>9} {'child MiB':>9} {'delta KiB':>10}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['policy']:>6} {r['instances']:>10,} {r['reused']:>9,.0f} {r['pause_ms']:>9.1f} "
            f"{r['child_ms']:>9.1f} {r['commit_ms']:>9.1f} {r['total_ms']:>9.1f} "
            f"{r['rehearse_ms']:>9.1f} {r['child_peak_rss_mib']:>9.0f} "
            f"{r['delta_bytes'] / 1024:>10.1f}"
        )
    print(f"(medians of {trials}; {unrelated:,} unrelated objects; Python {meta['python']}; {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
