"""The model soup: two runs from the same base averaged into one exported, loadable model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from emotion_stream.schemas import LABELS
from tests.tiny_model import build_tiny_model
from tests.training.conftest import run_cli


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, emotion_data: Path) -> list[Path]:
    work = tmp_path_factory.mktemp("soup")
    runs = []
    for name, epochs in (("short", 1), ("long", 2)):
        out = work / name
        code = run_cli(
            "train",
            "--data",
            emotion_data,
            "--base-model",
            tiny_model,
            "--output",
            out,
            "--lr",
            3e-3,
            "--batch-size",
            8,
            "--epochs",
            epochs,
            "--seed",
            7,
            "--no-progress",
        )
        assert code == 0
        runs.append(out)
    return runs


def test_soup_averages_the_weights_and_exports_a_loadable_model(two_runs, emotion_data, tmp_path):
    out = tmp_path / "soup"
    assert run_cli("soup", *two_runs, "--data", emotion_data, "--output", out, "--no-calibrate") == 0
    a, b, s = (load_file(p / "model.safetensors") for p in (*two_runs, out))
    for key in ("classifier.weight", "bert.encoder.layer.0.attention.self.query.weight"):
        assert torch.allclose(s[key], (a[key] + b[key]) / 2, atol=1e-6)
        assert not torch.allclose(a[key], b[key])  # the ingredients really differ
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["validation"]) >= {"accuracy", "f1_weighted", "f1_macro"}
    assert [m["directory"] for m in metrics["soup"]] == [str(p) for p in two_runs]
    card = (out / "README.md").read_text()
    assert "## Model soup" in card
    for run in two_runs:
        assert json.loads((run / "emotion_model.json").read_text())["version"] in card

    from transformers import pipeline

    labels = {
        r["label"]
        for r in pipeline("text-classification", model=str(out))(["i feel so thrilled", "so scared"])
    }
    assert labels <= set(LABELS)


def test_the_soup_is_calibrated_again_and_its_modes_verified(two_runs, emotion_data, tmp_path):
    out = tmp_path / "soup"
    assert run_cli("soup", *two_runs, "--data", emotion_data, "--output", out) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    calibration = metrics["calibration"]
    assert calibration["temperature"] > 0 and calibration["head_refit"]["train_posts"] == 60
    assert calibration["after"]["log_loss"] <= calibration["before"]["log_loss"] + 1e-9
    assert metrics["validation"]["ece"] == pytest.approx(calibration["after"]["ece"], abs=1e-3)
    assert "## Calibration" in (out / "README.md").read_text()
    assert "fp32" in json.loads((out / "emotion_model.json").read_text())["numeric_modes"]["modes"]


def test_soup_refuses_models_of_different_bases(two_runs, emotion_data, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(two_runs[0], other)
    record = json.loads((other / "training_config.json").read_text())
    record["base_model"]["source"] = "/somewhere/else"
    (other / "training_config.json").write_text(json.dumps(record))
    assert run_cli("soup", two_runs[1], other, "--data", emotion_data, "--output", tmp_path / "x") == 2
    assert not (tmp_path / "x").exists()


def test_soup_refuses_a_different_architecture(two_runs, emotion_data, tmp_path, capsys):
    wider = build_tiny_model(tmp_path / "wider-src", seed=1)
    config = json.loads((wider / "config.json").read_text())
    config.update(hidden_size=64, intermediate_size=128)
    other = tmp_path / "wider"
    shutil.copytree(two_runs[0], other)
    from transformers import BertConfig, BertForSequenceClassification

    BertForSequenceClassification(
        BertConfig(**{k: v for k, v in config.items() if k not in ("architectures", "transformers_version")})
    ).save_pretrained(other)
    code = run_cli("soup", two_runs[0], other, "--data", emotion_data, "--output", tmp_path / "x")
    assert code == 2 and "different architecture" in capsys.readouterr().err


def test_soup_needs_two_models(two_runs, emotion_data, tmp_path, capsys):
    assert run_cli("soup", two_runs[0], "--data", emotion_data, "--output", tmp_path / "x") == 2
    assert "at least two" in capsys.readouterr().err
