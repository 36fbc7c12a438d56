"""The OpenAPI 3 description of ``POST /classify``, served at ``GET /openapi.json``.

Built from the worker's own limits (texts per request, characters per text, the body cap), so
what a client reads is what the worker enforces; the integration tests fuzz ``/classify`` from
this description.
"""

from __future__ import annotations

from typing import Any

from emotion_stream.schemas.labels import LABELS
from emotion_stream.schemas.messages import MAX_TEXT_CHARS

API_VERSION = "1"
"""Of this HTTP API (the messages' own schema version is in each result)."""

ERROR_KINDS = ["processing_failed"]


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    if headers:
        answer["headers"] = headers
    return answer


def classify_openapi(
    max_texts: int, max_chars: int = MAX_TEXT_CHARS, max_body_bytes: int | None = None
) -> dict:
    """The description of ``/classify`` for a desk with these limits."""
    text = {"type": "string", "minLength": 1, "maxLength": max_chars, "pattern": r"\S"}
    retry_after = {
        "Retry-After": {
            "description": "Seconds to wait before trying again.",
            "schema": {"type": "integer", "minimum": 1},
        }
    }
    body_cap = f" (at most {max_body_bytes} bytes)" if max_body_bytes else ""
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "emotion-stream classify",
            "version": API_VERSION,
            "description": "Texts labelled with emotions by the stream's model, in its next batch.",
        },
        "paths": {
            "/classify": {
                "post": {
                    "operationId": "classify",
                    "summary": "Label one text or a list of texts",
                    "security": [{"bearer": []}, {}],
                    "requestBody": {
                        "required": True,
                        "description": f"Exactly one of `text` and `texts`{body_cap}.",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "oneOf": [
                                        {
                                            "type": "object",
                                            "required": ["text"],
                                            "properties": {"text": text},
                                            "additionalProperties": False,
                                        },
                                        {
                                            "type": "object",
                                            "required": ["texts"],
                                            "properties": {
                                                "texts": {
                                                    "type": "array",
                                                    "minItems": 1,
                                                    "maxItems": max_texts,
                                                    "items": text,
                                                }
                                            },
                                            "additionalProperties": False,
                                        },
                                    ]
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "One result per text, in the order sent.",
                            "content": {
                                "application/json": {"schema": {"$ref": "#/components/schemas/Answer"}}
                            },
                        },
                        "400": _error("The body is not JSON the worker reads, or not one of the two forms."),
                        "401": _error(
                            "The bearer token is missing or wrong (EMOTION_CLASSIFY_TOKEN).",
                            {"WWW-Authenticate": {"schema": {"type": "string"}}},
                        ),
                        "413": _error(
                            f"The body is too large, or holds more than {max_texts} texts "
                            "(EMOTION_CLASSIFY_MAX_TEXTS)."
                        ),
                        "422": _error(f"A text is blank or longer than {max_chars} characters."),
                        "429": _error(
                            "Too many requests in progress (EMOTION_CLASSIFY_MAX_CONCURRENT).", retry_after
                        ),
                        "503": _error(
                            "The worker is stopping, overloaded, or its model failed.", retry_after
                        ),
                    },
                }
            }
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"type": "string"}},
                },
                "Answer": {
                    "type": "object",
                    "required": ["results"],
                    "properties": {
                        "results": {
                            "type": "array",
                            "items": {
                                "oneOf": [
                                    {"$ref": "#/components/schemas/Result"},
                                    {"$ref": "#/components/schemas/Failed"},
                                ]
                            },
                        }
                    },
                },
                "Result": {
                    "type": "object",
                    "required": ["schema_version", "label", "score", "scores", "model", "processed_at"],
                    "properties": {
                        "schema_version": {"type": "string"},
                        "label": {"type": "string", "enum": list(LABELS)},
                        "score": {"type": "number", "minimum": 0, "maximum": 1},
                        "scores": {
                            "type": "object",
                            "required": list(LABELS),
                            "additionalProperties": {"type": "number", "minimum": 0, "maximum": 1},
                        },
                        "model": {"type": "object"},
                        "processed_at": {"type": "string", "format": "date-time"},
                    },
                },
                "Failed": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["kind", "message"],
                            "properties": {
                                "kind": {"type": "string", "enum": ERROR_KINDS},
                                "message": {"type": "string"},
                            },
                        }
                    },
                },
            },
        },
    }
