"""Model inputs: token rows made into the tensors of one forward pass, padded or packed.

Padded: a sub-batch of posts of similar length, each padded to the longest. Packed: a small
window's posts laid end to end in a few rows, every post attending only to its own tokens
and counting its positions from 0. That is the same arithmetic as padded sub-batches
(results agree to float rounding) with no padding at all and exactly one forward pass per
pass thread, which a planned window of a few posts cannot have (1.2-1.35x on windows of
4-24 posts; bench/README.md).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from emotion_stream.worker.model.planning import share_out

PACKED_ROW_TOKENS = 128
"""Tokens in a packed row (or the longest post, if longer). Attention in a row costs its
length squared, so rows stay short; the linear layers do not care."""

PACK_ROWS_PER_PASS = 4
"""Windows of up to this many packed rows per parallel pass run packed; bigger ones run as
planned sub-batches, as fast there (sorted, they carry almost no padding) and kinder to
the caches than one big pass per thread (0.85-0.9x packed at 512 posts)."""


@dataclass(frozen=True)
class ModelInput:
    """The tensors of one forward pass: a padded sub-batch, or rows of packed posts."""

    ids: torch.Tensor
    """Token ids, (rows, width)."""
    mask: torch.Tensor
    """Padded: (rows, width), 1 on real tokens. Packed: (rows, 1, width, width), where each
    token may attend (bool; additive floats for eager attention)."""
    positions: torch.Tensor | None = None
    """Packed only: each token's position within its own post, (rows, width)."""
    firsts: torch.Tensor | None = None
    """Packed only: where each post's first token is, as an index into the flattened rows."""

    @property
    def posts(self) -> int:
        return int(self.ids.shape[0] if self.firsts is None else self.firsts.shape[0])


@dataclass(frozen=True)
class PreparedTexts:
    """Texts tokenized and padded into planned sub-batches (or packed), ready for the model."""

    rows: list[int]
    """For each post of the passes' outputs, in order, the index of its text."""
    inputs: list[ModelInput]
    """What each forward pass runs."""


def pack_rows(lengths: Sequence[int], row_tokens: int) -> list[list[int]]:
    """Posts laid end to end in rows of about ``row_tokens`` tokens: as few rows as hold
    them all, each about as full as the others (rows are padded to the fullest)."""
    total = sum(lengths)
    return share_out(lengths, -(-total // max(1, row_tokens)))


def pad(rows: list[list[int]], pad_id: int) -> ModelInput:
    """Token rows padded to the longest, with the mask of real tokens."""
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    width = int(lengths.max())
    mask = np.arange(width) < lengths[:, None]
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    # Row-major, each row's tokens are the leading run of its mask: one copy for all rows
    # (a row at a time costs more than the model on a GPU).
    ids[mask] = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=int(lengths.sum()))
    return ModelInput(torch.from_numpy(ids), torch.from_numpy(mask.astype(np.int64)))


def pack(
    rows: list[list[int]], row_tokens: int, pad_id: int, additive_mask: bool
) -> tuple[ModelInput, list[int]]:
    """Token rows laid end to end (see :func:`pack_rows`), and the order of the posts in
    the pass's output (indices into ``rows``). ``additive_mask`` for attention that adds the
    mask to its scores (eager) rather than taking a boolean one."""
    lines = pack_rows([len(r) for r in rows], row_tokens)
    width = max(sum(len(rows[i]) for i in line) for line in lines)
    ids = torch.full((len(lines), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(lines), width), dtype=torch.long)
    owner = torch.full((len(lines), width), -1, dtype=torch.long)  # which post each token is; -1: padding
    firsts, order = [], []
    for j, line in enumerate(lines):
        at = 0
        for i in line:
            n = len(rows[i])
            ids[j, at : at + n] = torch.tensor(rows[i], dtype=torch.long)
            positions[j, at : at + n] = torch.arange(n)
            owner[j, at : at + n] = i
            firsts.append(j * width + at)
            order.append(i)
            at += n
    # A token attends to its own post's tokens only (padding to padding, so no row of
    # the mask is empty).
    mask = (owner[:, :, None] == owner[:, None, :])[:, None]
    if additive_mask:
        mask = torch.zeros(mask.shape).masked_fill_(~mask, torch.finfo(torch.float32).min)
    return ModelInput(ids, mask, positions, torch.tensor(firsts, dtype=torch.long)), order


def _distilbert_head(model, first: torch.Tensor) -> torch.Tensor:
    return model.classifier(model.dropout(torch.relu(model.pre_classifier(first))))


def _bert_head(model, first: torch.Tensor) -> torch.Tensor:
    return model.classifier(model.dropout(model.bert.pooler(first[:, None, :])))


PACKED_HEADS: dict[str, Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]] = {
    "DistilBertForSequenceClassification": _distilbert_head,
    "BertForSequenceClassification": _bert_head,
}
"""Classification heads, from the first token's hidden state, of the architectures that run
packed: the ones emotion-stream trains and serves. Any other runs padded."""
