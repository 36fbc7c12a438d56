"""The Hugging Face Trainer of ``train``, ``tune`` and ``distill``: one builder, :func:`build_trainer`.

Owns: the model to start from (a fresh one per trial with ``model_init``), the training
arguments, dynamic padding (``DataCollatorWithPadding`` pads each batch only to its longest
post, about a third of the work of padding tweets to 128), the class-weighted loss, early
stopping and the callback that reports the time left.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import (
    AutoModelForSequenceClassification,
    DataCollatorWithPadding,
    EarlyStoppingCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from emotion_stream.schemas import ID2LABEL, LABEL2ID, LABELS
from emotion_stream.training.config import Hyperparameters, RunOptions
from emotion_stream.training.metrics import SELECTION_METRIC, compute_metrics
from emotion_stream.training.prepare import PreparedRun


def model_factory(source: str) -> Callable[[], torch.nn.Module]:
    """A ``model_init`` that loads ``source`` with a fresh six-emotion classification head."""

    def model_init() -> torch.nn.Module:
        # ignore_mismatched_sizes: a base already fine-tuned on other labels gets a new head.
        return AutoModelForSequenceClassification.from_pretrained(
            source,
            num_labels=len(LABELS),
            id2label=dict(ID2LABEL),
            label2id=dict(LABEL2ID),
            ignore_mismatched_sizes=True,
        )

    return model_init


def class_weights(labels: Sequence[int], power: float = 1.0) -> torch.Tensor:
    """Inverse-frequency weights, raised to ``power``, with mean 1 over the classes present.

    Absent classes weigh 1. A power below 1 tempers the weights: full inverse frequency
    makes the rarest emotion count about ten times the commonest here, which buys recall
    on it with precision everywhere else.
    """
    counts = torch.bincount(torch.tensor(list(labels)), minlength=len(LABELS)).float()
    present = counts > 0
    weights = torch.ones(len(LABELS))
    raw = (counts[present].sum() / (present.sum() * counts[present])) ** power
    weights[present] = raw / raw.mean()
    return weights


class WeightedLossTrainer(Trainer):
    """A Trainer whose loss is cross-entropy weighted per class, so rare emotions count more."""

    def __init__(self, *args, class_weights: torch.Tensor, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.class_weights = class_weights

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        loss = F.cross_entropy(
            outputs.logits.float(),
            labels,
            weight=self.class_weights.to(outputs.logits.device),
            label_smoothing=self.args.label_smoothing_factor,
        )
        return (loss, outputs) if return_outputs else loss


def training_arguments(
    hp: Hyperparameters,
    output_dir: Path,
    *,
    seed: int,
    max_steps: int | None,
    keep_best: bool,
    progress: bool,
    remove_unused_columns: bool = True,
) -> TrainingArguments:
    """Evaluate each epoch; with ``keep_best``, checkpoint each epoch and end on the best one."""
    cuda = torch.cuda.is_available()
    bf16 = cuda and torch.cuda.is_bf16_supported()  # half precision pays only on a GPU
    return TrainingArguments(
        output_dir=str(output_dir),
        learning_rate=hp.learning_rate,
        per_device_train_batch_size=hp.batch_size,
        per_device_eval_batch_size=max(hp.batch_size, 64),
        num_train_epochs=hp.epochs,
        max_steps=max_steps or -1,
        weight_decay=hp.weight_decay,
        warmup_steps=hp.warmup_ratio,  # a float below 1 is read as a share of all steps
        label_smoothing_factor=hp.label_smoothing,
        eval_strategy="epoch",
        # Batches of similar length (shuffled in large groups) pad far less than random
        # ones: tweets vary from a few tokens to 70, and padding is most of the work.
        train_sampling_strategy="group_by_length",
        save_strategy="epoch" if keep_best else "no",
        save_total_limit=1,
        save_only_model=True,  # nothing resumes from these checkpoints: skip optimizer state
        load_best_model_at_end=keep_best,
        metric_for_best_model=SELECTION_METRIC,
        greater_is_better=True,
        logging_strategy="steps",
        logging_steps=50,
        report_to="none",
        dataloader_pin_memory=cuda,  # pinning without a GPU only earns a warning
        disable_tqdm=not progress,
        remove_unused_columns=remove_unused_columns,
        seed=seed,
        data_seed=seed,
        bf16=bf16,
        fp16=cuda and not bf16,
    )


def build_trainer(
    run: PreparedRun,
    options: RunOptions,
    hp: Hyperparameters,
    output_dir: Path,
    *,
    model: torch.nn.Module | None = None,
    model_init: Callable[[], torch.nn.Module] | None = None,
    keep_best: bool = True,
    train_dataset=None,
    keep_columns: bool = False,
    callbacks: Sequence[TrainerCallback] = (),
    report_time: bool = True,
    trainer_class: type[Trainer] | None = None,
    **trainer_options,
) -> Trainer:
    """The Trainer of a run of ``train``, ``distill`` or a ``tune`` trial, on ``run``'s data.

    It evaluates on ``run``'s eval split each epoch, pads each batch dynamically, computes the
    shared metrics and writes checkpoints under ``output_dir``. With ``keep_best`` it
    checkpoints each epoch, ends on the best one and stops early after ``hp.patience`` epochs
    without improvement.

    The model is ``model``; else ``model_init`` where each ``train()`` needs a fresh one
    (tuning trials; it is not the default because the Trainer then loads the checkpoint
    twice); else ``run``'s base with a new six-emotion head. ``train_dataset`` replaces
    ``run``'s; with ``keep_columns`` the loss gets all its columns, not only the model's
    inputs (distill's teacher logits). ``callbacks`` come first, then the time left (with
    ``report_time`` and ``options.progress``). The loss is cross-entropy, weighted per class
    when ``hp.class_weights``; ``trainer_class`` replaces it and gets those class weights (or
    None) and ``trainer_options``.
    """
    args = training_arguments(
        hp,
        output_dir,
        seed=options.seed,
        max_steps=options.max_steps,
        keep_best=keep_best,
        progress=options.progress,
        remove_unused_columns=not keep_columns,
    )
    if model is None and model_init is None:
        model = model_factory(run.base.source)()
    callbacks = list(callbacks)
    if report_time and options.progress:
        callbacks.append(RemainingTimeCallback())
    if keep_best and hp.patience > 0:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=hp.patience))
    weights = class_weights(run.train_split.labels, hp.class_weight_power) if hp.class_weights else None
    if trainer_class is None:
        trainer_class = Trainer if weights is None else WeightedLossTrainer
    if trainer_class is not Trainer:
        trainer_options["class_weights"] = weights
    return trainer_class(
        model=model,
        model_init=model_init,
        args=args,
        train_dataset=run.train_dataset if train_dataset is None else train_dataset,
        eval_dataset=run.eval_dataset,
        processing_class=run.tokenizer,
        data_collator=DataCollatorWithPadding(run.tokenizer),
        compute_metrics=compute_metrics,
        callbacks=callbacks,
        **trainer_options,
    )


class RemainingTimeCallback(TrainerCallback):
    """Prints the time left after the first steps and after each epoch, for logs without a tty."""

    def __init__(self, first_report_at: int = 20) -> None:
        self.first_report_at = first_report_at
        self.started = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == min(self.first_report_at, state.max_steps):
            self._report(state, "")

    def on_epoch_end(self, args, state, control, **kwargs):
        self._report(state, f"epoch {round(state.epoch or 0)} done, ")

    def _report(self, state, prefix: str) -> None:
        elapsed = time.monotonic() - self.started
        done = max(state.global_step, 1)
        left = elapsed / done * max(state.max_steps - state.global_step, 0)
        print(
            f"[train] {prefix}step {state.global_step}/{state.max_steps}, "
            f"{_minutes(elapsed)} elapsed, about {_minutes(left)} left (plus evaluation)",
            file=sys.stderr,
            flush=True,
        )


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"
