"""Turns the bytes of one input message into a validated post, or says why it cannot."""

from __future__ import annotations

import json
from dataclasses import dataclass

from pydantic import ValidationError

from schemas import ErrorInfo, Post


@dataclass(frozen=True)
class Rejected:
    """A message that is not a valid post, with the reason that goes to the dead-letter topic."""

    error: ErrorInfo


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "post"
        parts.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


def decode_post(raw: bytes | None) -> Post | Rejected:
    """Decode UTF-8 JSON into a :class:`Post`; never raises for bad input."""
    if raw is not None:
        # Fast path: pydantic's own JSON parser handles a valid post in one step; only a
        # failure takes the slower path below, which tells which kind of bad it is.
        try:
            return Post.model_validate_json(raw)
        except ValidationError:
            pass
    if raw is None:
        return Rejected(ErrorInfo(kind="invalid_post", message="message has no value (tombstone)"))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejected(
            ErrorInfo(kind="not_utf8", message=f"value is not UTF-8: {exc.reason} at byte {exc.start}")
        )
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return Rejected(
            ErrorInfo(
                kind="not_json",
                message=f"value is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
            )
        )
    except RecursionError:
        return Rejected(ErrorInfo(kind="not_json", message="value is JSON nested too deeply to decode"))
    if not isinstance(obj, dict):
        return Rejected(
            ErrorInfo(kind="invalid_post", message=f"expected a JSON object, got {type(obj).__name__}")
        )
    try:
        return Post.model_validate(obj)
    except ValidationError as exc:
        return Rejected(ErrorInfo(kind="invalid_post", message=_describe(exc)))
