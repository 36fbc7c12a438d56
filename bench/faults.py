"""Benchmarks of the worker under faults and load: duplicates per kill, memory under a backlog,
scale-out, and a soak with a fault every minute.

    python -m bench.faults kills  [--model DIR] [--rate 200] [--kills 3]
    python -m bench.faults memory [--model DIR] [--posts 100000] [--bytes 4000] [--seconds 60]
    python -m bench.faults scale  [--model DIR] [--posts 4000]
    python -m bench.faults soak   [--model DIR] [--minutes 20] [--rate R]
    python -m bench.faults fuzz   [--model DIR|keywords:] [--minutes 10] [--rate R] [--seed S]

Each prints its figures and writes them to artifacts/bench/faults-<command>.json. Comparisons
(`kills`: the old commit interval against the new one; `scale`: two one-thread workers
against one two-thread worker) are measured side by side in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

from aiokafka import AIOKafkaProducer

from bench.host import setting
from emotion_stream.schemas.model_directory import DEFAULT_MODEL_DIR
from emotion_stream.worker.broker.clients import follow
from emotion_stream.worker.broker.embedded import EmbeddedBroker, free_port
from emotion_stream.worker.broker.profiles import profile_for
from emotion_stream.worker.cli.worker_process import WorkerProcess
from emotion_stream.worker.reading import SET_APART

OUT = Path("artifacts/bench")


def rss_mib(pid: int) -> float:
    """Resident memory of a process and all its descendants (the worker and its model process)."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(c) for c in (task / "children").read_text().split()]
    return total / 1024


def posts(n: int, prefix: str, size: int = 0) -> list[tuple[bytes, bytes]]:
    words = ["glad", "furious", "scared", "lonely", "amazed", "adore", "calm", "tired"]
    out = []
    for i in range(n):
        post_id = f"{prefix}-{i:06d}"
        body = {"id": post_id, "text": f"i feel {words[i % len(words)]} today, post {i}"}
        if size:
            body["metadata"] = {"pad": "x" * max(0, size - 80)}
        out.append((post_id.encode(), json.dumps(body).encode()))
    return out


class Stream:
    """A broker (optionally behind a cuttable proxy), topics, and workers on them."""

    def __init__(
        self,
        model: str,
        partitions: int = 4,
        proxy: bool = False,
        log_dir: Path | None = None,
        python: str | None = None,
    ) -> None:
        self.suffix = uuid.uuid4().hex[:6]
        self.input, self.output, self.dlq = (f"{t}-{self.suffix}" for t in ("posts", "out", "dlq"))
        self.model, self.partitions, self.log_dir = model, partitions, log_dir or OUT
        self.python = python or sys.executable
        """The interpreter the workers run on (a venv made as the worker image makes it, say)."""
        self.proxy = None
        self._proxy_port = free_port() if proxy else None
        self.broker = EmbeddedBroker(advertised_port=self._proxy_port)
        self.workers: list[WorkerProcess] = []

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self._proxy_port or self.broker.port}"

    def __enter__(self) -> Stream:
        from tests.faults.proxy import TcpProxy
        from tests.integration.helpers import create_topic

        self.broker.start()
        if self._proxy_port is not None:
            self.proxy = TcpProxy(self._proxy_port, self.broker.port).start()
        create_topic(self.bootstrap, self.input, self.partitions)
        return self

    def __exit__(self, *exc) -> None:
        for worker in self.workers:
            worker.stop()
        if self.proxy is not None:
            self.proxy.stop()
        self.broker.stop()

    def worker(self, name: str, command: str = "worker", **env: str) -> WorkerProcess:
        """A child process running `emotion-stream <command>` (worker, aggregate, dashboard)."""
        settings = {
            "EMOTION_BROKER": f"kafka://{self.bootstrap}",
            "EMOTION_BROKER_BACKEND": "embedded",
            "EMOTION_MODEL": self.model,
            "EMOTION_INPUT_TOPIC": self.input,
            "EMOTION_OUTPUT_TOPIC": self.output,
            "EMOTION_DLQ_TOPIC": self.dlq,
            "EMOTION_GROUP_ID": f"bench-{self.suffix}",
            "EMOTION_LOG_FORMAT": "console",
            **env,
        }
        worker = WorkerProcess(
            settings,
            log_path=self.log_dir / f"faults-{self.suffix}-{name}.log",
            command=[self.python, "-m", "emotion_stream.worker.cli.main", command],
        )
        self.workers.append(worker)
        return worker.start()

    def produce(self, messages, rate: float | None = None, stop: threading.Event | None = None) -> int:
        """Send ``messages`` (at ``rate`` per second if given); returns how many the broker acknowledged."""

        async def run() -> int:
            producer = AIOKafkaProducer(
                bootstrap_servers=self.bootstrap,
                linger_ms=5,
                max_request_size=8 << 20,
                **profile_for("embedded").producer,
            )
            await producer.start()
            acked = 0
            started = time.monotonic()
            try:
                if not rate:  # a backlog: as fast as the broker takes it, acknowledged at the end
                    pending = [await producer.send(self.input, value, key=key) for key, value in messages]
                    return sum(
                        1
                        for r in await asyncio.gather(*pending, return_exceptions=True)
                        if not isinstance(r, Exception)
                    )
                for i, (key, value) in enumerate(messages):
                    if stop is not None and stop.is_set():
                        break
                    await asyncio.sleep(max(0.0, started + i / rate - time.monotonic()))
                    try:
                        await (await producer.send(self.input, value, key=key))
                        acked += 1
                    except Exception:  # the broker is cut off: this post was never sent
                        pass
            finally:
                with contextlib.suppress(Exception):
                    await producer.stop()
            return acked

        return asyncio.run(run())

    def read(self, topic: str, until_ids: set[str] | None = None, idle_s: float = 10.0) -> list[dict]:
        """Every record of ``topic`` (as JSON), until ``until_ids`` are all in or ``idle_s`` pass idle."""

        async def run() -> list[dict]:
            seen: list[dict] = []
            missing = set(until_ids) if until_ids is not None else None
            async for record in follow(self.bootstrap, [topic], idle_timeout=idle_s, backend="embedded"):
                seen.append(json.loads(record.value))
                if missing is not None:
                    missing.discard(seen[-1].get("id"))
                    if not missing:
                        break
            return seen

        return asyncio.run(run())


def _save(name: str, report: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"faults-{name}.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


def kills(args: argparse.Namespace) -> dict:
    """Duplicates per SIGKILL at a steady rate, the old commit interval against the new."""
    report = {}
    for interval_ms in args.intervals:  # Faust's default, then the worker's
        with Stream(args.model) as stream:
            stream.worker("w0", EMOTION_COMMIT_INTERVAL_MS=str(interval_ms)).wait_ready(timeout=120)
            sent = posts(int(args.rate * args.period * (args.kills + 1)), f"k{interval_ms}")
            producing = threading.Thread(target=stream.produce, args=(sent, args.rate))
            producing.start()
            for k in range(args.kills):
                time.sleep(args.period)
                stream.workers[-1].kill()
                stream.worker(f"w{k + 1}", EMOTION_COMMIT_INTERVAL_MS=str(interval_ms)).wait_ready(
                    timeout=120
                )
            producing.join()
            ids = [r["id"] for r in stream.read(stream.output, {k.decode() for k, _ in sent})]
        duplicates = sum(n - 1 for n in Counter(ids).values())
        report[f"commit interval {interval_ms} ms"] = {
            "posts": len(sent),
            "missing": len({k.decode() for k, _ in sent} - set(ids)),
            "duplicates": duplicates,
            "duplicates per kill": duplicates / args.kills,
        }
    return report


def _own_rss_mib(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def memory(args: argparse.Namespace) -> dict:
    """Peak resident memory of the worker (and its model process) under a backlog."""
    env = dict(args.env)
    with Stream(args.model, python=args.python) as stream:
        backlog = posts(args.posts, "m", size=args.bytes)
        started = time.monotonic()
        stream.produce(backlog)
        produced_s = time.monotonic() - started
        worker = stream.worker("w", **env)
        worker.wait_ready(timeout=180)
        samples, model_samples, timeline = [], [], []
        began = time.monotonic()
        while time.monotonic() < began + args.seconds:
            total = rss_mib(worker.process.pid)
            own = _own_rss_mib(worker.process.pid)
            samples.append(total)
            model_samples.append(total - own)
            if len(samples) % 20 == 1:
                done = _metrics(worker).get("emotion_results_out_total", 0)
                timeline.append(
                    {
                        "s": round(time.monotonic() - began),
                        "worker MiB": round(own, 1),
                        "model process MiB": round(total - own, 1),
                        "posts done": int(done),
                    }
                )
            time.sleep(0.5)
        metrics = _metrics(worker)
    return {
        "backlog posts": args.posts,
        "post bytes": len(backlog[0][1]),
        "backlog MiB": round(sum(len(v) for _, v in backlog) / 2**20, 1),
        "produce seconds": round(produced_s, 1),
        "worker python": args.python or sys.executable,
        "env": env,
        "peak RSS MiB (worker + model process)": round(max(samples), 1),
        "peak RSS MiB (model process)": round(max(model_samples), 1),
        "model process MiB at the start": round(model_samples[0], 1),
        "posts done while sampled": metrics.get("emotion_results_out_total"),
        "timeline (every 10 s)": timeline,
        "settings": "defaults (EMOTION_BATCH_SIZE 256, EMOTION_MAX_INFLIGHT_BYTES 64 MiB)",
    }


def _metrics(worker: WorkerProcess) -> dict[str, float]:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{worker.web_port}/metrics", timeout=5) as resp:
        lines = resp.read().decode().splitlines()
    return {
        n: float(v) for n, v in (line.rsplit(" ", 1) for line in lines if line and not line.startswith("#"))
    }


def scale(args: argparse.Namespace) -> dict:
    """Posts/s of two one-thread workers against one two-thread worker, in turn, twice."""
    rates: dict[str, list[float]] = {"2 workers x 1 thread": [], "1 worker x 2 threads": []}
    for _ in range(2):
        for layout, (count, threads) in (("2 workers x 1 thread", (2, 1)), ("1 worker x 2 threads", (1, 2))):
            with Stream(args.model, partitions=4) as stream:
                workers = [stream.worker(f"w{i}", EMOTION_TORCH_THREADS=str(threads)) for i in range(count)]
                for w in workers:
                    w.wait_ready(timeout=120)
                time.sleep(6)  # let the group settle: every worker holds partitions
                sent = posts(args.posts, "s")
                started = time.monotonic()
                stream.produce(sent)
                stream.read(stream.output, {k.decode() for k, _ in sent}, idle_s=30)
                rates[layout].append(args.posts / (time.monotonic() - started))
    return {
        layout: {"posts/s": [round(r, 1) for r in rs], "mean": round(sum(rs) / len(rs), 1)}
        for layout, rs in rates.items()
    }


def soak(args: argparse.Namespace) -> dict:
    """``minutes`` at ``rate`` with a fault every minute (kill, cut, poison in turn); the worker
    is restarted whenever it exits, as a supervisor would."""
    faults = ["kill", "cut", "poison"]
    timeline = []
    with Stream(args.model, proxy=True) as stream:
        stream.worker("w0").wait_ready(timeout=180)
        stop = threading.Event()
        sent = posts(int(args.rate * 60 * args.minutes), "soak")
        acked: list[int] = []
        producing = threading.Thread(target=lambda: acked.append(stream.produce(sent, args.rate, stop)))
        producing.start()
        poison = 0
        for minute in range(args.minutes):
            deadline = time.monotonic() + 60
            fault = faults[minute % len(faults)]
            time.sleep(20)
            if fault == "kill":
                stream.workers[-1].kill()
            elif fault == "cut":
                stream.proxy.cut()
                time.sleep(10)
                stream.proxy.restore()
            else:
                poison += stream.produce(
                    [(b"poison-big", b"\xff" * 1_200_000), (b"poison-bin", b"\xff\xfe"), (None, b"{")]
                )
            while time.monotonic() < deadline:
                if stream.workers[-1].process.poll() is not None:  # the supervisor's part
                    stream.worker(f"w{len(stream.workers)}")
                time.sleep(1)
            timeline.append(
                {
                    "minute": minute + 1,
                    "fault": fault,
                    "rss_mib": round(rss_mib(stream.workers[-1].process.pid), 1),
                    "worker restarts": len(stream.workers) - 1,
                }
            )
            print(timeline[-1], flush=True)
        stop.set()
        producing.join()
        wanted = {k.decode() for k, _ in sent[: acked[0]]}
        results = stream.read(stream.output, wanted, idle_s=30)
        letters = stream.read(stream.dlq, idle_s=5)
    ids = [r["id"] for r in results]
    return {
        "minutes": args.minutes,
        "rate": args.rate,
        "posts acknowledged by the broker": len(wanted),
        "lost (no result)": len(wanted - set(ids)),
        "duplicated results": sum(n - 1 for n in Counter(ids).values()),
        "dead letters (poison sent)": f"{len(letters)} ({poison})",
        "timeline": timeline,
    }


FUZZ_COMPONENTS = {"worker": "worker", "aggregator": "aggregate", "dashboard": "dashboard"}
UNDECODABLE_RANGE = re.compile(r"offsets (\d+)\.\.(\d+)")


def _hwm_mib(pid: int) -> float:
    """The kernel's record of a process's peak resident memory (catches spikes between samples)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


class _Supervisor:
    """Runs the worker, the aggregator and the page, restarts whichever exits (as a supervisor
    would) and counts it, and samples their memory."""

    def __init__(self, stream: Stream, env: dict[str, str]) -> None:
        self.stream, self.env = stream, env
        self.began = time.monotonic()
        self.current: dict[str, WorkerProcess] = {}
        self.exits: dict[str, list[dict]] = {name: [] for name in FUZZ_COMPONENTS}
        self.peak: dict[str, float] = dict.fromkeys(FUZZ_COMPONENTS, 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _start(self, name: str) -> WorkerProcess:
        env = dict(self.env)
        if name != "worker":  # its probes' port, where WorkerProcess looks for /ready and /metrics
            port = str(free_port())
            env["EMOTION_WEB_PORT"] = port
            env["EMOTION_AGGREGATE_PORT" if name == "aggregator" else "EMOTION_DASHBOARD_PORT"] = port
        run = len(self.exits[name])
        self.current[name] = self.stream.worker(f"{name}{run}", FUZZ_COMPONENTS[name], **env)
        return self.current[name]

    def start(self, timeout: float = 120) -> None:
        for name in FUZZ_COMPONENTS:  # all three start at once: each waits on its own imports
            self._start(name)
        for process in self.current.values():
            process.wait_ready(timeout=timeout)
        self._thread.start()

    def _sample(self, name: str, process: WorkerProcess) -> None:
        pid = process.process.pid
        self.peak[name] = max(self.peak[name], rss_mib(pid), _hwm_mib(pid))

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            for name, process in list(self.current.items()):
                code = process.process.poll()
                if code is None:
                    self._sample(name, process)
                    continue
                process.kill()  # closes its log
                tail = process.log_path.read_text(errors="replace")[-1500:] if process.log_path else ""
                self.exits[name].append(
                    {"code": code, "at_s": round(time.monotonic() - self.began, 1), "log": tail}
                )
                print(f"{name} exited with code {code}: restarted", flush=True)
                self._start(name)

    def stop(self) -> dict[str, int]:
        """Stop watching, then SIGTERM each component; their exit codes (target 0)."""
        self._stop.set()
        self._thread.join()
        codes = {}
        for name, process in self.current.items():
            self._sample(name, process)
            codes[name] = process.stop()
        return codes


async def _send_mix(stream: Stream, mix, seconds: float, rate: float, bomb_mb: int) -> list[dict]:
    """The mix at ``rate`` messages/s for ``seconds``; a bomb after a third of the run (10 s at
    most) and every 30 s after. Returns one entry per message: its kind, what is expected of it,
    and where the broker put it (or why it refused it)."""
    from bench.hostile import CODECS

    common = {"bootstrap_servers": stream.bootstrap, **profile_for("embedded").producer}
    producers = {"plain": AIOKafkaProducer(linger_ms=5, max_request_size=8 << 20, **common)}
    for codec in CODECS:  # one producer per codec: a batch holds one codec's posts only
        producers[codec] = AIOKafkaProducer(
            compression_type=codec, linger_ms=20, max_request_size=8 << 20, **common
        )
    # The bomb has a producer of its own, so its batch (dead-lettered whole) holds nothing else.
    producers["bomb"] = AIOKafkaProducer(
        compression_type="gzip", linger_ms=0, max_request_size=(bomb_mb + 1) << 20, **common
    )
    for producer in producers.values():
        await producer.start()
    entries: list[dict] = []
    futures: list = []
    started = time.monotonic()
    next_bomb = started + min(10.0, seconds / 3)
    try:
        while time.monotonic() < started + seconds:
            if time.monotonic() >= next_bomb:
                message = mix.bomb(bomb_mb)
                next_bomb += 30.0
            else:
                message = mix.next()
            entry = {"kind": message.kind, "expect": message.expect, "id": message.post_id}
            try:
                futures.append(
                    await producers[message.producer].send(
                        stream.input, message.value, key=message.key, headers=message.headers or None
                    )
                )
            except Exception as exc:  # refused before it left: counted, never answered
                entry["refused"] = f"{type(exc).__name__}: {exc}"[:200]
                futures.append(None)
            entries.append(entry)
            del message  # a bomb's 80 MB should not outlive its send
            await asyncio.sleep(max(0.0, started + len(entries) / rate - time.monotonic()))
        acks = await asyncio.gather(*(f for f in futures if f is not None), return_exceptions=True)
    finally:
        for producer in producers.values():
            with contextlib.suppress(Exception):
                await producer.stop()
    it = iter(acks)
    for entry, future in zip(entries, futures, strict=True):
        if future is None:
            continue
        ack = next(it)
        if isinstance(ack, Exception):
            entry["refused"] = f"{type(ack).__name__}: {ack}"[:200]
        else:
            entry["at"] = (ack.partition, ack.offset)
    return entries


def _read_answers(stream: Stream, wanted: set[tuple[int, int]], idle_s: float) -> tuple[list, list]:
    """Every result and dead letter, read until each record in ``wanted`` (partition, offset)
    has an answer or ``idle_s`` pass with none."""

    async def run() -> tuple[list, list]:
        results, letters = [], []
        missing = set(wanted)
        async for record in follow(
            stream.bootstrap, [stream.output, stream.dlq], idle_timeout=idle_s, backend="embedded"
        ):
            value = json.loads(record.value)
            source = value.get("source") or {}
            at = (source.get("partition"), source.get("offset"))
            if record.topic == stream.output:
                results.append(value)
                missing.discard(at)
            else:
                letters.append(value)
                missing -= set(_letter_offsets(value))
            if not missing:
                break
        return results, letters

    return asyncio.run(run())


def _letter_offsets(letter: dict) -> list[tuple[int, int]]:
    """The input records a dead letter answers: one, or a whole batch that could not be decoded."""
    source = letter.get("source") or {}
    partition, offset = source.get("partition"), source.get("offset")
    error = letter.get("error") or {}
    found = UNDECODABLE_RANGE.search(error.get("message", "")) if error.get("kind") == "undecodable" else None
    if found:
        return [(partition, o) for o in range(int(found[1]), int(found[2]) + 1)]
    return [(partition, offset)]


def _read_aggregates(stream: Stream, topic: str) -> dict[tuple[str, str], dict]:
    """The latest record of each (window, dimension) on the aggregates topic."""

    async def run() -> dict[tuple[str, str], dict]:
        latest = {}
        async for record in follow(stream.bootstrap, [topic], idle_timeout=5.0, backend="embedded"):
            value = json.loads(record.value)
            latest[(value["window_start"], json.dumps(value["dimension"], sort_keys=True))] = value
        return latest

    return asyncio.run(run())


def _wait_aggregator(process: WorkerProcess, results: int, letters: int, restarted: bool) -> dict:
    """The aggregator's /metrics once it has read every result and dead letter (after a restart,
    once it has nothing left to read and its counters stand still), and published them."""
    read_results = 'emotion_aggregate_records_read_total{topic="results"}'
    read_letters = 'emotion_aggregate_records_read_total{topic="dead_letters"}'
    deadline, last, still_since = time.monotonic() + 60, None, time.monotonic()
    metrics: dict[str, float] = {}
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            metrics = _metrics(process)
        seen = (metrics.get(read_results, 0), metrics.get(read_letters, 0))
        if seen != last:
            last, still_since = seen, time.monotonic()
        if seen[0] >= results and seen[1] >= letters:
            break
        if restarted and metrics.get("emotion_aggregate_lag") == 0 and time.monotonic() - still_since > 6:
            break
        time.sleep(0.5)
    time.sleep(2.5)  # two update intervals: every count is in a published window
    with contextlib.suppress(OSError, ValueError):
        metrics = _metrics(process)
    return metrics


def fuzz(args: argparse.Namespace) -> dict:
    """Valid posts mixed with hostile messages through a worker, the aggregator and the live page."""
    from bench.hostile import LETTER, RESULT, Mix
    from emotion_stream.worker.settings import WorkerSettings

    max_message_bytes = WorkerSettings.model_fields["max_message_bytes"].default
    with Stream(args.model) as stream:
        aggregates = f"aggregates-{stream.suffix}"
        env = {
            "EMOTION_AGGREGATES_TOPIC": aggregates,
            "EMOTION_AGGREGATE_GROUP_ID": f"bench-aggregate-{stream.suffix}",
            "EMOTION_AGGREGATE_UPDATE_S": "1",
            "EMOTION_DASHBOARD_SHOW_TEXT": "true",  # so the page reads the input topic as well
        }
        supervisor = _Supervisor(stream, env)
        supervisor.start()
        mix = Mix(f"fz{stream.suffix}", max_message_bytes, seed=args.seed)
        seconds = args.minutes * 60
        print(f"sending for {seconds:.0f} s at {args.rate:g} messages/s", flush=True)
        entries = asyncio.run(_send_mix(stream, mix, seconds, args.rate, args.bomb_mb))
        acked = {e["at"]: e for e in entries if "at" in e}
        results, letters = _read_answers(stream, set(acked), idle_s=30.0)
        restarts = {name: len(exits) for name, exits in supervisor.exits.items()}
        agg_metrics = _wait_aggregator(
            supervisor.current["aggregator"], len(results), len(letters), restarts["aggregator"] > 0
        )
        page_metrics: dict[str, float] = {}
        with contextlib.suppress(OSError, ValueError):
            page_metrics = _metrics(supervisor.current["dashboard"])
        stop_codes = supervisor.stop()
        latest = _read_aggregates(stream, aggregates)
        broker_rss = rss_mib(stream.broker.pid) if stream.broker.pid else 0.0

    # Where each answer points: input records by (partition, offset).
    result_at = Counter((r["source"]["partition"], r["source"]["offset"]) for r in results)
    letter_at: dict[tuple[int, int], list[str]] = {}
    for letter in letters:
        for at in _letter_offsets(letter):
            letter_at.setdefault(at, []).append(letter["error"]["kind"])
    by_kind: dict[str, dict] = {}
    surprises: Counter[str] = Counter()
    for entry in entries:
        row = by_kind.setdefault(
            entry["kind"],
            {
                "expect": entry["expect"],
                "sent": 0,
                "acked": 0,
                "results": 0,
                "dead letters": Counter(),
                "unanswered": 0,
            },
        )
        row["sent"] += 1
        at = entry.get("at")
        if at is None:
            continue
        row["acked"] += 1
        row["results"] += result_at.get(at, 0)
        row["dead letters"].update(letter_at.get(at, []))
        if not result_at.get(at) and not letter_at.get(at):
            row["unanswered"] += 1
        if entry["expect"] == LETTER and result_at.get(at):
            surprises[f"{entry['kind']}: a result"] += 1
        if entry["expect"] == RESULT and letter_at.get(at):
            surprises[f"{entry['kind']}: a dead letter"] += 1
    for row in by_kind.values():
        row["dead letters"] = dict(row["dead letters"])

    # Every valid post: exactly one result (at least one once the worker was restarted).
    wanted_ids = [e["id"] for e in acked.values() if e["expect"] == RESULT]
    ids = Counter(r["id"] for r in results)
    missing = [i for i in wanted_ids if not ids.get(i)]
    duplicated = sum(ids[i] - 1 for i in wanted_ids if ids.get(i, 0) > 1)
    posts_ok = not missing and (duplicated == 0 or restarts["worker"] > 0)
    unanswered = sum(row["unanswered"] for row in by_kind.values())

    # The aggregates against the results: every result is in a window's totals, or counted as
    # out of range or too late; the same for results and dead letters together, with the
    # records it skipped. Exact unless the aggregator restarted (then at least once).
    totals = [r for (_, dimension), r in latest.items() if dimension == "{}"]
    # A result counts toward its label or apart from the six emotions (unsure, other language,
    # no text): both are in the window.
    window_posts = sum(r["posts"] + sum(r.get(k, 0) for k in SET_APART) for r in totals)
    window_letters = sum(r["dead_letters"] for r in totals)
    out_of_range = int(agg_metrics.get("emotion_aggregate_out_of_range_total", -1))
    too_late = int(agg_metrics.get("emotion_aggregate_too_late_total", -1))
    skipped = int(
        sum(v for k, v in agg_metrics.items() if k.startswith("emotion_aggregate_records_skipped_total"))
    )
    accounted = window_posts + out_of_range + too_late
    everything = window_posts + window_letters + out_of_range + too_late + skipped
    exact = restarts["aggregator"] == 0
    aggregates_ok = (
        accounted == len(results) and everything == len(results) + len(letters)
        if exact
        else accounted >= len(results)
    )
    exits_ok = not any(restarts.values()) and not any(stop_codes.values())
    report = {
        "minutes": args.minutes,
        "rate": args.rate,
        "seed": args.seed,
        "model": args.model,
        "messages sent": len(entries),
        "messages acknowledged by the broker": len(acked),
        "sent by kind": {kind: row["sent"] for kind, row in sorted(by_kind.items())},
        "by kind": dict(sorted(by_kind.items())),
        "results": len(results),
        "dead letters": len(letters),
        "dead letters by kind": dict(Counter(letter["error"]["kind"] for letter in letters)),
        "components": {
            name: {
                "exits during the run": [{k: v for k, v in e.items() if k != "log"} for e in exits],
                "restarts": restarts[name],
                "exit code at stop": stop_codes[name],
                "peak RSS MiB": round(supervisor.peak[name], 1),
            }
            for name, exits in supervisor.exits.items()
        },
        "exit logs": {name: [e["log"] for e in exits] for name, exits in supervisor.exits.items() if exits},
        "broker RSS MiB at the end": round(broker_rss, 1),
        "valid posts": {
            "expected a result": len(wanted_ids),
            "missing": len(missing),
            "missing ids (first 20)": missing[:20],
            "duplicated results": duplicated,
            "balanced": posts_ok,
        },
        "records with no answer": unanswered,
        "outcomes that differ from the expected": dict(surprises),
        "aggregates": {
            "windows (totals)": len(totals),
            "posts in the windows": window_posts,
            "dead letters in the windows": window_letters,
            "out of range": out_of_range,
            "too late": too_late,
            "skipped": skipped,
            "posts + out of range + too late": accounted,
            "results published": len(results),
            "exact (the aggregator never restarted)": exact,
            "balanced": aggregates_ok,
        },
        "page": {
            k: v
            for k, v in page_metrics.items()
            if k.startswith("emotion_dashboard_records") and "_created" not in k
        },
        "ok": exits_ok and posts_ok and unanswered == 0 and aggregates_ok,
    }
    _print_fuzz_table(report)
    return report


def _print_fuzz_table(report: dict) -> None:
    print(f"\n{'kind':<26} {'expect':<11} {'sent':>6} {'results':>8} {'dead letters':<34} {'no answer':>9}")
    for kind, row in report["by kind"].items():
        letters = ", ".join(f"{k} {n}" for k, n in sorted(row["dead letters"].items())) or "-"
        print(
            f"{kind:<26} {row['expect']:<11} {row['sent']:>6} {row['results']:>8} {letters:<34} "
            f"{row['unanswered']:>9}"
        )
    print(f"\n{'component':<11} {'exits':>5} {'restarts':>8} {'stop code':>9} {'peak RSS MiB':>12}")
    for name, c in report["components"].items():
        exits = len(c["exits during the run"])
        print(f"{name:<11} {exits:>5} {c['restarts']:>8} {c['exit code at stop']:>9} {c['peak RSS MiB']:>12}")
    a, p = report["aggregates"], report["valid posts"]
    print(
        f"\nsent {report['messages sent']} (acked {report['messages acknowledged by the broker']}), "
        f"results {report['results']}, dead letters {report['dead letters']}, "
        f"no answer {report['records with no answer']}\n"
        f"valid posts: {p['expected a result']} expected, {p['missing']} missing, "
        f"{p['duplicated results']} duplicated -> {'balanced' if p['balanced'] else 'NOT BALANCED'}\n"
        f"aggregates: {a['posts in the windows']} in windows + {a['out of range']} out of range + "
        f"{a['too late']} too late = {a['posts + out of range + too late']} vs {a['results published']} "
        f"results -> {'balanced' if a['balanced'] else 'NOT BALANCED'}\n"
        f"verdict: {'ok' if report['ok'] else 'FAILED'}\n",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.faults",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, run in (("kills", kills), ("memory", memory), ("scale", scale), ("soak", soak), ("fuzz", fuzz)):
        p = sub.add_parser(name, help=run.__doc__.splitlines()[0])
        p.add_argument(
            "--model", default=str(DEFAULT_MODEL_DIR), help=f"model directory (default {DEFAULT_MODEL_DIR})"
        )
        p.set_defaults(run=run)
        if name == "kills":
            p.add_argument("--rate", type=float, default=200.0)
            p.add_argument("--kills", type=int, default=3)
            p.add_argument("--period", type=float, default=10.0, help="seconds between kills")
            p.add_argument(
                "--intervals",
                type=lambda text: [int(ms) for ms in text.split(",")],
                default=[2800, 100],
                help="commit intervals in ms, each run in turn (default 2800,100: Faust's, the worker's)",
            )
        if name == "memory":
            p.add_argument("--posts", type=int, default=100_000)
            p.add_argument("--bytes", type=int, default=4000, help="size of each post")
            p.add_argument("--seconds", type=float, default=60.0, help="how long to sample the worker")
            p.add_argument(
                "--python",
                default=None,
                help="the interpreter the worker runs on (default: this one); a venv made as the worker "
                "image makes it (bench/README.md) measures what the image runs",
            )
            p.add_argument(
                "--env",
                action="append",
                type=setting,
                default=[],
                metavar="NAME=VALUE",
                help="worker setting (repeatable)",
            )
        if name == "scale":
            p.add_argument("--posts", type=int, default=4000)
        if name == "soak":
            p.add_argument("--minutes", type=int, default=20)
            p.add_argument(
                "--rate", type=float, default=100.0, help="posts/s (about half the saturated rate)"
            )
        if name == "fuzz":
            p.add_argument("--minutes", type=float, default=10.0)
            p.add_argument("--rate", type=float, default=100.0, help="messages/s, valid and hostile together")
            p.add_argument("--seed", type=int, default=1, help="fixes the mix (kinds, contents)")
            p.add_argument("--bomb-mb", type=int, default=80, help="decompressed size of each gzip bomb")
    args = parser.parse_args(argv)
    if not args.model.startswith("keywords:") and not Path(args.model).exists():
        parser.error(f"no model at {args.model}: train one (emotion-stream train) or pass --model DIR")
    os.environ.setdefault("EMOTION_LOG_LEVEL", "WARNING")
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    report = args.run(args)
    _save(args.command, report)
    return 0 if report.get("ok", True) else 1


if __name__ == "__main__":
    raise SystemExit(main())
