"""Calibration: the figures, the fitted temperature, and the temperature folded into the head."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from emotion_stream.schemas import LABELS
from emotion_stream.training.calibration import fit_temperature, fold_temperature, reliability_bins
from emotion_stream.training.metrics import brier_score, expected_calibration_error, softmax
from tests.training.conftest import run_cli


def test_ece_and_brier_on_hand_computed_cases():
    # Two posts at 0.9 confidence, one right and one wrong: |0.5 - 0.9| in their one bin.
    probs = np.array([[0.9, 0.02, 0.02, 0.02, 0.02, 0.02], [0.9, 0.02, 0.02, 0.02, 0.02, 0.02]])
    assert expected_calibration_error([0, 1], probs) == pytest.approx(0.4)
    assert brier_score([0, 1], probs) == pytest.approx(
        ((0.1**2 + 5 * 0.02**2) + (0.9**2 + 0.98**2 + 4 * 0.02**2)) / 2
    )
    perfect = np.eye(6)
    assert (
        expected_calibration_error(list(range(6)), perfect) == 0.0
        and brier_score(list(range(6)), perfect) == 0.0
    )
    rows = reliability_bins([0, 1], probs)
    assert rows == [
        {
            "low": pytest.approx(14 / 15 - 1 / 15),
            "high": pytest.approx(14 / 15),
            "posts": 2,
            "confidence": pytest.approx(0.9),
            "accuracy": 0.5,
        }
    ]


def test_the_fitted_temperature_undoes_a_known_squeeze_and_keeps_every_label():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 3, size=(4000, 6))
    labels = np.array([rng.choice(6, p=p) for p in softmax(true_logits)])
    squeezed = true_logits / 2.5  # an under-confident model, as label smoothing makes one
    temperature = fit_temperature(squeezed, labels)
    assert temperature == pytest.approx(1 / 2.5, rel=0.08)
    before = expected_calibration_error(labels, softmax(squeezed))
    after = expected_calibration_error(labels, softmax(squeezed / temperature))
    assert before > 0.1 and after < 0.02
    assert (softmax(squeezed / temperature).argmax(1) == squeezed.argmax(1)).all()


def test_folding_the_temperature_divides_the_models_own_logits(tiny_model: Path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model).eval()
    batch = tokenizer(["i feel glad", "so scared of it"], return_tensors="pt", padding=True)
    with torch.no_grad():
        before = model(**batch).logits
        fold_temperature(model, 0.5)
        after = model(**batch).logits
    assert torch.allclose(after, before / 0.5, atol=1e-5)


def _train_smoothed(output: Path, tiny_model: Path, emotion_data: Path, *extra: str) -> int:
    """`train` on the tiny model with label smoothing (scores to calibrate); its exit code."""
    return run_cli(
        "train", "--data", emotion_data, "--base-model", tiny_model, "--output", output, "--lr", 3e-3,
        "--batch-size", 8, "--epochs", 3, "--label-smoothing", 0.2, "--seed", 7, "--class-weights",
        "--no-progress", *extra,
    )  # fmt: skip


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, emotion_data: Path) -> Path:
    output = tmp_path_factory.mktemp("calibrated") / "model"
    assert _train_smoothed(output, tiny_model, emotion_data) == 0
    return output


def test_training_exports_calibrated_scores_and_says_so_on_the_card(
    calibrated: Path, emotion_data: Path, tmp_path
):
    metrics = json.loads((calibrated / "metrics.json").read_text())
    calibration = metrics["calibration"]
    assert calibration["fitted_on"] == "validation" and calibration["temperature"] > 0
    assert calibration["after"]["log_loss"] <= calibration["before"]["log_loss"] + 1e-9
    head = calibration["head_refit"]
    assert head["train_posts"] == 60 and head["seed"] == 7  # the run's seed
    before, after = calibration["before"]["accuracy"], calibration["after"]["accuracy"]
    if head["applied"]:  # never at the cost of more than the allowed validation accuracy
        assert after >= before - head["max_accuracy_drop"]
    else:
        assert after == before
    # What was measured after export is the calibrated model's own output.
    assert metrics["validation"]["log_loss"] == pytest.approx(calibration["after"]["log_loss"], rel=1e-3)
    assert metrics["validation"]["ece"] == pytest.approx(calibration["after"]["ece"], abs=1e-3)
    card = (calibrated / "README.md").read_text()
    assert "## Calibration" in card and f"{calibration['temperature']:.4f}" in card
    assert ("mixup" in card) == head["applied"]
    assert (calibrated / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # transformers.pipeline, knowing nothing of calibration, returns the calibrated scores.
    from transformers import pipeline

    classify = pipeline("text-classification", model=str(calibrated), top_k=None)
    text = (emotion_data / "validation.txt").read_text().splitlines()[0].rsplit(";", 1)[0]
    scores = {d["label"]: d["score"] for d in classify([text])[0]}
    assert set(scores) == set(LABELS) and sum(scores.values()) == pytest.approx(1.0, abs=1e-5)

    out = tmp_path / "eval"
    assert (
        run_cli("evaluate", "--model", calibrated, "--data", emotion_data, "--output", out, "--no-baseline")
        == 0
    )
    result = json.loads((out / "evaluation.json").read_text())
    assert result["metrics"]["ece"] == pytest.approx(calibration["after"]["ece"], abs=1e-3)
    assert {"brier", "log_loss", "mean_confidence"} <= set(result["metrics"])
    assert Path(result["files"]["reliability_diagram"]).read_bytes()[:4] == b"\x89PNG"


def test_calibrate_command_calibrates_an_uncalibrated_directory_in_place(
    tmp_path, tiny_model, emotion_data, calibrated
):
    raw = tmp_path / "raw"
    assert _train_smoothed(raw, tiny_model, emotion_data, "--no-calibrate") == 0
    assert "calibration" not in json.loads((raw / "metrics.json").read_text())
    identity = json.loads((raw / "emotion_model.json").read_text())
    version = identity["version"]
    assert "numeric_modes" in identity  # measured after training
    assert run_cli("calibrate", raw, "--data", emotion_data, "--no-head-refit", "--no-verify-modes") == 0
    metrics = json.loads((raw / "metrics.json").read_text())
    identity = json.loads((raw / "emotion_model.json").read_text())
    assert (
        identity["version"] != version and identity["previous_version"] == version
    )  # new weights, new version
    assert "numeric_modes" not in identity  # measured on the old weights: not carried over
    calibration = metrics["calibration"]
    assert "head_refit" not in calibration and calibration["temperature"] > 0
    assert calibration["after"]["accuracy"] == calibration["before"]["accuracy"]  # a temperature alone
    card = (raw / "README.md").read_text()
    assert "## Calibration" in card and "The labels do not change." in card and "mixup" not in card

    # Calibrating again with the head re-fit: "before" stays the model as trained.
    assert run_cli("calibrate", raw, "--data", emotion_data, "--no-verify-modes") == 0
    again = json.loads((raw / "metrics.json").read_text())["calibration"]
    assert again["before"] == calibration["before"] and "head_refit" in again
    shutil.rmtree(raw)
