"""Distillation on the tiny models: a student with the teacher's lowest layers, exported like any model."""

from __future__ import annotations

import json

import pytest

from emotion_stream.training.distill import drop_top_layers
from emotion_stream.training.errors import TrainingError
from tests.tiny_model import build_tiny_model
from tests.training.conftest import run_cli


@pytest.mark.parametrize("architecture", ["bert", "distilbert"])
def test_dropping_the_top_layers_keeps_the_lowest_and_says_so_in_the_config(tmp_path, architecture):
    from transformers import AutoModelForSequenceClassification

    directory = build_tiny_model(tmp_path / architecture, architecture=architecture)
    teacher = AutoModelForSequenceClassification.from_pretrained(directory)
    student = AutoModelForSequenceClassification.from_pretrained(directory)
    drop_top_layers(student, 1)
    field = "n_layers" if architecture == "distilbert" else "num_hidden_layers"
    assert getattr(student.config, field) == 1
    teacher_state, student_state = teacher.state_dict(), student.state_dict()
    assert len(student_state) < len(teacher_state)
    for name, tensor in student_state.items():  # everything kept is the teacher's, untouched
        assert (tensor == teacher_state[name]).all(), name
    with pytest.raises(TrainingError, match="between 1 and"):
        drop_top_layers(student, 1)  # one layer left: nothing more to drop


def test_distill_exports_a_calibrated_student_with_its_teacher_on_the_card(
    tmp_path, tiny_model, emotion_data
):
    teacher = tmp_path / "teacher"
    common = ["--data", emotion_data, "--seed", 7, "--no-progress", "--no-verify-modes"]
    assert (
        run_cli(
            "train",
            "--base-model",
            tiny_model,
            "--output",
            teacher,
            "--lr",
            3e-3,
            "--batch-size",
            8,
            "--epochs",
            3,
            "--class-weights",
            *common,
        )
        == 0
    )
    student = tmp_path / "student"
    assert (
        run_cli(
            "distill",
            "--teacher",
            teacher,
            "--output",
            student,
            "--layers",
            1,
            "--lr",
            3e-3,
            "--batch-size",
            8,
            "--epochs",
            2,
            *common,
        )
        == 0
    )
    config = json.loads((student / "config.json").read_text())
    assert config["num_hidden_layers"] == 1
    record = json.loads((student / "training_config.json").read_text())
    teacher_identity = json.loads((teacher / "emotion_model.json").read_text())
    assert (
        record["distillation"]["layers"] == 1
        and record["distillation"]["teacher_identity"] == teacher_identity
    )
    identity = json.loads((student / "emotion_model.json").read_text())
    assert identity["name"] == f"{teacher_identity['name']}-1l-student"
    metrics = json.loads((student / "metrics.json").read_text())
    assert "calibration" in metrics and metrics["training"]["steps"] == 2 * 8
    card = (student / "README.md").read_text()
    assert "## Distillation" in card and teacher_identity["version"] in card

    from transformers import pipeline

    assert pipeline("text-classification", model=str(student))("i feel so happy")[0]["label"]


def test_the_demo_trains_a_teacher_then_serves_its_student_and_reuses_a_teacher_it_has(
    tmp_path, tiny_model, emotion_data, monkeypatch
):
    from emotion_stream.training import distill, train
    from emotion_stream.training.config import DISTILL_RECIPE, Hyperparameters
    from emotion_stream.worker.cli.demo import teacher_directory, train_default_model

    monkeypatch.setenv("EMOTION_DATA_DIR", str(emotion_data))
    trained_teachers = []
    real_train_default = train.train_default

    def train_tiny_teacher(output_dir, **kwargs):
        trained_teachers.append(output_dir)
        hp = Hyperparameters(epochs=1, batch_size=16)
        return real_train_default(output_dir, progress=False, base_model=str(tiny_model), hyperparameters=hp)

    monkeypatch.setattr(train, "train_default", train_tiny_teacher)
    monkeypatch.setattr(distill, "DEFAULT_STUDENT_LAYERS", 1)  # the tiny teacher has 2
    monkeypatch.setattr(distill, "DISTILL_RECIPE", DISTILL_RECIPE.model_copy(update={"epochs": 1}))

    model = tmp_path / "artifacts" / "model"
    assert train_default_model(model) == model
    teacher = teacher_directory(model)
    assert trained_teachers == [teacher] and teacher == tmp_path / "artifacts" / "model-teacher"
    assert json.loads((teacher / "config.json").read_text())["num_hidden_layers"] == 2
    assert json.loads((model / "config.json").read_text())["num_hidden_layers"] == 1
    record = json.loads((model / "training_config.json").read_text())
    assert record["command_line"] == ["distill_default"]
    teacher_identity = json.loads((teacher / "emotion_model.json").read_text())
    assert record["distillation"]["teacher_identity"] == teacher_identity
    modes = json.loads((model / "emotion_model.json").read_text())["numeric_modes"]["modes"]
    assert modes["fp32"]["verified"] is True  # measured and recorded, as `auto` needs

    # A second model directory next to the same teacher: only the student is trained again.
    again = tmp_path / "artifacts" / "model2"
    (tmp_path / "artifacts" / "model2-teacher").symlink_to(teacher)
    assert train_default_model(again) == again and trained_teachers == [teacher]
    assert json.loads((again / "config.json").read_text())["num_hidden_layers"] == 1
