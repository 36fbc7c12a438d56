"""The six emotions, in the order of the dair-ai/emotion dataset (class id = position)."""

from __future__ import annotations

from enum import Enum


class Emotion(str, Enum):
    SADNESS = "sadness"
    JOY = "joy"
    LOVE = "love"
    ANGER = "anger"
    FEAR = "fear"
    SURPRISE = "surprise"


LABELS: tuple[str, ...] = tuple(e.value for e in Emotion)
ID2LABEL: dict[int, str] = dict(enumerate(LABELS))
LABEL2ID: dict[str, int] = {name: i for i, name in ID2LABEL.items()}


def parse_label(raw: str | int) -> int:
    """Return the class id of a label given by name (any case) or by id.

    Raises ValueError naming the accepted values when ``raw`` is neither.
    """
    if isinstance(raw, int) and not isinstance(raw, bool):
        if raw in ID2LABEL:
            return raw
    else:
        text = str(raw).strip().lower()
        if text in LABEL2ID:
            return LABEL2ID[text]
        if text.isdigit() and int(text) in ID2LABEL:
            return int(text)
    raise ValueError(
        f"unknown label {raw!r}: expected one of {', '.join(LABELS)} or an id 0-{len(LABELS) - 1}"
    )
