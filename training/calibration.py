"""Calibration: scores that mean what they say, and the figures that show whether they do.

A temperature ``T`` is fitted on held-out logits (minimum log loss) and folded into the
classification head: its final linear layer's weight and bias are divided by ``T``, so the
model's own logits come out divided by ``T`` and every loader (the worker,
``transformers.pipeline``, any server) returns calibrated probabilities with no extra code.
Dividing logits by a positive number never changes their argmax: accuracy is unchanged.

Expected calibration error (ECE): top-label, 15 equal-width confidence bins, the gap between
each bin's accuracy and mean confidence weighted by its share of posts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from emotion_stream.training.head import DEFAULT_REFIT, HeadRefit, UnknownHead, refit_head
from emotion_stream.training.metrics import ECE_BINS, full_report, softmax
from emotion_stream.training.plots import save_figure
from emotion_stream.training.predict import predict_proba

TEMPERATURE_BOUNDS = (0.05, 20.0)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def reliability_bins(y_true: Sequence[int], probs: np.ndarray, bins: int = ECE_BINS) -> list[dict]:
    """Per bin: its range, posts, mean confidence and accuracy (empty bins left out)."""
    probs = np.asarray(probs, dtype=np.float64)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(y_true)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    rows = []
    for b in range(bins):
        members = which == b
        if members.any():
            rows.append(
                {
                    "low": float(edges[b]),
                    "high": float(edges[b + 1]),
                    "posts": int(members.sum()),
                    "confidence": float(confidence[members].mean()),
                    "accuracy": float(correct[members].mean()),
                }
            )
    return rows


def fit_temperature(logits: np.ndarray, y_true: Sequence[int]) -> float:
    """The temperature that minimises the log loss of ``softmax(logits / T)`` on these posts."""
    from scipy.optimize import minimize_scalar

    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(y_true)

    def loss(log_t: float) -> float:
        return float(-_log_softmax(logits / np.exp(log_t))[np.arange(len(labels)), labels].mean())

    low, high = np.log(TEMPERATURE_BOUNDS[0]), np.log(TEMPERATURE_BOUNDS[1])
    best = minimize_scalar(loss, bounds=(low, high), method="bounded", options={"xatol": 1e-5})
    return float(np.exp(best.x))


CALIBRATION_FIGURES = ("ece", "brier", "log_loss", "mean_confidence", "accuracy")


def calibration_record(
    y_true: Sequence[int],
    logits: np.ndarray,
    temperature: float,
    split: str = "validation",
    refitted: np.ndarray | None = None,
) -> dict:
    """The temperature and the figures before and after calibration, on the posts it was fitted
    on. ``logits`` are the model's as trained; ``refitted`` its logits after the head was
    re-fitted (the temperature divides those), if it was."""
    logits = np.asarray(logits, dtype=np.float64)
    before = full_report(y_true, softmax(logits))
    calibrated = softmax((logits if refitted is None else np.asarray(refitted, np.float64)) / temperature)
    after = full_report(y_true, calibrated)
    return {
        "temperature": temperature,
        "fitted_on": split,
        "before": {k: before[k] for k in CALIBRATION_FIGURES},
        "after": {k: after[k] for k in CALIBRATION_FIGURES},
        "reliability_after": reliability_bins(y_true, calibrated),
        "reliability_before": reliability_bins(y_true, softmax(logits)),
    }


def _by_label(logits: np.ndarray, columns: Sequence[int]) -> np.ndarray:
    """Logits in the model's output order -> columns in label-id order."""
    ordered = np.empty_like(logits)
    ordered[:, list(columns)] = logits
    return ordered


UNSURE_ACCURACY = 0.5
"""The default confidence threshold is the highest top score below which the model's labels
are right at most this often on validation: below it, a label is no better than a coin toss."""


def confidence_threshold(
    y_true: Sequence[int],
    probs: np.ndarray,
    *,
    candidates: Sequence[float] = tuple(np.arange(0.30, 0.96, 0.05)),
) -> dict:
    """The confidence threshold a result's ``confident`` flag uses by default, chosen from the
    calibrated validation probabilities (:data:`UNSURE_ACCURACY`), with what it means there:
    the share of posts below it and the accuracy on each side. 0.5 when no candidate has at
    least 10 posts below it that are right at most that often."""
    probs = np.asarray(probs)
    truth = np.asarray(y_true)
    top = probs.max(axis=1)
    right = probs.argmax(axis=1) == truth
    chosen = 0.5
    for candidate in candidates:
        below = top < candidate
        if below.sum() >= 10 and right[below].mean() <= UNSURE_ACCURACY:
            chosen = float(round(candidate, 2))
    below = top < chosen
    return {
        "threshold": chosen,
        "rule": f"highest top score below which validation accuracy is at most {UNSURE_ACCURACY}",
        "share_below": round(float(below.mean()), 4),
        "accuracy_below": round(float(right[below].mean()), 4) if below.any() else None,
        "accuracy_at_or_above": round(float(right[~below].mean()), 4) if (~below).any() else None,
        "posts": len(truth),
    }


def calibrate_model(
    model,
    tokenizer,
    columns: Sequence[int],
    train: tuple[Sequence[str], Sequence[int]],
    validation: tuple[Sequence[str], Sequence[int]],
    *,
    refit: HeadRefit | None = DEFAULT_REFIT,
    max_length: int = 128,
    log=lambda message: None,
) -> tuple[dict, np.ndarray]:
    """Calibrate ``model`` in place: re-fit its head on ``train`` (unless ``refit`` is None or
    the head is of an unknown kind), then fit a temperature on ``validation`` and fold it into
    the head. ``train`` and ``validation`` are (texts, label ids). Returns the record and the
    calibrated model's validation probabilities (columns in label-id order)."""
    head: dict | None = None
    refitted = None
    if refit is not None:
        try:
            head, logits, refitted = refit_head(
                model, tokenizer, columns, train, validation, refit, max_length=max_length
            )
        except UnknownHead as exc:
            head = {"applied": False, "reason": str(exc)}
    if refitted is None:
        probs = predict_proba(model, tokenizer, columns, validation[0], max_length=max_length)
        logits = np.log(np.clip(probs, 1e-12, 1.0))  # logits up to a per-post constant: same softmax
    else:
        logits, refitted = _by_label(logits, columns), _by_label(refitted, columns)
    labels = list(validation[1])
    final = logits if refitted is None else refitted
    temperature = fit_temperature(final, labels)
    fold_temperature(model, temperature)
    record = calibration_record(labels, logits, temperature, refitted=refitted)
    if head is not None:
        record["head_refit"] = head
        if head.get("applied"):
            log(f"head re-fitted with mixup: {head['labels_changed']} validation labels changed")
        else:
            log(f"head kept as trained: {head.get('reason') or 'the re-fitted one lost validation accuracy'}")
    log(
        f"temperature {temperature:.3f}; validation ECE {record['before']['ece']:.4f} -> "
        f"{record['after']['ece']:.4f}, accuracy {record['before']['accuracy']:.4f} -> "
        f"{record['after']['accuracy']:.4f}"
    )
    return record, softmax(final / temperature)


def classification_head(model):
    """The final linear layer that produces the model's logits (one output per label)."""
    import torch

    num_labels = model.config.num_labels
    last = None
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module.out_features == num_labels:
            last = module
    if last is None:
        raise ValueError(f"{type(model).__name__} has no linear layer with {num_labels} outputs to calibrate")
    return last


def fold_temperature(model, temperature: float) -> None:
    """Divide the head's weight and bias by ``temperature``: the model's logits become logits / T."""
    import torch

    head = classification_head(model)
    with torch.no_grad():
        head.weight.div_(temperature)
        if head.bias is not None:
            head.bias.div_(temperature)


def save_reliability_diagram(rows: list[dict], ece: float, path: Path, title: str) -> Path:
    """Accuracy against confidence per bin (``rows`` from :func:`reliability_bins`; the diagonal
    is perfect calibration), with the ECE."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(5.6, 6.4), dpi=120, sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    width = 1.0 / ECE_BINS
    top.plot([0, 1], [0, 1], color="#999999", linestyle="--", linewidth=1, label="perfect calibration")
    top.bar(
        [r["low"] for r in rows],
        [r["accuracy"] for r in rows],
        width=width,
        align="edge",
        color="#2f6fb5",
        edgecolor="white",
        label="accuracy",
    )
    top.scatter(  # where each bar would reach if the scores were calibrated
        [(r["low"] + r["high"]) / 2 for r in rows],
        [r["confidence"] for r in rows],
        color="#d43d2a",
        marker="_",
        s=160,
        linewidths=2.5,
        zorder=3,
        label="mean confidence in the bin",
    )
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.set_title(f"{title}\nECE {ece:.4f} ({ECE_BINS} bins, top label)")
    top.legend(loc="upper left", fontsize=8)
    bottom.bar(
        [r["low"] for r in rows], [r["posts"] for r in rows], width=width, align="edge", color="#5b6475"
    )
    bottom.set_yscale("log")
    bottom.set_xlabel("confidence (top-label probability)")
    bottom.set_ylabel("posts")
    bottom.set_xlim(0, 1)
    return save_figure(fig, path)


def calibrate_directory(
    model_dir: Path,
    data_dir: Path | None = None,
    *,
    refit: HeadRefit | None = DEFAULT_REFIT,
    log=lambda message: None,
) -> dict:
    """Calibrate an exported model directory in place (:func:`calibrate_model`: the head
    re-fitted on the training split, the temperature on the validation split), save the
    weights (a new version), and update the metrics, the identity file (its numeric modes,
    measured on the old weights, are dropped), the model card and the reliability diagram.
    Returns the calibration."""
    import json
    from datetime import datetime, timezone

    from emotion_stream.schemas.model_directory import (
        WEIGHTS_GLOB,
        new_version,
        read_identity,
        write_identity,
    )
    from emotion_stream.training.card import model_card
    from emotion_stream.training.data import load_emotion_data
    from emotion_stream.training.predict import load_emotion_model

    model_dir = Path(model_dir)
    tokenizer, model, columns = load_emotion_model(model_dir)
    data = load_emotion_data(data_dir)
    validation = data.split("validation")
    train = data.split("train") if refit is not None and "train" in data.splits else None
    record, probs = calibrate_model(
        model,
        tokenizer,
        columns,
        (train.texts, train.labels) if train is not None else ([], []),
        (validation.texts, validation.labels),
        refit=refit if train is not None else None,
        log=log,
    )
    model.save_pretrained(model_dir)
    for weights in model_dir.glob(WEIGHTS_GLOB):
        weights.chmod(0o644)
    metrics_path = model_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {"eval_split": "validation"}
    previous = metrics.get("calibration")
    if previous:  # calibrated before: "before" is the model as trained
        refitted = [r.get("head_refit", {}).get("applied") for r in (record, previous)]
        if not any(refitted):  # the head now holds both temperatures
            record["temperature"] *= previous["temperature"]
        record["before"] = previous["before"]
        record["reliability_before"] = previous.get("reliability_before", record["reliability_before"])
    record["confidence"] = confidence_threshold(validation.labels, probs)
    metrics["calibration"] = record
    metrics["validation"] = full_report(validation.labels, probs)
    metrics_path.write_text(json.dumps(metrics, indent=2, default=str) + "\n", encoding="utf-8")
    identity = dict(read_identity(model_dir) or {"name": model_dir.name})
    identity.pop("numeric_modes", None)  # measured on the weights replaced: verify them again
    created = datetime.now(timezone.utc)
    identity.update(
        previous_version=identity.get("version"),
        version=new_version(model_dir, created),
        created_at=created.isoformat(timespec="seconds"),
        confidence_threshold=record["confidence"]["threshold"],
    )
    write_identity(model_dir, identity)
    save_reliability_diagram(
        record["reliability_after"], record["after"]["ece"], model_dir / "reliability.png", identity["name"]
    )
    config_path = model_dir / "training_config.json"
    if config_path.is_file() and metrics.get(metrics.get("eval_split", "")):
        card = model_card(identity, json.loads(config_path.read_text()), metrics)
        (model_dir / "README.md").write_text(card, encoding="utf-8")
    return record
