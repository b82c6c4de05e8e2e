"""``python -m nasvit.agent`` (and ``nasvit agent``, and ``python nasvit-agent.pyz``): run a
device agent against a nasvit server.

Exit codes: 0 when done (``--once`` found the queue empty, ``--idle-exit`` ran out, SIGTERM);
2 for bad arguments, a token the server refuses, or a server that cannot be reached at
registration (one line on stderr, no traceback); 1 when the server became unusable later.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from nasvit.agent.client import AgentClient
from nasvit.agent.runner import MAX_ITEMS, Agent, AgentOptions, AgentStop, log_to_stderr
from nasvit.agent.timing import OPTIMIZATION_LEVELS, PROVIDERS


class Stopped(BaseException):
    """SIGTERM: leave at once; the lease expires and its items go to the next claim. A
    BaseException, so that no ``except Exception`` on the way swallows it."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse prints the usage too; one line is the CLI's rule for bad input.
        raise AgentStop(2, f"{self.prog}: {message}")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def build_parser(prog: str = "nasvit agent") -> argparse.ArgumentParser:
    parser = _Parser(
        prog=prog,
        description="Time models on this device for a nasvit server: register with a device "
        "token, then claim work items, time them with onnxruntime and upload the results.",
    )
    parser.add_argument("--server", required=True, help="The server's URL, e.g. http://host:8000.")
    parser.add_argument(
        "--token",
        default=os.environ.get("NASVIT_DEVICE_TOKEN"),
        help="The device token (nsd_...; `nasvit device add NAME` prints one). "
        "Default: $NASVIT_DEVICE_TOKEN.",
    )
    parser.add_argument(
        "--name",
        default=f"{socket.gethostname()}:{os.getpid()}",
        help="This agent's name on leases (default host:pid).",
    )
    parser.add_argument(
        "--threads", type=_positive_int, default=1, help="onnxruntime intra-op threads."
    )
    parser.add_argument(
        "--provider", choices=sorted(PROVIDERS), default="cpu", help="Execution provider."
    )
    parser.add_argument(
        "--optimization",
        choices=OPTIMIZATION_LEVELS,
        default="all",
        help="onnxruntime graph optimisation level.",
    )
    parser.add_argument(
        "--max-items",
        type=_positive_int,
        default=None,
        help=f"Items per lease, at most {MAX_ITEMS} (default: the server's batch size).",
    )
    parser.add_argument(
        "--once", action="store_true", help="Exit when the queue is empty instead of polling."
    )
    parser.add_argument(
        "--idle-exit",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="Exit after this long without work.",
    )
    return parser


def _stop(signum: int, frame: FrameType | None) -> None:
    raise Stopped


def main(argv: Sequence[str] | None = None, prog: str = "nasvit agent") -> int:
    """Run the agent; returns the exit code."""
    try:
        args = build_parser(prog).parse_args(list(sys.argv[1:] if argv is None else argv))
        if not args.token:
            raise AgentStop(2, f"{prog}: --token is required (or set NASVIT_DEVICE_TOKEN)")
        if args.max_items is not None and args.max_items > MAX_ITEMS:
            raise AgentStop(2, f"{prog}: --max-items must be at most {MAX_ITEMS}")
        if not 1 <= len(args.name) <= 255:
            raise AgentStop(2, f"{prog}: --name must have 1 to 255 characters")
        try:
            client = AgentClient(args.server, args.token)
        except ValueError as error:
            raise AgentStop(2, f"{prog}: {error}") from None
        options = AgentOptions(
            name=args.name,
            threads=args.threads,
            provider=args.provider,
            optimization=args.optimization,
            max_items=args.max_items,
            once=args.once,
            idle_exit=args.idle_exit,
        )
        agent = Agent(client, options)
        if threading.current_thread() is not threading.main_thread():
            return agent.run()  # signal handlers can only be set from the main thread
        previous = signal.signal(signal.SIGTERM, _stop)
        try:
            return agent.run()
        finally:
            signal.signal(signal.SIGTERM, previous)
    except AgentStop as stop:
        print(f"error: {stop.message}", file=sys.stderr, flush=True)
        return stop.code
    except Stopped:
        log_to_stderr("stopped (SIGTERM); the lease, if any, will expire")
        return 0
    except SystemExit as exit_:  # --help prints and exits through argparse
        return exit_.code if isinstance(exit_.code, int) else 0
    except KeyboardInterrupt:
        log_to_stderr("interrupted; the lease, if any, will expire")
        return 130


if __name__ == "__main__":
    sys.exit(main())
