"""`POST /classify` under stream load: what the requests cost the stream, and what they get.

    python -m bench.classify --data ../shared/data/emotion [--model artifacts/model] [--quick]

One worker (EMOTION_CLASSIFY=true, EMOTION_CLASSIFY_MAX_CONCURRENT=64) on the embedded
broker, the same model and settings throughout:
1. the stream's saturated rate (better of two bursts of posts, no requests);
2. the stream paced at half that rate for each phase in turn: no requests (the baseline),
   1 client, 32 clients, then no requests again (the baseline measured on both sides of the
   loaded phases, as these machines drift within minutes). A client loops: POST one text
   (`{"text": ...}`, validation texts), wait for the answer, repeat. Per phase: requests/s,
   p50/p99 request latency, non-200 answers, and the stream's posts/s and p50/p99 latency per
   post (send to result receipt).
The clients run in threads of this process at the load generator's CPU priority (nice 10),
as the load generator does (see bench/streaming.py). Writes artifacts/bench/classify.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.host import add_data_and_model, machine, save_report
from bench.measure import best_model_rate
from bench.models import build_distilbert_architecture, read_split
from bench.run import CACHE, HALF_RATE_POSTS, _burst, _started, _stream_env, histogram_median, worker_metrics
from bench.streaming import INFRASTRUCTURE_NICE, BenchStream, StreamRun, as_posts
from emotion_stream.worker.settings import WorkerSettings

CLASSIFY_ENV = {"EMOTION_CLASSIFY": "true", "EMOTION_CLASSIFY_MAX_CONCURRENT": "64"}
"""64 requests in progress at most: 32 clients are never refused."""

PACED_LEAD_S = 1.0
"""`BenchStream.paced` waits this long (its reader's assignment) before its first send."""

REQUEST_TIMEOUT_S = 70.0
"""Over the worker's own 60 s answer timeout (it answers 503 then)."""


def _nice_this_thread() -> None:
    # On Linux each thread has its own nice value: the clients yield to the worker's model
    # threads as the broker and the load generator do.
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), INFRASTRUCTURE_NICE)


def _client(url: str, texts: list[str], offset: int, stop: threading.Event) -> list[tuple]:
    """POST one text, wait for the answer, repeat until ``stop``: (start, end, status) per request."""
    _nice_this_thread()
    done, i = [], offset
    while not stop.is_set():
        body = json.dumps({"text": texts[i % len(texts)]}).encode()
        i += 1
        request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        started = time.time()
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as resp:
                results = json.loads(resp.read())["results"]
            status = 200 if len(results) == 1 and "label" in results[0] else "bad body"
        except urllib.error.HTTPError as exc:
            status = exc.code
        except (OSError, ValueError, KeyError, TypeError) as exc:
            status = type(exc).__name__
        done.append((started, time.time(), status))
    return done


def _phase(
    stream: BenchStream, texts: list[str], post_texts: list[str], rate: float, clients: int, name: str
):
    """The stream paced at ``rate`` while ``clients`` clients call /classify; both summarized."""
    url = f"http://127.0.0.1:{stream.worker.web_port}/classify"
    stop = threading.Event()
    before = worker_metrics(stream)
    called = time.time()
    with ThreadPoolExecutor(max(clients, 1)) as pool:
        futures = [pool.submit(_client, url, texts, k * 97, stop) for k in range(clients)]
        try:
            run = stream.paced(as_posts(post_texts, name), rate, timeout=len(post_texts) / rate * 4 + 30)
        finally:
            stop.set()
        requests = [r for f in futures for r in f.result()]
    after = worker_metrics(stream)
    # Requests are counted over the stream's sending window only: before it the worker serves
    # them on their own (a quiet input topic), after it the stream has stopped.
    start = called + PACED_LEAD_S
    seconds = len(post_texts) / rate
    window = [r for r in requests if start <= r[0] < start + seconds]
    statuses = Counter(str(r[2]) for r in window)
    answered = StreamRun(
        posts=statuses["200"],
        seconds=seconds,
        latencies_ms=[(end - begun) * 1000 for begun, end, status in window if status == 200],
    )
    return {
        "clients": clients,
        "posts_sent": len(post_texts),
        "posts_back": run.posts,
        "stream_rate": run.rate,
        "stream_latency_ms": {f"p{q}": run.percentile(q) for q in (50, 95, 99)},
        "median_batch_ms": histogram_median(before, after, "emotion_batch_seconds") * 1000,
        "requests": len(window),
        "requests_per_s": answered.rate if clients else None,
        "request_latency_ms": {f"p{q}": answered.percentile(q) for q in (50, 90, 99, 100)}
        if clients
        else None,
        "statuses": dict(statuses),
        "non_200": len(window) - statuses["200"],
        "requests_outside_window": len(requests) - len(window),
    }


def run(args: argparse.Namespace) -> dict:
    CACHE.mkdir(parents=True, exist_ok=True)
    data = Path(args.data)
    texts = read_split(data, "validation")[0]
    stream_texts = texts + (read_split(data, "train")[0] if (data / "train.txt").is_file() else [])
    if args.model and Path(args.model, "config.json").is_file():
        model, model_name = Path(args.model), Path(args.model).name
    else:
        model, model_name = build_distilbert_architecture(CACHE / "distilbert-random"), "DistilBERT arch."
    print(f"[bench] {model_name}: model alone, best settings", flush=True)
    sweep_texts = texts[: 256 if args.quick else 1024]
    best, _ = best_model_rate(model, sweep_texts, windows=(128, 512), batches=(16, 32, 64))
    env = _stream_env(model, best, args.wait_ms, CLASSIFY_ENV)
    n_burst = 300 if args.quick else int(min(len(stream_texts), max(600, best.rate * 20)))
    seconds = args.seconds or (8.0 if args.quick else 30.0)
    report: dict = {
        "machine": machine(),
        "model": model_name,
        "env": {k: v for k, v in env.items() if k != "EMOTION_MODEL"},
        "model_alone": best.rate,
        "args": vars(args),
        "phases": {},
    }
    with BenchStream(env, log=CACHE / "classify-worker.log") as stream:
        print(
            f"[bench] saturated rate ({' '.join(f'{k}={v}' for k, v in report['env'].items())})", flush=True
        )
        _started(stream, stream_texts)
        bursts = [_burst(stream, stream_texts[:n_burst], f"sat{i}") for i in range(2)]
        rate = max(bursts)
        report["saturated"] = {"rate": rate, "bursts": bursts}
        half = rate / 2
        n_half = int(half * seconds) if args.quick else max(int(half * seconds), HALF_RATE_POSTS)
        post_texts = stream_texts[:n_half]
        report["half_rate"] = half
        for name, clients in [
            ("baseline", 0),
            *((f"{n} client{'s' * (n != 1)}", n) for n in args.clients),
            ("baseline after", 0),
        ]:
            print(f"[bench] half rate ({half:.0f} posts/s, {n_half / half:.0f} s): {name}", flush=True)
            report["phases"][name] = _phase(stream, texts, post_texts, half, clients, name.replace(" ", "-"))
    return report


def _ms(figures: dict | None, *keys: str) -> str:
    return "-" if figures is None else "/".join(f"{figures[k]:.0f}" for k in keys)


def print_table(report: dict) -> None:
    print(f"\nmachine: {report['machine']}")
    sat = report["saturated"]
    print(
        f"model: {report['model']} (alone {report['model_alone']:.1f} posts/s); stream saturated "
        f"{sat['rate']:.1f} posts/s (bursts {', '.join(f'{r:.1f}' for r in sat['bursts'])}), "
        f"phases paced at {report['half_rate']:.1f} posts/s\n"
    )
    print(
        "| phase | stream posts/s | stream p50/p95/p99 ms | median batch ms | /classify req/s "
        "| req p50/p99 ms | non-200 |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, p in report["phases"].items():
        rps = "-" if p["requests_per_s"] is None else f"{p['requests_per_s']:.1f}"
        lost = "" if p["posts_back"] == p["posts_sent"] else f" ({p['posts_sent'] - p['posts_back']} missing)"
        print(
            f"| {name} | {p['stream_rate']:.1f}{lost} | {_ms(p['stream_latency_ms'], 'p50', 'p95', 'p99')} "
            f"| {p['median_batch_ms']:.0f} | {rps} | {_ms(p['request_latency_ms'], 'p50', 'p99')} "
            f"| {p['non_200'] if p['clients'] else '-'} |"
        )
    baselines = [p for name, p in report["phases"].items() if p["clients"] == 0]
    base_p99 = statistics.mean(p["stream_latency_ms"]["p99"] for p in baselines)
    for name, p in report["phases"].items():
        if p["clients"]:
            print(
                f"{name}: stream p99 {p['stream_latency_ms']['p99']:.0f} ms = "
                f"{p['stream_latency_ms']['p99'] / base_p99:.2f} x the baselines' mean ({base_p99:.0f} ms); "
                f"statuses {p['statuses']}"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.classify",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_data_and_model(parser)
    default_wait = WorkerSettings.model_fields["batch_wait_ms"].default
    parser.add_argument(
        "--wait-ms", type=int, default=default_wait, help=f"the worker's batch wait ({default_wait})"
    )
    parser.add_argument(
        "--seconds", type=float, default=None, help="length of each half-rate phase (default 30; --quick 8)"
    )
    parser.add_argument(
        "--clients", type=int, nargs="+", default=[1, 32], help="concurrent clients, one phase each (1 32)"
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: short phases, not for the numbers")
    args = parser.parse_args(argv)
    if not Path(args.data, "validation.txt").is_file():
        parser.error(f"{args.data} has no validation.txt: pass --data DIR or set EMOTION_DATA_DIR")
    if max(args.clients) > int(CLASSIFY_ENV["EMOTION_CLASSIFY_MAX_CONCURRENT"]):
        parser.error(
            f"at most {CLASSIFY_ENV['EMOTION_CLASSIFY_MAX_CONCURRENT']} clients (the worker's limit here)"
        )
    started = time.monotonic()
    save_report("classify", run(args), started, print_table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
