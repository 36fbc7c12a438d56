"""`emotion-stream demo`: the whole pipeline on the embedded broker, with sample posts.

Starts the embedded broker, a worker, the aggregator and the live page, sends the sample
posts that ship with the project (every emotion, and a few malformed messages), prints each
result and dead letter as it arrives and the sample's emotion mix from the aggregates topic,
then stops everything gracefully (or, with ``--serve``, keeps it all running for the page
until Ctrl-C, SIGTERM or SIGHUP). Its children never outlive it: a stop signal stops them in
order, and should the demo be SIGKILLed, the kernel kills them too (Linux).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from importlib import resources
from pathlib import Path

from emotion_stream.worker.cli.usage import UsageError, load_settings, model_missing_message
from emotion_stream.worker.codec import Rejected, decode_post
from emotion_stream.worker.reading import SET_APART, set_apart_as
from emotion_stream.worker.settings import AggregatorSettings, DashboardSettings, WorkerSettings

BINARY_MESSAGE = b"\x89PNG\r\n\x1a\n\x00 binary bytes, not a post"
WIDTH = 58


def sample_messages() -> list[tuple[bytes | None, bytes]]:
    """The demo's messages, as (key, value): each line of the sample file as is, plus one binary."""
    text = (
        resources.files("emotion_stream.worker.demo")
        .joinpath("sample_posts.jsonl")
        .read_text(encoding="utf-8")
    )
    messages: list[tuple[bytes | None, bytes]] = []
    for line in text.splitlines():
        if line.strip():
            try:
                key = json.loads(line).get("id")
            except (ValueError, AttributeError):
                key = None
            messages.append((key.encode() if isinstance(key, str) else None, line.encode("utf-8")))
    messages.append((None, BINARY_MESSAGE))
    return messages


def model_to_serve(settings: WorkerSettings) -> Path | str:
    """The model the demo serves (EMOTION_MODEL, else the default directory), trained first if missing."""
    model = settings.model
    if settings.model_source.missing:
        trained = train_default_model(Path(model))
        if trained is None:
            raise UsageError(model_missing_message(model))
        return trained
    return model


def teacher_directory(directory: Path) -> Path:
    """Where the demo keeps the teacher of the default model it trains into ``directory``."""
    return directory.with_name(f"{directory.name}-teacher")


def train_default_model(directory: Path) -> Path | None:
    """Train the default model into ``directory``: the demo recipe's model (the teacher, kept
    beside it), then its 3-layer student, which is the default; None when the training extra
    is missing. A teacher already there is reused."""
    try:
        from emotion_stream.training.distill import distill_default
        from emotion_stream.training.train import train_default
    except ImportError:
        return None
    teacher = teacher_directory(directory)
    have_teacher = (teacher / "config.json").is_file()
    print(
        f"No model at {directory}: training the default model first "
        + (
            f"(the teacher at {teacher} is reused; about 9 minutes on 2 CPU cores"
            if have_teacher
            else f"(a teacher into {teacher}, then its 3-layer student; about 22 minutes on 2 CPU cores"
        )
        + "; progress and time left below).\n"
        "Data: EMOTION_DATA_DIR, else the hub dataset dair-ai/emotion.",
        flush=True,
    )
    from emotion_stream.training.errors import TrainingError
    from emotion_stream.training.settings import resolve_data_dir
    from emotion_stream.worker.cli.training import verify_modes

    try:
        if not have_teacher:
            train_default(teacher, progress=True)
        trained = distill_default(teacher, directory, progress=True).output_dir
        verify_modes(trained, resolve_data_dir(None))
    except TrainingError as exc:
        raise UsageError(f"cannot train the default model: {exc}") from None
    return trained


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= WIDTH else text[: WIDTH - 1] + "…"


class DemoPrinter:
    """Prints results and dead letters as they arrive; knows what the demo sent."""

    def __init__(self, messages: list[tuple[bytes | None, bytes]]) -> None:
        self.texts: dict[str, str] = {}
        self.expected_results = 0
        self.expected_dead = 0
        for _, value in messages:
            post = decode_post(value)
            if isinstance(post, Rejected):
                self.expected_dead += 1
            else:
                self.expected_results += 1
                self.texts[post.id] = post.text
        self.results: dict[str, str] = {}
        self.dead: list[str] = []

    @property
    def complete(self) -> bool:
        return len(self.results) >= self.expected_results and len(self.dead) >= self.expected_dead

    def on_result(self, value: dict) -> None:
        post_id = value["id"]
        if post_id in self.results:
            return
        apart = set_apart_as(value.get("unreadable"), value.get("confident"))
        self.results[post_id] = apart or value["label"]
        tag = ""
        if apart == "other_language":
            tag = f"  [other language: {value.get('language')}]"
        elif apart is not None:
            tag = f"  [{apart.replace('_', ' ')}]"
        print(
            f"  {value['label']:<9} {value['score']:.2f}  {post_id:<8}  "
            f"{_short(self.texts.get(post_id, ''))}{tag}",
            flush=True,
        )

    def on_dead_letter(self, value: dict) -> None:
        error, payload = value["error"], value["payload"]
        self.dead.append(error["kind"])
        shown = (
            payload["data"]
            if payload["encoding"] == "utf-8"
            else f"<{payload['encoding']}> {payload['data'][:24]}"
        )
        print(f"  DEAD LETTER  {error['kind']}: {error['message']}", flush=True)
        print(f"               payload: {_short(shown)}", flush=True)


async def _watch(broker, printer: DemoPrinter, output: str, dlq: str, timeout: float) -> None:
    from emotion_stream.worker.broker.clients import follow

    async def reader() -> None:
        async for record in follow(broker.bootstrap, [output, dlq], backend="embedded"):
            value = json.loads(record.value)
            (printer.on_result if record.topic == output else printer.on_dead_letter)(value)
            if printer.complete:
                return

    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(reader(), timeout)


async def _aggregated_mix(broker, topic: str, posts: int, timeout: float = 20.0) -> dict[str, int] | None:
    """The label counts, and the counts set apart from the six emotions, over every window of the
    aggregates topic's totals, once they add up to ``posts`` (None if they do not within
    ``timeout``)."""
    from emotion_stream.worker.broker.clients import follow

    latest: dict[str, dict] = {}

    async def reader() -> None:
        async for record in follow(broker.bootstrap, [topic], backend="embedded"):
            value = json.loads(record.value)
            if value.get("dimension") == {}:
                latest[value["window_start"]] = value
            if sum(v["posts"] + sum(v.get(k, 0) for k in SET_APART) for v in latest.values()) >= posts:
                return

    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(reader(), timeout)
        mix: dict[str, int] = {}
        for record in latest.values():
            for label, count in [*record["counts"].items(), *((k, record.get(k, 0)) for k in SET_APART)]:
                mix[label] = mix.get(label, 0) + count
        return mix
    return None


def _print_mix(mix: dict[str, int], source: str) -> None:
    """The six emotions' shares among the posts the model could read, then the posts set apart."""
    emotions = {label: count for label, count in mix.items() if label not in SET_APART}
    total = sum(emotions.values()) or 1
    print(f"\nemotion mix of the sample ({source}):")
    for label, count in sorted(emotions.items(), key=lambda kv: -kv[1]):
        share = count / total
        print(f"  {label:<9}{count:>4}  {share:>4.0%}  {'#' * round(share * 40)}")
    apart = [(kind, mix.get(kind, 0)) for kind in SET_APART]
    print("set apart (not in the mix: the model could not read them, or was unsure):")
    for kind, count in apart:
        print(f"  {kind:<15}{count:>4}")


def _port_or_free(wanted: int) -> int:
    """``wanted`` if it is free on 127.0.0.1, else a free port."""
    import socket

    from emotion_stream.worker.broker.embedded import free_port

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", wanted))
            return wanted
        except OSError:
            return free_port()


def _child_process(env: dict[str, str], log_path: Path, command: list[str] | None = None):
    """A started WorkerProcess that dies with the demo (the broker does so by itself)."""
    import subprocess

    from emotion_stream.worker.broker.embedded import die_with_parent
    from emotion_stream.worker.cli.worker_process import WorkerProcess

    child = WorkerProcess(env, log_path=log_path, command=command)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    child._log = log_path.open("ab")
    # WorkerProcess.start with the parent-death signal: a demo SIGKILLed or crashed must not
    # leave its worker, aggregator and page running, holding their ports.
    child.process = subprocess.Popen(
        child.command,
        env=child.env,
        stdout=child._log,
        stderr=child._log,
        stdin=subprocess.DEVNULL,
        preexec_fn=die_with_parent(),
    )
    return child


def run(args: argparse.Namespace) -> int:
    from emotion_stream.worker.broker.embedded import stop_on_signals

    # SIGTERM and SIGHUP (what supervisors, `kill` and a closed terminal send) stop the demo as
    # Ctrl-C does, through the `finally` below that stops its children, the broker last.
    with stop_on_signals():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    import sys

    from emotion_stream.worker.broker.clients import produce
    from emotion_stream.worker.broker.embedded import EmbeddedBroker

    settings = load_settings(WorkerSettings)
    page, aggregator = load_settings(DashboardSettings), load_settings(AggregatorSettings)
    model = model_to_serve(settings)
    messages = sample_messages()
    printer = DemoPrinter(messages)
    log_path = Path("artifacts/demo/worker.log").resolve()
    if log_path.exists():
        log_path.unlink()
    topics = {
        "input": "posts",
        "output": "post-emotions",
        "dlq": "posts-dlq",
        "aggregates": "post-emotions-1m",
    }
    started = time.monotonic()
    with EmbeddedBroker() as broker:
        print(f"embedded broker on {broker.bootstrap}", flush=True)
        env = {
            "EMOTION_BROKER": broker.url,
            "EMOTION_BROKER_BACKEND": "embedded",
            "EMOTION_MODEL": str(model),
            "EMOTION_INPUT_TOPIC": topics["input"],
            "EMOTION_OUTPUT_TOPIC": topics["output"],
            "EMOTION_DLQ_TOPIC": topics["dlq"],
            "EMOTION_AGGREGATES_TOPIC": topics["aggregates"],
            "EMOTION_AGGREGATE_UPDATE_S": "1",
            "EMOTION_DASHBOARD_PORT": str(_port_or_free(page.dashboard_port)),
            "EMOTION_AGGREGATE_PORT": str(_port_or_free(aggregator.aggregate_port)),
            "EMOTION_LOG_FORMAT": "console",
        }
        dashboard_url = f"http://127.0.0.1:{env['EMOTION_DASHBOARD_PORT']}/"
        worker = _child_process(env, log_path)
        helpers = [
            _child_process(
                env,
                log_path.with_name(f"{name}.log"),
                [sys.executable, "-m", "emotion_stream.worker.cli.main", name],
            )
            for name in ("aggregate", "dashboard")
        ]
        mix = None
        try:
            print(f"worker starting (model {model}; log: {log_path}) ...", flush=True)
            try:
                ready = worker.wait_ready(timeout=120)
            except (RuntimeError, TimeoutError) as exc:
                tail = (
                    log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
                    if log_path.exists()
                    else []
                )
                raise UsageError(f"{exc}\n" + "\n".join(tail)) from None
            model_info = ready.get("model", {})
            print(
                f"worker ready: model {model_info.get('name')} version {model_info.get('version')}",
                flush=True,
            )
            sent = asyncio.run(produce(broker.bootstrap, topics["input"], messages, "embedded"))
            print(
                f"sent {sent} messages to '{topics['input']}' "
                f"({printer.expected_results} posts, {printer.expected_dead} malformed)\n",
                flush=True,
            )
            print(f"live page: {dashboard_url}\n", flush=True)
            asyncio.run(_watch(broker, printer, topics["output"], topics["dlq"], args.timeout))
            mix = asyncio.run(_aggregated_mix(broker, topics["aggregates"], len(printer.results)))
            if args.serve:
                _summary(printer, 0, time.monotonic() - started, log_path, mix)
                print(f"\nserving the live page at {dashboard_url} until Ctrl-C ...", flush=True)
                with contextlib.suppress(KeyboardInterrupt):
                    while worker.process is not None and worker.process.poll() is None:
                        time.sleep(1)
        finally:
            print("\nstopping the worker, the aggregator and the page (SIGTERM: finish, flush, commit) ...")
            code = worker.stop()
            for helper in helpers:
                helper.stop()
    result = _summary(printer, code, time.monotonic() - started, log_path, mix)
    print(f"dashboard: {dashboard_url} (live while the demo runs; `emotion-stream demo --serve` keeps it up)")
    return result


def _summary(
    printer: DemoPrinter, worker_code: int, seconds: float, log_path: Path, mix: dict[str, int] | None
) -> int:
    counts: dict[str, int] = {}
    for label in printer.results.values():
        counts[label] = counts.get(label, 0) + 1
    print(
        f"\n{len(printer.results)}/{printer.expected_results} posts labelled, "
        f"{len(printer.dead)}/{printer.expected_dead} dead letters, in {seconds:.1f}s; worker exit code "
        f"{worker_code}"
    )
    if mix is not None:
        _print_mix(mix, "the aggregates topic")
    else:
        _print_mix(counts, "the results; the aggregates did not add up in time")
    if not printer.complete or worker_code != 0:
        print(f"the demo did not complete: see the worker log {log_path}")
        return 1
    return 0
