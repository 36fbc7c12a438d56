"""Benchmarks of the worker under faults and load: duplicates per kill, memory under a backlog,
scale-out, and a soak with a fault every minute.

    python -m bench.faults kills  [--model DIR] [--rate 200] [--kills 3]
    python -m bench.faults memory [--model DIR] [--posts 100000] [--bytes 4000] [--seconds 60]
    python -m bench.faults scale  [--model DIR] [--posts 4000]
    python -m bench.faults soak   [--model DIR] [--minutes 20] [--rate R]

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
import signal
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

from aiokafka import AIOKafkaProducer

from schemas.model_directory import DEFAULT_MODEL_DIR
from worker.broker.clients import follow
from worker.broker.embedded import EmbeddedBroker, free_port
from worker.broker.profiles import profile_for
from worker.cli.worker_process import WorkerProcess

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
        self, model: str, partitions: int = 4, proxy: bool = False, log_dir: Path | None = None
    ) -> None:
        self.suffix = uuid.uuid4().hex[:6]
        self.input, self.output, self.dlq = (f"{t}-{self.suffix}" for t in ("posts", "out", "dlq"))
        self.model, self.partitions, self.log_dir = model, partitions, log_dir or OUT
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

    def worker(self, name: str, **env: str) -> WorkerProcess:
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
        worker = WorkerProcess(settings, log_path=self.log_dir / f"faults-{self.suffix}-{name}.log")
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
    for interval_ms in (2800, 100):  # Faust's default, then the worker's
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
    with Stream(args.model) as stream:
        backlog = posts(args.posts, "m", size=args.bytes)
        started = time.monotonic()
        stream.produce(backlog)
        produced_s = time.monotonic() - started
        worker = stream.worker("w")
        worker.wait_ready(timeout=180)
        samples, timeline = [], []
        began = time.monotonic()
        while time.monotonic() < began + args.seconds:
            total = rss_mib(worker.process.pid)
            samples.append(total)
            if len(samples) % 20 == 1:
                done = _metrics(worker).get("emotion_results_out_total", 0)
                own = _own_rss_mib(worker.process.pid)
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
        "peak RSS MiB (worker + model process)": round(max(samples), 1),
        "posts done while sampled": metrics.get("emotion_results_out_total"),
        "timeline (every 10 s)": timeline,
        "settings": "defaults (EMOTION_BATCH_SIZE 128, EMOTION_MAX_INFLIGHT_BYTES 64 MiB)",
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.faults",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, run in (("kills", kills), ("memory", memory), ("scale", scale), ("soak", soak)):
        p = sub.add_parser(name, help=run.__doc__.splitlines()[0])
        p.add_argument(
            "--model", default=str(DEFAULT_MODEL_DIR), help=f"model directory (default {DEFAULT_MODEL_DIR})"
        )
        p.set_defaults(run=run)
        if name == "kills":
            p.add_argument("--rate", type=float, default=200.0)
            p.add_argument("--kills", type=int, default=3)
            p.add_argument("--period", type=float, default=10.0, help="seconds between kills")
        if name == "memory":
            p.add_argument("--posts", type=int, default=100_000)
            p.add_argument("--bytes", type=int, default=4000, help="size of each post")
            p.add_argument("--seconds", type=float, default=60.0, help="how long to sample the worker")
        if name == "scale":
            p.add_argument("--posts", type=int, default=4000)
        if name == "soak":
            p.add_argument("--minutes", type=int, default=20)
            p.add_argument(
                "--rate", type=float, default=100.0, help="posts/s (about half the saturated rate)"
            )
    args = parser.parse_args(argv)
    if not Path(args.model).exists():
        parser.error(f"no model at {args.model}: train one (emotion-stream train) or pass --model DIR")
    os.environ.setdefault("EMOTION_LOG_LEVEL", "WARNING")
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    _save(args.command, args.run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
