"""The chat load benchmark's harness: a short real run, and checks that can fail."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest

BENCH_DIR = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH_DIR))

import chatbench as cb  # noqa: E402


def _load_module():  # benchmarks/load.py under a name no other test module can take
    spec = importlib.util.spec_from_file_location("chat_bench_load", BENCH_DIR / "load.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


load = _load_module()


def result(user: int, posted: dict[str, str], received: list[str]) -> cb.ClientResult:
    return cb.ClientResult(user, [0], [0.0], [0.0], [0], [], posted, Counter(received))


def test_verify_delivery_counts_lost_duplicated_and_unexpected() -> None:
    # room1's members are user1 and user10 (see chat.seed.rooms_of).
    posted = {"a": "room1", "b": "room1"}
    results = [result(1, posted, ["a", "a", "b"])]
    rest = {cb.user_name(u): Counter() for u in range(1, 11)}
    rest["user10"] = Counter(["a", "zzz"])
    assert cb.verify_delivery(results, rest) == {
        "posted": 2,
        "lost": 1,  # b never reached user10
        "duplicated": 1,  # user1 got a twice
        "unexpected": 1,  # nobody posted zzz
    }


def test_check_classes_wants_the_class_the_sender_implies() -> None:
    good = {
        "messages": 5,
        "classes": {"ChUserMessage": 3, "ChInfoMessage": 2},
        "senderless": {"ChInfoMessage": 2},
    }
    assert load.check_classes(good, ("ChUserMessage", "ChInfoMessage"))["ok"]
    assert not load.check_classes(good, ("ChMessage", "ChMessage"))["ok"]
    swapped = {**good, "senderless": {"ChUserMessage": 2}}
    assert not load.check_classes(swapped, ("ChUserMessage", "ChInfoMessage"))["ok"]
    v1 = {"messages": 5, "classes": {"ChMessage": 5}, "senderless": {"ChMessage": 2}}
    assert load.check_classes(v1, load.V1_CLASSES)["ok"]


@pytest.mark.slow
def test_short_load_run_without_update(tmp_path: Path) -> None:
    command = [sys.executable, str(BENCH_DIR / "load.py"), "--updater", "none"]
    command += ["--duration", "3", "--update-at", "1", "--messages", "100", "--clients", "3"]
    command += ["--rate", "600", "--results", str(tmp_path), "--name", "short"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stdout + done.stderr
    data = json.loads((tmp_path / "short.json").read_text())
    summary = data["summary"]
    assert summary["ok"] and summary["errors"] == 0
    assert summary["delivery"]["posted"] > 100
    assert summary["live_messages_at_update"] >= 120
    # The rate cap holds: 600 requests/s over 3 s, give or take a round.
    assert 1500 <= summary["requests"] <= 2000
    assert (tmp_path / "short.png").stat().st_size > 0


def test_clients_keep_going_until_after_a_slow_update() -> None:
    # `during` stands for an update that outlasts the planned run: its work is a sleep here.
    with cb.open_server() as server:
        cb.prepare(server.url, 10)
        results, elapsed = cb.run_load(
            server.url, clients=2, duration=0.5, during=lambda t0: time.sleep(1.5), tail=1.0
        )
    assert elapsed >= 2.5
    seconds = [row["second"] for row in cb.per_second(results)]
    assert seconds[:3] == [0, 1, 2]


@pytest.mark.slow
@pytest.mark.skipif(cb.supervisor_command() is None, reason="gdsu-supervise is not installed")
def test_crashing_patch_under_load_harms_nothing(tmp_path: Path) -> None:
    command = [sys.executable, str(BENCH_DIR / "failing.py"), "--scenario", "crash"]
    command += ["--duration", "3", "--update-at", "1", "--messages", "200"]
    command += ["--results", str(tmp_path), "--name", "crash"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    (result,) = json.loads((tmp_path / "crash.json").read_text())["scenarios"]
    assert result["row"]["outcome"] == "discarded"
    assert "SIGSEGV" in result["reason"]
    assert result["run"]["summary"]["errors"] == 0
    assert result["run"]["summary"]["classes"]["found"] == {
        "ChMessage": 220 + result["run"]["summary"]["delivery"]["posted"]
    }


def test_latency_summary_splits_at_the_update_seconds() -> None:
    rows = [
        {"second": s, "requests": 10, "mean_ms": 1.0, "max_ms": m, "errors": 0}
        for s, m in enumerate([5.0, 6.0, 150.0, 90.0, 7.0])
    ]
    got = load.latency_summary(rows, {"start_s": 2.3, "end_s": 3.1}, elapsed=5.0)
    assert got["update_max_ms"] == 150.0 and not got["latency_target_met"]
    assert got["outside_max_ms"] == 7.0
    assert got["requests_per_s"] == 10.0
    no_update = load.latency_summary(rows[:2], {}, elapsed=2.0)
    assert no_update["update_max_ms"] is None and no_update["outside_max_ms"] == 6.0


@pytest.mark.slow
@pytest.mark.skipif(cb.supervisor_command() is None, reason="gdsu-supervise is not installed")
def test_update_under_full_load_migrates_every_message(tmp_path: Path) -> None:
    # Unpaced clients create messages all the time, also while the engine looks for the live
    # instances to migrate: every one of them must end up a ChUserMessage or ChInfoMessage.
    command = [sys.executable, str(BENCH_DIR / "load.py"), "--duration", "3"]
    command += ["--update-at", "1.5", "--messages", "500", "--results", str(tmp_path)]
    command += ["--name", "full"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    data = json.loads((tmp_path / "full.json").read_text())
    summary, report = data["summary"], data["update"]["report"]
    assert report["outcome"] == "committed", report.get("reason")
    assert summary["classes"]["ok"], (summary["classes"], report["timings"])
    assert summary["errors"] == 0 and summary["delivery"]["lost"] == 0
    assert done.returncode == 0, done.stderr[-2000:]


def _load_overhead():  # benchmarks/overhead.py under its own name, as load.py above
    spec = importlib.util.spec_from_file_location("chat_bench_overhead", BENCH_DIR / "overhead.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


overhead = _load_overhead()
TWO_CPUS = pytest.mark.skipif(cb.split_cpus() is None, reason="needs two CPUs to pin apart")


def test_overhead_counts_only_the_measured_seconds() -> None:
    rows = [{"second": s, "requests": 100 + s} for s in range(6)]
    assert [r["second"] for r in overhead.window_rows(rows, warmup=2, duration=3)] == [2, 3, 4]


@TWO_CPUS
def test_a_pinned_server_and_its_threads_stay_on_their_cpu() -> None:
    server_cpus, client_cpus = cb.split_cpus()  # type: ignore[misc]
    before = os.sched_getaffinity(0)
    seen: dict[int, set[int]] = {}

    def during(t0: float) -> None:
        # The connections' threads start once the server accepts the clients: poll for them.
        proc = psutil.Process(server.pid)
        deadline = time.monotonic() + 10
        while len(proc.threads()) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        seen.update({t.id: os.sched_getaffinity(t.id) for t in proc.threads()})

    with cb.open_server(cpus=server_cpus) as server:
        assert os.sched_getaffinity(0) == before  # only the server was pinned
        cb.prepare(server.url, 10)
        results, _ = cb.run_load(
            server.url, clients=2, duration=0.5, during=during, tail=0.0, cpus=client_cpus
        )
    assert len(seen) >= 3, seen  # the main thread and one per connection
    assert all(cpus == server_cpus for cpus in seen.values())
    assert sum(r["requests"] for r in cb.per_second(results)) > 0


@pytest.mark.slow
@TWO_CPUS
@pytest.mark.skipif(cb.supervisor_command() is None, reason="gdsu-supervise is not installed")
@pytest.mark.parametrize("mode", ["interleaved", "together"])
def test_overhead_run_measures_both_sides(tmp_path: Path, mode: str) -> None:
    command = [sys.executable, str(BENCH_DIR / "overhead.py"), "--pairs", "1", "--warmup", "1"]
    command += ["--duration", "1", "--clients", "2", "--messages", "10"]
    command += ["--together"] if mode == "together" else []
    command += ["--results", str(tmp_path), "--name", "ov"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    data = json.loads((tmp_path / "ov.json").read_text())
    (pair,) = data["pairs"]
    assert pair["plain_rps"] > 0 and pair["supervised_rps"] > 0
    assert pair["plain_cpu_us"] > 0 and pair["supervised_cpu_us"] > 0
    config = data["config"]
    assert config["mode"] == mode
    assert not set(config["server_cpus"]) & set(config["client_cpus"])
    assert done.returncode in (0, 1), done.stderr[-2000:]  # 1: below the target, on one pair
    assert (tmp_path / "ov.png").stat().st_size > 0
