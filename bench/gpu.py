"""The GPU path, measured: run on a machine with a CUDA device (one command, a table at the end).

    python -m bench.gpu --data ../shared/data/emotion [--model artifacts/model] [--no-e2e] [--quick]

1. Model alone on the GPU: the model runner over the validation texts (repeated to fill a
   few seconds), windows x sub-batch sizes with mixed precision (the default there, bf16
   autocast; fp16 where the GPU has no bf16), then the best settings again in fp32.
2. The naive way on the same GPU: `transformers.pipeline`, one post at a time, padded to 128
   tokens, fp32; for a trained model over the whole validation split, with its accuracy.
3. Accuracy of the model runner on the GPU, mixed precision against fp32 (trained model).
4. End to end (unless --no-e2e, DistilBERT architecture): the worker with EMOTION_DEVICE=cuda
   on the embedded broker, bursts and latency at the saturated rate and at half of it, and
   the pipeline ceiling of this host (the worker with a model that costs nothing, and a
   plain aiokafka loop): on a GPU the Kafka side, not the model, should set the pace.
Runs the DistilBERT-base architecture (random weights) and the trained model, if given.
``--device cpu`` runs the same code on the CPU (a smoke run; the numbers mean nothing).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench.host import add_data_and_model
from bench.measure import ModelRate, accuracy, model_alone, naive_pipeline
from bench.models import build_distilbert_architecture, read_split

OUT = Path("artifacts/bench-gpu")
WINDOWS = (256, 1024)
MODEL_BATCHES = (64, 256)


def gpu_machine(device: str) -> str:
    import torch

    from bench.host import machine

    if device != "cuda":
        return f"no GPU (device {device}); {machine()}"
    props = torch.cuda.get_device_properties(0)
    return (
        f"{props.name}, {props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs, "
        f"CUDA {torch.version.cuda}, bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}; host: "
        f"{machine()}"
    )


def model_section(
    name: str, path: Path, texts: list[str], labels: list[str], device: str, quick: bool
) -> dict:
    repeat = 1 if quick else max(1, 10_000 // len(texts))
    speed_texts = (texts * repeat)[: 256 if quick else None]
    # Warmed up on every window first: a worker runs for days, and on a GPU each sub-batch
    # shape costs more the first time it is seen.
    warm = len(speed_texts)
    sweep = [
        model_alone(path, speed_texts, window, batch, numeric="auto", device=device, warmup=warm)
        for window in ((64,) if quick else WINDOWS)
        for batch in ((32,) if quick else MODEL_BATCHES)
    ]
    best = max(sweep, key=lambda r: r.rate)
    fp32 = model_alone(
        path, speed_texts, best.window, best.model_batch, numeric="fp32", device=device, warmup=warm
    )
    print(
        f"[gpu] {name}: best {best.window}/{best.model_batch} {best.rate:.0f} posts/s, fp32 {fp32.rate:.0f}",
        flush=True,
    )
    trained = not name.startswith("DistilBERT")
    naive_texts = texts[: 40 if quick else (len(texts) if trained else 500)]
    section: dict = {"sweep": [r.__dict__ for r in sweep], "best": best.__dict__, "fp32": fp32.__dict__}
    if trained:
        naive, naive_accuracy = naive_pipeline(
            path, naive_texts, device=device, labels=labels[: len(naive_texts)]
        )
        section["naive_accuracy"] = naive_accuracy
        n = len(naive_texts)
        section["accuracy"] = {
            numeric: accuracy(path, texts[:n], labels[:n], numeric, best.model_batch, device=device)
            for numeric in ("auto", "fp32")
        }
        section["accuracy_posts"] = n
    else:
        naive = naive_pipeline(path, naive_texts, device=device)
    section["naive"] = naive
    return section


def e2e_section(path: Path, best: dict, stream_texts: list[str], device: str, quick: bool) -> dict:
    from bench.run import ceiling, end_to_end
    from emotion_stream.worker.settings import WorkerSettings

    rate = ModelRate(best["window"], best["model_batch"], "auto", best["rate"])
    n = 600 if quick else min(len(stream_texts), 20_000)
    e2e = end_to_end(
        path,
        stream_texts[:n],
        rate,
        wait_ms=WorkerSettings.model_fields["batch_wait_ms"].default,
        seconds=3 if quick else 10,
        extra_env={"EMOTION_DEVICE": device},
        latency_texts=stream_texts,
    )
    e2e["ceiling"] = ceiling(2000 if quick else 30_000)
    return e2e


def print_table(report: dict) -> None:
    print(f"\nmachine: {report['machine']}\n")
    print(
        f"{'model':<24} {'window/sub':>10} {'mixed/s':>9} {'fp32/s':>8} {'mixed/fp32':>10} {'naive/s':>8} "
        f"{'alone/naive':>11}"
    )
    for name, m in report["models"].items():
        best, fp32 = m["best"], m["fp32"]
        print(
            f"{name:<24} {best['window']:>5}/{best['model_batch']:<4} {best['rate']:>9.0f} "
            f"{fp32['rate']:>8.0f} "
            f"{best['rate'] / fp32['rate']:>10.2f} {m['naive']:>8.1f} {best['rate'] / m['naive']:>11.1f}"
        )
    for name, m in report["models"].items():
        print(
            f"{name} sweep (mixed precision): "
            + ", ".join(f"{r['window']}/{r['model_batch']} {r['rate']:.0f}" for r in m["sweep"])
        )
        if "accuracy" in m:
            acc = m["accuracy"]
            print(
                f"{name} validation accuracy on {report['args']['device']} ({m['accuracy_posts']} posts): "
                "mixed precision "
                f"{acc['auto']:.4f}, fp32 {acc['fp32']:.4f} (loss {acc['fp32'] - acc['auto']:.4f}); "
                f"naive pipeline fp32 {m['naive_accuracy']:.4f}"
            )
    e2e = report.get("e2e")
    if e2e:
        c = e2e["ceiling"]
        alone = report["models"][e2e["model"]]["best"]["rate"]
        print(
            f"\nend to end, {e2e['model']} on {report['args']['device']}, window {e2e['window']}: bursts "
            f"{', '.join(f'{r:.0f}' for r in e2e['burst_rates'])} posts/s (model alone {alone:.0f}: "
            f"{e2e['rate'] / alone:.2f}); latency p50/p95/p99 ms saturated "
            f"{'/'.join(f'{x:.0f}' for x in e2e['latency_saturated'])}, half rate "
            f"{'/'.join(f'{x:.0f}' for x in e2e['latency_half'])} (wait {e2e['wait_ms']} ms)"
        )
        print(
            f"pipeline ceiling of this host (model costs nothing): worker {c['worker']:.0f} posts/s, plain "
            "aiokafka "
            f"loop {c['plain aiokafka']:.0f}; end to end = {e2e['rate'] / c['worker']:.2f} x the ceiling"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gpu", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_data_and_model(parser)
    parser.add_argument(
        "--distilbert",
        default="artifacts/bench/distilbert-random",
        help="DistilBERT-architecture directory; weights are drawn from its config.json if missing",
    )
    parser.add_argument(
        "--device", choices=("cuda", "cpu"), default="cuda", help="cpu: a smoke run of this script"
    )
    parser.add_argument(
        "--no-e2e", dest="e2e", action="store_false", help="model alone, naive and accuracy only"
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: small samples, not for the numbers"
    )
    parser.add_argument("--out", default=str(OUT), help=f"where results.json goes (default {OUT})")
    args = parser.parse_args(argv)
    if not Path(args.data, "validation.txt").is_file():
        parser.error(f"{args.data} has no validation.txt: pass --data DIR or set EMOTION_DATA_DIR")
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error(
            "no CUDA device is visible: this benchmark is for a GPU machine (--device cpu for a smoke run)"
        )
    started = time.monotonic()
    texts, labels = read_split(Path(args.data), "validation")
    models = [("DistilBERT arch.", build_distilbert_architecture(Path(args.distilbert)))]
    if args.model and Path(args.model, "config.json").is_file():
        models.append((f"trained ({Path(args.model).name})", Path(args.model)))
    report: dict = {"machine": gpu_machine(args.device), "models": {}, "args": vars(args)}
    for name, path in models:
        print(f"[gpu] {name}: model alone, naive, accuracy", flush=True)
        report["models"][name] = model_section(name, path, texts, labels, args.device, args.quick)
    if args.e2e:
        name, path = models[0]
        print(f"[gpu] {name}: end to end and the pipeline ceiling", flush=True)
        train = Path(args.data, "train.txt")
        stream_texts = texts + (read_split(Path(args.data), "train")[0] if train.is_file() else [])
        e2e = e2e_section(path, report["models"][name]["best"], stream_texts, args.device, args.quick)
        report["e2e"] = {**e2e, "model": name, "window": report["models"][name]["best"]["window"]}
    report["seconds"] = time.monotonic() - started
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=2))
    print_table(report)
    print(f"\n{report['seconds']:.0f} s; results in {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
