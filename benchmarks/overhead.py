"""Steady-state cost of supervision: chat throughput under gdsu-supervise vs plain python.

Runs alternate (plain, supervised / supervised, plain, ...) so that drift of the machine hits
both sides alike; each pair gives a ratio supervised / plain, and the result is the median of
the ratios (target: >= 0.99). Each run starts a fresh server, seeds it and loads it with ten
keep-alive clients. Beside throughput, which moves with whatever else the machine runs, it
records the CPU time of the server's processes (the supervisor's included) per request. Writes benchmarks/results/<name>.json and .png and prints a table.

    python benchmarks/overhead.py            # 7 pairs of 15 s runs
    python benchmarks/overhead.py --quick    # 5 pairs of 2 s runs
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import chatbench as cb
import psutil


@dataclasses.dataclass(frozen=True)
class Measured:
    """One run: requests per second, and CPU time of the server's processes per request."""

    rps: float
    cpu_us_per_request: float
    supervisor_cpu_us_per_request: float  # the supervisor process's share (0 when plain)


def _cpu_seconds(root: psutil.Process) -> tuple[float, float]:
    """User + system CPU time of `root` alone, and of `root` with all its descendants."""
    own = total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = proc.cpu_times()
            total += times.user + times.system
            if proc.pid == root.pid:
                own = times.user + times.system
    return own, total


def measure(*, supervised: bool, duration: float, clients: int, messages: int) -> Measured:
    """Throughput and CPU cost of one fresh server over `duration` s of load.

    Throughput depends on what else the machine runs; CPU per request much less so, and it
    counts the supervisor's own work too.
    """
    with cb.open_server(supervised=supervised) as server:
        cb.prepare(server.url, messages)
        root = psutil.Process(server.pid)
        own_before, cpu_before = _cpu_seconds(root)
        results, elapsed = cb.run_load(server.url, clients=clients, duration=duration)
        own_after, cpu_after = _cpu_seconds(root)
    rows = cb.per_second(results)
    errors = sum(r["errors"] for r in rows)
    if errors:
        samples = "; ".join(e for r in results for e in r.error_samples[:3])
        kind = "supervised" if supervised else "plain"
        msg = f"{errors} failed request(s) in a {kind} run: {samples}"
        raise RuntimeError(msg)
    requests = sum(r["requests"] for r in rows)
    supervisor = own_after - own_before if supervised else 0.0
    return Measured(
        requests / elapsed, 1e6 * (cpu_after - cpu_before) / requests, 1e6 * supervisor / requests
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    """All pairs, interleaved; the median ratio."""
    pairs: list[dict[str, Any]] = []
    ratios: list[float] = []
    cpu_ratios: list[float] = []
    for i in range(args.pairs):
        # Alternate which side goes first, so warm-up or drift does not favour one.
        order = (False, True) if i % 2 == 0 else (True, False)
        measured = {
            supervised: measure(
                supervised=supervised,
                duration=args.duration,
                clients=args.clients,
                messages=args.messages,
            )
            for supervised in order
        }
        plain, supervised = measured[False], measured[True]
        ratios.append(round(supervised.rps / plain.rps, 4))
        # > 1 when supervision makes each request cheaper: the inverse CPU cost ratio
        cpu_ratios.append(round(plain.cpu_us_per_request / supervised.cpu_us_per_request, 4))
        pairs.append(
            {
                "pair": i + 1,
                "first": "supervised" if order[0] else "plain",
                "plain_rps": round(plain.rps, 1),
                "supervised_rps": round(supervised.rps, 1),
                "ratio": ratios[-1],
                "plain_cpu_us": round(plain.cpu_us_per_request, 2),
                "supervised_cpu_us": round(supervised.cpu_us_per_request, 2),
                "supervisor_cpu_us": round(supervised.supervisor_cpu_us_per_request, 2),
                "cpu_ratio": cpu_ratios[-1],
            }
        )
        print(
            f"pair {i + 1}: plain {plain.rps:.0f}/s, supervised {supervised.rps:.0f}/s", flush=True
        )
    median = statistics.median(ratios)
    return {
        "benchmark": "overhead",
        "config": {
            "pairs": args.pairs,
            "duration_s": args.duration,
            "clients": args.clients,
            "seeded_messages": args.messages,
            "python": sys.version.split()[0],
        },
        "pairs": pairs,
        "summary": {
            "median_ratio": round(median, 4),
            "min_ratio": min(ratios),
            "max_ratio": max(ratios),
            "median_cpu_ratio": round(statistics.median(cpu_ratios), 4),
            "min_cpu_ratio": min(cpu_ratios),
            "max_cpu_ratio": max(cpu_ratios),
            "target": 0.99,
            "ok": median >= 0.99,
        },
    }


def plot(data: dict[str, Any], path: Path) -> None:
    """Throughput of each run, plain beside supervised, per pair."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = data["pairs"]
    x = [p["pair"] for p in pairs]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar([i - 0.2 for i in x], [p["plain_rps"] for p in pairs], width=0.4, label="python")
    ax.bar(
        [i + 0.2 for i in x], [p["supervised_rps"] for p in pairs], width=0.4, label="supervised"
    )
    ax.set_xlabel("pair")
    ax.set_ylabel("requests / s")
    ax.set_xticks(x)
    ax.legend(loc="lower right")
    ax.set_title(f"chat throughput, median ratio {data['summary']['median_ratio']:.3f}")
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run, write JSON and PNG, print the table; 1 below the target."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 pairs of 2 s runs")
    parser.add_argument("--pairs", type=int, default=7)
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of load per run")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--messages", type=int, default=1_000, help="messages seeded per run")
    parser.add_argument("--name", help="results file name (default: overhead or overhead_quick)")
    parser.add_argument("--results", type=Path, default=cb.RESULTS, help="where to write")
    args = parser.parse_args(argv)
    if args.quick:
        args.pairs, args.duration = 5, 2.0
    if args.pairs < 1 or args.duration <= 0:
        parser.error("--pairs and --duration must be positive")
    name = args.name or ("overhead_quick" if args.quick else "overhead")
    data = run(args)
    path = cb.write_json(name, data, args.results)
    plot(data, path.with_suffix(".png"))
    print(cb.table(data["pairs"], list(data["pairs"][0])))
    print(json.dumps(data["summary"], indent=2))
    print(f"wrote {path} and {path.with_suffix('.png')}")
    return 0 if data["summary"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
