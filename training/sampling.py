"""Stratified subsets of a split: a small training slice for smoke runs, a dev split carved from train.

Stratified so that a 400-post slice still has every emotion in about its real proportion;
the rarest class (surprise) would otherwise vanish from small random samples.
"""

from __future__ import annotations

import random
from collections import defaultdict
from itertools import cycle

from emotion_stream.training.data import DataError, LabeledTexts


def stratified_indices(labels: list[int], n: int, seed: int) -> list[int]:
    """``n`` positions drawn per class in proportion to its size, each class at least once when n allows."""
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        by_class[label].append(i)
    rng = random.Random(seed)
    for members in by_class.values():
        rng.shuffle(members)
    quotas = _quotas({c: len(m) for c, m in by_class.items()}, n)
    return sorted(i for c, members in by_class.items() for i in members[: quotas[c]])


def _quotas(sizes: dict[int, int], n: int) -> dict[int, int]:
    total = sum(sizes.values())
    exact = {c: n * k / total for c, k in sizes.items()}
    floor_at = 1 if n >= len(sizes) else 0
    quota = {c: min(sizes[c], max(floor_at, int(q))) for c, q in exact.items()}
    while sum(quota.values()) > n:  # the minimum of one per class overshot: take from the largest
        largest = max(quota, key=quota.__getitem__)
        quota[largest] -= 1
    by_remainder = sorted(sizes, key=lambda c: exact[c] - int(exact[c]), reverse=True)
    for c in cycle(by_remainder):  # top up with the largest fractional shares first
        if sum(quota.values()) >= n:
            break
        if quota[c] < sizes[c]:
            quota[c] += 1
    return quota


def stratified_sample(split: LabeledTexts, n: int, seed: int) -> LabeledTexts:
    """At most ``n`` examples of ``split``, stratified by label; the whole split when it is smaller."""
    if n <= 0:
        raise DataError(f"--train-limit must be positive, got {n}")
    if n >= len(split):
        return split
    return split.subset(stratified_indices(split.labels, n, seed))


def carve_dev_split(split: LabeledTexts, fraction: float, seed: int) -> tuple[LabeledTexts, LabeledTexts]:
    """(rest, dev): a stratified ``fraction`` of ``split`` held out for model selection."""
    if not 0 < fraction < 1:
        raise DataError(f"--dev-fraction must be between 0 and 1 (exclusive), got {fraction}")
    n_dev = max(1, round(len(split) * fraction))
    if n_dev >= len(split):
        raise DataError(f"--dev-fraction {fraction} leaves no training data from {len(split)} examples")
    dev = set(stratified_indices(split.labels, n_dev, seed))
    rest = [i for i in range(len(split)) if i not in dev]
    return split.subset(rest), split.subset(sorted(dev))
