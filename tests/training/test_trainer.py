"""One Trainer builder: train, a tune trial and distill each get theirs from ``build_trainer``.

Each path runs for real up to the Trainer, which is caught there, before any training step.
"""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import torch
from transformers import EarlyStoppingCallback, Trainer

from emotion_stream.training import distill, train, trainer, tune
from emotion_stream.training.config import DistillOptions, Hyperparameters, TrainOptions
from emotion_stream.training.prepare import prepare_run
from emotion_stream.training.trainer import RemainingTimeCallback, WeightedLossTrainer, class_weights


class Built(Exception):
    """Raised with the Trainer a path built, to stop it there."""


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> list[Trainer]:
    """The Trainers built, through the one builder, wherever a path looks it up."""
    found, build = [], trainer.build_trainer

    def catch(*args, **kwargs):
        found.append(build(*args, **kwargs))
        raise Built

    for module in (trainer, train, distill):
        monkeypatch.setattr(module, "build_trainer", catch)
    return found


def _callbacks(built: Trainer) -> set[type]:
    return {type(c) for c in built.callback_handler.callbacks}


def _options(kind, tiny_model: Path, emotion_data: Path, tmp_path: Path, **more):
    return kind(
        data_dir=emotion_data,
        base_model=str(tiny_model),
        allow_fallback=False,
        seed=7,
        output_dir=tmp_path / "model",
        **more,
    )


def test_train_builds_a_weighted_loss_trainer_that_keeps_the_best_epoch(
    built, tiny_model, emotion_data, tmp_path
):
    options = _options(TrainOptions, tiny_model, emotion_data, tmp_path, progress=True)
    with pytest.raises(Built):
        train.train(options, Hyperparameters(class_weights=True, class_weight_power=0.5))
    [made] = built
    assert type(made) is WeightedLossTrainer and made.model is not None and made.model_init is None
    assert made.args.load_best_model_at_end and made.args.remove_unused_columns
    assert {RemainingTimeCallback, EarlyStoppingCallback} <= _callbacks(made)
    labels = made.train_dataset["label"]
    assert torch.equal(made.class_weights, class_weights(labels, 0.5))


def test_a_tune_trial_builds_a_fresh_model_per_run_and_reports_to_its_trial(
    built, tiny_model, emotion_data, tmp_path
):
    options = tune.TuneOptions(data_dir=emotion_data, base_model=str(tiny_model), progress=False)
    trial = optuna.trial.FixedTrial(
        {"learning_rate": 2e-5, "batch_size": 8, "epochs": 2, "class_weights": False}
    )
    with pytest.raises(Built):
        tune._objective(trial, prepare_run(options), options)
    [made] = built
    assert type(made) is Trainer and made.model_init is not None
    assert not made.args.load_best_model_at_end
    callbacks = _callbacks(made)
    assert tune.PruningCallback in callbacks
    assert not {RemainingTimeCallback, EarlyStoppingCallback} & callbacks


def test_distill_builds_its_own_loss_with_the_teachers_logits(built, tiny_model, emotion_data, tmp_path):
    options = _options(DistillOptions, tiny_model, emotion_data, tmp_path, progress=False, layers=1)
    with pytest.raises(Built):
        distill.distill(options)
    [made] = built
    assert type(made) is distill.DistillationTrainer and made.model.config.num_hidden_layers == 1
    assert made.alpha == options.alpha and made.tau == options.kd_temperature
    assert not made.args.remove_unused_columns and "teacher_logits" in made.train_dataset.column_names
    assert made.class_weights is not None  # the distill recipe weights the classes
    assert EarlyStoppingCallback in _callbacks(made) and RemainingTimeCallback not in _callbacks(made)
