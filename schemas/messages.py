"""Pydantic models of the three messages: the input post, the result and the dead letter.

All travel as UTF-8 JSON. Posts are lenient (unknown fields are ignored) so producers can
add fields without breaking the worker; results and dead letters are complete, so dashboards
can rely on every field being there, and carry a ``schema_version``.

The compatibility rule: within a major version, a later worker only adds fields; it never
removes, renames or retypes one. Consumers must therefore accept properties they do not know
(the models here ignore them, and the exported JSON Schemas allow them), and check the major
version, which changes only with a breaking change.
"""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from emotion_stream.schemas.labels import LABELS, Emotion

MAX_TEXT_CHARS = 5000
"""Longest accepted post text. Tweets are far shorter; the bound keeps one message from
monopolising a batch (the model sees at most its max token length anyway)."""

SCHEMA_VERSION = "1.3"
"""The version of the result and dead-letter schemas: ``major.minor``; the minor grows when a
field is added, the major only for a change that can break a consumer."""

MAX_FIELD_CHARS = 256
"""Longest accepted ``author`` and ``source``."""

MAX_METADATA_BYTES = 64 * 1024
"""Largest accepted ``metadata``, as compact JSON: tags and ids, not documents."""


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class Post(BaseModel):
    """A social-media post on the input topic."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=False)

    id: str = Field(
        min_length=1, max_length=256, description="Producer's id of the post; the key of its result."
    )
    text: str = Field(max_length=MAX_TEXT_CHARS, description="The post's text; must not be blank.")
    author: str | None = Field(default=None, max_length=MAX_FIELD_CHARS)
    created_at: datetime | None = None
    lang: str | None = Field(default=None, max_length=35, description="BCP 47 language tag, if known.")
    source: str | None = Field(
        default=None, max_length=MAX_FIELD_CHARS, description="Where the post came from (platform, feed)."
    )
    metadata: dict[str, Any] | None = Field(
        default=None,
        description=f"Anything else, passed through; at most {MAX_METADATA_BYTES} bytes as JSON.",
    )

    @field_validator("id", mode="before")
    @classmethod
    def _id_is_string(cls, value: Any) -> Any:
        # Numeric ids are common in producers' JSON; accept them as their decimal string,
        # but never silently coerce floats, booleans or objects.
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return value

    @field_validator("id")
    @classmethod
    def _id_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value

    @field_validator("text")
    @classmethod
    def _text_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata_bounded(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            size = len(json.dumps(value, separators=(",", ":"), default=str).encode("utf-8"))
            if size > MAX_METADATA_BYTES:
                raise ValueError(f"must be at most {MAX_METADATA_BYTES} bytes as JSON, got {size}")
        return value


class ResultSource(BaseModel):
    """Where the post was read from."""

    model_config = ConfigDict(extra="ignore")

    topic: str
    partition: int
    offset: int


class ModelInfo(BaseModel):
    """Which model produced a result."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=())

    name: str
    version: str


Unreadable = Literal["other_language", "no_text"]
"""Why the model had no basis for a label: the post's language, or no words at all."""


class EmotionResult(BaseModel):
    """One result per post on the output topic, keyed by the post id."""

    model_config = ConfigDict(extra="ignore")

    schema_version: str = Field(default=SCHEMA_VERSION, description="`major.minor` of this schema.")
    id: str
    label: Emotion
    score: float = Field(ge=0.0, le=1.0, description="Probability of `label`.")
    scores: dict[str, float] = Field(description="Probability of every label; sums to 1.")
    model: ModelInfo
    source: ResultSource
    processed_at: datetime = Field(default_factory=utc_now, description="UTC, ISO 8601.")
    posted_at: datetime | None = Field(
        default=None,
        description="When the post was made: its `created_at`, else its Kafka record's timestamp "
        "(UTC, ISO 8601; since 1.1). The aggregates window by it.",
    )
    dimensions: dict[str, str] = Field(
        default_factory=dict,
        description="The post's `source` and `lang`, where it has them (since 1.1): the "
        "breakdowns of the aggregates.",
    )
    language: str | None = Field(
        default=None,
        description="The language detected in the post's text, an ISO 639-1 code (since 1.3); null when "
        "the post has no words or the check is off (EMOTION_LANGUAGE_CHECK).",
    )
    language_score: float | None = Field(
        default=None, ge=0.0, le=1.0, description="How sure the detector is of `language` (since 1.3)."
    )
    unreadable: Unreadable | None = Field(
        default=None,
        description="Why the model had no basis for its label (since 1.3): `other_language`, the text is "
        "not in a language the model reads (EMOTION_LANGUAGES); `no_text`, no words are left once links, "
        "mentions, hashtags, emoji, numbers and punctuation are removed. Null when the model could read "
        "the post. The label is still given; the aggregates and the live page count these posts apart "
        "from the six emotions.",
    )
    confident: bool = Field(
        default=True,
        description="Whether `score` reaches the confidence threshold (EMOTION_MIN_CONFIDENCE, by default "
        "the one recorded with the model; since 1.3). The aggregates and the live page count a readable "
        "post that does not as unsure.",
    )

    @field_validator("scores")
    @classmethod
    def _all_labels(cls, value: dict[str, float]) -> dict[str, float]:
        if set(value) != set(LABELS):
            raise ValueError(f"scores must have exactly the labels {', '.join(LABELS)}")
        return value


ErrorKind = Literal[
    "not_utf8", "not_json", "invalid_post", "too_large", "processing_failed", "undecodable", "unreadable"
]
"""``undecodable`` (since 1.2): a record batch the consumer could not decode (an unknown
compression codec, corrupt compressed data, or more than EMOTION_MAX_INFLIGHT_BYTES once
decompressed); one dead letter stands for the whole batch, and says its offsets.
``unreadable`` (since 1.3): a post the model has no basis for (another language, or no words),
skipped under EMOTION_UNREADABLE=dead_letter; the message starts with ``other_language`` or
``no_text``."""


class ErrorInfo(BaseModel):
    """Why a message was dead-lettered."""

    model_config = ConfigDict(extra="ignore")

    kind: ErrorKind
    message: str


class Payload(BaseModel):
    """The original message bytes: as text when they are UTF-8, else base64.

    Whole unless ``truncated``: a message too large to carry in a dead letter keeps only a
    prefix of its bytes here, with the ``size`` and ``sha256`` of the whole, and can no longer
    be replayed byte for byte.
    """

    model_config = ConfigDict(extra="ignore")

    encoding: Literal["utf-8", "base64"]
    data: str
    truncated: bool = Field(default=False, description="Only a prefix of the original bytes is in `data`.")
    size: int | None = Field(default=None, description="Length of the original bytes (set when truncated).")
    sha256: str | None = Field(
        default=None, description="SHA-256 of the original bytes (set when truncated)."
    )

    @classmethod
    def from_bytes(cls, raw: bytes | None, limit: int | None = None) -> Payload:
        """The bytes as a payload; beyond ``limit`` bytes, a prefix with the size and digest of the whole."""
        raw = raw or b""
        if limit is not None and len(raw) > limit:
            whole = cls.from_bytes(raw[:limit])
            if whole.encoding == "utf-8" or _is_utf8(raw):
                # A prefix cut inside a character: drop the partial character, keep it text.
                whole = cls(encoding="utf-8", data=raw[:limit].decode("utf-8", errors="ignore"))
            return whole.model_copy(
                update={"truncated": True, "size": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
            )
        try:
            return cls(encoding="utf-8", data=raw.decode("utf-8"))
        except UnicodeDecodeError:
            return cls(encoding="base64", data=base64.b64encode(raw).decode("ascii"))

    def to_bytes(self) -> bytes:
        if self.encoding == "utf-8":
            return self.data.encode("utf-8")
        return base64.b64decode(self.data)


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class DeadLetterSource(BaseModel):
    """Where the rejected message was read from, with its key as given."""

    model_config = ConfigDict(extra="ignore")

    topic: str
    partition: int
    offset: int
    key: Payload | None = None


class DeadLetter(BaseModel):
    """A message the worker could not turn into a result, and why."""

    model_config = ConfigDict(extra="ignore")

    schema_version: str = Field(default=SCHEMA_VERSION, description="`major.minor` of this schema.")
    error: ErrorInfo
    payload: Payload
    source: DeadLetterSource
    failed_at: datetime = Field(default_factory=utc_now, description="UTC, ISO 8601.")
