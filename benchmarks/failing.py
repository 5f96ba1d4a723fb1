"""What clients see when an update fails: the chat under load, given patches that cannot commit.

Three scenarios, each a fresh supervised server under load (see load.py) updated in the middle
of the run with a patch from examples/chat/patches/failing/:
- refused: a validation says no; the rehearsal finds it, so the program should never pause;
- crash:   the migration kills the update child with SIGSEGV (no rehearsal, so it dies in the
           child forked at the safe point);
- hang:    the migration never returns; the child is killed at the update timeout.
Every one must end discarded (or aborted) with the program unharmed: no failed request, no
message lost or duplicated, every message still of its v1 class. Writes
benchmarks/results/<name>.json and .png and prints a table.

    python benchmarks/failing.py            # 30 s runs, update at 10 s, 28,500 messages
    python benchmarks/failing.py --quick    # 6 s runs, 2,000 messages
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

import chatbench as cb
from load import LoadConfig
from load import run as run_load

FAILING = cb.PATCHES / "failing"


@dataclasses.dataclass(frozen=True)
class Scenario:
    """A failing patch and how it is sent."""

    name: str
    patch: Path
    rehearse: bool
    timeout: float


SCENARIOS = [
    # The rehearsal migrates every message before its validation refuses: give it time to.
    Scenario("refused", FAILING / "refused.py", rehearse=True, timeout=60.0),
    Scenario("crash", FAILING / "crash.py", rehearse=False, timeout=10.0),
    Scenario("hang", FAILING / "hang.py", rehearse=False, timeout=3.0),
]
FAILED = ("discarded", "aborted")


def run_scenario(scenario: Scenario, base: LoadConfig) -> dict[str, Any]:
    """One loaded run with the scenario's patch; the row of the table and the full data."""
    config = dataclasses.replace(
        base, patch=scenario.patch, rehearse=scenario.rehearse, timeout=scenario.timeout
    )
    data = run_load(config)
    report = data["update"].get("report", {})
    summary = data["summary"]
    timings = report.get("timings", {})
    row = {
        "scenario": scenario.name,
        "rehearse": scenario.rehearse,
        "outcome": report.get("outcome", "none"),
        "pause_ms": timings.get("pause"),
        "update_ms": round(1000 * (data["update"]["end_s"] - data["update"]["start_s"]), 1),
        "update_max_ms": summary["update_max_ms"],
        "outside_max_ms": summary["outside_max_ms"],
        "errors": summary["errors"],
        "unharmed": summary["ok"],
    }
    row["ok"] = row["outcome"] in FAILED and summary["ok"]
    return {"row": row, "reason": (report.get("reason") or "")[-600:], "run": data}


def plot(data: dict[str, Any], path: Path) -> None:
    """Max latency per second of each scenario, the update window shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = data["scenarios"]
    fig, axes = plt.subplots(len(results), 1, sharex=True, figsize=(9, 2.6 * len(results)))
    for ax, result in zip(axes if len(results) > 1 else [axes], results, strict=True):
        rows = result["run"]["per_second"]
        ax.plot([r["second"] for r in rows], [r["max_ms"] for r in rows], color="tab:red")
        ax.plot([r["second"] for r in rows], [r["mean_ms"] for r in rows], color="tab:green")
        update = result["run"]["update"]
        ax.axvspan(update["start_s"], max(update["end_s"], update["start_s"] + 0.2), alpha=0.3)
        ax.set_yscale("log")
        ax.set_ylabel("latency (ms)")
        ax.set_title(f"{result['row']['scenario']}: {result['row']['outcome']}", fontsize=10)
    fig.supxlabel("time (s); red max, green mean")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Run the scenarios, write JSON and PNG, print the table; 1 if any did harm."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="6 s runs, 2,000 messages")
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--update-at", type=float, default=10.0)
    parser.add_argument("--messages", type=int, default=28_500)
    parser.add_argument("--rate", type=float, default=0.0, help="cap on requests/s (0: none)")
    parser.add_argument(
        "--scenario", action="append", choices=[s.name for s in SCENARIOS], help="repeatable"
    )
    parser.add_argument("--name", help="results file name (default: failing or failing_quick)")
    parser.add_argument("--results", type=Path, default=cb.RESULTS, help="where to write")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.update_at, args.messages = 6.0, 2.0, 2_000
    base = LoadConfig(
        duration=args.duration, update_at=args.update_at, messages=args.messages, rate=args.rate
    )
    chosen = [s for s in SCENARIOS if not args.scenario or s.name in args.scenario]
    results: list[dict[str, Any]] = []
    for scenario in chosen:
        results.append(run_scenario(scenario, base))
        print(f"{scenario.name}: {results[-1]['row']['outcome']}", flush=True)
    data: dict[str, Any] = {
        "benchmark": "failing",
        "config": {
            "duration_s": args.duration,
            "update_at_s": args.update_at,
            "seeded_messages": args.messages,
            "rate_cap": args.rate,
            "python": sys.version.split()[0],
        },
        "scenarios": results,
        "summary": {"ok": all(r["row"]["ok"] for r in results)},
    }
    name = args.name or ("failing_quick" if args.quick else "failing")
    path = cb.write_json(name, data, args.results)
    plot(data, path.with_suffix(".png"))
    rows = [r["row"] for r in results]
    print(cb.table(rows, list(rows[0])))
    for r in results:
        print(f"{r['row']['scenario']} reason: {r['reason'].strip().splitlines()[-1:]}")
    print(f"wrote {path} and {path.with_suffix('.png')}")
    return 0 if data["summary"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
