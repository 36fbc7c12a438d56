"""``emotion-stream tune``: an Optuna search for the hyperparameters of ``train``.

Each trial trains a fresh model (``model_init``) and scores it by weighted F1 on the eval
split, reported after every epoch so the median pruner can stop a trial that trails the
others. The study lives in a database (SQLite by default): running the command again with
the same ``--storage`` and ``--study-name`` resumes it. The best trial is written as a JSON
file that ``train --params FILE`` reads.
"""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from transformers import TrainerCallback

from emotion_stream.training.config import (
    DEFAULT_PARAMS_FILE,
    DEFAULT_TUNE_STORAGE,
    Hyperparameters,
    RunOptions,
)
from emotion_stream.training.errors import TrainingError
from emotion_stream.training.metrics import SELECTION_METRIC

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


@dataclass(frozen=True)
class SearchSpace:
    lr_low: float = 1e-5
    lr_high: float = 5e-5
    batch_sizes: tuple[int, ...] = (8, 16, 32)
    epochs: tuple[int, ...] = (2, 3, 4)
    class_weights: tuple[bool, ...] = (False, True)

    def sample(self, trial: optuna.Trial) -> dict:
        return {
            "learning_rate": trial.suggest_float("learning_rate", self.lr_low, self.lr_high, log=True),
            "batch_size": trial.suggest_categorical("batch_size", list(self.batch_sizes)),
            "epochs": trial.suggest_categorical("epochs", list(self.epochs)),
            "class_weights": trial.suggest_categorical("class_weights", list(self.class_weights)),
        }


@dataclass
class TuneOptions(RunOptions):
    storage: str = DEFAULT_TUNE_STORAGE
    study_name: str = "emotion"
    trials: int = 20  # finished trials the study should hold; a resumed study runs only the missing ones
    timeout_s: float | None = None
    params_out: Path = DEFAULT_PARAMS_FILE
    space: SearchSpace = field(default_factory=SearchSpace)
    fixed: Hyperparameters = field(default_factory=Hyperparameters)  # the knobs not searched


class PruningCallback(TrainerCallback):
    """Reports the eval metric after each epoch; raises TrialPruned when the pruner says so."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial
        self.best: float | None = None

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        value = float(metrics[f"eval_{SELECTION_METRIC}"])
        self.best = value if self.best is None else max(self.best, value)
        # Steps are epochs: trials with other batch sizes have other step counts per epoch.
        epoch = max(1, round(state.epoch or 0))
        self.trial.report(value, epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"{SELECTION_METRIC} {value:.4f} after epoch {epoch} trails the median")


def tune(options: TuneOptions) -> dict:
    """Run the missing trials of the study; write and return the best hyperparameters."""
    from emotion_stream.training.prepare import prepare_run

    run = prepare_run(options)
    study = open_study(options)
    done = sum(t.state in FINISHED for t in study.trials)
    missing = max(options.trials - done, 0)
    print(
        f"[tune] study {options.study_name!r}: {done} trials done, running {missing} more",
        file=sys.stderr,
        flush=True,
    )
    if missing:
        study.optimize(
            lambda trial: _objective(trial, run, options),
            n_trials=missing,
            timeout=options.timeout_s,
            gc_after_trial=True,
        )
    if not any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
        raise TrainingError("no trial completed: run more trials (--trials) or check the errors above")
    best = write_best_params(study, options)
    print(trials_table(study), flush=True)
    return best


def open_study(options: TuneOptions) -> optuna.Study:
    if options.storage.startswith("sqlite:///"):
        Path(options.storage[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    existing = _trial_count(options)
    # A resumed study reseeds its sampler, or it would replay the first run's random trials.
    sampler = optuna.samplers.TPESampler(seed=options.seed + existing)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)
    return optuna.create_study(
        storage=options.storage,
        study_name=options.study_name,
        direction="maximize",
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
    )


def _trial_count(options: TuneOptions) -> int:
    try:
        return len(optuna.load_study(study_name=options.study_name, storage=options.storage).trials)
    except KeyError:  # no such study yet
        return 0


def _objective(trial: optuna.Trial, run, options: TuneOptions) -> float:
    from emotion_stream.training.trainer import build_trainer, model_factory

    hp = Hyperparameters(**{**options.fixed.model_dump(), **options.space.sample(trial)})
    callback = PruningCallback(trial)
    with tempfile.TemporaryDirectory(prefix="emotion-tune-") as scratch:
        trainer = build_trainer(
            run,
            options,
            hp,
            Path(scratch),
            model_init=model_factory(run.base.source),
            keep_best=False,
            callbacks=[callback],
            report_time=False,
        )
        trainer.train()
    trial.set_user_attr("base_model", run.base.name)
    # The best epoch, not the last: train keeps the best epoch too (load_best_model_at_end).
    return callback.best if callback.best is not None else float("nan")


def write_best_params(study: optuna.Study, options: TuneOptions) -> dict:
    """The best trial as a complete ``--params`` file, plus a summary beside it."""
    best = study.best_trial
    params = Hyperparameters(**{**options.fixed.model_dump(), **best.params}).model_dump()
    out = Path(options.params_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(params, indent=2) + "\n", encoding="utf-8")
    summary = {
        "study": options.study_name,
        "storage": options.storage,
        "best_trial": best.number,
        f"best_{SELECTION_METRIC}": best.value,
        "params_file": str(out),
        "params": params,
        "trials": [
            {"number": t.number, "state": t.state.name, "value": t.value, "params": t.params}
            for t in study.trials
        ],
    }
    out.with_name(out.stem + "_summary.json").write_text(
        json.dumps(summary, indent=2) + "\n", encoding="utf-8"
    )
    print(
        f"[tune] best trial {best.number}: {SELECTION_METRIC} {best.value:.4f}; parameters in {out}",
        file=sys.stderr,
        flush=True,
    )
    return params


def trials_table(study: optuna.Study) -> str:
    lines = [
        f"| trial | state | {SELECTION_METRIC} | learning_rate | batch_size | epochs | class_weights |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in study.trials:
        p = t.params
        value = "n/a" if t.value is None else f"{t.value:.4f}"
        lines.append(
            f"| {t.number} | {t.state.name.lower()} | {value} | {p.get('learning_rate', 0):.2e} | "
            f"{p.get('batch_size', '')} | {p.get('epochs', '')} | {p.get('class_weights', '')} |"
        )
    return "\n".join(lines)
