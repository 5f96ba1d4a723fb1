"""The paper's server experiment: the chat under load, updated v1 -> v2 in the middle of it.

Ten keep-alive clients run rounds of GET /user/userN, 50 POSTs to one random room and a fetch of
userN's pending messages for `--duration` seconds; at `--update-at` the server is updated with
`gdsu-fork update` (it runs under `gdsu-supervise`). Per second: requests, mean and max latency,
errors. Afterwards every message must have reached every member of its room exactly once and
have the class its state implies. Writes benchmarks/results/<name>.json and .png, prints a table.

    python benchmarks/load.py            # 120 s, update at 60 s, 28,500 seeded messages
    python benchmarks/load.py --quick    # a short run for CI
    python benchmarks/load.py --updater none   # baseline without supervisor or update
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import chatbench as cb


@dataclasses.dataclass
class LoadConfig:
    """One run: how long, how hard, which patch when, and how to apply it."""

    duration: float = 120.0
    update_at: float = 60.0
    clients: int = 10
    messages: int = 28_500
    patch: Path = cb.PATCHES / "v1_to_v2.py"
    # Longer than gdsu-fork's default of 10 s: under full load a rehearsal can take longer.
    timeout: float = 30.0
    rehearse: bool = True
    updater: str = "cli"
    rate: float = 0.0
    supervise: bool = False

    @property
    def supervised(self) -> bool:
        """Whether the server runs under gdsu-supervise (always, to be updated)."""
        return self.updater == "cli" or self.supervise


Updater = Callable[[cb.ServerProcess, LoadConfig], dict[str, Any]]
"""Updates the running server with the config's patch; returns the report as a dict."""


def cli_update(server: cb.ServerProcess, config: LoadConfig) -> dict[str, Any]:
    """`gdsu-fork update PATCH --name NAME --json`: the report it prints, and its exit status."""
    command = [str(Path(sys.executable).parent / "gdsu-fork"), "update", str(config.patch)]
    command += ["--name", str(server.name), "--timeout", str(config.timeout), "--json"]
    if not config.rehearse:
        command.append("--no-rehearse")
    done = subprocess.run(command, capture_output=True, text=True, timeout=config.timeout + 120)
    report: dict[str, Any] = {"exit_status": done.returncode}
    for line in reversed(done.stdout.splitlines()):
        try:
            parsed = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(parsed, dict) and "outcome" in parsed:
            report.update(parsed)
            break
    else:
        report.update(outcome="unknown", stdout=done.stdout[-2000:], stderr=done.stderr[-2000:])
    return report


def no_update(server: cb.ServerProcess, config: LoadConfig) -> dict[str, Any]:
    """The baseline: leave the server alone."""
    return {"outcome": "skipped"}


UPDATERS: dict[str, Updater] = {"cli": cli_update, "none": no_update}

# The message classes each patch leaves behind when it commits: (with sender, without sender).
CLASSES_AFTER = {
    "v1_to_v2.py": ("ChUserMessage", "ChInfoMessage"),
    "v2_to_v1.py": ("ChMessage", "ChMessage"),
}
V1_CLASSES = ("ChMessage", "ChMessage")
TARGET_MS = 100  # max latency in the update second (the paper measured 1,400 ms)


def expected_classes(update: dict[str, Any]) -> tuple[str, str]:
    """The message classes the run should end with, given the update's report."""
    report = update.get("report", {})
    if report.get("outcome") != "committed":
        return V1_CLASSES
    return CLASSES_AFTER.get(update.get("patch", ""), V1_CLASSES)


def check_classes(stats: dict[str, Any], expected: tuple[str, str]) -> dict[str, Any]:
    """Whether every message has the class its sender (or lack of one) calls for."""
    user_cls, info_cls = expected
    senderless = sum(stats["senderless"].values())
    want: dict[str, int] = {}
    for cls, n in ((user_cls, stats["messages"] - senderless), (info_cls, senderless)):
        if n:
            want[cls] = want.get(cls, 0) + n
    want_senderless = {info_cls: senderless} if senderless else {}
    ok = stats["classes"] == want and stats["senderless"] == want_senderless
    return {"ok": ok, "expected": want, "found": stats["classes"], "senderless": senderless}


def latency_summary(
    rows: list[dict[str, Any]], update: dict[str, Any], elapsed: float
) -> dict[str, Any]:
    """Requests, errors, and latency in the seconds the update overlapped and outside them."""
    window = range(int(update.get("start_s", -1)), int(update.get("end_s", -1)) + 1)
    inside = [r for r in rows if r["second"] in window]
    outside = [r for r in rows if r["second"] not in window]
    total = sum(r["requests"] for r in rows)
    outside_requests = sum(r["requests"] for r in outside)
    update_max = max((r["max_ms"] for r in inside), default=None)
    return {
        "requests": total,
        "requests_per_s": round(total / elapsed, 1),
        "load_s": round(elapsed, 3),
        "errors": sum(r["errors"] for r in rows),
        "update_max_ms": update_max,
        "latency_target_met": update_max is not None and update_max <= TARGET_MS,
        "outside_mean_ms": round(
            sum(r["mean_ms"] * r["requests"] for r in outside) / max(outside_requests, 1), 3
        ),
        "outside_max_ms": max((r["max_ms"] for r in outside), default=None),
    }


def run(args: LoadConfig) -> dict[str, Any]:
    """Run the experiment; everything measured, as a JSON-ready dict."""
    updater = UPDATERS[args.updater]
    update: dict[str, Any] = {}
    live: dict[str, Any] = {}
    with cb.open_server(supervised=args.supervised) as server:
        cb.prepare(server.url, args.messages)

        def during(t0: float) -> None:
            # Sleeping to a point of the schedule, not waiting for an event.
            time.sleep(max(0.0, t0 + args.update_at - 1.0 - time.monotonic()))
            live.update(cb.stats(server.url, detail=False))
            time.sleep(max(0.0, t0 + args.update_at - time.monotonic()))
            began = time.monotonic()
            update["patch"] = args.patch.name
            update["report"] = updater(server, args)
            update["start_s"] = round(began - t0, 3)
            update["end_s"] = round(time.monotonic() - t0, 3)

        results, elapsed = cb.run_load(
            server.url, clients=args.clients, duration=args.duration, during=during, rate=args.rate
        )
        final = cb.stats(server.url)
        strays = {
            cls: cb.stray_texts(server.url, cls)
            for cls in final["classes"]
            if cls not in expected_classes(update)
        }
        rest = cb.fetch_rest(server.url)
        alive = server.proc.poll() is None
    rows = cb.per_second(results)
    delivery = cb.verify_delivery(results, rest)
    classes = check_classes(final, expected_classes(update))
    classes["strays"] = strays
    announcements = 2 * cb.USERS  # each user's entry into each of its two rooms
    summary = {
        **latency_summary(rows, update, elapsed),
        "live_messages_at_update": live.get("messages"),
        "migrated": update.get("report", {}).get("migrated"),
        "pause_ms": update.get("report", {}).get("timings", {}).get("pause"),
        "delivery": delivery,
        "classes": classes,
        "message_count_ok": final["messages"] == args.messages + announcements + delivery["posted"],
        "server_alive": alive,
    }
    summary["ok"] = bool(
        summary["errors"] == 0
        and delivery["lost"] == delivery["duplicated"] == delivery["unexpected"] == 0
        and classes["ok"]
        and summary["message_count_ok"]
        and alive
    )
    return {
        "benchmark": "load",
        "config": {
            "duration_s": args.duration,
            "update_at_s": args.update_at,
            "clients": args.clients,
            "seeded_messages": args.messages,
            "patch": args.patch.name,
            "updater": args.updater,
            "supervised": args.supervised,
            "rehearse": args.rehearse,
            "timeout_s": args.timeout,
            "rate_cap": args.rate,
            "python": sys.version.split()[0],
        },
        "update": update,
        "summary": summary,
        "per_second": rows,
        "error_samples": [e for r in results for e in r.error_samples][:20],
    }


def plot(data: dict[str, Any], path: Path) -> None:
    """Requests per second and latency per second, the update window shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = data["per_second"]
    seconds = [r["second"] for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(9, 6))
    top.plot(seconds, [r["requests"] for r in rows], color="tab:blue")
    top.set_ylabel("requests / s")
    bottom.plot(seconds, [r["mean_ms"] for r in rows], label="mean", color="tab:green")
    bottom.plot(seconds, [r["max_ms"] for r in rows], label="max", color="tab:red")
    bottom.axhline(TARGET_MS, linestyle="--", color="gray", label=f"target {TARGET_MS} ms")
    bottom.set_yscale("log")
    bottom.set_ylabel("latency (ms)")
    bottom.set_xlabel("time (s)")
    bottom.legend()
    update = data["update"]
    if "start_s" in update:
        for ax in (top, bottom):
            ax.axvspan(update["start_s"], max(update["end_s"], update["start_s"] + 0.2), alpha=0.3)
    outcome = update.get("report", {}).get("outcome", "no update")
    fig.suptitle(f"chat under load, {data['config']['patch']} ({outcome})")
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run, write JSON and PNG, print the table; 1 if a check failed."""
    d = LoadConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 s, update at 4 s, 2,000 messages")
    parser.add_argument("--duration", type=float, default=d.duration)
    parser.add_argument("--update-at", type=float, default=d.update_at)
    parser.add_argument("--clients", type=int, default=d.clients)
    parser.add_argument("--messages", type=int, default=d.messages, help="messages seeded first")
    parser.add_argument("--patch", type=Path, default=d.patch)
    parser.add_argument("--timeout", type=float, default=d.timeout, help="update timeout (s)")
    parser.add_argument("--no-rehearse", dest="rehearse", action="store_false")
    parser.add_argument("--updater", choices=sorted(UPDATERS), default=d.updater)
    parser.add_argument("--rate", type=float, default=d.rate, help="cap on requests/s (0: none)")
    parser.add_argument(
        "--supervise", action="store_true", help="run under gdsu-supervise even without update"
    )
    parser.add_argument("--name", help="results file name (default: load or load_quick)")
    parser.add_argument("--results", type=Path, default=cb.RESULTS, help="where to write")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.update_at, args.messages = 8.0, 4.0, 2_000
    if not 1 <= args.update_at < args.duration:
        parser.error("--update-at must be at least 1 s and before --duration")
    fields = {f.name for f in dataclasses.fields(LoadConfig)}
    config = LoadConfig(**{k: v for k, v in vars(args).items() if k in fields})
    config.patch = config.patch.resolve()
    name = args.name or ("load_quick" if args.quick else "load")
    data = run(config)
    path = cb.write_json(name, data, args.results)
    plot(data, path.with_suffix(".png"))
    print(cb.table(data["per_second"], ["second", "requests", "mean_ms", "max_ms", "errors"]))
    print(json.dumps({"update": data["update"], "summary": data["summary"]}, indent=2))
    print(f"wrote {path} and {path.with_suffix('.png')}")
    return 0 if data["summary"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
