"""The wire contract of emotion-stream: the label set and the JSON messages on each topic.

Shared by the worker, the training module and the teams that produce to or consume from
the topics. Knows nothing of Kafka, torch or Faust.
"""

from schemas.labels import LABELS, ID2LABEL, LABEL2ID, Emotion, parse_label
from schemas.messages import (
    MAX_TEXT_CHARS,
    DeadLetter,
    EmotionResult,
    ErrorInfo,
    ModelInfo,
    Payload,
    Post,
    ResultSource,
    DeadLetterSource,
)

__all__ = [
    "LABELS",
    "ID2LABEL",
    "LABEL2ID",
    "Emotion",
    "parse_label",
    "MAX_TEXT_CHARS",
    "Post",
    "EmotionResult",
    "ResultSource",
    "ModelInfo",
    "DeadLetter",
    "DeadLetterSource",
    "ErrorInfo",
    "Payload",
]
