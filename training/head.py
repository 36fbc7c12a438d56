"""Re-fitting the classification head so the scores have the right shape before a temperature.

One temperature cannot calibrate a fine-tuned emotion model on its own. Roughly nine posts in
ten are clear and the model is right on 99% of them; the rest are ambiguous (joy or love, fear
or surprise) and it is right on about half, yet scores them 0.7-0.9. A temperature that
lowers those raises nothing else and costs the clear posts more than it saves: on the demo
recipe's model it stops at an expected calibration error of about 0.035.

So the head (the layers from the first token's final hidden state to the logits: pooler and
classifier for BERT-like models, pre-classifier and classifier for DistilBERT, the
classification head for RoBERTa and ELECTRA) is trained again, the encoder frozen, on the
training split's features with mixup: each step trains on convex mixtures of pairs of posts'
features with the same mixture of their labels, which teaches the head to score posts that
lie between two emotions as lying between them. Its input is computed once, so this costs
one pass of the encoder over the training split. The validation split is not used to fit it,
only to check it: if it would lose more than ``max_accuracy_drop`` of validation accuracy,
the head it replaced is kept. The temperature is fitted afterwards, on validation, as before.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from emotion_stream.training.metrics import full_report, softmax
from emotion_stream.training.predict import first_token_states


@dataclass(frozen=True)
class HeadRefit:
    """How the head is re-fitted (measured on the demo recipe's model: see docs/training.md)."""

    alpha: float = 2.0  # mixing weights ~ Beta(alpha, alpha)
    epochs: int = 6
    learning_rate: float = 2e-3
    batch_size: int = 256
    seed: int = 0
    max_accuracy_drop: float = 0.002  # on validation, against the head it replaces


DEFAULT_REFIT = HeadRefit()


class UnknownHead(ValueError):
    """The model's head is not one this module knows how to run on its own."""


def head_layers(model) -> tuple[list[torch.nn.Module], Callable[[torch.Tensor], torch.Tensor]]:
    """(modules, forward): the layers between the first token's final hidden state and the
    logits, and a function running them (in eval mode: no dropout)."""
    classifier = getattr(model, "classifier", None)
    pre = getattr(model, "pre_classifier", None)
    if isinstance(pre, torch.nn.Linear) and isinstance(classifier, torch.nn.Linear):  # DistilBERT
        return [pre, classifier], lambda h: classifier(F.relu(pre(h)))
    pooler = getattr(model.base_model, "pooler", None)
    dense = getattr(pooler, "dense", None)
    if isinstance(dense, torch.nn.Linear) and isinstance(classifier, torch.nn.Linear):  # BERT-like
        activation = getattr(pooler, "activation", torch.tanh)
        return [pooler, classifier], lambda h: classifier(activation(dense(h)))
    dense, out = getattr(classifier, "dense", None), getattr(classifier, "out_proj", None)
    if isinstance(dense, torch.nn.Linear) and isinstance(out, torch.nn.Linear):  # RoBERTa, ELECTRA
        activation = getattr(classifier, "activation", torch.tanh)
        return [classifier], lambda h: out(activation(dense(h)))
    raise UnknownHead(f"{type(model).__name__}: no known classification head to re-fit")


def mixup_train(
    forward, params: list[torch.nn.Parameter], features: torch.Tensor, targets: torch.Tensor, how: HeadRefit
) -> None:
    generator = torch.Generator().manual_seed(how.seed)
    rng = np.random.default_rng(how.seed)
    optimizer = torch.optim.AdamW(params, lr=how.learning_rate, weight_decay=0.0)
    steps = how.epochs * math.ceil(len(features) / how.batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps))
    )
    for _ in range(how.epochs):
        order = torch.randperm(len(features), generator=generator)
        for start in range(0, len(order), how.batch_size):
            rows = order[start : start + how.batch_size]
            partner = rows[torch.randperm(len(rows), generator=generator)]
            mix = float(rng.beta(how.alpha, how.alpha))
            logits = forward(mix * features[rows] + (1 - mix) * features[partner])
            loss = mix * F.cross_entropy(logits, targets[rows]) + (1 - mix) * F.cross_entropy(
                logits, targets[partner]
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()


def refit_head(
    model,
    tokenizer,
    columns: Sequence[int],
    train: tuple[Sequence[str], Sequence[int]],
    validation: tuple[Sequence[str], Sequence[int]],
    how: HeadRefit = DEFAULT_REFIT,
    *,
    max_length: int = 128,
) -> tuple[dict, np.ndarray, np.ndarray]:
    """Re-fit ``model``'s head in place (or keep it, see the module's docstring).

    ``train`` and ``validation`` are (texts, label ids). Returns the record, and the validation
    logits before and after (columns in the model's output order), for the temperature."""
    modules, forward = head_layers(model)
    output_of = {label: i for i, label in enumerate(columns)}  # label id -> model output
    device = next(model.parameters()).device
    train_x = first_token_states(model, tokenizer, train[0], max_length=max_length).to(device)
    val_x = first_token_states(model, tokenizer, validation[0], max_length=max_length).to(device)
    train_y = torch.tensor([output_of[y] for y in train[1]], device=device)
    val_y = np.array([output_of[y] for y in validation[1]])
    params = [p for m in modules for p in m.parameters()]
    saved = [p.detach().clone() for p in params]
    with torch.no_grad():
        before = forward(val_x).float().cpu().numpy().astype(np.float64)
    with torch.enable_grad():
        for p in params:
            p.requires_grad_(True)
        mixup_train(forward, params, train_x.float(), train_y, how)
    with torch.no_grad():
        after = forward(val_x).float().cpu().numpy().astype(np.float64)
    old, new = full_report(val_y, softmax(before)), full_report(val_y, softmax(after))
    applied = new["accuracy"] >= old["accuracy"] - how.max_accuracy_drop
    if not applied:
        with torch.no_grad():
            for p, value in zip(params, saved, strict=True):
                p.copy_(value)
        after = before
    record = {
        "method": "mixup on the frozen encoder's features",
        **asdict(how),
        "train_posts": len(train[1]),
        "applied": applied,
        "labels_changed": int((before.argmax(1) != after.argmax(1)).sum()),
        "validation_before": {k: old[k] for k in ("accuracy", "f1_macro", "log_loss")},
        "validation_after": {k: new[k] for k in ("accuracy", "f1_macro", "log_loss")},
    }
    return record, before, after
