"""The Optuna search: tiny trials stored in SQLite, resumed, pruned, and its output read by train."""

from __future__ import annotations

import json
import re
from pathlib import Path

import optuna
import pytest

from emotion_stream.training.config import resolve_hyperparameters
from emotion_stream.training.tune import PruningCallback
from tests.training.conftest import run_cli


def tune_args(storage: str, out: Path, data: Path, base: Path, trials: int) -> list:
    return [
        "tune",
        "--data",
        data,
        "--base-model",
        base,
        "--trials",
        trials,
        "--storage",
        storage,
        "--study-name",
        "tiny",
        "--output",
        out,
        "--lr-range",
        "1e-3",
        "3e-3",
        "--batch-sizes",
        "8",
        "16",
        "--epoch-choices",
        "1",
        "--train-limit",
        "30",
        "--no-progress",
    ]


def test_search_resumes_from_sqlite_and_writes_params_for_train(
    tmp_path: Path, emotion_data: Path, tiny_model: Path
) -> None:
    storage = f"sqlite:///{tmp_path / 'studies' / 'tune.db'}"
    out = tmp_path / "best_params.json"
    assert run_cli(*tune_args(storage, out, emotion_data, tiny_model, trials=2)) == 0
    first = optuna.load_study(study_name="tiny", storage=storage).trials
    assert len(first) == 2 and all(t.state == optuna.trial.TrialState.COMPLETE for t in first)

    # Asking for three trials in total runs only the missing one and keeps the first two.
    assert run_cli(*tune_args(storage, out, emotion_data, tiny_model, trials=3)) == 0
    trials = optuna.load_study(study_name="tiny", storage=storage).trials
    assert len(trials) == 3 and [t.params for t in trials[:2]] == [t.params for t in first]
    assert trials[2].params != trials[0].params  # the resumed sampler does not replay the first draws

    params = json.loads(out.read_text())
    assert (
        1e-3 <= params["learning_rate"] <= 3e-3 and params["batch_size"] in (8, 16) and params["epochs"] == 1
    )
    hp = resolve_hyperparameters(out, {})  # exactly what `train --params` does with it
    assert hp.model_dump() == params
    summary = json.loads((tmp_path / "best_params_summary.json").read_text())
    assert summary["study"] == "tiny" and len(summary["trials"]) == 3


def test_pruning_callback_stops_a_trial_that_trails_the_median() -> None:
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=1))
    for value in (0.8, 0.9):  # earlier trials that reached these after epoch 1
        earlier = study.ask()
        earlier.report(value, 1)
        study.tell(earlier, value)
    trial = study.ask()
    callback = PruningCallback(trial)
    state = type("State", (), {"epoch": 1.0})()
    with pytest.raises(
        optuna.TrialPruned, match=re.escape("f1_weighted 0.2000 after epoch 1 trails the median")
    ):
        callback.on_evaluate(None, state, None, metrics={"eval_f1_weighted": 0.2})
    leader = PruningCallback(study.ask())
    leader.on_evaluate(None, state, None, metrics={"eval_f1_weighted": 0.95})  # ahead: keeps going
    assert leader.best == 0.95
