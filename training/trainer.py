"""The Hugging Face Trainer set-up shared by ``train`` and ``tune``.

Owns: tokenizing splits (no padding: ``DataCollatorWithPadding`` pads each batch only to
its longest post, about a third of the work of padding tweets to 128), a fresh model per
run or trial (``model_init``), the training arguments, the class-weighted loss and the
callbacks that report progress.
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
from emotion_stream.training.config import Hyperparameters
from emotion_stream.training.data import LabeledTexts
from emotion_stream.training.metrics import SELECTION_METRIC, compute_metrics


def tokenized_dataset(tokenizer, split: LabeledTexts, max_length: int, *, sort_by_length: bool = False):
    """A ``datasets.Dataset`` of input ids and labels, unpadded.

    ``sort_by_length`` is for evaluation sets: batches of similar length pad little, which
    about doubles evaluation speed; the labels travel with the rows, so metrics are unchanged.
    """
    from datasets import Dataset

    dataset = Dataset.from_dict({"text": split.texts, "label": split.labels})
    dataset = dataset.map(
        lambda batch: tokenizer(batch["text"], truncation=True, max_length=max_length),
        batched=True,
        remove_columns=["text"],
        desc="tokenizing",
    )
    if sort_by_length:
        lengths = [len(ids) for ids in dataset["input_ids"]]
        dataset = dataset.select(sorted(range(len(lengths)), key=lengths.__getitem__))
    return dataset


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
        seed=seed,
        data_seed=seed,
        bf16=bf16,
        fp16=cuda and not bf16,
    )


def build_trainer(
    *,
    model=None,
    model_init=None,
    tokenizer,
    hp: Hyperparameters,
    args: TrainingArguments,
    train_dataset,
    eval_dataset,
    train_labels: Sequence[int],
    callbacks: Sequence[TrainerCallback] = (),
    trainer_class: type[Trainer] | None = None,
    **trainer_options,
) -> Trainer:
    """A Trainer with dynamic padding, the shared metrics, and weighted loss when asked for.

    Pass ``model_init`` where each run needs a fresh model (tuning trials), else ``model``:
    with ``model_init`` the Trainer loads the checkpoint twice. ``trainer_class`` (with its
    own ``trainer_options``) replaces the loss altogether.
    """
    callbacks = list(callbacks)
    if args.load_best_model_at_end and hp.patience > 0:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=hp.patience))
    common = dict(
        model=model,
        model_init=model_init,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_metrics,
        callbacks=callbacks,
    )
    if trainer_class is not None:
        return trainer_class(**common, **trainer_options)
    if hp.class_weights:
        return WeightedLossTrainer(class_weights=class_weights(train_labels, hp.class_weight_power), **common)
    return Trainer(**common)


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
