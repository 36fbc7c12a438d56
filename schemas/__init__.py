"""The wire contract of emotion-stream: the label set and the JSON messages on each topic.

Shared by the worker, the training module and the teams that produce to or consume from
the topics. Knows nothing of Kafka, torch or Faust.
"""

from emotion_stream.schemas.labels import ID2LABEL, LABEL2ID, LABELS, Emotion, parse_label
from emotion_stream.schemas.messages import (
    MAX_FIELD_CHARS,
    MAX_METADATA_BYTES,
    MAX_TEXT_CHARS,
    SCHEMA_VERSION,
    DeadLetter,
    DeadLetterSource,
    EmotionResult,
    ErrorInfo,
    ErrorKind,
    ModelInfo,
    Payload,
    Post,
    ResultSource,
)

__all__ = [
    "ID2LABEL",
    "LABEL2ID",
    "LABELS",
    "MAX_FIELD_CHARS",
    "MAX_METADATA_BYTES",
    "MAX_TEXT_CHARS",
    "SCHEMA_VERSION",
    "DeadLetter",
    "DeadLetterSource",
    "Emotion",
    "EmotionResult",
    "ErrorInfo",
    "ErrorKind",
    "ModelInfo",
    "Payload",
    "Post",
    "ResultSource",
    "parse_label",
]
