"""Quality and speed per model and numeric mode, side by side in one run.

    python -m bench.quality --data ../shared/data/emotion --models artifacts/model runs/student-3l \
        [--modes fp32 auto] [--threads 2] [--rounds 2] [--quick]

One row per (model, mode): the model's name and layers, the mode requested and the mode run
(``auto`` resolves to the fastest mode verified in the model directory, as in the worker),
then, in that mode:
- validation accuracy, macro F1 and ECE (15 bins, top label), computed here from the
  probabilities the model runner returns on the validation split;
- model alone: posts/s of the model runner over the burst's posts below (the validation posts,
  then training posts) in windows of 256 posts after one untimed warm-up window (as
  `emotion-stream verify-modes` times them), so that it does the same work as the stream;
- end to end: posts/s of a burst of 10,000 posts through the embedded broker and a worker with
  EMOTION_NUMERIC set to the mode, each burst with a fresh broker and worker (bench/run.py's
  ``_started`` and ``_burst_run``), from the first send to the last result; and its steady
  rate, from the first results to the last (what the stream keeps up once full, without the
  wait for its first batch: ``StreamRun.steady_rate``);
- the ratio of each row's posts/s to the first row's (the first model in its first mode:
  pass the released model in fp32 first, it is the reference), each row's end to end over its
  model alone (the stream's share, of the burst and of its steady rate), and each row's end to
  end over the plain model: the first
  model in fp32 run the plain way, ``transformers`` in this process on the validation posts
  sorted by token length and cut into padded batches of 64 (:func:`plain_rate`), measured
  once per round before the rows.
Each round runs the plain model, then every row, the rows in alternating order (A B C,
C B A, ...): a row's model alone and then at once its end-to-end burst, so that e2e / alone is
the mean of ratios of neighbours (these machines drift by 10-30 % within minutes; the ratio of
runs minutes apart carried that drift). Torch threads are the same
throughout (``--threads``: torch_threads here, EMOTION_TORCH_THREADS in the worker); the
worker otherwise runs its default settings. Writes artifacts/bench/quality.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
import typing
from pathlib import Path

import numpy as np

from bench.host import machine, save_report, settings_variant
from bench.models import read_split
from bench.run import CACHE, _burst_run, _started
from bench.streaming import BenchStream, StreamRun
from emotion_stream.schemas import LABELS
from emotion_stream.schemas.model_directory import DEFAULT_MODEL_DIR, model_info, read_identity
from emotion_stream.training.metrics import expected_calibration_error
from emotion_stream.worker.model.api import NumericMode
from emotion_stream.worker.model.verify import WINDOW, macro_f1, timed_predictions
from emotion_stream.worker.settings import WorkerSettings

BURST_POSTS = 10_000
"""Posts per end-to-end burst: about 10 s at the default model's rate, so that what every burst
pays once (the first batch's wait, the last fetch of the results: about 0.3 s together) weighs
3 %, not the 15 % it weighed in bursts of 2,000 (``--posts 2000``, the size of earlier runs)."""

QUICK_TEXTS = 512
"""Validation posts a --quick run classifies (a smoke run: its figures mean nothing)."""


def layers(model_dir: Path) -> int | None:
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    return config.get("num_hidden_layers", config.get("n_layers"))


def recorded(model_dir: Path) -> dict:
    """What the model directory says of itself: validation figures (metrics.json) and the
    numeric modes measured at export (the identity file); empty where a file is missing."""
    out: dict = {}
    metrics_path = model_dir / "metrics.json"
    if metrics_path.is_file():
        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
        validation = metrics.get("validation") or {}
        out["validation"] = {k: validation.get(k) for k in ("accuracy", "f1_macro", "ece")}
        before = (metrics.get("calibration") or {}).get("before") or {}
        if "ece" in before:
            out["ece_before_calibration"] = before["ece"]
    modes = ((read_identity(model_dir) or {}).get("numeric_modes") or {}).get("modes") or {}
    if modes:
        out["numeric_modes"] = {
            mode: {k: figures.get(k) for k in ("accuracy", "posts_per_s", "verified")}
            for mode, figures in modes.items()
        }
    return out


def model_alone(
    model_dir: Path, mode: str, texts: list[str], threads: int, worker_env: dict[str, str]
) -> tuple[str, float, np.ndarray]:
    """The mode run, posts/s over ``texts`` (as verify-modes measures it), and the probabilities
    (columns in LABELS order). The model runner is the one the worker's model process serves:
    from the model's serving graph, unless ``worker_env`` turns it off."""
    read_here = ("EMOTION_SERVING_GRAPH", "EMOTION_GRAPH_CACHE_DIR")  # read as the worker reads them
    graph = {name.removeprefix("EMOTION_").lower(): v for name, v in worker_env.items() if name in read_here}
    serving = WorkerSettings(**graph).model_options().graph_cache_dir
    predictions, posts_per_s, mode_run = timed_predictions(
        model_dir, mode, texts, threads, graph_cache_dir=serving
    )
    probs = np.array([[p.scores[label] for label in LABELS] for p in predictions], dtype=np.float64)
    return mode_run, posts_per_s, probs


PLAIN_BATCH = 64


def plain_rate(model_dir: Path, texts: list[str], threads: int) -> tuple[float, np.ndarray]:
    """Posts/s of the model run the plain way, and its logits in the texts' order:
    ``transformers`` in this process, fp32, the texts tokenized, sorted by token length and cut
    into padded batches of PLAIN_BATCH, timed from the texts to the labels after one untimed
    warm-up batch."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, use_safetensors=True).eval()

    def label_all(batch_texts: list[str]) -> np.ndarray:
        ids = tokenizer(batch_texts, truncation=True, max_length=128)["input_ids"]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        logits = np.zeros((len(ids), model.config.num_labels), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(order), PLAIN_BATCH):
                chunk = order[start : start + PLAIN_BATCH]
                batch = tokenizer.pad({"input_ids": [ids[i] for i in chunk]}, return_tensors="pt")
                logits[chunk] = model(**batch).logits.float().numpy()
        return logits

    label_all(texts[:PLAIN_BATCH])
    started = time.perf_counter()
    logits = label_all(texts)
    return len(texts) / (time.perf_counter() - started), logits


def quality(probs: np.ndarray, truth: np.ndarray) -> dict:
    predicted = probs.argmax(axis=1)
    return {
        "accuracy": float((predicted == truth).mean()),
        "f1_macro": macro_f1(truth, predicted),
        "ece": expected_calibration_error(truth, probs),
        "posts": len(truth),
    }


def _end_to_end(
    row: dict, threads: int, stream_texts: list[str], burst_texts: list[str], prefix: str
) -> StreamRun | None:
    """One burst through a fresh broker and worker running ``row``'s model and mode; None when
    it fails twice (each failure is kept in the row)."""
    env = {
        "EMOTION_MODEL": row["model"],
        "EMOTION_NUMERIC": row["mode"],
        "EMOTION_TORCH_THREADS": str(threads),
        **row["worker_env"],
    }
    for attempt in range(2):  # a worker that fails to start or loses posts gets one retry
        try:
            with BenchStream(env, log=CACHE / "quality-worker.log") as stream:
                _started(stream, stream_texts)
                return _burst_run(stream, burst_texts, f"{prefix}-{attempt}")
        except (RuntimeError, TimeoutError) as exc:
            print(f"[bench] {row['name']} {row['mode']}: {exc}", flush=True)
            row["e2e_errors"].append(str(exc))
    return None


def _order(rows: list[dict], round_: int) -> list[dict]:
    return rows if round_ % 2 == 0 else rows[::-1]


def run(args: argparse.Namespace) -> dict:
    CACHE.mkdir(parents=True, exist_ok=True)
    data = Path(args.data)
    texts, label_names = read_split(data, "validation")
    stream_texts = texts + (read_split(data, "train")[0] if (data / "train.txt").is_file() else [])
    if args.quick:
        texts, label_names = texts[:QUICK_TEXTS], label_names[:QUICK_TEXTS]
    truth = np.array([LABELS.index(name) for name in label_names])
    n_burst = args.posts or (400 if args.quick else BURST_POSTS)
    burst_texts = stream_texts[:n_burst]
    # The model alone labels the burst's own posts (the validation posts first, then training
    # posts, a little longer), so that e2e / alone compares the same work.
    alone_texts = burst_texts if len(burst_texts) >= len(texts) else texts
    rounds = args.rounds or (1 if args.quick else 2)

    rows: list[dict] = []
    variants = args.worker_env or [{}]
    for path in map(Path, args.models):
        info = model_info(path)
        for mode, worker_env in itertools.product(args.modes, variants):
            rows.append(
                {
                    "model": str(path),
                    "name": info.name,
                    "version": info.version,
                    "layers": layers(path),
                    "mode": mode,
                    "worker_env": worker_env,
                    "mode_run": None,
                    "quality": None,
                    "alone": [],
                    "e2e": [],
                    "paired": [],
                    "e2e_steady": [],
                    "paired_steady": [],
                    "e2e_errors": [],
                }
            )
    report: dict = {
        "machine": machine(),
        "args": vars(args),
        "threads": args.threads,
        "validation_posts": len(texts),
        "burst_posts": len(burst_texts),
        "rounds": rounds,
        "rows": rows,
        "recorded": {str(p): recorded(Path(p)) for p in dict.fromkeys(args.models)},
        "order": [],
        "plain": {"model": args.plain or rows[0]["model"], "batch": PLAIN_BATCH, "rates": []},
    }

    for round_ in range(rounds):
        plain_model = Path(report["plain"]["model"])
        print(f"[bench] the plain model, round {round_ + 1}: {plain_model} fp32", flush=True)
        rate, _ = plain_rate(plain_model, texts, args.threads)
        report["plain"]["rates"].append(rate)
        report["order"].append(["plain", str(plain_model), "fp32", rate, time.time()])
        for row in _order(rows, round_):
            print(f"[bench] model alone, round {round_ + 1}: {row['name']} {row['mode']}", flush=True)
            mode_run, rate, probs = model_alone(
                Path(row["model"]), row["mode"], alone_texts, args.threads, row["worker_env"]
            )
            probs = probs[: len(texts)]  # the validation posts come first
            row["alone"].append(rate)
            row["mode_run"] = mode_run
            if row["quality"] is None:  # the same weights and mode give the same labels every round
                row["quality"] = quality(probs, truth)
            report["order"].append(["alone", row["name"], row["mode"], rate, time.time()])
            print(f"[bench] end to end, round {round_ + 1}: {row['name']} {row['mode']}", flush=True)
            burst = _end_to_end(row, args.threads, stream_texts, burst_texts, f"q{round_}")
            if burst is not None:
                row["e2e"].append(burst.rate)
                row["paired"].append(burst.rate / rate)
                row["e2e_steady"].append(burst.steady_rate)
                row["paired_steady"].append(burst.steady_rate / rate)
                report["order"].append(["e2e", row["name"], row["mode"], burst.rate, time.time()])

    for row in rows:
        row["alone_rate"] = statistics.mean(row["alone"]) if row["alone"] else None
        row["e2e_rate"] = statistics.mean(row["e2e"]) if row["e2e"] else None
    reference = rows[0]
    plain = statistics.mean(report["plain"]["rates"])
    report["plain"]["rate"] = plain
    for row in rows:
        for kind in ("alone", "e2e"):
            ref, rate = reference[f"{kind}_rate"], row[f"{kind}_rate"]
            row[f"{kind}_vs_reference"] = rate / ref if rate and ref else None
        e2e = row["e2e_rate"]
        # Each burst over the model-alone run just before it: the drift of a shared machine
        # between the two is seconds' worth, not the minutes between the first and last run.
        row["e2e_vs_alone"] = statistics.mean(row["paired"]) if row["paired"] else None
        row["steady_vs_alone"] = statistics.mean(row["paired_steady"]) if row["paired_steady"] else None
        row["e2e_vs_plain"] = e2e / plain if e2e else None
    return report


def _f(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _variant(row: dict) -> str:
    env = row.get("worker_env") or {}
    return f" [worker {', '.join(f'{k}={v}' for k, v in env.items())}]" if env else ""


def print_table(report: dict) -> None:
    rows = report["rows"]
    ref = rows[0]
    print(f"\nmachine: {report['machine']}")
    print(
        f"torch threads {report['threads']}; quality on {report['validation_posts']} validation posts; "
        f"model alone and end to end: the same {report['burst_posts']} posts (the validation posts "
        f"first), the model alone in windows of {WINDOW}, end to end in one burst; mean of "
        f"{report['rounds']} round(s); "
        f"reference (x 1.00): {ref['name']} {ref['mode']}\n"
    )
    print(
        "| model | layers | mode | val. accuracy | macro F1 | ECE | alone posts/s | e2e posts/s "
        "| alone / ref | e2e / ref | e2e / alone | steady e2e / alone | e2e / plain |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        q = row["quality"] or {}
        tries = len(row["e2e_errors"])
        failed = f" ({tries} failed {'try' if tries == 1 else 'tries'})" if tries else ""
        print(
            f"| {row['name']} | {row['layers'] if row['layers'] is not None else '-'} "
            f"| {row['mode']} -> {row['mode_run']}{_variant(row)} "
            f"| {_f(q.get('accuracy'), '.4f')} | {_f(q.get('f1_macro'), '.4f')} | {_f(q.get('ece'), '.4f')} "
            f"| {_f(row['alone_rate'], '.1f')} | {_f(row['e2e_rate'], '.1f')}{failed} "
            f"| {_f(row['alone_vs_reference'], '.2f')} | {_f(row['e2e_vs_reference'], '.2f')} "
            f"| {_f(row['e2e_vs_alone'], '.2f')} | {_f(row.get('steady_vs_alone'), '.2f')} "
            f"| {_f(row['e2e_vs_plain'], '.2f')} |"
        )
    plain = report["plain"]
    print(
        f"\nplain: {plain['model']} in fp32, transformers in this process, "
        f"sorted batches of {plain['batch']}: "
        f"{plain['rate']:.1f} posts/s ({', '.join(f'{r:.1f}' for r in plain['rates'])})"
    )
    print()
    for row in rows:
        print(
            f"{row['name']} {row['mode']}{_variant(row)}: "
            f"alone {', '.join(f'{r:.1f}' for r in row['alone'])}; "
            f"e2e {', '.join(f'{r:.1f}' for r in row['e2e']) or '-'} posts/s; "
            "each burst over the model alone just before it "
            f"{', '.join(f'{r:.2f}' for r in row['paired']) or '-'}; "
            f"steady {', '.join(f'{r:.1f}' for r in row.get('e2e_steady', [])) or '-'} posts/s, "
            f"over the model alone {', '.join(f'{r:.2f}' for r in row.get('paired_steady', [])) or '-'}"
        )
    for path, rec in report["recorded"].items():
        name = next(r["name"] for r in rows if r["model"] == path)
        if not rec:
            print(f"{name} ({path}): no metrics.json nor numeric modes recorded")
            continue
        parts = []
        if "validation" in rec:
            v = rec["validation"]
            parts.append(
                f"validation accuracy {_f(v['accuracy'], '.4f')}, macro F1 {_f(v['f1_macro'], '.4f')}, "
                f"ECE {_f(v['ece'], '.4f')}"
                + (
                    f" (before calibration {rec['ece_before_calibration']:.4f})"
                    if "ece_before_calibration" in rec
                    else ""
                )
            )
        if "numeric_modes" in rec:
            parts.append(
                "modes at export: "
                + ", ".join(
                    f"{m} {_f(f['posts_per_s'], '.0f')}/s{'' if f['verified'] else ' (not verified)'}"
                    for m, f in rec["numeric_modes"].items()
                )
            )
        print(f"{name} recorded: {'; '.join(parts)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.quality",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", default="../shared/data/emotion", help="directory with validation.txt")
    parser.add_argument(
        "--models",
        nargs="+",
        default=[str(DEFAULT_MODEL_DIR)],
        help=f"model directories; the first, in its first mode, is the reference ({DEFAULT_MODEL_DIR})",
    )
    parser.add_argument(
        "--modes",
        nargs="+",
        default=["fp32", "auto"],
        choices=list(typing.get_args(NumericMode)),
        help="numeric modes, one row each per model (default: fp32 auto)",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads, here and in the worker (2)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="model-alone runs and end-to-end bursts per row (2; --quick 1)",
    )
    parser.add_argument(
        "--posts", type=int, default=None, help=f"posts per end-to-end burst ({BURST_POSTS}; --quick 400)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: small samples, not for the numbers"
    )
    parser.add_argument(
        "--plain",
        default=None,
        help="the model directory of the plain fp32 run that e2e / plain divides by (default: the "
        "first of --models); the issue's plain model is the demo recipe's, the teacher",
    )
    parser.add_argument(
        "--worker-env",
        action="append",
        type=settings_variant,
        metavar="NAME=VALUE[,NAME=VALUE]",
        help="worker settings for the end-to-end bursts; repeated, one row per model, mode and "
        "variant (e.g. --worker-env '' --worker-env EMOTION_SERVING_GRAPH=false: the defaults and without)",
    )
    args = parser.parse_args(argv)
    if not Path(args.data, "validation.txt").is_file():
        parser.error(f"{args.data} has no validation.txt: pass --data DIR")
    for model in args.models:
        if not Path(model, "config.json").is_file():
            parser.error(f"{model} has no config.json: not a model directory")
    started = time.monotonic()
    save_report("quality", run(args), started, print_table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
