"""``emotion-stream train``: fine-tune a base model on the emotion data and export it.

Checkpoints go to ``<output>/checkpoints`` while training (one per epoch, the best kept for
``load_best_model_at_end``) and are deleted at the end, so the output directory holds
only what the worker and ``pipeline()`` need plus the record of how it was made.
"""

from __future__ import annotations

import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import transformers

from emotion_stream.training.base_models import DEFAULT_BASE_MODEL, BaseModel
from emotion_stream.training.calibration import calibrate_model
from emotion_stream.training.config import DEMO_RECIPE, Hyperparameters, TrainOptions
from emotion_stream.training.export import export_model
from emotion_stream.training.head import HeadRefit
from emotion_stream.training.metrics import full_report, softmax
from emotion_stream.training.predict import label_columns
from emotion_stream.training.prepare import PreparedRun, prepare_run, tokenized_dataset
from emotion_stream.training.settings import TrainingSettings, resolve_data_dir
from emotion_stream.training.trainer import build_trainer


@dataclass
class TrainResult:
    output_dir: Path
    identity: dict
    metrics: dict
    base: BaseModel


def train(options: TrainOptions, hp: Hyperparameters) -> TrainResult:
    """Train, select the best epoch on the eval split, measure it and export the model directory."""
    transformers.set_seed(options.seed)
    run = prepare_run(options)
    output = Path(options.output_dir)
    checkpoints = output / "checkpoints"
    print(
        f"[train] {run.base.name} on {len(run.train_split)} posts, selecting on {run.eval_name} "
        f"({len(run.eval_split)} posts); output {output}",
        file=sys.stderr,
        flush=True,
    )
    started = time.monotonic()
    try:
        trainer = build_trainer(run, options, hp, checkpoints)
        trainer.train()
        metrics = finish_training(trainer, run, options, started)
        record = training_record(options, hp, run)
        identity = export_model(output, trainer.model, run.tokenizer, record=record, metrics=metrics)
    finally:
        shutil.rmtree(checkpoints, ignore_errors=True)
    report = metrics[run.eval_name]
    print(
        f"[train] {identity['name']} {identity['version']} written to {output}: {run.eval_name} accuracy "
        f"{report['accuracy']:.4f}, weighted F1 {report['f1_weighted']:.4f}, macro F1 "
        f"{report['f1_macro']:.4f}",
        file=sys.stderr,
        flush=True,
    )
    return TrainResult(output, identity, metrics, run.base)


def finish_training(trainer, run: PreparedRun, options: TrainOptions, started: float) -> dict:
    """After ``trainer.train()``: calibrate (unless turned off), measure, and note the run."""
    calibration = _calibrate(trainer, run, options) if options.calibrate else None
    metrics = _measure(trainer, run, options)
    if calibration is not None:
        metrics["calibration"] = calibration
    metrics["training"] = {
        "runtime_s": round(time.monotonic() - started, 1),
        "epochs": trainer.state.epoch,
        "steps": trainer.state.global_step,
        "best_checkpoint": _checkpoint_name(trainer.state.best_model_checkpoint),
    }
    return metrics


def _logits(trainer, dataset) -> tuple[list[int], np.ndarray]:
    prediction = trainer.predict(dataset)
    logits = (
        prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    )
    # label_ids, not the split's labels: the datasets are sorted by length.
    return prediction.label_ids.tolist(), np.asarray(logits, dtype=np.float64)


def _calibrate(trainer, run: PreparedRun, options: TrainOptions) -> dict | None:
    """Re-fit the head and fit a temperature on the validation split (``calibrate_model``)."""
    if "validation" not in run.data.splits:
        print("[train] no validation split: the scores are not calibrated", file=sys.stderr, flush=True)
        return None
    validation = run.data.split("validation")
    trainer.model.eval()
    record, _ = calibrate_model(
        trainer.model,
        run.tokenizer,
        label_columns(trainer.model),
        (run.train_split.texts, run.train_split.labels),
        (validation.texts, validation.labels),
        refit=HeadRefit(seed=options.seed) if options.refit_head else None,
        max_length=options.max_length,
        log=lambda message: print(f"[train] calibration: {message}", file=sys.stderr, flush=True),
    )
    return record


def _measure(trainer, run: PreparedRun, options: TrainOptions) -> dict:
    """Full metrics of the selected model on the eval split (and on validation when selecting on dev)."""
    metrics = {"eval_split": run.eval_name}
    splits = {run.eval_name: run.eval_dataset}
    if run.eval_name != "validation" and "validation" in run.data.splits:
        splits["validation"] = tokenized_dataset(
            run.tokenizer, run.data.split("validation"), options.max_length, sort_by_length=True
        )
    for name, dataset in splits.items():
        labels, logits = _logits(trainer, dataset)
        metrics[name] = full_report(labels, softmax(logits))
    return metrics


def training_record(options: TrainOptions, hp: Hyperparameters, run: PreparedRun) -> dict:
    """The exact resolved configuration, written to ``training_config.json``."""
    cuda = torch.cuda.is_available()
    precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "fp32"
    opts = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(options).items()}
    return {
        "hyperparameters": hp.model_dump(),
        "base_model": run.base.as_dict(),
        "data": run.describe_data(),
        "seed": options.seed,
        "max_length": options.max_length,
        "options": opts,
        "command_line": list(options.command_line),
        "device": "cuda" if cuda else "cpu",
        "precision": precision,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def train_default(
    output_dir: Path,
    data_dir: Path | None = None,
    *,
    progress: bool = True,
    base_model: str = DEFAULT_BASE_MODEL,
    hyperparameters: Hyperparameters | None = None,
) -> TrainResult:
    """Train the default model into ``output_dir`` (for the demo when no model exists yet).

    Uses the default base model, which falls back to the offline minilm-l6 preset without
    network, and the default hyperparameters. Progress and the estimated time left go to stderr.
    """
    settings = TrainingSettings()
    options = TrainOptions(
        output_dir=Path(output_dir),
        data_dir=resolve_data_dir(data_dir),
        base_model=base_model,
        hub_timeout=settings.hub_timeout,
        progress=progress,
        command_line=["train_default"],
    )
    print(
        "[train] no model yet: training one; the time left is printed as it goes", file=sys.stderr, flush=True
    )
    return train(options, hyperparameters or DEMO_RECIPE)


def _checkpoint_name(path: str | None) -> str | None:
    return Path(path).name if path else None
