"""The aggregates topic: emotion counts per tumbling window, for dashboards.

One record per window and dimension, keyed ``<window_start>|<dimension>`` (for example
``2026-11-29T21:00:00Z|{}`` or ``2026-11-29T21:00:00Z|{"source":"app"}``), so the latest
record of a key is that window's current state: a consumer keeps the last record per key (a
compacted topic does the same). While a window is open its record is re-published at most
every EMOTION_AGGREGATE_UPDATE_S; the record that closes it has ``closed: true``. Results that
arrive after their window closed still count: the window's record is published again.

Same compatibility rule as the other messages: within a major version fields are only added.
"""

from __future__ import annotations

import json
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

AGGREGATE_SCHEMA_VERSION = "1.1"


class EmotionAggregate(BaseModel):
    """Emotion counts over one tumbling window, for all posts or one breakdown."""

    model_config = ConfigDict(extra="ignore")

    schema_version: str = Field(default=AGGREGATE_SCHEMA_VERSION, description="`major.minor` of this schema.")
    window_start: datetime = Field(description="Start of the window, inclusive (UTC, ISO 8601).")
    window_end: datetime = Field(description="End of the window, exclusive (UTC, ISO 8601).")
    dimension: dict[str, str] = Field(
        description='`{}` for the totals over all posts; `{"source": ...}` or `{"lang": ...}` '
        "for the posts that have that value."
    )
    counts: dict[str, int] = Field(
        description="Posts per label (every label, zeros included): the posts the model could read and "
        "was confident about (since 1.1; the unsure, other-language and no-text ones are counted apart)."
    )
    mean_scores: dict[str, float] = Field(
        description="Mean probability of each label over the posts in `counts` (0 when there are none)."
    )
    posts: int = Field(description="Posts counted toward the six emotions (the sum of `counts`).")
    unsure: int = Field(
        default=0,
        description="Readable posts whose top score missed the confidence threshold (since 1.1).",
    )
    other_language: int = Field(
        default=0, description="Posts in a language the model does not read (since 1.1)."
    )
    no_text: int = Field(
        default=0,
        description="Posts with no words once links, mentions, hashtags, emoji and numbers are removed "
        "(since 1.1).",
    )
    dead_letters: int = Field(
        description="Dead letters written in the window (counted in the totals only: a rejected "
        "message has no trustworthy dimension)."
    )
    closed: bool = Field(description="The window is over and its grace period has passed.")
    updated_at: datetime = Field(description="When this record was published (UTC, ISO 8601).")


def aggregate_key(window_start: str, dimension: dict[str, str]) -> str:
    """The record key: the window start and the dimension as compact, sorted JSON."""
    return f"{window_start}|{json.dumps(dimension, sort_keys=True, separators=(',', ':'))}"
