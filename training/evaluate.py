"""``emotion-stream evaluate``: measure a model directory on one split, beside a simple baseline.

Writes into the output directory ``evaluation.json`` (all figures), ``confusion_matrix.png``
and ``errors.csv`` (the most confident mistakes, the first place to look for label noise or
blind spots), and prints a comparison table with the TF-IDF baseline trained on train.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np

from emotion_stream.schemas import LABELS
from emotion_stream.schemas.model_directory import read_identity
from emotion_stream.training.baseline import BASELINE_NAME, baseline_proba, fit_baseline
from emotion_stream.training.calibration import reliability_bins, save_reliability_diagram
from emotion_stream.training.data import LabeledTexts, load_emotion_data
from emotion_stream.training.metrics import REPORTED, fmt, full_report, per_class_markdown
from emotion_stream.training.plots import save_confusion_matrix
from emotion_stream.training.predict import load_emotion_model, predict_proba

SUMMARY_METRICS = (*REPORTED, "mean_confidence")


def evaluate(
    model_dir: Path,
    *,
    split: str = "validation",
    data_dir: Path | None = None,
    output_dir: Path | None = None,
    baseline: bool = True,
    batch_size: int = 64,
    max_length: int = 128,
    max_errors: int = 50,
    seed: int = 42,
) -> dict:
    """Evaluate ``model_dir`` on ``split``; return what was written to ``evaluation.json``."""
    import torch

    model_dir = Path(model_dir)
    output = Path(output_dir) if output_dir else model_dir / "evaluation" / split
    tokenizer, model, columns = load_emotion_model(model_dir)
    data = load_emotion_data(data_dir)
    target = data.split(split)
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    probs = predict_proba(
        model, tokenizer, columns, target.texts, batch_size=batch_size, max_length=max_length
    )
    report = full_report(target.labels, probs)
    output.mkdir(parents=True, exist_ok=True)
    result = {
        "model": str(model_dir.resolve()),
        "model_identity": read_identity(model_dir),
        "split": split,
        "data_source": data.source,
        "metrics": report,
        "files": {
            "confusion_matrix": str(
                save_confusion_matrix(
                    report["confusion_matrix"],
                    output / "confusion_matrix.png",
                    title=f"{model_dir.name} on {split}",
                )
            ),
            "errors": str(write_errors(output / "errors.csv", target, probs, max_errors)),
            "reliability_diagram": str(
                save_reliability_diagram(
                    reliability_bins(target.labels, probs),
                    report["ece"],
                    output / "reliability.png",
                    title=f"{model_dir.name} on {split}",
                )
            ),
        },
    }
    if baseline:
        reference = fit_baseline(data.split("train"), seed=seed)
        result["baseline"] = {
            "name": BASELINE_NAME,
            "trained_on": "train",
            "metrics": full_report(target.labels, baseline_proba(reference, target.texts)),
        }
    (output / "evaluation.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(summary_table(result), flush=True)
    print(f"\nwritten to {output}", file=sys.stderr, flush=True)
    return result


def write_errors(path: Path, split: LabeledTexts, probs: np.ndarray, limit: int) -> Path:
    """The ``limit`` mistakes the model was surest of, most confident first."""
    predicted = probs.argmax(axis=1)
    wrong = [i for i in range(len(split)) if predicted[i] != split.labels[i]]
    wrong.sort(key=lambda i: probs[i, predicted[i]], reverse=True)
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "true", "predicted", "confidence", "true_label_probability"])
        for i in wrong[:limit]:
            writer.writerow(
                [
                    split.texts[i],
                    LABELS[split.labels[i]],
                    LABELS[predicted[i]],
                    f"{probs[i, predicted[i]]:.4f}",
                    f"{probs[i, split.labels[i]]:.4f}",
                ]
            )
    return path


def summary_table(result: dict) -> str:
    """The model beside the baseline, then the model's per-class figures, as Markdown."""
    model = result["metrics"]
    other = result.get("baseline", {}).get("metrics")
    head = f"| metric ({result['split']}, {model['examples']} posts) | model |"
    lines = [
        head + (f" {BASELINE_NAME} | difference |" if other else ""),
        "|---|---|" + ("---|---|" if other else ""),
    ]
    for key in SUMMARY_METRICS:
        row = f"| {key} | {fmt(model.get(key))} |"
        if other:
            diff = None if model.get(key) is None or other.get(key) is None else model[key] - other[key]
            row += f" {fmt(other.get(key))} | {'n/a' if diff is None else f'{diff:+.4f}'} |"
        lines.append(row)
    return "\n".join(lines) + "\n\n" + per_class_markdown(model)
