"""What the model can read: the no-text rule, the language check, and what the worker does with
a post it cannot read (mark, route, dead-letter), plus the confidence flag."""

import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from emotion_stream.schemas import LABELS, EmotionResult, ModelInfo
from emotion_stream.worker.codec import InboundRecord
from emotion_stream.worker.model.api import Prediction
from emotion_stream.worker.processing import BatchProcessor
from emotion_stream.worker.reading import Reader, ReadingPolicy, for_detection, has_words, words_left

MODEL = ModelInfo(name="m", version="1")


@pytest.mark.parametrize(
    "text",
    [
        "🔥🔥🔥",
        "@bob @alice",
        "#tbt #mood",
        "https://example.com/a?b=c www.example.org",
        "2024 10:45 +1 555-0100",
        "🔥 @bob #tbt 2024 :D !!!",
        "... ?! ¿¡ — ★ ♥",
        "x",
    ],
)
def test_posts_with_no_words_have_no_text(text):
    assert not has_words(words_left(text))
    assert Reader(None).read(text).unreadable == "no_text"


@pytest.mark.parametrize(
    "text", ["lol", "i feel so alone tonight", "@bob ok then", "#sad but fine", "très bien", "好好", "ok 🔥"]
)
def test_posts_with_a_word_of_two_letters_have_text(text):
    assert has_words(words_left(text))
    assert Reader(None).read(text).unreadable is None


@given(st.text(alphabet=st.characters(categories=["Nd", "P", "S", "Z"]), max_size=50))
def test_digits_punctuation_symbols_and_spaces_alone_are_never_text(text):
    assert not has_words(words_left(text))


def _detector(table):
    def detect(text):
        return table.get(text, [("en", 0.99)])

    return detect


def test_another_language_counts_only_when_the_detector_is_sure_enough():
    detect = _detector(
        {"hola amigos": [("es", 0.97), ("pt", 0.02)], "ciao bella": [("it", 0.41), ("en", 0.55)]}
    )
    reader = Reader(["en"], detect, min_score=0.5)
    spanish = reader.read("hola amigos")
    assert (spanish.language, spanish.language_score, spanish.unreadable) == ("es", 0.97, "other_language")
    assert reader.read("ciao bella").unreadable is None  # 0.45 sure it is not English: read as such
    english = reader.read("i am so happy")
    assert english.language == "en" and english.unreadable is None
    assert Reader(["en", "es"], detect).read("hola amigos").unreadable is None


def test_the_detector_sees_the_text_without_links_and_mentions_and_the_hashtags_words():
    seen = []
    Reader(["en"], lambda text: seen.append(text) or [("en", 1.0)]).read(
        "@bob   hello #there http://x.y/z friend"
    )
    assert seen == ["hello there friend"]


def test_a_language_check_needs_a_detector():
    with pytest.raises(ValueError, match="detector"):
        Reader(["en"])


def _predict(texts):
    out = []
    for text in texts:
        score = 0.3 if "meh" in text else 0.9
        rest = (1 - score) / (len(LABELS) - 1)
        out.append(Prediction("joy", score, {n: (score if n == "joy" else rest) for n in LABELS}))
    return out


POSTS = [
    b'{"id": "en", "text": "what a lovely day"}',
    b'{"id": "es", "text": "hola amigos que tal"}',
    b'{"id": "none", "text": "\\ud83d\\udd25 @bob #tbt"}',
    b'{"id": "meh", "text": "meh whatever"}',
]


def _process(policy):
    processor = BatchProcessor(_predict, MODEL, reading=policy)
    return processor.process([InboundRecord("posts", 0, i, None, v) for i, v in enumerate(POSTS)])


READER = Reader(["en"], _detector({"hola amigos que tal": [("es", 0.95)]}))


def test_mark_labels_every_post_and_says_which_the_model_could_not_read_or_was_unsure_of():
    outcome = _process(ReadingPolicy(READER, "mark", min_confidence=0.5))
    results = {json.loads(m.value)["id"]: json.loads(m.value) for m in outcome.results}
    assert set(results) == {"en", "es", "none", "meh"} and not outcome.dead_letters
    assert all(m.topic is None for m in outcome.results)
    for result in results.values():
        assert set(result) == set(EmotionResult.model_fields)
    assert results["en"]["unreadable"] is None and results["en"]["confident"] is True
    assert results["en"]["language"] == "en"
    assert results["es"]["unreadable"] == "other_language" and results["es"]["language"] == "es"
    assert results["none"]["unreadable"] == "no_text" and results["none"]["language"] is None
    assert results["meh"]["unreadable"] is None and results["meh"]["confident"] is False
    assert sorted(outcome.set_apart) == ["no_text", "other_language", "unsure"]


def test_route_sends_the_unreadable_posts_results_to_their_own_topic():
    outcome = _process(ReadingPolicy(READER, "route", topic="posts-unreadable"))
    topics = {json.loads(m.value)["id"]: m.topic for m in outcome.results}
    assert topics == {"en": None, "es": "posts-unreadable", "none": "posts-unreadable", "meh": None}


def test_dead_letter_skips_the_model_for_unreadable_posts_and_says_why():
    seen = []
    processor = BatchProcessor(
        lambda texts: seen.extend(texts) or _predict(texts),
        MODEL,
        reading=ReadingPolicy(READER, "dead_letter"),
    )
    outcome = processor.process([InboundRecord("posts", 0, i, None, v) for i, v in enumerate(POSTS)])
    assert [json.loads(m.value)["id"] for m in outcome.results] == ["en", "meh"]
    assert seen == ["what a lovely day", "meh whatever"]
    letters = [json.loads(m.value)["error"] for m in outcome.dead_letters]
    assert [e["kind"] for e in letters] == ["unreadable", "unreadable"]
    assert letters[0]["message"].startswith("other_language: ") and "'es'" in letters[0]["message"]
    assert letters[1]["message"].startswith("no_text: ")


_LINK_PATTERN = re.compile(r"(?:https?://|www\.)\S*", re.IGNORECASE)


_PIECES = ["www.", "WwW.", "http://", "HTTPS://", "https:/", "www", "://", "@", "#", "_", ".", ":", "-"]
_PIECES += ["a", "b", "é", "1", " ", "\n", "\u212a", "\u017f", "\u0130", "x.y", "@me", "#tag_word"]


@given(st.lists(st.sampled_from(_PIECES), max_size=20).map("".join))
def test_posts_without_the_marks_of_a_link_or_mention_skip_the_search_and_lose_nothing(text):
    """The reader searches for links only where a colon or a dot is, and for mentions and
    hashtags only where an at sign or a hash is; the answers are those of the plain searches."""
    linkless = _LINK_PATTERN.sub(" ", text)
    assert words_left(text) == re.sub(r"[@#][\w.-]*\w", " ", linkless)
    kept = re.sub(r"@[\w.-]*\w", " ", linkless).replace("#", " ").replace("_", " ")
    assert for_detection(text) == " ".join(kept.split())
