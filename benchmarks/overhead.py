"""Steady-state cost of supervision: chat throughput under gdsu-supervise vs plain python.

Runs alternate (plain, supervised / supervised, plain, ...) so that drift of the machine hits
both sides alike; each pair gives a ratio supervised / plain, and the result is the median of
the ratios (target: >= 0.99), with their spread. Each run starts a fresh server, seeds it, loads
it with ten keep-alive clients for a warm-up, then measures. The server (and its supervisor) run
on one CPU and the clients on the others, so that neither takes the other's time; beside
throughput, which moves with whatever else the machine runs, each run records the CPU time of
the server's processes (the supervisor's included) per request. With `--together` the two
servers of a pair run and are loaded at the same time, sharing the server CPU, so that the rest
of the machine's work slows both alike. Writes benchmarks/results/<name>.json and .png and
prints a table.

    python benchmarks/overhead.py               # 15 pairs: 2 s warm-up, 6 s measured per run
    python benchmarks/overhead.py --together    # the same, both sides of a pair at once
    python benchmarks/overhead.py --quick       # 5 pairs: 1 s warm-up, 2 s measured
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import json
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import chatbench as cb
import psutil


@dataclasses.dataclass(frozen=True)
class Measured:
    """One run's measured window: requests per second, the server's CPU time per request."""

    rps: float
    cpu_us_per_request: float
    supervisor_cpu_us_per_request: float  # the supervisor process's share (0 when plain)
    server_cpu_util: float  # server CPU seconds per second (1.0: one CPU busy all along)


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


def window_rows(rows: list[dict[str, Any]], warmup: int, duration: int) -> list[dict[str, Any]]:
    """The per-second rows of the measured window: after the warm-up, before the end."""
    return [r for r in rows if warmup <= r["second"] < warmup + duration]


@contextlib.contextmanager
def _seeded_server(
    supervised: bool, messages: int, cpus: set[int] | None
) -> Iterator[tuple[cb.ServerProcess, psutil.Process]]:
    with cb.open_server(supervised=supervised, cpus=cpus) as server:
        cb.prepare(server.url, messages)
        yield server, psutil.Process(server.pid)


def _load(
    server: cb.ServerProcess,
    root: psutil.Process,
    *,
    supervised: bool,
    warmup: int,
    duration: int,
    clients: int,
    cpus: set[int] | None,
) -> Measured:
    """Load `server` for `warmup` + `duration` s; what the measured window saw."""
    marks: dict[str, tuple[float, float]] = {}

    def window(t0: float) -> None:
        # Sleeping to points of the schedule, not waiting for an event.
        time.sleep(max(0.0, t0 + warmup - time.monotonic()))
        marks["start"] = _cpu_seconds(root)
        time.sleep(max(0.0, t0 + warmup + duration - time.monotonic()))
        marks["end"] = _cpu_seconds(root)

    results, _ = cb.run_load(
        server.url,
        clients=clients,
        duration=warmup + duration,
        during=window,
        tail=0.0,
        cpus=cpus,
    )
    rows = cb.per_second(results)
    errors = sum(r["errors"] for r in rows)
    if errors:
        samples = "; ".join(e for r in results for e in r.error_samples[:3])
        kind = "supervised" if supervised else "plain"
        msg = f"{errors} failed request(s) in a {kind} run: {samples}"
        raise RuntimeError(msg)
    requests = sum(r["requests"] for r in window_rows(rows, warmup, duration))
    if not requests:
        msg = f"no request completed in the measured window ({warmup}-{warmup + duration} s)"
        raise RuntimeError(msg)
    (own_start, cpu_start), (own_end, cpu_end) = marks["start"], marks["end"]
    supervisor = own_end - own_start if supervised else 0.0
    return Measured(
        requests / duration,
        1e6 * (cpu_end - cpu_start) / requests,
        1e6 * supervisor / requests,
        (cpu_end - cpu_start) / duration,
    )


def measure(
    *,
    supervised: bool,
    warmup: int,
    duration: int,
    clients: int,
    messages: int,
    cpus: tuple[set[int], set[int]] | None,
) -> Measured:
    """Throughput and CPU cost of one fresh server over `duration` s, after `warmup` s of load.

    Throughput depends on what else the machine runs; CPU per request much less so, and it
    counts the supervisor's own work too.
    """
    server_cpus, client_cpus = cpus if cpus is not None else (None, None)
    with _seeded_server(supervised, messages, server_cpus) as (server, root):
        return _load(
            server,
            root,
            supervised=supervised,
            warmup=warmup,
            duration=duration,
            clients=clients,
            cpus=client_cpus,
        )


def measure_together(
    *,
    warmup: int,
    duration: int,
    clients: int,
    messages: int,
    cpus: tuple[set[int], set[int]] | None,
) -> tuple[Measured, Measured]:
    """(plain, supervised), both fresh and loaded at the same time, sharing the server CPU.

    Whatever else the machine runs then slows both alike; with the server CPU saturated, each
    server's share of requests is its share of that CPU, so a costlier server answers fewer.
    """
    server_cpus, client_cpus = cpus if cpus is not None else (None, None)
    with (
        _seeded_server(False, messages, server_cpus) as plain,
        _seeded_server(True, messages, server_cpus) as supervised,
        concurrent.futures.ThreadPoolExecutor(2) as pool,
    ):
        futures = [
            pool.submit(
                _load,
                *side,
                supervised=is_supervised,
                warmup=warmup,
                duration=duration,
                clients=clients,
                cpus=client_cpus,
            )
            for side, is_supervised in ((plain, False), (supervised, True))
        ]
        deadline = warmup + duration + 180
        return futures[0].result(timeout=deadline), futures[1].result(timeout=deadline)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """All pairs, interleaved; the median ratio."""
    cpus = cb.split_cpus() if args.pin else None
    pairs: list[dict[str, Any]] = []
    ratios: list[float] = []
    cpu_ratios: list[float] = []
    common = {
        "warmup": args.warmup,
        "duration": args.duration,
        "clients": args.clients,
        "messages": args.messages,
        "cpus": cpus,
    }
    for i in range(args.pairs):
        if args.together:
            plain, supervised = measure_together(**common)
            first = "together"
        else:
            # Alternate which side goes first, so warm-up or drift does not favour one.
            order = (False, True) if i % 2 == 0 else (True, False)
            measured = {side: measure(supervised=side, **common) for side in order}
            plain, supervised = measured[False], measured[True]
            first = "supervised" if order[0] else "plain"
        ratios.append(round(supervised.rps / plain.rps, 4))
        # > 1 when supervision makes each request cheaper: the inverse CPU cost ratio
        cpu_ratios.append(round(plain.cpu_us_per_request / supervised.cpu_us_per_request, 4))
        pairs.append(
            {
                "pair": i + 1,
                "first": first,
                "plain_rps": round(plain.rps, 1),
                "supervised_rps": round(supervised.rps, 1),
                "ratio": ratios[-1],
                "plain_cpu_us": round(plain.cpu_us_per_request, 2),
                "supervised_cpu_us": round(supervised.cpu_us_per_request, 2),
                "supervisor_cpu_us": round(supervised.supervisor_cpu_us_per_request, 2),
                "cpu_ratio": cpu_ratios[-1],
                "plain_util": round(plain.server_cpu_util, 3),
                "supervised_util": round(supervised.server_cpu_util, 3),
            }
        )
        print(
            f"pair {i + 1}: plain {plain.rps:.0f}/s {plain.cpu_us_per_request:.0f} us, "
            f"supervised {supervised.rps:.0f}/s {supervised.cpu_us_per_request:.0f} us",
            flush=True,
        )
    median = statistics.median(ratios)
    return {
        "benchmark": "overhead",
        "config": {
            "pairs": args.pairs,
            "mode": "together" if args.together else "interleaved",
            "warmup_s": args.warmup,
            "duration_s": args.duration,
            "server_cpus": sorted(cpus[0]) if cpus else None,
            "client_cpus": sorted(cpus[1]) if cpus else None,
            "clients": args.clients,
            "seeded_messages": args.messages,
            "python": sys.version.split()[0],
        },
        "pairs": pairs,
        "summary": {
            "median_ratio": round(median, 4),
            "min_ratio": min(ratios),
            "max_ratio": max(ratios),
            "ratio_quartiles": _quartiles(ratios),
            "median_cpu_ratio": round(statistics.median(cpu_ratios), 4),
            "cpu_ratio_quartiles": _quartiles(cpu_ratios),
            "min_cpu_ratio": min(cpu_ratios),
            "max_cpu_ratio": max(cpu_ratios),
            "target": 0.99,
            "ok": median >= 0.99,
        },
    }


def _quartiles(values: list[float]) -> list[float]:
    """First quartile, median, third quartile (the median alone for a single value)."""
    if len(values) < 2:
        return [values[0]] * 3
    return [round(q, 4) for q in statistics.quantiles(values, n=4, method="inclusive")]


def plot(data: dict[str, Any], path: Path) -> None:
    """Throughput of each run, plain beside supervised, per pair."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = data["pairs"]
    x = [p["pair"] for p in pairs]
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(9, 6))
    for ax, key, label in (
        (top, "rps", "requests / s"),
        (bottom, "cpu_us", "server CPU µs / request"),
    ):
        ax.bar([i - 0.2 for i in x], [p[f"plain_{key}"] for p in pairs], width=0.4, label="python")
        ax.bar(
            [i + 0.2 for i in x],
            [p[f"supervised_{key}"] for p in pairs],
            width=0.4,
            label="gdsu-supervise",
        )
        ax.set_ylabel(label)
    bottom.set_xlabel("pair")
    bottom.set_xticks(x)
    top.legend(loc="lower right")
    summary = data["summary"]
    top.set_title(
        f"chat throughput, median ratio {summary['median_ratio']:.3f} "
        f"(CPU per request {summary['median_cpu_ratio']:.3f})"
    )
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run, write JSON and PNG, print the table; 1 below the target."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 pairs: 1 s warm-up, 2 s measured")
    parser.add_argument("--pairs", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2, help="seconds of load before measuring")
    parser.add_argument("--duration", type=int, default=6, help="seconds measured per run")
    parser.add_argument(
        "--together",
        action="store_true",
        help="load both servers at the same time on the one server CPU, instead of in turn",
    )
    parser.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="let server and clients share every CPU (default: server on one, clients on the rest)",
    )
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--messages", type=int, default=1_000, help="messages seeded per run")
    parser.add_argument("--name", help="results file name (default: overhead or overhead_quick)")
    parser.add_argument("--results", type=Path, default=cb.RESULTS, help="where to write")
    args = parser.parse_args(argv)
    if args.quick:
        args.pairs, args.warmup, args.duration = 5, 1, 2
    if args.pairs < 1 or args.duration <= 0 or args.warmup < 0:
        parser.error("--pairs and --duration must be positive, --warmup not negative")
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
