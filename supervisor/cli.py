"""gdsu-supervise: parse the command line, run the supervisor, exit with the app's status."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from gdsu_fork.errors import GdsuError

from .journal import default_state_dir
from .loop import Config, RestartPolicy, Supervisor
from .process import Program

USAGE_ERROR = 2

_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}


def parse_size(text: str) -> int:
    """Bytes from "512M", "2G", "65536" (binary units)."""
    value = text.strip().lower().removesuffix("b").removesuffix("i")
    unit = value[-1:] if value[-1:] in _UNITS else ""
    try:
        number = float(value[: len(value) - len(unit)])
    except ValueError:
        msg = f"{text!r} is not a size; write e.g. 512M, 2G or a number of bytes"
        raise argparse.ArgumentTypeError(msg) from None
    return int(number * _UNITS[unit])


def build_parser() -> argparse.ArgumentParser:
    """The gdsu-supervise argument parser; options that other features add go here."""
    parser = argparse.ArgumentParser(
        prog="gdsu-supervise",
        description=(
            "Run a Python program with the gdsu-fork agent in it, so that `gdsu-fork update` can "
            "update it while it runs. The program itself is not changed."
        ),
        epilog="Example: gdsu-supervise --name chat --restart on-failure -- server.py --port 8000",
    )
    parser.add_argument("--name", help="app name for gdsu-fork --name (default: script or module)")
    parser.add_argument(
        "--restart",
        type=RestartPolicy,
        choices=list(RestartPolicy),
        default=RestartPolicy.NO,
        help="restart the app when it exits with a failure (exponential backoff)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="directory of the update journals (default: $XDG_STATE_HOME/gdsu)",
    )
    parser.add_argument(
        "--control",
        metavar="ENDPOINT",
        help="control endpoint, e.g. tcp://0.0.0.0:7700 (needs --curve-keys); default: a "
        "private ipc socket in $XDG_RUNTIME_DIR/gdsu",
    )
    parser.add_argument(
        "--curve-keys",
        metavar="DIR",
        help="CURVE keys for a tcp control endpoint (create with `gdsu-fork keys DIR`)",
    )
    parser.add_argument(
        "--child-memory",
        type=parse_size,
        metavar="SIZE",
        help="kill an update child whose own memory exceeds SIZE (e.g. 512M)",
    )
    parser.add_argument(
        "--stop-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds between forwarding SIGTERM and SIGKILL (default 10)",
    )
    parser.add_argument(
        "--max-message", type=parse_size, default=16 * 2**20, help=argparse.SUPPRESS
    )
    parser.add_argument(
        "--watch",
        action="append",
        type=Path,
        default=[],
        metavar="DIR",
        help="live programming: apply every save of a .py file under DIR (repeatable)",
    )
    parser.add_argument("-m", dest="module", metavar="MODULE", help="run a module, as python -m")
    parser.add_argument("program", nargs=argparse.REMAINDER, help="script.py [args...]")
    return parser


def config_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Config:
    """Check the parsed options together and build the supervisor's Config."""
    rest = list(args.program)
    if rest[:1] == ["--"]:
        rest = rest[1:]
    if args.module:
        program = Program(script=None, module=args.module, args=tuple(rest))
    elif rest:
        program = Program(script=rest[0], module=None, args=tuple(rest[1:]))
        if not Path(rest[0]).is_file():
            parser.error(f"script {rest[0]!r} does not exist; give the path of a Python file")
    else:
        parser.error("nothing to run: give a script (gdsu-supervise app.py) or -m module")
    for folder in args.watch:
        if not folder.is_dir():
            parser.error(f"--watch {folder}: not a directory; give the program's source directory")
    if args.control and not args.control.startswith("ipc://") and not args.curve_keys:
        parser.error(
            f"--control {args.control} would let anyone who reaches it run code in the app; "
            "add --curve-keys DIR (create keys with `gdsu-fork keys DIR`)"
        )
    return Config(
        program=program,
        name=args.name or program.default_name,
        state_dir=args.state_dir or default_state_dir(),
        control=args.control,
        curve_keys=args.curve_keys,
        restart=args.restart,
        child_memory=args.child_memory,
        stop_timeout=args.stop_timeout,
        max_message=args.max_message,
        watch=tuple(args.watch),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of gdsu-supervise."""
    parser = build_parser()
    args = parser.parse_args(argv)
    config = config_from_args(args, parser)
    try:
        return Supervisor(config).run()
    except GdsuError as exc:
        print(f"gdsu-supervise: {exc}", file=sys.stderr)
        return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
