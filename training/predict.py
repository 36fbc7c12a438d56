"""Batch inference for evaluation: a model directory in, a probability per emotion out.

Texts are tokenized once without padding, sorted by token length and cut into batches, so
each batch pads only to posts of similar length (about twice the throughput of arrival
order on tweets). Probability columns follow ``schemas.LABELS`` whatever the model's order.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from emotion_stream.schemas import LABEL2ID, LABELS
from emotion_stream.training.errors import TrainingError


class ModelDirError(TrainingError):
    """The directory is not a usable emotion model; the message says what to do."""


def load_emotion_model(directory: Path):
    """(tokenizer, model, columns): ``columns[i]`` is the label id of the model's output i."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise ModelDirError(
            f"{directory} is not a model directory (no config.json): train one with `emotion-stream train`"
        )
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForSequenceClassification.from_pretrained(directory, use_safetensors=True).eval()
    return tokenizer, model, label_columns(model, directory)


def label_columns(model, directory: Path | str = "the model") -> list[int]:
    """``columns[i]``: the label id of the model's output i (raises if its labels are not the six)."""
    names = [str(model.config.id2label.get(i, "")).lower() for i in range(model.config.num_labels)]
    if sorted(names) != sorted(LABELS):
        raise ModelDirError(
            f"{directory} predicts {names}, not the six emotions {list(LABELS)}: it is not an emotion model"
        )
    return [LABEL2ID[name] for name in names]


def _sorted_batches(tokenizer, texts: Sequence[str], batch_size: int, max_length: int):
    """(rows, padded batch) in order of token length: each batch pads only to similar posts."""
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    order = np.argsort([len(ids) for ids in encoded], kind="stable")
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        yield rows, tokenizer.pad({"input_ids": [encoded[i] for i in rows]}, return_tensors="pt")


def predict_proba(
    model,
    tokenizer,
    columns: Sequence[int],
    texts: Sequence[str],
    *,
    batch_size: int = 64,
    max_length: int = 128,
) -> np.ndarray:
    """A (len(texts), 6) float64 array of probabilities, rows in the order of ``texts``."""
    probs = np.zeros((len(texts), len(LABELS)), dtype=np.float64)
    device = next(model.parameters()).device
    with torch.inference_mode():
        for rows, batch in _sorted_batches(tokenizer, texts, batch_size, max_length):
            logits = model(**{k: v.to(device) for k, v in batch.items()}).logits
            probs[np.ix_(rows, columns)] = torch.softmax(logits.float(), dim=-1).cpu().numpy()
    return probs


def first_token_states(
    model, tokenizer, texts: Sequence[str], *, batch_size: int = 64, max_length: int = 128
) -> torch.Tensor:
    """The encoder's final hidden state of each post's first token (what the head reads), on
    the CPU, rows in the order of ``texts``."""
    states = torch.zeros((len(texts), model.config.hidden_size), dtype=torch.float32)
    device = next(model.parameters()).device
    with torch.no_grad():
        for rows, batch in _sorted_batches(tokenizer, texts, batch_size, max_length):
            hidden = model.base_model(**{k: v.to(device) for k, v in batch.items()}).last_hidden_state
            states[torch.as_tensor(rows)] = hidden[:, 0].float().cpu()
    return states
