"""The keyword stand-in for other teams' tests: deterministic, table-driven, clear about bad tables."""

import json

import pytest

from emotion_stream.schemas import LABELS
from emotion_stream.worker.model.api import ModelLoadError
from emotion_stream.worker.model.keywords import KeywordModel


def test_the_builtin_table_labels_by_the_first_keyword_and_defaults_to_joy():
    model = KeywordModel("keywords:")
    texts = ["I am SO happy", "furious, then scared", "scared, then furious", "nothing here", "I love it"]
    predictions = model.predict_prepared(model.prepare(texts))
    assert [p.label for p in predictions] == ["joy", "anger", "fear", "joy", "love"]
    for p in predictions:
        assert (
            p.score == 0.9 and set(p.scores) == set(LABELS) and sum(p.scores.values()) == pytest.approx(1.0)
        )
    assert model.predict(texts) == predictions  # the same text, the same answer
    assert model.info.name == "keywords" and model.columns == list(LABELS)


def test_a_custom_table_and_a_bad_one(tmp_path):
    table = tmp_path / "table.json"
    table.write_text(json.dumps({"surprise": ["twist"], "sadness": ["rain"], "default": "fear"}))
    model = KeywordModel(f"keywords:{table}")
    assert [p.label for p in model.predict(["rain again", "hmm"])] == ["sadness", "fear"]
    table.write_text(json.dumps({"happiness": ["yay"]}))
    with pytest.raises(ModelLoadError, match="happiness"):
        KeywordModel(f"keywords:{table}")
    with pytest.raises(ModelLoadError, match="cannot read the keyword table"):
        KeywordModel(f"keywords:{tmp_path / 'absent.json'}")
