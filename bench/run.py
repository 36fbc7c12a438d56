"""emotion-stream benchmarks: one command, one table, ratios measured side by side in one run.

    python -m bench.run --data ../shared/data/emotion [--model artifacts/model] [--quick]

1. Model alone: the model runner over the validation texts, best batch settings from a sweep
   (window, sub-batch size, parallel CPU passes or one pass at a time), then re-measured on
   the end-to-end posts just before and just after each end-to-end burst (the limit); and
   small windows (8, 16, 32 posts) packed against padded, and small and large windows with
   the linear layers' weights prepacked against plain, in turn.
2. End to end: posts through the embedded broker and a worker (about 20 s of stream at the
   model's rate: the validation posts, then training posts), posts/s over the whole stream
   (five bursts, each with a fresh worker, each held against the model-alone runs around
   it), and latency per post (send to result receipt) at the saturated rate and at half of it
   (at least 1,500 posts at half rate).
3. The naive way: `transformers.pipeline`, one post at a time, padded to 128 tokens.
4. Pipeline ceiling: the worker with a model that costs nothing, against a plain aiokafka loop.
5. Numeric modes (bf16 autocast, int8 dynamic quantization): speed-up and accuracy side by side.
1-3 run for the DistilBERT-base architecture (random weights) and for the trained model.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import urllib.request
from pathlib import Path

from bench.host import add_data_and_model, machine
from bench.measure import ModelRate, accuracy, best_model_rate, model_alone, naive_pipeline, on_and_off
from bench.models import build_distilbert_architecture, read_split
from bench.streaming import BenchStream, StreamRun, as_posts
from emotion_stream.worker.settings import WorkerSettings

CACHE = Path("artifacts/bench")
SMALL_WINDOWS = (8, 16, 32)
"""Windows the packed and padded runs are compared on: the batches below saturation."""

HALF_RATE_POSTS = 1500
"""Fewest posts in the half-rate latency run: its p99 is then the 15th slowest post."""


def worker_metrics(stream: BenchStream) -> dict[str, float]:
    values = {}
    with urllib.request.urlopen(f"http://127.0.0.1:{stream.worker.web_port}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                values[name] = float(value)
    return values


def histogram_median(before: dict[str, float], after: dict[str, float], name: str) -> float:
    """Median of a Prometheus histogram over the interval between two scrapes (interpolated in its bucket)."""
    buckets = []
    for key, value in after.items():
        if key.startswith(f"{name}_bucket{{le="):
            le = key.split('le="', 1)[1].rstrip('"}')
            buckets.append((float("inf") if le == "+Inf" else float(le), value - before.get(key, 0.0)))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0
    if not total:
        return float("nan")
    previous_le, previous_count = 0.0, 0.0
    for le, count in buckets:
        if count >= total / 2:
            if le == float("inf"):
                return previous_le
            share = (total / 2 - previous_count) / max(count - previous_count, 1e-9)
            return previous_le + (le - previous_le) * share
        previous_le, previous_count = le, count
    return previous_le


def _stream_env(model: Path, best: ModelRate, wait_ms: int, extra_env: dict | None) -> dict:
    return {
        "EMOTION_MODEL": str(model),
        **best.env,
        "EMOTION_BATCH_WAIT_MS": str(wait_ms),
        **(extra_env or {}),
    }


def _started(stream: BenchStream, texts: list[str]) -> None:
    stream.start_worker()
    stream.worker.wait_ready(timeout=120)
    stream.paced(as_posts(texts[:64], "warm"), rate=None, timeout=60)  # first batches allocate


def _burst(stream: BenchStream, texts: list[str], prefix: str) -> float:
    return _burst_run(stream, texts, prefix).rate


def _burst_run(stream: BenchStream, texts: list[str], prefix: str) -> StreamRun:
    """``texts`` sent at once; every result read back (RuntimeError where one is missing)."""
    run = stream.paced(as_posts(texts, prefix), rate=None, timeout=len(texts) / 5 + 60)
    if run.posts < len(texts):
        raise RuntimeError(
            f"only {run.posts} of {len(texts)} results came back; see {CACHE / 'e2e-worker.log'}"
        )
    return run


def bracketed_bursts(model: Path, texts: list[str], best: ModelRate, wait_ms: int, bursts: int = 5) -> dict:
    """End to end against the model alone, paired: each burst (a fresh worker and broker)
    lies between two model-alone runs on the same posts, with nothing else running, and is
    held against their mean. These machines drift by 10-30 % within minutes; a ratio of
    neighbours is what that drift leaves alone. The target is the median of the ratios.
    """

    def alone() -> float:
        return model_alone(model, texts, best.window, best.model_batch, passes=best.passes).rate

    alones, rates = [alone()], []
    for i in range(bursts):
        with BenchStream(_stream_env(model, best, wait_ms, None), log=CACHE / "e2e-worker.log") as stream:
            _started(stream, texts)
            rates.append(_burst(stream, texts, f"sat{i}"))
        alones.append(alone())
    ratios = [
        rate / ((before + after) / 2) for rate, before, after in zip(rates, alones, alones[1:], strict=False)
    ]
    return {"alone": alones, "e2e": rates, "ratios": ratios, "ratio": statistics.median(ratios)}


def end_to_end(
    model: Path,
    texts: list[str],
    best: ModelRate,
    wait_ms: int,
    seconds: float,
    extra_env: dict | None = None,
    latency_texts: list[str] | None = None,
    half_rate_posts: int = 0,
) -> dict:
    """Throughput of a burst (better of two), then latency paced at that rate and at half of it.

    The half-rate run lasts ``seconds`` or sends ``half_rate_posts`` posts (from
    ``latency_texts``), whichever is longer: a 99th percentile over fewer posts than a
    thousand or so is decided by one or two slow batches.
    """
    latency_texts = latency_texts or texts
    with BenchStream(_stream_env(model, best, wait_ms, extra_env), log=CACHE / "e2e-worker.log") as stream:
        _started(stream, texts)
        rates = [_burst(stream, texts, f"sat{attempt}") for attempt in range(2)]
        rate = max(rates)
        paced_full = stream.paced(
            as_posts(texts[: int(rate * seconds)], "full"), rate, timeout=seconds * 4 + 30
        )
        before = worker_metrics(stream)
        half = latency_texts[: max(int(rate * seconds / 2), half_rate_posts)]
        paced_half = stream.paced(as_posts(half, "half"), rate / 2, timeout=len(half) / rate * 4 + 30)
        after = worker_metrics(stream)
    return {
        "rate": rate,
        "burst_rates": rates,
        "latency_saturated": [paced_full.percentile(q) for q in (50, 95, 99)],
        "latency_half": [paced_half.percentile(q) for q in (50, 95, 99)],
        "half_median_batch_ms": histogram_median(before, after, "emotion_batch_seconds") * 1000,
        "half_posts": paced_half.posts,
        "wait_ms": wait_ms,
    }


def ceiling(n: int) -> dict:
    texts = [f"post number {i}: i feel rather calm about the whole thing today" for i in range(n)]
    rates = {}
    for name, module in (("worker", "bench.constant_worker"), ("plain aiokafka", "bench.plain_loop")):
        env = {"EMOTION_BATCH_SIZE": "512", "EMOTION_BATCH_WAIT_MS": "20"}
        with BenchStream(env, module=module, args=(), log=CACHE / f"ceiling-{module}.log") as stream:
            stream.preload(as_posts(texts, "c"))
            stream.start_worker()
            rates[name] = stream.drain_throughput(n, timeout=180).rate
    return rates


def run(args: argparse.Namespace) -> dict:
    CACHE.mkdir(parents=True, exist_ok=True)
    texts, labels = read_split(Path(args.data), "validation")
    stream_texts = texts + (
        read_split(Path(args.data), "train")[0] if Path(args.data, "train.txt").is_file() else []
    )
    sweep_texts = texts[: 256 if args.quick else 1024]
    models = [("DistilBERT arch.", build_distilbert_architecture(CACHE / "distilbert-random"))]
    if args.model and Path(args.model, "config.json").is_file():
        models.append((f"trained ({Path(args.model).name})", Path(args.model)))
    report: dict = {"machine": machine(), "models": {}, "args": vars(args)}
    for name, path in models:
        print(f"[bench] {name}: model alone", flush=True)
        best, sweep = best_model_rate(path, sweep_texts, windows=(128, 512), batches=(16, 32, 64))
        one_pass = max((r for r in sweep if r.passes == 1), key=lambda r: r.rate)
        parallel = max(
            (r for r in sweep if r.passes is None and r.window == one_pass.window), key=lambda r: r.rate
        )
        print(f"[bench] {name}: small windows, packed and padded", flush=True)
        small_texts, rounds = sweep_texts[: 64 if args.quick else 384], 1 if args.quick else 2
        packing = on_and_off(path, small_texts, SMALL_WINDOWS, best.model_batch, "packing", rounds)
        print(f"[bench] {name}: prepacked weights against plain", flush=True)
        prepack = on_and_off(path, small_texts, (8, 32), best.model_batch, "prepack", rounds)
        prepack += on_and_off(path, sweep_texts, (best.window,), best.model_batch, "prepack", rounds)
        print(f"[bench] {name}: naive pipeline", flush=True)
        naive = naive_pipeline(path, texts[: 30 if args.quick else 150])
        print(f"[bench] {name}: end to end ({' '.join(f'{k}={v}' for k, v in best.env.items())})", flush=True)
        # About 20 s of stream at the model's rate, so the ramp at each end of a burst weighs
        # the same for every model: the validation posts first, then training posts.
        n_e2e = 300 if args.quick else int(min(len(stream_texts), max(600, best.rate * 20)))
        # The limit the worker is held against: the model alone at the best settings on the
        # very posts of the end-to-end bursts, run just before and just after each burst.
        paired = bracketed_bursts(
            path, stream_texts[:n_e2e], best, args.wait_ms, bursts=2 if args.quick else 5
        )
        print(f"[bench] {name}: end to end, latency", flush=True)
        e2e = end_to_end(
            path,
            stream_texts[:n_e2e],
            best,
            args.wait_ms,
            seconds=5 if args.quick else 20,
            latency_texts=stream_texts,
            half_rate_posts=0 if args.quick else HALF_RATE_POSTS,
        )
        print(f"[bench] {name}: end to end with EMOTION_NUMERIC=int8", flush=True)
        e2e_int8 = end_to_end(
            path,
            stream_texts[:n_e2e],
            best,
            args.wait_ms,
            seconds=5 if args.quick else 10,
            extra_env={"EMOTION_NUMERIC": "int8"},
        )
        report["models"][name] = {
            "paired": paired,
            "best": {"window": best.window, "model_batch": best.model_batch, "passes": best.passes},
            "passes": {"one": one_pass.__dict__, "parallel": parallel.__dict__},
            "packing": packing,
            "prepack": prepack,
            "sweep": [r.__dict__ for r in sweep],
            "naive": naive,
            "e2e": e2e,
            "e2e_int8": e2e_int8["rate"],
        }
    print("[bench] numeric modes", flush=True)
    report["numeric"] = numeric_modes(models, texts, labels, report, quick=args.quick)
    print("[bench] pipeline ceiling", flush=True)
    report["ceiling"] = ceiling(3000 if args.quick else 30000)
    return report


def numeric_modes(models, texts, labels, report, quick: bool) -> list[dict]:
    rows = []
    n_speed = 256 if quick else 1024
    for name, path in models:
        best = report["models"][name]["best"]
        base_rate = None
        # fp32 first (the speed-ups are against it), then fp32 with the weights not prepacked.
        for label, numeric, prepack in (
            ("fp32", "fp32", True),
            ("fp32 plain weights", "fp32", False),
            ("bf16", "bf16", True),
            ("int8", "int8", True),
        ):
            rate = model_alone(
                path,
                texts[:n_speed],
                best["window"],
                best["model_batch"],
                numeric,
                best["passes"],
                prepack=prepack,
            ).rate
            base_rate = base_rate or rate
            acc = None
            if not name.startswith("DistilBERT"):
                n = 300 if quick else len(texts)
                acc = accuracy(
                    path, texts[:n], labels[:n], numeric, best["model_batch"], best["passes"], prepack=prepack
                )
            rows.append(
                {"model": name, "numeric": label, "rate": rate, "speedup": rate / base_rate, "accuracy": acc}
            )
    return rows


def print_table(report: dict) -> bool:
    print(f"\nmachine: {report['machine']}\n")
    ok = True
    print(
        f"{'model':<26} {'alone/s':>8} {'e2e/s':>7} {'e2e/alone':>9} {'naive/s':>8} {'e2e/naive':>9}  "
        "latency p50/p95/p99 ms (saturated | half rate)"
    )
    for name, m in report["models"].items():
        e2e, paired = m["e2e"], m["paired"]
        rate, alone = statistics.median(paired["e2e"]), statistics.median(paired["alone"])
        ratio_alone, ratio_naive = paired["ratio"], rate / m["naive"]
        sat = "/".join(f"{x:.0f}" for x in e2e["latency_saturated"])
        half = "/".join(f"{x:.0f}" for x in e2e["latency_half"])
        print(
            f"{name:<26} {alone:>8.1f} {rate:>7.1f} {ratio_alone:>9.2f} {m['naive']:>8.1f} "
            f"{ratio_naive:>9.1f}  {sat} | {half}"
        )
    print(
        "(alone and e2e: medians; e2e/alone: median of each burst against the mean of the model-alone runs"
        " just before and after it)"
    )
    for name, m in report["models"].items():
        p = m["paired"]
        print(
            f"{name}: model alone {' | '.join(f'{a:.1f}' for a in p['alone'])} posts/s, bursts between them "
            f"{', '.join(f'{r:.1f}' for r in p['e2e'])}: ratios {', '.join(f'{x:.2f}' for x in p['ratios'])}"
        )
    for name, m in report["models"].items():
        one, par = m["passes"]["one"], m["passes"]["parallel"]
        print(
            f"{name} alone, window {one['window']}: parallel passes (default) {par['rate']:.1f} posts/s "
            f"(sub-batch {par['model_batch']}), one pass on all threads {one['rate']:.1f} "
            f"(sub-batch {one['model_batch']}): {par['rate'] / one['rate']:.2f}x"
        )
    for name, m in report["models"].items():
        for option, on, off in (("packing", "packed", "padded"), ("prepack", "weights prepacked", "plain")):
            for row in m.get(option, []):
                print(
                    f"{name} alone, window {row['window']}: {on} (default) {row['on']:.1f} posts/s, "
                    f"{off} {row['off']:.1f}: {row['ratio']:.2f}x"
                )
    for name, m in report["models"].items():
        print(
            f"{name} end to end with EMOTION_NUMERIC=int8: {m['e2e_int8']:.1f} posts/s = "
            f"{m['e2e_int8'] / m['naive']:.1f} x naive"
        )
    print(f"\n{'numeric mode':<34} {'posts/s':>8} {'speed-up':>8} {'val. accuracy':>13}")
    for row in report["numeric"]:
        acc = "-" if row["accuracy"] is None else f"{row['accuracy']:.4f}"
        print(
            f"{row['model'] + ' ' + row['numeric']:<34} {row['rate']:>8.1f} {row['speedup']:>8.2f} {acc:>13}"
        )
    c = report["ceiling"]
    print(
        f"\npipeline ceiling (model costs nothing): worker {c['worker']:.0f} posts/s, plain aiokafka loop "
        f"{c['plain aiokafka']:.0f} posts/s, ratio {c['worker'] / c['plain aiokafka']:.2f}"
    )
    print("\ntargets:")
    for name, m in report["models"].items():
        e2e, paired = m["e2e"], m["paired"]
        ok &= _target(
            f"{name}: end to end >= 0.9 x model alone (median of paired ratios {paired['ratio']:.2f})",
            paired["ratio"] >= 0.9,
        )
        if name.startswith("DistilBERT"):
            ok &= _target(
                f"{name}: end to end >= 6 x naive", statistics.median(paired["e2e"]) / m["naive"] >= 6
            )
        bound = e2e["wait_ms"] + 2 * e2e["half_median_batch_ms"]
        ok &= _target(
            f"{name}: p99 at half rate ({e2e.get('half_posts', '?')} posts) {e2e['latency_half'][2]:.0f} ms"
            f" <= wait + 2 x median batch = {bound:.0f} ms",
            e2e["latency_half"][2] <= bound,
        )
    ok &= _target("ceiling >= 10,000 posts/s", c["worker"] >= 10_000)
    ok &= _target("ceiling >= 0.5 x plain aiokafka loop", c["worker"] >= 0.5 * c["plain aiokafka"])
    for row in report["numeric"]:
        if row["accuracy"] is not None and row["numeric"] != "fp32":
            fp32 = next(r for r in report["numeric"] if r["model"] == row["model"] and r["numeric"] == "fp32")
            ok &= _target(
                f"{row['model']} {row['numeric']}: accuracy loss {fp32['accuracy'] - row['accuracy']:.4f} <= "
                "0.005",
                fp32["accuracy"] - row["accuracy"] <= 0.005,
            )
    return ok


def _target(label: str, passed: bool) -> bool:
    print(f"  [{'PASS' if passed else 'FAIL'}] {label}")
    return passed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_data_and_model(parser)
    default_wait = WorkerSettings.model_fields["batch_wait_ms"].default
    parser.add_argument(
        "--wait-ms",
        type=int,
        default=default_wait,
        help=f"the worker's batch wait (default: the worker's, {default_wait})",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: small samples, not for the numbers"
    )
    args = parser.parse_args(argv)
    if not Path(args.data, "validation.txt").is_file():
        parser.error(f"{args.data} has no validation.txt: pass --data DIR or set EMOTION_DATA_DIR")
    started = time.monotonic()
    report = run(args)
    report["seconds"] = time.monotonic() - started
    (CACHE / "results.json").write_text(json.dumps(report, indent=2))
    ok = print_table(report)
    print(f"\n{time.monotonic() - started:.0f} s; results in {CACHE / 'results.json'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
