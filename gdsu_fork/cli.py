"""gdsu-fork: update a supervised app, and ask about it (status, history, list, replay, keys).

Each subcommand is one `add_*` function registering its parser and its handler in `COMMANDS`;
a new subcommand is one more such function. Handlers return the exit code: 0 success (committed),
1 an update discarded or aborted (or refused as busy), 2 usage or connection errors.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from . import protocol
from .bundle import bundle_patch
from .client import Client, ConnectionFailed, new_id
from .errors import GdsuError
from .report import Outcome, Report

OK, FAILED, USAGE = 0, 1, 2

Handler = Callable[[argparse.Namespace], int]


class UsageError(GdsuError, ValueError):
    """The command line names something that does not exist or cannot work together."""


def _out(text: str) -> None:
    print(text, flush=True)


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- reaching an app ------------------------------------------------------------------------------


def add_target_options(parser: argparse.ArgumentParser) -> None:
    """--name / --endpoint / --curve-keys, for subcommands that talk to a supervisor."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--name", help="the app, as gdsu-supervise --name (see gdsu-fork list)")
    group.add_argument("--endpoint", help="the supervisor's control endpoint, e.g. tcp://host:7700")
    parser.add_argument(
        "--curve-keys", metavar="DIR", help="client keys for a tcp endpoint (gdsu-fork keys)"
    )
    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds to wait for the supervisor's first answer (default 5)",
    )


def resolve_endpoint(args: argparse.Namespace) -> str:
    """The endpoint named by --endpoint or --name, or the only app running; else UsageError."""
    if args.endpoint:
        return str(args.endpoint)
    from supervisor.registry import list_apps, runtime_dir

    apps = list_apps(runtime_dir())
    names = ", ".join(a.name for a in apps) or "none"
    if args.name:
        matches = [a for a in apps if a.name == args.name]
        if not matches:
            msg = f"no app named {args.name!r} is supervised by this user (running: {names})"
            raise UsageError(msg)
        app = matches[0]
    elif len(apps) == 1:
        app = apps[0]
    elif not apps:
        msg = "no app is supervised by this user; start one with `gdsu-supervise app.py`"
        raise UsageError(msg)
    else:
        msg = f"several apps are supervised ({names}); pick one with --name"
        raise UsageError(msg)
    if app.curve and not args.curve_keys:
        msg = f"app {app.name!r} listens on {app.endpoint} with CURVE; pass --curve-keys DIR"
        raise UsageError(msg)
    return app.endpoint


def open_client(args: argparse.Namespace) -> Client:
    """A client connected to the target of `args`; the caller closes it."""
    return Client(
        resolve_endpoint(args), curve_keys=args.curve_keys, connect_timeout=args.connect_timeout
    )


def _error_exit(reply: protocol.Error) -> int:
    _err(f"gdsu-fork: {reply.message}")
    refused = {protocol.ErrorCode.BUSY, protocol.ErrorCode.APP_EXITED, protocol.ErrorCode.INTERNAL}
    return FAILED if reply.code in refused else USAGE


_FINAL_PHASES = {str(Outcome.COMMITTED), str(Outcome.DISCARDED), str(Outcome.ABORTED)}


def _print_progress(event: protocol.Message) -> None:
    if isinstance(event, protocol.Accepted):
        if event.ahead:
            _err(f"queued behind {event.ahead} update(s)")
    elif isinstance(event, protocol.ProgressEvent):
        if event.phase in _FINAL_PHASES:
            return  # the report that follows says it, with the reason
        _err(f"[{event.phase}] {event.message}")
        for blocker in event.data.get("blockers") or []:
            # "thread 'name':" and the innermost frame, where it is stuck; stacks come at the end
            lines = str(blocker).splitlines()
            _err(f"    {lines[0]} {lines[-1].strip() if len(lines) > 1 else ''}")


# -- update -------------------------------------------------------------------------------------


def add_update(commands: Any) -> None:
    """gdsu-fork update patch.py."""
    parser = commands.add_parser(
        "update",
        help="apply a patch to a running app",
        description=(
            "Send a patch, with every file it names, to a supervised app and apply it; progress "
            "is shown as it happens. Exit status: 0 committed, 1 discarded, aborted or busy, "
            "2 usage or connection error."
        ),
    )
    parser.add_argument("patch", help="the patch file (Python, binds `patch`)")
    add_target_options(parser)
    parser.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="deadline of the safe-point wait and of each update child (default 10)",
    )
    parser.add_argument(
        "--no-rehearse", dest="rehearse", action="store_false", help="skip the rehearsal"
    )
    parser.add_argument("--wait", action="store_true", help="queue behind a running update")
    parser.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="FILE",
        help="send FILE too (a file the patch names in a way the CLI cannot see)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(handler=run_update)


def run_update(args: argparse.Namespace) -> int:
    """Bundle, send, stream progress, print the report."""
    bundle = bundle_patch(args.patch, include=args.include)
    request = protocol.Update(
        new_id(), bundle, timeout=args.timeout, rehearse=args.rehearse, wait=args.wait, source="cli"
    )
    with open_client(args) as client:
        reply = client.request(
            request, idle_timeout=4 * args.timeout + 90.0, on_event=_print_progress
        )
    if isinstance(reply, protocol.Error):
        return _error_exit(reply)
    assert isinstance(reply, protocol.ReportReply)
    report = Report.from_dict(reply.report)
    _out(report.to_json() if args.json else report.summary())
    return OK if report.committed else FAILED


# -- status, history, list ------------------------------------------------------------------------


def add_status(commands: Any) -> None:
    """gdsu-fork status."""
    parser = commands.add_parser("status", help="what a supervised app is doing")
    add_target_options(parser)
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(handler=run_status)


def run_status(args: argparse.Namespace) -> int:
    """Print the supervisor's status of the app."""
    with open_client(args) as client:
        reply = client.request(protocol.Status(new_id()))
    if isinstance(reply, protocol.Error):
        return _error_exit(reply)
    assert isinstance(reply, protocol.StatusReply)
    status = reply.status
    if args.json:
        _out(json.dumps(status))
        return OK
    _out(f"{status['name']}: {status['state']} (app pid {status['app_pid']})")
    _out(f"  supervisor pid {status['supervisor_pid']}, endpoint {status['endpoint']}")
    counts = f"{status['restarts']} restart(s), {status['updates']} update(s)"
    _out(f"  up {status['uptime']:.0f} s, {counts}")
    last = status.get("last_update")
    if last:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last.get("time", 0)))
        _out(f"  last update: {last.get('outcome')} {last.get('patch')} at {when}")
    if status.get("current"):
        _out(f"  updating: {status['current']['patch']} for {status['current']['elapsed']:.1f} s")
    if status.get("stale"):
        _out(f"  lost by a restart (gdsu-fork replay): {', '.join(status['stale'])}")
    return OK


def _format_record(record: dict[str, Any]) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.get("time", 0)))
    event = record.get("event")
    if event == "update":
        pause = record.get("timings", {}).get("pause", 0.0)
        line = f"{when}  {record.get('outcome', '?'):9}  {record.get('patch')}  pause {pause} ms"
        reason = (record.get("reason") or "").strip().splitlines()
        return line + (f"\n    {reason[-1]}" if reason else "")
    details = {k: v for k, v in record.items() if k not in ("time", "event", "stale")}
    return f"{when}  {event:9}  " + " ".join(f"{k}={v}" for k, v in details.items())


def add_history(commands: Any) -> None:
    """gdsu-fork history."""
    parser = commands.add_parser("history", help="the journal of an app: updates, restarts")
    add_target_options(parser)
    parser.add_argument("--limit", type=int, default=0, help="only the last N records")
    parser.add_argument(
        "--state-dir",
        help="read the journal of a stopped app --name from here (default: $XDG_STATE_HOME/gdsu)",
    )
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(handler=run_history)


def _journal_on_disk(args: argparse.Namespace) -> list[dict[str, Any]] | None:
    """The journal of app --name read from its file, if the app is not running but has one."""
    from supervisor.journal import Journal, default_state_dir

    if not args.name:
        return None
    journal = Journal.open_existing(args.state_dir or default_state_dir(), args.name)
    return journal.read(args.limit) if journal is not None else None


def run_history(args: argparse.Namespace) -> int:
    """Print the journal, from the supervisor, or from disk if the app is not running."""
    try:
        with open_client(args) as client:
            reply = client.request(protocol.History(new_id(), args.limit))
    except UsageError:
        entries = _journal_on_disk(args)
        if entries is None:
            raise
        reply = protocol.HistoryReply("", entries)
    if isinstance(reply, protocol.Error):
        return _error_exit(reply)
    assert isinstance(reply, protocol.HistoryReply)
    for record in reply.entries:
        _out(json.dumps(record) if args.json else _format_record(record))
    return OK


def add_list(commands: Any) -> None:
    """gdsu-fork list."""
    parser = commands.add_parser("list", help="the apps this user supervises")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(handler=run_list)


def run_list(args: argparse.Namespace) -> int:
    """Print one line per live app."""
    from supervisor.registry import list_apps, runtime_dir

    for app in list_apps(runtime_dir()):
        if args.json:
            _out(json.dumps(app.to_dict()))
        else:
            _out(f"{app.name}\tpid {app.supervisor_pid}\t{app.endpoint}")
    return OK


# -- replay, keys ---------------------------------------------------------------------------------


def add_replay(commands: Any) -> None:
    """gdsu-fork replay."""
    parser = commands.add_parser(
        "replay", help="re-apply committed patches that a restart of the app lost"
    )
    add_target_options(parser)
    parser.add_argument("--timeout", type=float, default=10.0, metavar="S")
    parser.add_argument("--wait", action="store_true", help="queue behind a running update")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(handler=run_replay)


def run_replay(args: argparse.Namespace) -> int:
    """Replay, print one line per patch."""
    with open_client(args) as client:
        reply = client.request(
            protocol.Replay(new_id(), timeout=args.timeout, wait=args.wait),
            idle_timeout=4 * args.timeout + 90.0,
            on_event=_print_progress,
        )
    if isinstance(reply, protocol.Error):
        return _error_exit(reply)
    assert isinstance(reply, protocol.ReplayReply)
    if args.json:
        _out(json.dumps(reply.reports))
    elif not reply.reports:
        _out("nothing to replay: every committed patch is in the files the app runs")
    for report in reply.reports if not args.json else []:
        _out(f"{report.get('outcome')}: {report.get('title') or ''} {report.get('reason') or ''}")
    return OK if all(r.get("outcome") == "committed" for r in reply.reports) else FAILED


def add_keys(commands: Any) -> None:
    """gdsu-fork keys DIR."""
    parser = commands.add_parser(
        "keys",
        help="create CURVE keys for a tcp control endpoint",
        description=(
            "Create DIR with a server key pair, a client key pair and authorized/ (the client "
            "public keys the server accepts). Run gdsu-supervise --control tcp://HOST:PORT "
            "--curve-keys DIR, and gdsu-fork --endpoint tcp://HOST:PORT --curve-keys DIR on the "
            "client (it needs server.key and client.key_secret)."
        ),
    )
    parser.add_argument("directory")
    parser.set_defaults(handler=run_keys)


def run_keys(args: argparse.Namespace) -> int:
    """Generate keys."""
    from supervisor.security import generate_keys

    path = generate_keys(args.directory)
    _out(f"keys written to {path}: server.key(_secret), client.key(_secret), authorized/")
    return OK


# -- diff ---------------------------------------------------------------------------------------


def add_diff(commands: Any) -> None:
    """gdsu-fork diff OLD NEW | gdsu-fork diff --git REV1..REV2 [-- PATHS...]."""
    parser = commands.add_parser(
        "diff",
        help="generate a patch from two source trees, two files or a git range",
        description=(
            "Write a patch from OLD to NEW (two source trees or two files), or from REV1..REV2 "
            "of a git repository (read from git, no checkout). The patch is ready to apply when "
            "the defaults are safe and marks TODOs where business logic is needed."
        ),
        epilog="Example: gdsu-fork diff --git v1.0..HEAD -o patch.py -- src/",
    )
    parser.add_argument(
        "paths", nargs="*", help="OLD NEW, or with --git the paths (relative to --repo) to diff"
    )
    parser.add_argument("--git", metavar="REV1..REV2", help="diff two revisions of a repository")
    parser.add_argument("--repo", default=".", metavar="DIR", help="the repository (default .)")
    parser.add_argument("--root", metavar="DIR", help="the directory on sys.path, if ambiguous")
    parser.add_argument("-o", "--output", metavar="FILE", help="write the patch here (else stdout)")
    parser.add_argument(
        "--copy-sources", action="store_true", help="write new sources beside the patch file"
    )
    parser.set_defaults(handler=run_diff)


def run_diff(args: argparse.Namespace) -> int:
    """Generate, write, and say on stderr what the patch does and whether it needs editing."""
    from .diff import diff_git, diff_paths

    if args.git:
        generated = diff_git(args.git, repo=args.repo, paths=args.paths, root=args.root)
    elif len(args.paths) == 2:
        generated = diff_paths(args.paths[0], args.paths[1], root=args.root)
    else:
        msg = "diff needs OLD NEW (two trees or two files), or --git REV1..REV2 [-- PATHS...]"
        raise UsageError(msg)
    if args.copy_sources and not args.output:
        msg = "--copy-sources needs -o FILE: the sources are written beside the patch file"
        raise UsageError(msg)
    if args.output:
        generated.write(args.output, copy_sources=args.copy_sources)
        _err(f"wrote {args.output}: {generated.summary()}")
    else:
        _out(generated.text().rstrip("\n"))
    if not generated.modules:
        _err("no Python module changed: the patch is empty")
    elif generated.needs_edit:
        _err("the patch has TODOs: edit the migrations it marks before applying it")
    return OK


COMMANDS: list[Callable[[Any], None]] = [
    add_update,
    add_status,
    add_history,
    add_list,
    add_replay,
    add_keys,
    add_diff,
]
"""Every subcommand's registration function, in the order `--help` lists them."""


def build_parser() -> argparse.ArgumentParser:
    """The gdsu-fork parser with every subcommand of `COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="gdsu-fork", description="Update running Python programs without restarting them."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of gdsu-fork."""
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except (ConnectionFailed, GdsuError) as exc:
        _err(f"gdsu-fork: {exc}")
        return USAGE
    except OSError as exc:  # a file or directory named on the command line
        _err(f"gdsu-fork: {exc.filename or 'a file'}: {exc.strerror}")
        return USAGE


if __name__ == "__main__":
    sys.exit(main())
