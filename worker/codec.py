"""The wire formats, both ways: outside bytes become data (JSON read under explicit limits,
posts validated, trace headers checked before they are passed on), and results, dead letters
and their headers become bytes.

Every reader of bytes that come from outside (the worker's input topic, the aggregator's and
the live page's topic readers, ``/classify``, ``produce`` and ``consume``) goes through
:func:`read_json`, so a message can be too big, too deep, hold an integer of a million digits,
a lone surrogate or no JSON at all, and the reader gets an :class:`Unreadable` with the error
kind and a message, never another exception.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from emotion_stream.schemas import (
    SCHEMA_VERSION,
    DeadLetter,
    DeadLetterSource,
    Emotion,
    EmotionResult,
    ErrorInfo,
    ErrorKind,
    ModelInfo,
    Payload,
    Post,
    ResultSource,
)
from emotion_stream.worker import policy
from emotion_stream.worker.model.api import Prediction
from emotion_stream.worker.reading import READABLE, Reading

UNDECODABLE_HEADER = f"emotion-stream-undecodable-{secrets.token_hex(8)}"
"""The header of the record the consumer puts in place of a record batch it could not decode
(see :func:`worker.transport.guard_record_batches`); its value says why. The name carries a
token drawn per process, so no producer can forge one."""


@dataclass(frozen=True)
class Limits:
    """What the readers accept from outside."""

    max_bytes: int = 1 << 20
    """Longest message, in bytes."""
    max_depth: int = 64
    """Deepest nesting of arrays and objects."""
    max_int_digits: int = 128
    """Longest integer literal (Python refuses past 4,300 digits with an exception of its own)."""


DEFAULT_LIMITS = Limits()


class Unreadable(ValueError):
    """Outside bytes that are not the JSON a reader accepts; ``error`` says which kind and why."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.error = ErrorInfo(kind=kind, message=message)

    @property
    def kind(self) -> str:
        return self.error.kind


@dataclass(frozen=True)
class Rejected:
    """A message that is not a valid post, with the reason that goes to the dead-letter topic."""

    error: ErrorInfo


def _bounded_int(limit: int):
    def parse(literal: str) -> int:
        digits = len(literal) - literal.startswith("-")
        if digits > limit:
            raise Unreadable("invalid_post", f"an integer of {digits} digits is over the limit of {limit}")
        return int(literal)

    return parse


def _no_constant(name: str) -> Any:
    raise Unreadable("not_json", f"value is not JSON: {name} is not a JSON number")


def _check_tree(value: Any, max_depth: int) -> None:
    """Depth of nesting within bounds, and no string holding a lone surrogate (a ``\\ud800``
    escape decodes to one; it cannot be written back as UTF-8)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if _has_surrogate(item):
                raise Unreadable("not_utf8", "a string holds a lone surrogate escape (not valid Unicode)")
            continue
        if not isinstance(item, (dict, list)):
            continue
        if depth > max_depth:
            raise Unreadable("not_json", f"JSON nested deeper than {max_depth} levels")
        children = item.items() if isinstance(item, dict) else ((None, v) for v in item)
        for key, child in children:
            if key is not None and _has_surrogate(key):
                raise Unreadable("not_utf8", "a key holds a lone surrogate escape (not valid Unicode)")
            stack.append((child, depth + 1))


_SURROGATE = re.compile("[\ud800-\udfff]")


def _has_surrogate(text: str) -> bool:
    return not text.isascii() and _SURROGATE.search(text) is not None


def undecodable_reason(headers: Iterable[tuple[str, bytes]] | None) -> str | None:
    """Why the consumer could not decode the record batch this record stands for, when it is
    such a record (see :data:`UNDECODABLE_HEADER`)."""
    for name, value in headers or ():
        if name == UNDECODABLE_HEADER:
            return bytes(value or b"").decode("utf-8", "replace")
    return None


def read_json(
    raw: bytes | str | None,
    limits: Limits = DEFAULT_LIMITS,
    *,
    what: str = "value",
    headers: Iterable[tuple[str, bytes]] | None = None,
) -> Any:
    """``raw`` as JSON under ``limits``; raises :class:`Unreadable` (and nothing else) for bad
    input. With the record's ``headers``, a record standing for an undecodable batch is told
    apart from a tombstone."""
    reason = undecodable_reason(headers)
    if reason is not None:
        raise Unreadable("undecodable", reason)
    if raw is None:
        raise Unreadable("invalid_post", f"message has no {what} (tombstone)")
    size = len(raw)
    if size > limits.max_bytes:
        raise Unreadable("too_large", f"{what} of {size} bytes is over the limit of {limits.max_bytes}")
    if isinstance(raw, (bytes, bytearray, memoryview)):
        try:
            text = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise Unreadable("not_utf8", f"{what} is not UTF-8: {exc.reason} at byte {exc.start}") from None
    else:
        text = raw
        if _has_surrogate(text):
            raise Unreadable("not_utf8", f"{what} holds a lone surrogate (not valid Unicode)")
    try:
        value = json.loads(text, parse_int=_bounded_int(limits.max_int_digits), parse_constant=_no_constant)
    except Unreadable:
        raise
    except json.JSONDecodeError as exc:
        raise Unreadable(
            "not_json", f"{what} is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise Unreadable("not_json", f"JSON nested deeper than {limits.max_depth} levels") from None
    except (ValueError, TypeError, OverflowError) as exc:  # never let a parser's own limit escape
        raise Unreadable("not_json", f"{what} is not readable JSON: {exc}") from None
    _check_tree(value, limits.max_depth)
    return value


def read_object(
    raw: bytes | str | None,
    limits: Limits = DEFAULT_LIMITS,
    *,
    what: str = "value",
    headers: Iterable[tuple[str, bytes]] | None = None,
) -> dict:
    """Like :func:`read_json`, for readers that expect a JSON object."""
    value = read_json(raw, limits, what=what, headers=headers)
    if not isinstance(value, dict):
        raise Unreadable("invalid_post", f"expected a JSON object, got {type(value).__name__}")
    return value


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "post"
        parts.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


def decode_post(raw: bytes | None, limits: Limits = DEFAULT_LIMITS) -> Post | Rejected:
    """Decode UTF-8 JSON into a :class:`Post`; never raises for bad input."""
    if raw is not None and len(raw) <= limits.max_bytes:
        # Fast path: pydantic's own JSON parser handles a valid post in one step (it refuses
        # deep nesting, huge numbers and lone surrogates itself); only a failure takes the
        # slower path below, which tells which kind of bad it is.
        try:
            return Post.model_validate_json(raw)
        except ValidationError:
            pass
    try:
        obj = read_object(raw, limits)
        return Post.model_validate(obj)
    except Unreadable as exc:
        return Rejected(exc.error)
    except ValidationError as exc:
        return Rejected(ErrorInfo(kind="invalid_post", message=_describe(exc)))


# W3C Trace Context: version 00 layout; ids of all zeros are invalid, version ff is forbidden.
_TRACEPARENT = re.compile(r"^(?!ff)[0-9a-f]{2}-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}$")
_TRACESTATE_MEMBER = re.compile(
    r"^[a-z0-9][a-z0-9_\-*/@]{0,255}=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]$"
)
TRACESTATE_MAX_BYTES = 512
"""Longest ``tracestate`` passed on (the W3C recommendation for what vendors propagate)."""
TRACESTATE_MAX_MEMBERS = 32
PROPAGATED_HEADER_MAX_BYTES = 8192
"""Longest value of a header named in EMOTION_PROPAGATE_HEADERS that is passed on."""


def _valid_traceparent(value: bytes) -> bool:
    try:
        return _TRACEPARENT.match(value.decode("ascii")) is not None
    except UnicodeDecodeError:
        return False


def _valid_tracestate(value: bytes) -> bool:
    if len(value) > TRACESTATE_MAX_BYTES:
        return False
    try:
        members = [m.strip() for m in value.decode("ascii").split(",") if m.strip()]
    except UnicodeDecodeError:
        return False
    return 0 < len(members) <= TRACESTATE_MAX_MEMBERS and all(_TRACESTATE_MEMBER.match(m) for m in members)


def passed_on_headers(headers: Iterable[tuple[str, bytes]], propagate: frozenset[str]) -> tuple:
    """The record's headers named in ``propagate`` (lower case) that may be copied onto what
    answers it: trace context only in the W3C format (and a ``tracestate`` only with a valid
    ``traceparent``), each name once (the first valid value), other headers up to
    :data:`PROPAGATED_HEADER_MAX_BYTES`. Everything else is dropped, never an error: a bad
    header does not make a bad post."""
    chosen: dict[str, tuple[str, bytes]] = {}
    for name, value in headers:
        lower = name.lower()
        if lower not in propagate or lower in chosen:
            continue
        if lower == "traceparent":
            ok = _valid_traceparent(value)
        elif lower == "tracestate":
            ok = _valid_tracestate(value)
        else:
            ok = len(value) + len(name) <= PROPAGATED_HEADER_MAX_BYTES
        if ok:
            chosen[lower] = (name, value)
    if "tracestate" in chosen and "traceparent" not in chosen:
        del chosen["tracestate"]
    return tuple(chosen.values())


def headers_size(headers: Iterable[tuple[str, bytes]]) -> int:
    """Bytes the headers take in a record (names and values; what counts toward the size limit)."""
    return sum(len(name.encode("utf-8", "surrogatepass")) + len(value or b"") for name, value in headers)


# -- what the worker writes: results, dead letters and their headers -------------------------------


@dataclass(frozen=True)
class InboundRecord:
    """One message as read from the input topic."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp_s: float | None = None
    """The record's Kafka timestamp in seconds (as Faust gives it), if it has one."""


@dataclass(frozen=True)
class OutboundMessage:
    key: bytes | None
    value: bytes
    source: InboundRecord | None = None
    """The input message it answers (so a refused send can be answered by a minimal dead letter)."""
    headers: tuple[tuple[str, bytes], ...] = ()
    topic: str | None = None
    """Where it goes when not to its kind's usual topic (a routed unreadable post's result)."""


DEFAULT_MAX_MESSAGE_BYTES = 1 << 20

TRACING_HEADERS = ("traceparent", "tracestate")
"""W3C trace context: always copied from a post to what answers it."""

_Model = TypeVar("_Model", bound=BaseModel)

_OWN_HEADERS = (("content-type", b"application/json"), ("schema-version", SCHEMA_VERSION.encode()))


def output_headers(record: InboundRecord, propagate: frozenset[str] = frozenset(TRACING_HEADERS)) -> tuple:
    """The headers of what answers ``record``: the content type, the schema version, and the
    record's own headers named in ``propagate`` (case-insensitive, as HTTP headers are) that
    pass :func:`worker.codec.passed_on_headers`."""
    return _OWN_HEADERS + passed_on_headers(record.headers, propagate)


def dead_letter(
    record: InboundRecord,
    error: ErrorInfo,
    max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    *,
    minimal: bool = False,
    propagate: frozenset[str] = frozenset(TRACING_HEADERS),
) -> OutboundMessage:
    """The dead letter of ``record``, at most ``max_bytes`` long: whole when it fits, else with a
    prefix of the payload (its size and SHA-256 kept); ``minimal`` keeps no payload bytes at all."""
    budget = max_bytes - policy.DEAD_LETTER_MARGIN_BYTES
    key = record.key if record.key is None or len(record.key) <= policy.KEY_BYTES else None

    def build(limit: int | None) -> bytes:
        letter = DeadLetter(
            error=error,
            payload=Payload.from_bytes(record.value, limit),
            source=DeadLetterSource(
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                key=None if record.key is None else Payload.from_bytes(record.key, policy.KEY_BYTES),
            ),
        )
        return letter.model_dump_json().encode("utf-8")

    value = build(0 if minimal else None)
    if len(value) > budget:
        value = build(policy.PREFIX_BYTES)
    return OutboundMessage(key=key, value=value, source=record, headers=output_headers(record, propagate))


def refused_as_too_large(message: OutboundMessage, what: str, max_bytes: int) -> OutboundMessage:
    """The minimal dead letter sent in place of a result or dead letter the broker refused as too large."""
    assert message.source is not None
    error = ErrorInfo(
        kind="too_large",
        message=f"the broker refused the {what} for this message as too large ({len(message.value)} "
        f"bytes of value, {len(message.key or b'')} of key, {headers_size(message.headers)} of headers; "
        f"SHA-256 {hashlib.sha256(message.value).hexdigest()[:16]}...); raise the topic's max.message.bytes "
        "or lower EMOTION_MAX_MESSAGE_BYTES",
    )
    # Only the worker's own headers: whatever else made the original too large stays behind.
    return dataclasses.replace(
        dead_letter(message.source, error, max_bytes, minimal=True), headers=_OWN_HEADERS
    )


DIMENSIONS = ("source", "lang")
"""The post fields a result carries as ``dimensions``: the aggregates' breakdowns."""


def _posted_at(post: Post, record: InboundRecord) -> datetime | None:
    if post.created_at is not None:
        created = post.created_at
        if created.tzinfo is None:
            created = created.replace(tzinfo=timezone.utc)
        return created.astimezone(timezone.utc)
    if record.timestamp_s is not None and record.timestamp_s > 0:
        try:
            return datetime.fromtimestamp(record.timestamp_s, timezone.utc)
        except (OverflowError, OSError, ValueError):  # a timestamp past the calendar's end
            return None
    return None


def _constructed(cls: type[_Model], values: dict[str, Any]) -> _Model:
    """What ``cls.model_construct(**values)`` builds, for a model without private attributes,
    extra fields or a post-init hook, given a value for every field: without its pass over the
    fields (measured: encoding a result took 14-16 µs with it, 10-15 without)."""
    fields = len(cls.__pydantic_fields__)
    if len(values) != fields:
        raise ValueError(f"{cls.__name__} needs a value for each of its {fields} fields")
    model = cls.__new__(cls)
    object.__setattr__(model, "__dict__", values)
    object.__setattr__(model, "__pydantic_fields_set__", set(values))
    object.__setattr__(model, "__pydantic_extra__", None)
    object.__setattr__(model, "__pydantic_private__", None)
    return model


def encode_result(
    record: InboundRecord,
    post: Post,
    prediction: Prediction,
    model: ModelInfo,
    propagate: frozenset[str] = frozenset(TRACING_HEADERS),
    *,
    reading: Reading = READABLE,
    confident: bool = True,
    topic: str | None = None,
) -> OutboundMessage:
    """The result of ``post``, built from the schema's own model: a field added to
    :class:`EmotionResult` is written here or a test fails. Built without re-validation (every
    value is already of its type; this runs once per post). ``reading``: what the reader found
    in the post; ``confident``: whether the top score reached the threshold; ``topic``: where it
    goes, when not to the output topic."""
    result = _constructed(
        EmotionResult,
        {
            "schema_version": SCHEMA_VERSION,
            "id": post.id,
            "label": Emotion(prediction.label),
            "score": prediction.score,
            "scores": prediction.scores,
            "model": model,
            "source": _constructed(
                ResultSource, {"topic": record.topic, "partition": record.partition, "offset": record.offset}
            ),
            "processed_at": datetime.now(timezone.utc),
            "posted_at": _posted_at(post, record),
            "dimensions": {name: value for name in DIMENSIONS if (value := getattr(post, name))},
            "language": reading.language,
            "language_score": reading.language_score,
            "unreadable": reading.unreadable,
            "confident": confident,
        },
    )
    return OutboundMessage(
        key=post.id.encode("utf-8"),
        value=result.model_dump_json().encode("utf-8"),
        source=record,
        headers=output_headers(record, propagate),
        topic=topic,
    )
