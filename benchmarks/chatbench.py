"""What the chat benchmarks share: the server process, the load clients, per-second statistics.

The server runs as its own process (plain `python app.py` or under `gdsu-supervise`), the clients
as ten more processes, so that neither measures the other's garbage collector or GIL.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import multiprocess

ROOT = Path(__file__).resolve().parent.parent
CHAT_DIR = ROOT / "examples" / "chat"
APP = CHAT_DIR / "app.py"
PATCHES = CHAT_DIR / "patches"
RESULTS = Path(__file__).resolve().parent / "results"
if str(CHAT_DIR) not in sys.path:
    sys.path.insert(0, str(CHAT_DIR))

from chat.client import Call, Connection, HTTPFailure  # noqa: E402
from chat.seed import ROOMS, USERS, room_name, rooms_of, seed, user_name  # noqa: E402

READY_PREFIX = "chat server listening on "
CLIENT_TIMEOUT = 60.0


def supervisor_command() -> list[str] | None:
    """The gdsu-supervise command of this installation, or None when it is not installed."""
    beside = Path(sys.executable).parent / "gdsu-supervise"
    found = str(beside) if beside.exists() else shutil.which("gdsu-supervise")
    if found is None:
        return None
    try:
        import supervisor.cli  # noqa: F401  (the console script needs it)
    except ImportError:
        return None
    return [found]


@dataclasses.dataclass
class ServerProcess:
    """A running chat server: its process, URL, supervised app name, and its output so far."""

    proc: subprocess.Popen[str]
    url: str
    name: str | None
    output: list[str]

    @property
    def pid(self) -> int:
        return self.proc.pid


def _pump(stream: Any, lines: queue.Queue[str | None], keep: list[str]) -> None:
    # Reads the server's output to the end, so a chatty server never blocks on a full pipe.
    for line in stream:
        keep.append(line)
        lines.put(line)
    lines.put(None)


@contextlib.contextmanager
def pinned(cpus: set[int] | None) -> Iterator[None]:
    """Run the body with this thread pinned to `cpus` (None: unchanged); processes it starts
    inherit the set, and so do their threads."""
    if cpus is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def split_cpus() -> tuple[set[int], set[int]] | None:
    """(server CPUs, client CPUs): the first CPU this process may use for the server, the
    others for the load clients, so that neither steals the other's time; None with one CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    return {cpus[0]}, set(cpus[1:])


@contextlib.contextmanager
def open_server(
    *,
    supervised: bool = False,
    name: str | None = None,
    timeout: float = 30.0,
    cpus: set[int] | None = None,
) -> Iterator[ServerProcess]:
    """Start the chat server on a free port; stop it (TERM, then KILL) at exit.

    Supervised, it runs under `gdsu-supervise --name NAME` with a journal in a temporary
    directory, so benchmark runs leave no state behind. `cpus`: the CPUs the server (and its
    supervisor) may run on.
    """
    with contextlib.ExitStack() as stack:
        command = [sys.executable, str(APP), "--port", "0", "--stats"]
        if supervised:
            supervise = supervisor_command()
            if supervise is None:
                msg = "gdsu-supervise is not installed; install gdsu-fork, or run unsupervised"
                raise RuntimeError(msg)
            name = name or f"chat-bench-{os.getpid()}"
            state = stack.enter_context(tempfile.TemporaryDirectory(prefix="chat-bench-"))
            command = [*supervise, "--name", name, "--state-dir", state, "--", *command[1:]]
        with pinned(cpus):
            proc = subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                cwd=CHAT_DIR,
                start_new_session=True,
            )
        lines: queue.Queue[str | None] = queue.Queue()
        output: list[str] = []
        pump = threading.Thread(target=_pump, args=(proc.stdout, lines, output), daemon=True)
        pump.start()
        stack.callback(pump.join, 5)
        stack.callback(_stop, proc)
        url = _wait_ready(lines, timeout, command)
        yield ServerProcess(proc, url, name if supervised else None, output)


def _wait_ready(lines: queue.Queue[str | None], timeout: float, command: list[str]) -> str:
    deadline = time.monotonic() + timeout
    seen = []
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        if line is None:
            break
        seen.append(line)
        if line.startswith(READY_PREFIX):
            return line[len(READY_PREFIX) :].strip()
    msg = (
        f"chat server ({' '.join(command)}) did not report readiness within {timeout:.0f} s; "
        f"its output:\n{''.join(seen)}"
    )
    raise RuntimeError(msg)


def _stop(proc: subprocess.Popen[str]) -> None:
    """TERM the server's process group, then KILL it if it lingers; always reap."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait)


def prepare(url: str, messages: int) -> None:
    """Seed the chat, then empty every queue so the clients start from none pending."""
    with Connection.to(url, timeout=60) as conn:
        seed(conn, messages)
        for i in range(1, USERS + 1):
            conn.request(Call("POST", f"/user/{user_name(i)}/pendingMessages"))


def stats(url: str, *, detail: bool = True) -> dict[str, Any]:
    """The server's GET /_stats: message count, and with `detail` per class and senderless."""
    with Connection.to(url, timeout=60) as conn:
        response = conn.get("/_stats" if detail else "/_stats?detail=0")
        if response.status != 200:
            msg = f"GET /_stats answered {response.status}; start the server with --stats"
            raise RuntimeError(msg)
        return response.json()


def stray_texts(url: str, cls: str) -> dict[str, Any]:
    """How many messages have class `cls`, and up to 20 of their texts."""
    with Connection.to(url, timeout=60) as conn:
        return conn.get(f"/_stats?class={cls}").json()


def members() -> dict[str, list[str]]:
    """Each seeded room's members (the load never changes them)."""
    rooms: dict[str, list[str]] = {room_name(r): [] for r in range(1, ROOMS + 1)}
    for u in range(1, USERS + 1):
        for r in rooms_of(u):
            rooms[room_name(r)].append(user_name(u))
    return rooms


@dataclasses.dataclass(frozen=True)
class ClientSpec:
    """One load client: which user it is, where to send, how many posts a round, how fast."""

    user: int
    url: str
    posts: int = 50
    seed: int = 0
    rate: float = 0.0  # requests per second for this client; 0: as fast as the server answers
    cpus: frozenset[int] | None = None  # the CPUs this client may run on (None: any)


@dataclasses.dataclass
class ClientResult:
    """Per second (from the common start): requests, summed and max latency (s), errors.

    The lists grow as the run goes on: the run ends when the coordinator says so.

    `posted` maps each text the client sent to its room; `received` counts the texts its user
    fetched.
    """

    user: int
    requests: list[int]
    latency_sum: list[float]
    latency_max: list[float]
    errors: list[int]
    error_samples: list[str]
    posted: dict[str, str]
    received: Counter[str]


def run_client(spec: ClientSpec, ready: Any, go: Any, start: Any, end: Any) -> ClientResult:
    """Run one client's rounds: GET its user, `posts` POSTs to a random room, fetch its messages.

    `start` and `end` are shared doubles (time.monotonic): the common start, and the end, which
    the coordinator may push back while an update is still running.
    """
    result = ClientResult(spec.user, [], [], [], [], [], {}, Counter())
    if spec.cpus is not None:
        os.sched_setaffinity(0, spec.cpus)
    rng = random.Random(spec.seed * 1000 + spec.user)
    me = user_name(spec.user)
    # A long pause should show as latency, not as an error: time out only past any update timeout.
    conn = Connection.to(spec.url, timeout=CLIENT_TIMEOUT)
    ready.put(spec.user)
    if not go.wait(timeout=120):
        return result
    t0 = start.value
    round_no = sent = 0

    def call(request: Call) -> bytes | None:
        nonlocal conn, sent
        if spec.rate:
            # Pacing to a schedule, not waiting for an event: request n goes at t0 + n / rate.
            time.sleep(max(0.0, t0 + sent / spec.rate - time.monotonic()))
        sent += 1
        began = time.monotonic()
        try:
            response = conn.request(request)
            ok = response.status in (200, 201)
            problem = "" if ok else f"{request.method} {request.path}: {response.status}"
        except (OSError, HTTPFailure) as exc:
            response, ok, problem = None, False, f"{request.method} {request.path}: {exc!r}"
            conn.close()
            with contextlib.suppress(OSError):
                conn = Connection.to(spec.url, timeout=CLIENT_TIMEOUT)
        done = time.monotonic()
        second = int(began - t0)
        while len(result.requests) <= second:
            for series in (result.requests, result.latency_sum, result.latency_max, result.errors):
                series.append(0)
        latency = done - began
        result.requests[second] += 1
        result.latency_sum[second] += latency
        result.latency_max[second] = max(result.latency_max[second], latency)
        if not ok:
            result.errors[second] += 1
            if len(result.error_samples) < 20:
                result.error_samples.append(f"t={began - t0:.3f}s {problem}")
            return None
        return response.body if response is not None else None

    while time.monotonic() < end.value:
        call(Call("GET", f"/user/{me}"))
        room = room_name(rng.randrange(1, ROOMS + 1))
        for j in range(spec.posts):
            if time.monotonic() >= end.value:
                break
            text = f"c{spec.user}-{round_no}-{j}"
            if call(Call("POST", f"/room/{room}/{me}", text.encode(), "text/plain")) is not None:
                result.posted[text] = room
        body = call(Call("POST", f"/user/{me}/pendingMessages"))
        if body is not None:
            result.received.update(m["text"] for m in json.loads(body))
        round_no += 1
    conn.close()
    return result


def _client_process(spec: ClientSpec, ready: Any, go: Any, start: Any, end: Any, out: Any) -> None:
    try:
        out.put(run_client(spec, ready, go, start, end))
    except BaseException as exc:
        out.put(f"client {spec.user} failed: {exc!r}")
        raise


def run_load(
    url: str,
    *,
    clients: int,
    duration: float,
    during: Callable[[float], None] | None = None,
    seed_no: int = 0,
    rate: float = 0.0,
    tail: float = 2.0,
    cpus: set[int] | None = None,
) -> tuple[list[ClientResult], float]:
    """Run `clients` client processes for `duration` s; call `during(t0)` meanwhile.

    If `during` is still running at the end, the clients go on until `tail` s after it returns,
    so that whatever it does is measured under load. `rate` caps the requests per second of all
    clients together (0: no cap); `cpus` pins the clients. Returns the clients' results and how
    long they ran (s).
    """
    ctx = multiprocess.get_context("fork")
    ready, go, out = ctx.Queue(), ctx.Event(), ctx.Queue()
    # Plain shared doubles: written by this process only, read by the clients on every round.
    start, end = ctx.Value("d", 0.0, lock=False), ctx.Value("d", float("inf"), lock=False)
    pin = frozenset(cpus) if cpus is not None else None
    specs = [
        ClientSpec(u, url, seed=seed_no, rate=rate / clients, cpus=pin)
        for u in range(1, clients + 1)
    ]
    procs = [
        ctx.Process(target=_client_process, args=(s, ready, go, start, end, out)) for s in specs
    ]
    with warnings.catch_warnings():
        # 3.12+ warns about forking with threads (here: the server output pump). The clients
        # run only run_client, which takes none of the locks that thread may hold.
        warnings.filterwarnings("ignore", "This process .* is multi-threaded", DeprecationWarning)
        for proc in procs:
            proc.start()
    try:
        for _ in specs:
            ready.get(timeout=60)
        start.value = t0 = time.monotonic()
        if during is None:
            end.value = t0 + duration
        go.set()
        if during is not None:
            during(t0)  # the end stays open (infinite) until it returns
            end.value = max(t0 + duration, time.monotonic() + tail)
        results = []
        for _ in specs:
            got = out.get(timeout=max(end.value - time.monotonic(), 0) + 120)
            if isinstance(got, str):
                raise RuntimeError(got)
            results.append(got)
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=10)
    return sorted(results, key=lambda r: r.user), end.value - t0


def per_second(results: list[ClientResult]) -> list[dict[str, float]]:
    """The clients' seconds merged: requests, mean and max latency (ms), errors."""
    rows = []
    for s in range(max(len(r.requests) for r in results)):
        present = [r for r in results if s < len(r.requests)]
        requests = sum(r.requests[s] for r in present)
        if not requests:
            continue
        latency = sum(r.latency_sum[s] for r in present)
        rows.append(
            {
                "second": s,
                "requests": requests,
                "mean_ms": round(1000 * latency / requests, 3),
                "max_ms": round(1000 * max(r.latency_max[s] for r in present), 3),
                "errors": sum(r.errors[s] for r in present),
            }
        )
    return rows


def fetch_rest(url: str) -> dict[str, Counter[str]]:
    """Empty every user's queue after the run; the texts each one got."""
    got: dict[str, Counter[str]] = {}
    with Connection.to(url, timeout=60) as conn:
        for u in range(1, USERS + 1):
            response = conn.request(Call("POST", f"/user/{user_name(u)}/pendingMessages"))
            got[user_name(u)] = Counter(m["text"] for m in response.json())
    return got


def verify_delivery(results: list[ClientResult], rest: dict[str, Counter[str]]) -> dict[str, int]:
    """Count lost, duplicated and unexpected deliveries: each post reaches each member once."""
    rooms = members()
    received: dict[str, Counter[str]] = {name: Counter(c) for name, c in rest.items()}
    for r in results:
        received[user_name(r.user)].update(r.received)
    posted: dict[str, str] = {}
    for r in results:
        posted.update(r.posted)
    lost = duplicated = 0
    for text, room in posted.items():
        for member in rooms[room]:
            count = received[member][text]
            lost += count == 0
            duplicated += max(count - 1, 0)
    expected = {(m, t) for t, room in posted.items() for m in rooms[room]}
    unexpected = sum(
        n for m, texts in received.items() for t, n in texts.items() if (m, t) not in expected
    )
    return {"posted": len(posted), "lost": lost, "duplicated": duplicated, "unexpected": unexpected}


def write_json(name: str, data: dict[str, Any], directory: Path = RESULTS) -> Path:
    """<directory>/<name>.json (benchmarks/results by default)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A plain-text table with right-aligned columns."""
    cells = [columns] + [[str(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in cells)
