"""Hyperparameter precedence: defaults, then a --params file, then explicit flags."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from emotion_stream.training.config import ConfigError, Hyperparameters, resolve_hyperparameters


def test_defaults_then_file_then_flags(tmp_path: Path) -> None:
    params = tmp_path / "best.json"
    params.write_text(json.dumps({"learning_rate": 3e-5, "batch_size": 32, "class_weights": True}))
    hp = resolve_hyperparameters(params, {"batch_size": 8, "epochs": None, "class_weights": None})
    assert hp.learning_rate == 3e-5  # from the file
    assert hp.batch_size == 8  # the flag wins
    assert hp.class_weights is True  # an absent flag (None) leaves the file's value
    assert hp.epochs == Hyperparameters().epochs == 3  # the default
    assert resolve_hyperparameters(None, {}) == Hyperparameters(learning_rate=2e-5, batch_size=16, epochs=3)


def test_bad_parameters_name_their_origin(tmp_path: Path) -> None:
    params = tmp_path / "p.json"
    params.write_text(json.dumps({"learning_rate": -1, "dropout": 0.1}))
    with pytest.raises(ConfigError) as caught:
        resolve_hyperparameters(params, {})
    message = str(caught.value)
    assert f"'learning_rate' in {params}: Input should be greater than 0" in message
    assert "'dropout' in" in message and "unknown hyperparameter; known: learning_rate, batch_size" in message
    with pytest.raises(ConfigError, match="--warmup-ratio: Input should be less than 1"):
        resolve_hyperparameters(None, {"warmup_ratio": 1.5})
    params.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="expected a JSON object of hyperparameters"):
        resolve_hyperparameters(params, {})
    with pytest.raises(ConfigError, match="cannot read"):
        resolve_hyperparameters(tmp_path / "missing.json", {})
