"""Getting a run ready: the splits it trains and selects on, the base model and tokenized datasets.

Shared by train, tune and distill so that a tuned configuration sees exactly the data a training
run with the same options will see.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from emotion_stream.training.base_models import BaseModel, resolve_base_model
from emotion_stream.training.config import RunOptions
from emotion_stream.training.data import EmotionData, LabeledTexts, load_emotion_data
from emotion_stream.training.sampling import carve_dev_split, stratified_sample


@dataclass
class PreparedRun:
    base: BaseModel
    tokenizer: Any
    data: EmotionData
    train_split: LabeledTexts
    eval_split: LabeledTexts
    eval_name: str  # "validation", or "dev" when carved from train
    train_dataset: Any
    eval_dataset: Any

    def describe_data(self) -> dict:
        """The data part of the training record."""
        return {
            "source": self.data.source,
            "train_examples": len(self.train_split),
            "eval_split": self.eval_name,
            "eval_examples": len(self.eval_split),
            "train_label_counts": self.train_split.label_counts(),
        }


def select_splits(data: EmotionData, options: RunOptions) -> tuple[LabeledTexts, LabeledTexts, str]:
    """(train, eval, eval name) after the dev carve and the train limit."""
    train = data.split("train")
    if options.dev_fraction:
        # Selecting on validation many times (tuning, early stopping) overfits it; a dev split keeps it
        # honest.
        train, evaluation, name = *carve_dev_split(train, options.dev_fraction, options.seed), "dev"
    else:
        evaluation, name = data.split("validation"), "validation"
    if options.train_limit:
        train = stratified_sample(train, options.train_limit, options.seed)
    return train, evaluation, name


def prepare_run(options: RunOptions, data: EmotionData | None = None) -> PreparedRun:
    from transformers import AutoTokenizer

    if not options.progress:
        from datasets.utils.logging import disable_progress_bar
        from transformers.utils import logging as hf_logging

        disable_progress_bar()
        hf_logging.disable_progress_bar()
    data = data or load_emotion_data(options.data_dir)
    train, evaluation, name = select_splits(data, options)
    base = resolve_base_model(
        options.base_model, allow_fallback=options.allow_fallback, hub_timeout=options.hub_timeout
    )
    tokenizer = AutoTokenizer.from_pretrained(base.source)
    return PreparedRun(
        base=base,
        tokenizer=tokenizer,
        data=data,
        train_split=train,
        eval_split=evaluation,
        eval_name=name,
        train_dataset=tokenized_dataset(tokenizer, train, options.max_length),
        eval_dataset=tokenized_dataset(tokenizer, evaluation, options.max_length, sort_by_length=True),
    )


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
