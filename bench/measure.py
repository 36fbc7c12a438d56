"""Measurements of the model alone and of the naive way of serving it (no broker involved)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from emotion_stream.worker.model.api import ModelOptions
from emotion_stream.worker.model.runner import EmotionClassifier


@dataclass
class ModelRate:
    window: int
    model_batch: int
    numeric: str
    rate: float
    passes: int | None = None
    """Parallel CPU passes (EMOTION_CPU_PASSES); None: the worker's default."""

    @property
    def env(self) -> dict[str, str]:
        """The worker settings that reproduce these."""
        env = {"EMOTION_BATCH_SIZE": str(self.window), "EMOTION_MODEL_BATCH_SIZE": str(self.model_batch)}
        if self.passes is not None:
            env["EMOTION_CPU_PASSES"] = str(self.passes)
        return env


def model_alone(
    model: Path,
    texts: Sequence[str],
    window: int,
    model_batch: int,
    numeric: str = "fp32",
    passes: int | None = None,
    packing: bool = True,
    device: str = "cpu",
    warmup: int = 32,
    prepack: bool = True,
) -> ModelRate:
    """Posts/s of the model runner over ``texts`` cut into windows, as the worker sees them.

    The first ``warmup`` posts are run once before the clock starts (first calls allocate;
    on a GPU each new sub-batch shape also costs its first time: warm up on all of them)."""
    clf = EmotionClassifier(
        str(model),
        ModelOptions(
            device=device,
            batch_size=model_batch,
            numeric=numeric,
            cpu_passes=passes,
            packing=packing,
            prepack=prepack,
        ),
    )
    for i in range(0, min(warmup, len(texts)), window):
        clf.predict(list(texts[i : min(i + window, warmup)]))
    started = time.perf_counter()
    for i in range(0, len(texts), window):
        clf.predict(texts[i : i + window])
    return ModelRate(window, model_batch, numeric, len(texts) / (time.perf_counter() - started), passes)


def best_model_rate(
    model: Path, texts: Sequence[str], windows: Sequence[int], batches: Sequence[int]
) -> tuple[ModelRate, list[ModelRate]]:
    """The sweep: every window and sub-batch size with the default parallel passes, and the
    largest window again with one pass at a time on all threads."""
    rates = [model_alone(model, texts, w, b) for w in windows for b in batches]
    rates += [model_alone(model, texts, max(windows), b, passes=1) for b in batches]
    return max(rates, key=lambda r: r.rate), rates


def naive_pipeline(
    model: Path, texts: Sequence[str], device: str = "cpu", labels: Sequence[str] | None = None
):
    """Posts/s of `transformers.pipeline`, one post at a time, padded to 128 tokens, in fp32.

    Given ``labels``, returns (posts/s, accuracy) instead.
    """
    from transformers import pipeline

    clf = pipeline("text-classification", model=str(model), device=0 if device == "cuda" else -1)
    kwargs = dict(padding="max_length", max_length=128, truncation=True)
    clf(texts[0], **kwargs)
    started = time.perf_counter()
    predicted = [clf(text, **kwargs)[0]["label"].lower() for text in texts]
    rate = len(texts) / (time.perf_counter() - started)
    if labels is None:
        return rate
    return rate, sum(p == y for p, y in zip(predicted, labels, strict=True)) / len(texts)


def accuracy(
    model: Path,
    texts: Sequence[str],
    labels: Sequence[str],
    numeric: str,
    model_batch: int = 32,
    passes: int | None = None,
    device: str = "cpu",
    prepack: bool = True,
) -> float:
    clf = EmotionClassifier(
        str(model),
        ModelOptions(
            device=device, batch_size=model_batch, numeric=numeric, cpu_passes=passes, prepack=prepack
        ),
    )
    predictions = clf.predict(list(texts))
    assert len(predictions) == len(labels), "one label per text"
    return sum(p.label == y for p, y in zip(predictions, labels, strict=True)) / len(predictions)


def on_and_off(
    model: Path,
    texts: Sequence[str],
    windows: Sequence[int],
    model_batch: int,
    option: str,
    rounds: int = 2,
) -> list[dict]:
    """Posts/s of the model alone with a runner option (``packing``, ``prepack``) on and off,
    measured in turn ``rounds`` times on each window (so drift on a shared machine falls on both)."""
    rows = []
    for window in windows:
        rates: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(rounds):
            for on in (True, False):
                rates[on].append(model_alone(model, texts, window, model_batch, **{option: on}).rate)
        on_rate, off_rate = (sum(rates[on]) / rounds for on in (True, False))
        rows.append({"window": window, "on": on_rate, "off": off_rate, "ratio": on_rate / off_rate})
    return rows
