"""Which CPU numeric modes keep a model's quality: measured once per model, recorded with it.

Each mode this CPU runs (fp32; bf16 where the CPU has AVX512-BF16 or AMX; int8 dynamic
quantization of the linear layers) runs the labelled validation posts through the same model
runner the worker uses. Recorded per mode: accuracy, macro F1, the share of posts labelled as
fp32 labels them, posts/s, and whether the mode is verified (accuracy within
``MAX_ACCURACY_DROP`` of fp32's and agreement of at least ``MIN_AGREEMENT``). The record goes
into the model directory's identity file, where ``EMOTION_NUMERIC=auto`` reads it.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from emotion_stream.schemas import LABELS
from emotion_stream.schemas.model_directory import model_info, read_identity, write_identity
from emotion_stream.worker.model.api import NUMERIC_MODES, ModelOptions, Prediction
from emotion_stream.worker.model.loading import MAX_ACCURACY_DROP, MIN_AGREEMENT, cpu_flags, cpu_runs

WINDOW = 256
"""Posts per call, as the worker's batches hand them to the model."""


def macro_f1(truth: np.ndarray, predicted: np.ndarray, classes: int = len(LABELS)) -> float:
    scores = []
    for c in range(classes):
        tp = int(((predicted == c) & (truth == c)).sum())
        fp = int(((predicted == c) & (truth != c)).sum())
        fn = int(((predicted != c) & (truth == c)).sum())
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


def timed_predictions(
    model_dir: Path, mode: str, texts: Sequence[str], threads: int | None
) -> tuple[list[Prediction], float, str]:
    """``texts`` through the worker's model runner in ``mode``, in windows of WINDOW after a
    warm-up window: (the predictions, posts/s, the mode actually run)."""
    from emotion_stream.worker.model.runner import EmotionClassifier

    classifier = EmotionClassifier(
        str(model_dir), ModelOptions(device="cpu", numeric=mode, torch_threads=threads)
    )
    try:
        classifier.predict(list(texts[:WINDOW]))  # warm up
        started = time.perf_counter()
        predictions: list[Prediction] = []
        for start in range(0, len(texts), WINDOW):
            predictions.extend(classifier.predict(list(texts[start : start + WINDOW])))
        seconds = time.perf_counter() - started
        mode_run = classifier.numeric
    finally:
        classifier.close()
    return predictions, len(texts) / seconds, mode_run


def verify_numeric_modes(
    model_dir: Path,
    texts: Sequence[str],
    labels: Sequence[int],
    *,
    threads: int | None = None,
    modes: Sequence[str] | None = None,
) -> dict:
    """Measure every mode this CPU runs on the labelled posts; return the record (not yet saved)."""
    flags = cpu_flags()
    wanted = [m for m in (modes or NUMERIC_MODES) if cpu_runs(m, flags)]
    if "fp32" not in wanted:
        wanted.insert(0, "fp32")
    truth = np.asarray(labels)
    results: dict[str, dict] = {}
    reference: np.ndarray | None = None
    for mode in ["fp32", *[m for m in wanted if m != "fp32"]]:
        predictions, posts_per_s, _ = timed_predictions(Path(model_dir), mode, texts, threads)
        predicted = np.array([LABELS.index(p.label) for p in predictions])
        if reference is None:
            reference = predicted
        results[mode] = {
            "accuracy": float((predicted == truth).mean()),
            "f1_macro": macro_f1(truth, predicted),
            "agreement": float((predicted == reference).mean()),
            "posts_per_s": round(posts_per_s, 1),
        }
    fp32 = results["fp32"]
    for mode, figures in results.items():
        figures["speedup"] = round(figures["posts_per_s"] / fp32["posts_per_s"], 3)
        figures["verified"] = mode == "fp32" or (
            figures["accuracy"] >= fp32["accuracy"] - MAX_ACCURACY_DROP
            and figures["agreement"] >= MIN_AGREEMENT
        )
    return {
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "posts": len(texts),
        "criteria": {"max_accuracy_drop": MAX_ACCURACY_DROP, "min_agreement": MIN_AGREEMENT},
        "cpu": {
            "machine": platform.machine(),
            "bf16": cpu_runs("bf16", flags),
            "vnni": bool({"avx512_vnni", "avx_vnni", "amx_int8"} & flags),
            "threads": threads,
        },
        "modes": results,
    }


def record_numeric_modes(model_dir: Path, verification: dict) -> None:
    """Save ``verification`` into the model directory's identity file (the version is unchanged:
    the weights are)."""
    identity = read_identity(model_dir) or model_info(model_dir).model_dump()
    identity["numeric_modes"] = verification
    write_identity(model_dir, identity)
