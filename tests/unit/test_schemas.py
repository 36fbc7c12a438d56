import json

import pytest
from pydantic import ValidationError

from emotion_stream.schemas import LABELS, DeadLetter, EmotionResult, Payload, Post, parse_label
from emotion_stream.schemas.export import export_json_schemas


def test_labels_are_in_dair_ai_order():
    assert LABELS == ("sadness", "joy", "love", "anger", "fear", "surprise")


@pytest.mark.parametrize("raw,expected", [("joy", 1), ("SURPRISE", 5), (3, 3), ("4", 4), (" love ", 2)])
def test_parse_label_accepts_names_and_ids(raw, expected):
    assert parse_label(raw) == expected


@pytest.mark.parametrize("raw", ["happy", 6, -1, "", True])
def test_parse_label_rejects_unknown_labels(raw):
    with pytest.raises(ValueError, match="expected one of sadness"):
        parse_label(raw)


def test_post_keeps_known_fields_and_ignores_unknown_ones():
    post = Post.model_validate(
        {
            "id": "a1",
            "text": "i feel fine",
            "author": "@x",
            "created_at": "2026-01-02T03:04:05Z",
            "lang": "en",
            "metadata": {"k": 1},
            "brand_new_field": [1, 2],
        }
    )
    assert post.id == "a1" and post.author == "@x" and post.metadata == {"k": 1}
    assert post.created_at.year == 2026
    assert not hasattr(post, "brand_new_field")


def test_post_accepts_integer_ids_as_strings():
    assert Post.model_validate({"id": 42, "text": "x"}).id == "42"


@pytest.mark.parametrize(
    "obj,field",
    [
        ({"text": "no id"}, "id"),
        ({"id": "a"}, "text"),
        ({"id": "a", "text": "   "}, "text"),
        ({"id": " ", "text": "x"}, "id"),
        ({"id": "a", "text": "x" * 5001}, "text"),
        ({"id": "a", "text": 7}, "text"),
        ({"id": 1.5, "text": "x"}, "id"),
        ({"id": True, "text": "x"}, "id"),
        ({"id": "a", "text": "x", "created_at": "yesterday"}, "created_at"),
    ],
)
def test_post_rejects_invalid_input(obj, field):
    with pytest.raises(ValidationError) as info:
        Post.model_validate(obj)
    assert field in {str(e["loc"][0]) for e in info.value.errors()}


def _result(**overrides):
    base = dict(
        id="a",
        label="joy",
        score=0.9,
        scores={name: (0.9 if name == "joy" else 0.02) for name in LABELS},
        model={"name": "m", "version": "1"},
        source={"topic": "posts", "partition": 0, "offset": 3},
    )
    return EmotionResult.model_validate({**base, **overrides})


def test_result_serialises_with_utc_timestamp():
    data = json.loads(_result().model_dump_json())
    assert data["label"] == "joy"
    assert data["processed_at"].endswith("Z") or data["processed_at"].endswith("+00:00")
    assert set(data) == {
        "schema_version",
        "id",
        "label",
        "score",
        "scores",
        "model",
        "source",
        "processed_at",
        "posted_at",
        "dimensions",
        "language",
        "language_score",
        "unreadable",
        "confident",
    }


def test_result_requires_every_label_in_scores():
    with pytest.raises(ValidationError, match="exactly the labels"):
        _result(scores={"joy": 1.0})
    with pytest.raises(ValidationError):
        _result(label="happy")


def test_payload_keeps_utf8_as_text_and_binary_as_base64():
    assert Payload.from_bytes("héllo".encode()).model_dump() == {
        "encoding": "utf-8",
        "data": "héllo",
        "truncated": False,
        "size": None,
        "sha256": None,
    }
    binary = Payload.from_bytes(b"\xff\x00\x01")
    assert binary.encoding == "base64" and binary.to_bytes() == b"\xff\x00\x01"


def test_dead_letter_round_trips():
    letter = DeadLetter.model_validate(
        {
            "error": {"kind": "not_json", "message": "m"},
            "payload": Payload.from_bytes(b"x").model_dump(),
            "source": {"topic": "t", "partition": 1, "offset": 2, "key": None},
        }
    )
    again = DeadLetter.model_validate_json(letter.model_dump_json())
    assert again == letter


def test_export_writes_a_json_schema_per_message(tmp_path):
    paths = export_json_schemas(tmp_path)
    names = sorted(p.name for p in paths)
    assert names == [
        "dead-letter.schema.json",
        "emotion-aggregate.schema.json",
        "emotion-result.schema.json",
        "post.schema.json",
    ]
    post_schema = json.loads((tmp_path / "post.schema.json").read_text())
    assert set(post_schema["required"]) == {"id", "text"}
    result_schema = json.loads((tmp_path / "emotion-result.schema.json").read_text())
    assert {"processed_at", "posted_at", "dimensions"} <= set(result_schema["properties"])
    aggregate_schema = json.loads((tmp_path / "emotion-aggregate.schema.json").read_text())
    required = {"window_start", "window_end", "dimension", "counts", "mean_scores", "posts", "dead_letters"}
    assert required <= set(aggregate_schema["required"])
    assert "Forward-compatible" in aggregate_schema["description"]
