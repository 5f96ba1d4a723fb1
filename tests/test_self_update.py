"""Updating gdsu_fork itself and the standard library, each in a program of its own."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path


def run_program(tmp_path: Path, source: str, timeout: float = 120) -> list[str]:
    """Run `source` as a real program; return its output lines, failing with its stderr."""
    script = tmp_path / "program.py"
    script.write_text(textwrap.dedent(source))
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=timeout, cwd=tmp_path
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return done.stdout.splitlines()


ENGINE_SELF_UPDATE = """
import inspect, sys
import gdsu_fork
from gdsu_fork import commit, report

# v2 of the commit code: it counts the operations it applies
source = inspect.getsource(commit)
marker = '    done: list[tuple[Op, Any]] = []\\n'
assert marker in source
source = source.replace(marker, marker + '    NEW_ENGINE_RUNS.append(len(ops))\\n')
source += '\\nNEW_ENGINE_RUNS: list[int] = []\\n'
engine_patch = gdsu_fork.Patch('engine: count applied operations')
engine_patch.module('gdsu_fork.commit', source)

# v2 of the report: a new field, with live reports migrated
report_source = inspect.getsource(report).replace(
    '    title: str = ""\\n', '    title: str = ""\\n    notes: list[str] = dataclasses.field(default_factory=list)\\n'
)
report_patch = gdsu_fork.Patch('engine: reports carry notes')
report_patch.module('gdsu_fork.report', report_source)
report_patch.migrate('gdsu_fork.report:Report', gdsu_fork.policies.AddDefault('notes', factory=list))

apply_ops = commit.apply_ops
first = gdsu_fork.update(engine_patch)
print('first', first.outcome, first.reason)
print('runs after first', commit.NEW_ENGINE_RUNS, commit.apply_ops is apply_ops)
second = gdsu_fork.update(report_patch)
print('second', second.outcome, second.reason, second.migrated)
print('runs after second', len(commit.NEW_ENGINE_RUNS), commit.NEW_ENGINE_RUNS[0] > 0)
print('first report has notes', first.notes, type(first) is gdsu_fork.Report)
third = gdsu_fork.update(engine_patch)
print('third', third.outcome, third.notes, len(commit.NEW_ENGINE_RUNS))
"""


def test_engine_updates_itself_and_the_next_update_runs_the_new_code(tmp_path):
    lines = run_program(tmp_path, ENGINE_SELF_UPDATE)
    assert lines[0] == "first committed None"
    assert lines[1] == "runs after first [] True"  # the commit ran the old code of itself
    assert lines[2].startswith("second committed None") and int(lines[2].split()[-1]) >= 1
    assert lines[3] == "runs after second 1 True"  # the next commit ran the new code
    assert lines[4] == "first report has notes [] True"
    assert lines[5] == "third committed [] 2"


QUEUE_UPDATE = """
import inspect, queue, threading
import gdsu_fork

queues = [queue.Queue(), queue.LifoQueue(), queue.PriorityQueue()]
for q in queues:
    q.put(0)
stop = threading.Event()
moved = [0]

def producer(q):
    n = 0
    while not stop.is_set():
        n += 1
        q.put(n)
        if q.qsize() > 100:
            stop.wait(0.0005)

def consumer(q):
    while not stop.is_set():
        try:
            q.get(timeout=0.05)
            moved[0] += 1
        except queue.Empty:
            pass

threads = [threading.Thread(target=f, args=(q,), daemon=True) for q in queues for f in (producer, consumer)]
for t in threads:
    t.start()

source = inspect.getsource(queue)
source = source.replace(
    "        self.maxsize = maxsize\\n", "        self.maxsize = maxsize\\n        self.puts = 0\\n", 1
).replace(
    "        with self.not_full:\\n", "        self.puts += 1\\n        with self.not_full:\\n", 1
)
patch = gdsu_fork.Patch("queue: count puts")
patch.module("queue", source)
patch.migrate("queue:Queue", gdsu_fork.policies.AddDefault("puts", 0))

@patch.validate
def all_counted(env):
    return all(new.puts == 0 for old, new in env.pairs("queue:Queue"))

report = gdsu_fork.update(patch, timeout=30)
print("update", report.outcome, report.reason, report.migrated >= 3)
before = moved[0]
for q in queues:
    q.put(-1)
print("counted", [q.puts >= 1 for q in queues], [type(q).__name__ for q in queues])
deadline = threading.Event()
for _ in range(200):
    if moved[0] > before + 100:
        break
    deadline.wait(0.01)
print("still moving", moved[0] > before + 100)
stop.set()
for t in threads:
    t.join(5)
print("fresh queue", queue.Queue().puts)
"""


def test_standard_library_queue_updated_while_threads_use_it(tmp_path):
    lines = run_program(tmp_path, QUEUE_UPDATE)
    assert lines[0] == "update committed None True"
    assert lines[1] == "counted [True, True, True] ['Queue', 'LifoQueue', 'PriorityQueue']"
    assert lines[2] == "still moving True"
    assert lines[3] == "fresh queue 0"


MAIN_UPDATE = """
import sys
import gdsu_fork

STARTS = []


def greet():
    return "v1"


if __name__ == "__main__":
    STARTS.append(1)
    print("started", len(STARTS))
    source = open(__file__).read().replace('return "v1"', 'return "v2"')
    patch = gdsu_fork.Patch("main")
    patch.module("__main__", source)
    report = gdsu_fork.update(patch)
    print("update", report.outcome, report.reason)
    print("greet", greet(), len(STARTS))
"""


def test_updating_the_main_module_does_not_start_the_program_again(tmp_path):
    lines = run_program(tmp_path, MAIN_UPDATE)
    assert lines == ["started 1", "update committed None", "greet v2 1"]


DYING_PROGRAM = """
import os, sys, threading
import gdsu_fork

patch = gdsu_fork.Patch("hangs")
patch.module("json", "import time, os\\nopen(os.environ['MARK'], 'w').write(str(os.getpid()))\\ntime.sleep(600)\\n")
threading.Thread(target=gdsu_fork.update, args=(patch,), kwargs={"timeout": 600}, daemon=True).start()
while not os.path.exists(os.environ["MARK"]) or not open(os.environ["MARK"]).read():
    threading.Event().wait(0.01)
os._exit(0)  # the program dies while its update child hangs
"""


def test_an_update_child_never_outlives_the_program(tmp_path, monkeypatch):
    import os
    import select

    mark = tmp_path / "child.pid"
    monkeypatch.setenv("MARK", str(mark))
    run_program(tmp_path, DYING_PROGRAM)
    child = int(mark.read_text())
    try:
        handle = os.pidfd_open(child)
    except ProcessLookupError:
        return  # already gone
    try:
        # a pidfd becomes readable when the process has terminated
        ready, _, _ = select.select([handle], [], [], 10)
    finally:
        os.close(handle)
    assert ready, f"the update child {child} outlived the program"
