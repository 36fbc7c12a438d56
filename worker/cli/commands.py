"""The service's subcommands: worker, broker, produce, consume, schemas (each returns an exit code).

Problems the user can fix are raised as :class:`~worker.cli.usage.UsageError`; the demo
and the training commands live in modules of their own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import structlog

from emotion_stream.worker.cli.usage import UsageError, load_settings, model_missing_message
from emotion_stream.worker.settings import (
    AggregatorSettings,
    ConnectionSettings,
    DashboardSettings,
    WorkerSettings,
)


def run_worker(args: argparse.Namespace) -> int:
    settings = load_settings(WorkerSettings)
    from emotion_stream.worker.observability import configure_logging

    log_config = configure_logging(settings.log_level, settings.log_format)

    import faust

    from emotion_stream.worker.app import EmotionStream
    from emotion_stream.worker.processing import BatchProcessor

    if settings.model_source.missing:
        raise UsageError(model_missing_message(settings.model))
    check_broker(settings)
    reading = reading_policy(settings)
    classifier = start_model(settings)
    try:
        processor = BatchProcessor(
            classifier.predict_prepared,
            classifier.info,
            prepare=classifier.prepare,
            max_message_bytes=settings.max_message_bytes,
            propagate_headers=settings.propagate_headers,
            reading=reading,
        )
        stream = EmotionStream(settings, processor, prepare_ahead=classifier.leaves_cpu_to_spare)
        # The model's own process when it has one, else this one (the model runs in it).
        stream.metrics.watch_model_process(lambda: getattr(classifier, "pid", None) or os.getpid())
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


def reading_policy(settings: WorkerSettings):
    """What the worker does with posts the model cannot read, from the settings and what the
    model directory records (its languages and confidence threshold)."""
    from emotion_stream.schemas.model_directory import (
        model_confidence_threshold,
        model_languages,
        read_identity,
    )
    from emotion_stream.worker.language import detector
    from emotion_stream.worker.reading import Reader, ReadingPolicy

    source = settings.model_source
    identity = (
        read_identity(source.directory) if source.directory is not None and not source.missing else None
    )
    reader = (
        Reader(
            settings.languages or model_languages(identity),
            detector(),
            min_score=settings.language_min_score,
        )
        if settings.language_check
        else Reader(None)
    )
    threshold = settings.min_confidence
    policy = ReadingPolicy(
        reader,
        settings.unreadable,
        settings.unreadable_topic,
        threshold if threshold is not None else model_confidence_threshold(identity),
    )
    structlog.get_logger(__name__).info(
        "reading posts",
        languages=sorted(reader.languages) if reader.languages is not None else "not checked",
        language_min_score=settings.language_min_score,
        unreadable=policy.unreadable,
        unreadable_topic=policy.topic if policy.unreadable == "route" else None,
        min_confidence=policy.min_confidence,
        min_confidence_from="EMOTION_MIN_CONFIDENCE" if threshold is not None else "the model directory",
    )
    return policy


def check_broker(settings: ConnectionSettings) -> None:
    """Connect and log in once before anything else: a wrong CA, address or password is a
    usage error at start, not a client retrying for ever."""
    from emotion_stream.worker.broker.security import BrokerConnectionError, preflight

    try:
        asyncio.run(preflight(settings.bootstrap_servers, settings.security()))
    except BrokerConnectionError as exc:
        raise UsageError(str(exc)) from None


MODEL_PACKAGES = ("torch", "transformers", "safetensors", "numpy")
"""What a real model needs beyond the base install (the `model` extra)."""


def _installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None  # looks, never imports


def check_model_packages(model: str) -> None:
    """A real model without torch or transformers installed: say exactly what to install."""
    missing = [name for name in MODEL_PACKAGES if not _installed(name)]
    if missing:
        raise UsageError(
            f"EMOTION_MODEL={model} needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
            "not installed. Install the model extra, torch from the CPU index first unless this host "
            "has a GPU:\n"
            "    pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu\n"
            "    pip install 'emotion-stream[model]'\n"
            "or set EMOTION_MODEL=keywords: for the keyword stand-in (tests, no torch)."
        )


def start_model(settings: WorkerSettings):
    """The model runner the settings ask for: in a process of its own (torch never loads in
    this one) or in this process. A model that cannot load is a usage error."""
    from emotion_stream.worker.model.api import ModelLoadError
    from emotion_stream.worker.model.keywords import KeywordModel

    try:
        if settings.model_source.kind == "keywords":  # the stand-in for tests: no torch, no weights
            return KeywordModel(settings.model)
        check_model_packages(settings.model)
        if settings.model_process:
            from emotion_stream.worker.model.process import ModelProcess

            return ModelProcess(
                settings.model,
                settings.model_options(),
                log_level=settings.log_level,
                log_format=settings.log_format,
            )
        from emotion_stream.worker.model.runner import EmotionClassifier

        return EmotionClassifier(settings.model, settings.model_options())
    except ModelLoadError as exc:
        raise UsageError(str(exc)) from None


def guard_consumers(settings: ConnectionSettings) -> None:
    """Every Kafka consumer of this process decompresses a record batch only up to the in-flight
    bound, and moves past one it cannot decode."""
    from emotion_stream.worker.transport import guard_record_batches

    guard_record_batches(settings.max_inflight_bytes)


def run_aggregate(args: argparse.Namespace) -> int:
    settings = load_settings(AggregatorSettings)
    from emotion_stream.worker.observability import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    guard_consumers(settings)
    check_broker(settings)
    from emotion_stream.worker.aggregates.service import run_aggregator
    from emotion_stream.worker.health import CannotServe

    try:
        return run_aggregator(settings)
    except CannotServe as exc:
        raise UsageError(str(exc)) from None


def run_dashboard(args: argparse.Namespace) -> int:
    settings = load_settings(DashboardSettings)
    from emotion_stream.worker.observability import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    guard_consumers(settings)
    check_broker(settings)
    from emotion_stream.worker.dashboard.server import run_dashboard as serve
    from emotion_stream.worker.health import CannotServe

    try:
        return serve(settings)
    except CannotServe as exc:
        raise UsageError(str(exc)) from None


def run_broker(args: argparse.Namespace) -> int:
    from emotion_stream.worker.broker.embedded import (
        EmbeddedBroker,
        EmbeddedBrokerError,
        parse_address,
        stop_on_signals,
    )

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
    """The non-blank lines of ``path`` (``-``: stdin), each strictly UTF-8: a post's bytes are
    never guessed at, nor passed on as escapes of bytes that are not text."""
    with contextlib.ExitStack() as stack:
        stream = sys.stdin.buffer if path == "-" else stack.enter_context(open(path, "rb"))
        for number, raw in enumerate(stream, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                where = "stdin" if path == "-" else path
                raise UsageError(
                    f"{where}, line {number}: not UTF-8 ({exc.reason} at byte {exc.start}); "
                    "convert the file to UTF-8 (for example with iconv) and send it again"
                ) from None
            if line.strip():
                yield line


def run_produce(args: argparse.Namespace) -> int:
    from emotion_stream.worker.broker.clients import line_to_message, produce

    settings = load_settings(ConnectionSettings)
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


def _field(value: Any, *path: str, width: int = 0) -> str:
    for name in path:
        value = value.get(name) if isinstance(value, dict) else None
    text = "" if value is None else str(value)
    return text[:width] if width else text


def format_result_row(value: dict) -> str:
    score = value.get("score")
    shown = f"{score:>5.2f}" if isinstance(score, (int, float)) and not isinstance(score, bool) else "    -"
    return (
        f"{_field(value, 'id', width=24):<24}  {_field(value, 'label', width=9):<9} {shown}  "
        f"{_field(value, 'model', 'name')}@{_field(value, 'model', 'version')}  "
        f"{_field(value, 'processed_at')}"
    )


def format_dead_letter_row(value: dict) -> str:
    where = (
        f"{_field(value, 'source', 'topic')}[{_field(value, 'source', 'partition')}]"
        f"@{_field(value, 'source', 'offset')}"
    )
    return f"{where}  {_field(value, 'error', 'kind')}: {_field(value, 'error', 'message', width=500)}"


def format_aggregate_row(value: dict) -> str:
    counts = value.get("counts") if isinstance(value.get("counts"), dict) else {}
    mix = " ".join(f"{label}={_field(counts, label)}" for label in counts)
    dimension = json.dumps(value.get("dimension"), sort_keys=True, separators=(",", ":"))[:60]
    closed = "closed" if value.get("closed") is True else "open"
    return (
        f"{_field(value, 'window_start')}  {dimension}  posts={_field(value, 'posts')} {mix}  "
        f"dead_letters={_field(value, 'dead_letters')}  {closed}"
    )


def format_row(raw: bytes | None, headers: Any = ()) -> str:
    """One record of any of the project's topics as a table row, whatever its bytes."""
    from emotion_stream.worker.codec import Unreadable, read_object

    try:
        value = read_object(raw, what="record", headers=headers)
    except Unreadable as exc:
        return f"(unreadable record: {exc.kind}: {exc})"
    if "error" in value and "payload" in value:
        return format_dead_letter_row(value)
    if "window_start" in value:
        return format_aggregate_row(value)
    if "label" in value:
        return format_result_row(value)
    return json.dumps(value, separators=(",", ":"))[:200]


def run_consume(args: argparse.Namespace) -> int:
    from emotion_stream.worker.broker.clients import follow

    settings = load_settings(ConnectionSettings)
    check_broker(settings)
    guard_consumers(settings)
    topic = args.topic or (settings.dlq_topic if args.dead_letters else settings.output_topic)
    as_table = sys.stdout.isatty() and not args.json

    async def loop() -> None:
        if as_table and topic == settings.output_topic:
            print(f"{'id':<24}  {'label':<9} {'score':>5}  model  processed_at")
        async for record in follow(
            settings.bootstrap_servers,
            [topic],
            idle_timeout=args.idle_timeout,
            backend=settings.broker_backend,
            security=settings.security().aiokafka(),
        ):
            if as_table:
                print(format_row(record.value, record.headers), flush=True)
            else:
                print((record.value or b"").decode("utf-8", errors="replace"), flush=True)

    asyncio.run(loop())
    return 0


def run_schemas_export(args: argparse.Namespace) -> int:
    from emotion_stream.schemas.export import export_json_schemas

    if Path(args.directory).exists() and not Path(args.directory).is_dir():
        raise UsageError(f"{args.directory} exists and is not a directory: give a directory for the schemas")
    for path in export_json_schemas(Path(args.directory)):
        print(path)
    return 0
