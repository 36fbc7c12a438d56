"""Writes the JSON Schema of each message for the teams that consume the topics."""

from __future__ import annotations

import json
from pathlib import Path

from emotion_stream.schemas.aggregates import AGGREGATE_SCHEMA_VERSION, EmotionAggregate
from emotion_stream.schemas.messages import SCHEMA_VERSION, DeadLetter, EmotionResult, Post

SCHEMAS = {
    "post": Post,
    "emotion-result": EmotionResult,
    "dead-letter": DeadLetter,
    "emotion-aggregate": EmotionAggregate,
}
VERSIONS = {"emotion-aggregate": AGGREGATE_SCHEMA_VERSION}


def export_json_schemas(directory: Path) -> list[Path]:
    """Write `<name>.schema.json` for each message into ``directory``; return the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, model in SCHEMAS.items():
        path = directory / f"{name}.schema.json"
        schema = model.model_json_schema(mode="serialization" if name != "post" else "validation")
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        if name != "post":
            schema["description"] = (
                f"{schema.get('description', '')} Schema version {VERSIONS.get(name, SCHEMA_VERSION)}. "
                "Forward-compatible: "
                "a later minor version may add properties, so accept properties you do not know."
            ).strip()
        path.write_text(json.dumps(schema, indent=2) + "\n", encoding="utf-8")
        written.append(path)
    return written
