"""The quality figures of a classifier, computed one way for training, tuning and evaluation.

Columns of probability arrays and class ids follow ``schemas.LABELS``. Weighted F1 is the
figure that selects models (it is the Trainer's ``metric_for_best_model``); macro F1 is
reported beside it because it exposes the rare classes (surprise, love) that weighting hides.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from emotion_stream.schemas import LABELS

SELECTION_METRIC = "f1_weighted"
REPORTED = (
    "accuracy",
    "f1_weighted",
    "f1_macro",
    "roc_auc_weighted",
    "roc_auc_macro",
    "log_loss",
    "ece",
    "brier",
)
"""The figures a model card and an evaluation summary show, in this order."""
ECE_BINS = 15
"""Equal-width confidence bins of the expected calibration error (top label)."""
CLASS_IDS = list(range(len(LABELS)))


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int]) -> dict:
    """Accuracy, weighted and macro F1, per-class precision/recall/F1/support and the confusion matrix."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=CLASS_IDS, zero_division=0
    )
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "f1_weighted": float(f1_score(y_true, y_pred, labels=CLASS_IDS, average="weighted", zero_division=0)),
        "f1_macro": float(f1_score(y_true, y_pred, labels=CLASS_IDS, average="macro", zero_division=0)),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(LABELS)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=CLASS_IDS).tolist(),
    }


def probability_metrics(y_true: Sequence[int], probs: np.ndarray) -> dict:
    """One-vs-rest ROC-AUC (weighted and macro), log loss, expected calibration error (15 bins,
    top label), Brier score and mean top-label confidence of the predicted probabilities."""
    from sklearn.metrics import log_loss

    probs = np.asarray(probs, dtype=np.float64)
    probs = probs / probs.sum(axis=1, keepdims=True)  # float32 softmax rows miss 1.0 by rounding
    auc = ovr_roc_auc(np.asarray(y_true), probs)
    return {
        **auc,
        "log_loss": float(log_loss(y_true, probs, labels=CLASS_IDS)),
        "ece": expected_calibration_error(y_true, probs),
        "brier": brier_score(y_true, probs),
        "mean_confidence": float(probs.max(axis=1).mean()),
    }


def expected_calibration_error(y_true: Sequence[int], probs: np.ndarray, bins: int = ECE_BINS) -> float:
    probs = np.asarray(probs, dtype=np.float64)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(y_true)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            ece += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(ece)


def brier_score(y_true: Sequence[int], probs: np.ndarray) -> float:
    """Mean over posts of the squared distance between the probability vector and the one-hot truth."""
    probs = np.asarray(probs, dtype=np.float64)
    truth = np.zeros_like(probs)
    truth[np.arange(len(probs)), np.asarray(y_true)] = 1.0
    return float(((probs - truth) ** 2).sum(axis=1).mean())


def ovr_roc_auc(y_true: np.ndarray, probs: np.ndarray) -> dict:
    """ROC-AUC of each class against the rest, averaged over the classes present in ``y_true``.

    A class missing from a small split has no defined AUC; averaging over the others keeps
    the figure usable instead of failing the whole evaluation.
    """
    from sklearn.metrics import roc_auc_score

    per_class: dict[int, float] = {}
    for c in CLASS_IDS:
        positives = y_true == c
        if 0 < positives.sum() < len(y_true):
            per_class[c] = float(roc_auc_score(positives, probs[:, c]))
    if not per_class:
        return {"roc_auc_macro": None, "roc_auc_weighted": None}
    support = {c: int((y_true == c).sum()) for c in per_class}
    return {
        "roc_auc_macro": float(np.mean(list(per_class.values()))),
        "roc_auc_weighted": float(sum(per_class[c] * support[c] for c in per_class) / sum(support.values())),
    }


def full_report(y_true: Sequence[int], probs: np.ndarray) -> dict:
    """Everything above for predictions given as a (n, 6) probability array."""
    y_pred = probs.argmax(axis=1)
    return {
        **classification_metrics(y_true, y_pred),
        **probability_metrics(y_true, probs),
        "examples": len(y_true),
    }


def compute_metrics(eval_prediction) -> dict[str, float]:
    """The Trainer's ``compute_metrics`` hook: flat floats, logged after each evaluation."""
    logits, labels = eval_prediction.predictions, eval_prediction.label_ids
    if isinstance(logits, tuple):
        logits = logits[0]
    report = classification_metrics(labels, np.asarray(logits).argmax(axis=1))
    return {key: report[key] for key in ("accuracy", "f1_weighted", "f1_macro")}


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def per_class_markdown(report: dict) -> str:
    """A Markdown table of per-class precision, recall, F1 and support."""
    lines = ["| emotion | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for name, row in report["per_class"].items():
        lines.append(
            f"| {name} | {row['precision']:.3f} | {row['recall']:.3f} | {row['f1']:.3f} | {row['support']} |"
        )
    return "\n".join(lines)


def fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
