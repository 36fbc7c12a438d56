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
    model_dir: Path,
    mode: str,
    texts: Sequence[str],
    threads: int | None,
    fp32_layers: Sequence[str] | None = None,
    kept_in: str | None = None,
    graph_cache_dir: str | None = None,
) -> tuple[list[Prediction], float, str]:
    """``texts`` through the worker's model runner in ``mode`` (int8 keeping ``fp32_layers``
    out, in ``kept_in``; None for either: what the model directory records, as the worker
    runs it), in windows of WINDOW after a warm-up window: (the predictions, posts/s, the mode
    actually run). With ``graph_cache_dir``, the runner the model process serves: from the
    model's serving graph there where it has one (see :mod:`worker.model.serving`)."""
    from emotion_stream.worker.model.serving import load_classifier

    options = ModelOptions(
        device="cpu",
        numeric=mode,
        torch_threads=threads,
        int8_fp32_layers=tuple(fp32_layers) if fp32_layers is not None else None,
        int8_kept_in=kept_in,
        graph_cache_dir=graph_cache_dir,
    )
    classifier = load_classifier(str(model_dir), options)
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
    search_int8: bool = True,
) -> dict:
    """Measure every mode this CPU runs on the labelled posts; return the record (not yet saved).

    When int8 with every linear layer quantized fails the criteria, the layers whose
    quantization moves fp32's probabilities most are kept in fp32, a few more at a time, until
    it passes or half of them are kept (:func:`_int8_keeping_sensitive_layers`); the record
    says what was tried."""
    flags = cpu_flags()
    wanted = [m for m in (modes or NUMERIC_MODES) if cpu_runs(m, flags)]
    if "fp32" not in wanted:
        wanted.insert(0, "fp32")
    truth = np.asarray(labels)
    results: dict[str, dict] = {}
    reference: np.ndarray | None = None
    for mode in ["fp32", *[m for m in wanted if m != "fp32"]]:
        # Every linear layer in int8 first: the search below keeps some out only if that fails.
        predictions, posts_per_s, _ = timed_predictions(Path(model_dir), mode, texts, threads, (), "fp32")
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
        figures["verified"] = mode == "fp32" or _passes(figures, fp32)
    if "int8" in results and not results["int8"]["verified"] and search_int8:
        assert reference is not None
        results["int8"] = _int8_keeping_sensitive_layers(
            Path(model_dir), texts, truth, reference, results["int8"], fp32, threads
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


def _passes(figures: dict, fp32: dict) -> bool:
    return (
        figures["accuracy"] >= fp32["accuracy"] - MAX_ACCURACY_DROP and figures["agreement"] >= MIN_AGREEMENT
    )


SENSITIVITY_POSTS = 512
"""Validation posts each linear layer's sensitivity to int8 is measured on."""


def layer_sensitivity(model_dir: Path, texts: Sequence[str], threads: int | None) -> list[tuple[str, float]]:
    """Each linear layer of the model with only that layer quantized to int8 (as the int8 mode
    quantizes it), and how far that moves the model's probabilities from fp32's on ``texts``:
    the mean total-variation distance. Most sensitive first."""
    import torch
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
    from torch.ao.quantization import per_channel_dynamic_qconfig

    from emotion_stream.worker.model.loading import load_pretrained

    if threads is not None:
        torch.set_num_threads(threads)
    loaded = load_pretrained(str(model_dir))
    model, tokenizer = loaded.model, loaded.tokenizer
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    batches = [
        tokenizer(
            [texts[i] for i in order[start : start + 64]],
            padding=True,
            truncation=True,
            max_length=128,
            return_tensors="pt",
        )
        for start in range(0, len(order), 64)
    ]

    def probabilities() -> torch.Tensor:
        with torch.inference_mode():
            return torch.cat([torch.softmax(model(**batch).logits.float(), dim=-1) for batch in batches])

    reference = probabilities()
    scores = []
    for name, module in list(model.named_modules()):
        if not isinstance(module, torch.nn.Linear):
            continue
        module.qconfig = per_channel_dynamic_qconfig
        model.set_submodule(name, DynamicLinear.from_float(module))
        try:
            moved = 0.5 * (probabilities() - reference).abs().sum(dim=-1).mean().item()
        finally:
            model.set_submodule(name, module)
            del module.qconfig
        scores.append((name, moved))
    return sorted(scores, key=lambda pair: -pair[1])


def _int8_keeping_sensitive_layers(
    model_dir: Path,
    texts: Sequence[str],
    truth: np.ndarray,
    reference: np.ndarray,
    full_int8: dict,
    fp32: dict,
    threads: int | None,
) -> dict:
    """int8 with the most label-moving linear layers kept out of it: 1, 2, 3, 4, 6, 9, ... of them
    (at most half) until the criteria pass. They are kept in bf16 where this CPU runs bf16 (its
    rounding moves far fewer labels than int8's, and it runs faster than fp32), else in fp32.
    The figures of the first split that passes, or of full int8 when none does, with every step
    tried."""
    sample = [
        texts[i] for i in np.linspace(0, len(texts) - 1, min(SENSITIVITY_POSTS, len(texts))).astype(int)
    ]
    ranked = layer_sensitivity(model_dir, sample, threads)
    kept_in = "bf16" if cpu_runs("bf16") else "fp32"
    tried = [{"fp32_layers": 0, **{k: full_int8[k] for k in ("accuracy", "agreement", "posts_per_s")}}]
    kept_count = 1
    while kept_count <= len(ranked) // 2:
        kept = [name for name, _ in ranked[:kept_count]]
        predictions, posts_per_s, _ = timed_predictions(model_dir, "int8", texts, threads, kept, kept_in)
        predicted = np.array([LABELS.index(p.label) for p in predictions])
        figures = {
            "accuracy": float((predicted == truth).mean()),
            "f1_macro": macro_f1(truth, predicted),
            "agreement": float((predicted == reference).mean()),
            "posts_per_s": round(posts_per_s, 1),
            "speedup": round(posts_per_s / fp32["posts_per_s"], 3),
        }
        tried.append(
            {"fp32_layers": kept_count, **{k: figures[k] for k in ("accuracy", "agreement", "posts_per_s")}}
        )
        if _passes(figures, fp32):
            return {
                **figures,
                "verified": True,
                "fp32_layers": kept,
                "kept_in": kept_in,
                "search": {"sensitivity": [[n, round(v, 5)] for n, v in ranked], "tried": tried},
            }
        kept_count += max(1, kept_count // 2)
    return {
        **full_int8,
        "search": {
            "sensitivity": [[n, round(v, 5)] for n, v in ranked],
            "tried": tried,
            "outcome": "no split with at most half the linear layers in fp32 passed",
        },
    }


def record_numeric_modes(model_dir: Path, verification: dict) -> None:
    """Save ``verification`` into the model directory's identity file (the version is unchanged:
    the weights are)."""
    identity = read_identity(model_dir) or model_info(model_dir).model_dump()
    identity["numeric_modes"] = verification
    write_identity(model_dir, identity)
