"""`emotion-stream`: the command line, and the composition root of the project.

``worker/cli`` is the only package that imports both the worker and the training module;
each subcommand imports what it needs when it runs, so `emotion-stream worker` never loads
training code, and building the parser loads neither torch nor transformers. Every problem
the user can fix ends here: one message on stderr, exit code 2.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Callable, Sequence

from emotion_stream.worker.cli import commands
from emotion_stream.worker.cli.usage import UsageError

try:
    from emotion_stream.training.errors import TrainingError
    from emotion_stream.worker.cli import training

    if not all(importlib.util.find_spec(name) for name in ("datasets", "torch")):
        raise ImportError("the training extra is not installed")
except ImportError:  # the worker's image ships without the training extra: no training commands
    training = None  # type: ignore[assignment]

    class TrainingError(Exception):  # type: ignore[no-redef]
        """Never raised without the training module."""


def _run_demo(args: argparse.Namespace) -> int:
    from emotion_stream.worker.cli.demo import run

    return run(args)


def _run_settings(args: argparse.Namespace) -> int:
    from emotion_stream.worker.cli.reference import settings_reference

    print(settings_reference(), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emotion-stream",
        description="Label social-media posts on a Kafka topic with one of six emotions.",
        epilog="Settings come from EMOTION_* environment variables: `emotion-stream settings` lists them.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("worker", help="run the streaming worker")
    p.set_defaults(run=commands.run_worker)

    p = sub.add_parser(
        "aggregate", help="publish emotion counts per time window (for dashboards) from the results"
    )
    p.set_defaults(run=commands.run_aggregate)

    p = sub.add_parser("dashboard", help="serve the live dashboard page (EMOTION_DASHBOARD_PORT)")
    p.set_defaults(run=commands.run_dashboard)

    p = sub.add_parser("broker", help="run the embedded Kafka-compatible broker (memory only)")
    p.add_argument(
        "--port", type=int, default=9092, help="port to listen on (default 9092; 0 picks a free one)"
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0: every one)"
    )
    p.add_argument(
        "--advertise",
        metavar="HOST[:PORT]",
        help="the address clients are told to reconnect to after bootstrapping (default: --host, "
        "127.0.0.1 for 0.0.0.0, and --port); from another container or machine, one that reaches this one",
    )
    p.set_defaults(run=commands.run_broker)

    p = sub.add_parser("produce", help="send posts to the input topic")
    p.add_argument(
        "file", nargs="?", default="-", help="JSON lines or plain text lines; - for stdin (default)"
    )
    p.add_argument("--topic", help="topic (default: EMOTION_INPUT_TOPIC)")
    p.set_defaults(run=commands.run_produce)

    p = sub.add_parser(
        "consume", help="follow the output topic (a table on a terminal, JSON lines when piped)"
    )
    p.add_argument("--topic", help="topic (default: EMOTION_OUTPUT_TOPIC)")
    p.add_argument("--dead-letters", action="store_true", help="follow the dead-letter topic instead")
    p.add_argument(
        "--idle-timeout", type=float, default=None, help="stop after this many seconds without a message"
    )
    p.add_argument("--json", action="store_true", help="JSON lines even on a terminal")
    p.set_defaults(run=commands.run_consume)

    p = sub.add_parser("demo", help="the whole pipeline on the embedded broker with sample posts")
    p.add_argument(
        "--timeout", type=float, default=300.0, help="seconds to wait for all results (default 300)"
    )
    p.add_argument(
        "--serve", action="store_true", help="keep the pipeline and the live page running until Ctrl-C"
    )
    p.set_defaults(run=_run_demo)

    if training is not None:
        training.register(sub)

    p = sub.add_parser(
        "settings", help="print every EMOTION_* setting with its default and meaning (Markdown)"
    )
    p.set_defaults(run=_run_settings)

    p = sub.add_parser("schemas", help="the wire contract")
    schemas_sub = p.add_subparsers(dest="schemas_command", metavar="ACTION", required=True)
    e = schemas_sub.add_parser("export", help="write the JSON Schema of each message into DIR")
    e.add_argument("directory", help="output directory")
    e.set_defaults(run=commands.run_schemas_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except (UsageError, TrainingError) as exc:
        print(f"emotion-stream {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
