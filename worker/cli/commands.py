"""The service's subcommands: worker, broker, produce, consume, schemas (each returns an exit code).

Problems the user can fix are raised as :class:`~worker.cli.usage.UsageError`; the demo
and the training commands live in modules of their own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from schemas.model_directory import looks_like_directory
from worker.cli.usage import UsageError, load_settings, model_missing_message
from worker.settings import WorkerSettings


def run_worker(args: argparse.Namespace) -> int:
    settings = load_settings(WorkerSettings)
    from worker.observability import configure_logging

    log_config = configure_logging(settings.log_level, settings.log_format)

    import faust

    from worker.app import EmotionStream
    from worker.processing import BatchProcessor

    if (
        not settings.model.startswith("keywords:")
        and looks_like_directory(settings.model)
        and not Path(settings.model).exists()
    ):
        raise UsageError(model_missing_message(settings.model))
    check_broker(settings)
    classifier = start_model(settings)
    try:
        processor = BatchProcessor(
            classifier.predict_prepared,
            classifier.info,
            prepare=classifier.prepare,
            max_message_bytes=settings.max_message_bytes,
            propagate_headers=settings.propagate_headers,
        )
        stream = EmotionStream(settings, processor, prepare_ahead=classifier.leaves_cpu_to_spare)
        worker = faust.Worker(
            stream.app,
            loglevel=settings.log_level,
            logging_config=log_config,
            quiet=True,
            redirect_stdouts=False,
        )
        # A batch that failed for good (its send refused, the model process gone) stops the
        # worker with a non-zero exit, its offsets uncommitted, so a supervisor restarts it.
        stream.on_fatal = lambda exc: asyncio.ensure_future(worker.stop())
        try:
            worker.execute_from_commandline()
        except SystemExit:
            if stream.failure is None:
                raise
        if stream.failure is not None:
            print(f"emotion-stream worker: stopped after a failed batch: {stream.failure}", file=sys.stderr)
            return 1
    finally:
        classifier.close()
    return 0


def check_broker(settings: WorkerSettings) -> None:
    """Connect and log in once before anything else: a wrong CA, address or password is a
    usage error at start, not a client retrying for ever."""
    from worker.broker.security import BrokerConnectionError, preflight

    try:
        asyncio.run(preflight(settings.bootstrap_servers, settings.security()))
    except BrokerConnectionError as exc:
        raise UsageError(str(exc)) from None


def start_model(settings: WorkerSettings):
    """The model runner the settings ask for: in a process of its own (torch never loads in
    this one) or in this process. A model that cannot load is a usage error."""
    from worker.model.api import ModelLoadError
    from worker.model.keywords import KeywordModel, is_keywords

    try:
        if is_keywords(settings.model):  # the stand-in for other teams' tests: no torch, no weights
            return KeywordModel(settings.model)
        if settings.model_process:
            from worker.model.process import ModelProcess

            return ModelProcess(
                settings.model,
                settings.model_options(),
                log_level=settings.log_level,
                log_format=settings.log_format,
            )
        from worker.model.runner import EmotionClassifier

        return EmotionClassifier(settings.model, settings.model_options())
    except ModelLoadError as exc:
        raise UsageError(str(exc)) from None


def guard_consumers(settings: WorkerSettings) -> None:
    """Every Kafka consumer of this process decompresses a record batch only up to the in-flight
    bound, and moves past one it cannot decode."""
    from worker.transport import guard_record_batches

    guard_record_batches(settings.max_inflight_bytes)


def run_aggregate(args: argparse.Namespace) -> int:
    settings = load_settings(WorkerSettings)
    from worker.observability import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    guard_consumers(settings)
    check_broker(settings)
    from worker.aggregator import run_aggregator

    return run_aggregator(settings)


def run_dashboard(args: argparse.Namespace) -> int:
    settings = load_settings(WorkerSettings)
    from worker.observability import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    guard_consumers(settings)
    check_broker(settings)
    from worker.dashboard.server import run_dashboard as serve

    return serve(settings)


def run_broker(args: argparse.Namespace) -> int:
    from worker.broker.embedded import EmbeddedBroker, EmbeddedBrokerError, parse_address, stop_on_signals

    advertised_host = advertised_port = None
    if args.advertise:
        try:
            advertised_host, advertised_port = parse_address(args.advertise)
        except ValueError as exc:
            raise UsageError(f"--advertise {exc}") from None
    broker = EmbeddedBroker(
        port=args.port or None,
        host=args.host,
        quiet=False,
        advertised_host=advertised_host,
        advertised_port=advertised_port,
    )
    # Every way a supervisor, `kill` or a script stops us stops the broker first; the broker
    # also dies with this process should it be SIGKILLed (see die_with_parent).
    with stop_on_signals():
        try:
            try:
                broker.start()
            except EmbeddedBrokerError as exc:
                raise UsageError(str(exc)) from None
            print(f"embedded broker listening on {args.host}:{broker.port}", flush=True)
            print(
                f"    export EMOTION_BROKER=kafka://{broker.advertised} EMOTION_BROKER_BACKEND=embedded",
                flush=True,
            )
            if not args.advertise and args.host in ("0.0.0.0", "::"):
                print(
                    f"clients are told to reconnect to {broker.advertised}: from another machine or "
                    "container, give --advertise HOST[:PORT] that reaches this one",
                    flush=True,
                )
            print("memory only: everything is lost when it stops. Ctrl-C or SIGTERM to stop.", flush=True)
            while broker.running:
                time.sleep(0.5)
            print("the embedded broker exited on its own", file=sys.stderr, flush=True)
            return 1
        except KeyboardInterrupt as exc:  # Ctrl-C, SIGINT, SIGTERM or SIGHUP, even while it starts
            with contextlib.suppress(OSError):  # after SIGHUP the terminal may be gone
                print(f"stopping the embedded broker ({exc or 'SIGINT'}) ...", flush=True)
            return 0
        finally:
            broker.stop()
            with contextlib.suppress(OSError):
                print("embedded broker stopped", flush=True)


def _lines(path: str) -> Iterator[str]:
    if path == "-":
        yield from (line for line in sys.stdin if line.strip())
        return
    with open(path, encoding="utf-8") as stream:
        yield from (line for line in stream if line.strip())


def run_produce(args: argparse.Namespace) -> int:
    from worker.broker.clients import line_to_message, produce

    settings = load_settings(WorkerSettings)
    if args.file != "-" and not Path(args.file).is_file():
        raise UsageError(f"{args.file} is not a file: give a file of JSON or text lines, or - for stdin")
    topic = args.topic or settings.input_topic
    messages = [line_to_message(line) for line in _lines(args.file)]
    check_broker(settings)
    security = settings.security().aiokafka()
    sent = asyncio.run(
        produce(settings.bootstrap_servers, topic, messages, settings.broker_backend, security)
    )
    print(f"sent {sent} messages to {topic}", file=sys.stderr)
    return 0


def format_result_row(value: dict) -> str:
    model = value.get("model", {})
    return (
        f"{value.get('id', '?')[:24]:<24}  {value.get('label', '?'):<9} {value.get('score', 0):>5.2f}  "
        f"{model.get('name', '?')}@{model.get('version', '?')}  {value.get('processed_at', '')}"
    )


def format_dead_letter_row(value: dict) -> str:
    src = value.get("source", {})
    err = value.get("error", {})
    where = f"{src.get('topic')}[{src.get('partition')}]@{src.get('offset')}"
    return f"{where}  {err.get('kind')}: {err.get('message')}"


def run_consume(args: argparse.Namespace) -> int:
    from worker.broker.clients import follow

    settings = load_settings(WorkerSettings)
    check_broker(settings)
    guard_consumers(settings)
    topic = args.topic or (settings.dlq_topic if args.dead_letters else settings.output_topic)
    as_table = sys.stdout.isatty() and not args.json
    row = format_dead_letter_row if args.dead_letters else format_result_row

    async def loop() -> None:
        if as_table and not args.dead_letters:
            print(f"{'id':<24}  {'label':<9} {'score':>5}  model  processed_at")
        async for record in follow(
            settings.bootstrap_servers,
            [topic],
            idle_timeout=args.idle_timeout,
            backend=settings.broker_backend,
            security=settings.security().aiokafka(),
        ):
            text = (record.value or b"").decode("utf-8", errors="replace")
            if as_table:
                try:
                    print(row(json.loads(text)), flush=True)
                except (ValueError, AttributeError):
                    print(text, flush=True)
            else:
                print(text, flush=True)

    asyncio.run(loop())
    return 0


def run_schemas_export(args: argparse.Namespace) -> int:
    from schemas.export import export_json_schemas

    for path in export_json_schemas(Path(args.directory)):
        print(path)
    return 0
