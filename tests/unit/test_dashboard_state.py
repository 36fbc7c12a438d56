"""What the live page is fed: the totals per window over the last hour, recent results, rates."""

import asyncio
import json
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from emotion_stream.schemas.labels import LABELS
from emotion_stream.schemas.messages import EmotionResult, ModelInfo, ResultSource
from emotion_stream.worker.aggregates.windows import Windows
from emotion_stream.worker.dashboard.server import DashboardState
from emotion_stream.worker.settings import DashboardSettings


def _aggregate(start: str, posts: int, dimension=None) -> dict:
    return {"window_start": start, "window_end": start, "dimension": dimension or {}, "posts": posts}


def test_the_state_keeps_the_totals_of_the_last_hour_and_pushes_each_change():
    state = DashboardState(DashboardSettings())
    queue: asyncio.Queue = asyncio.Queue()
    state.subscribers.add(queue)
    state.on_aggregate(_aggregate("2026-11-29T20:00:00Z", 5))
    state.on_aggregate(_aggregate("2026-11-29T20:00:00Z", 7))  # the latest record of a window wins
    state.on_aggregate(_aggregate("2026-11-29T20:30:00Z", 3, {"source": "app"}))  # a breakdown: not charted
    state.on_aggregate(_aggregate("2026-11-29T21:00:00Z", 4))  # an hour after the first: it drops out
    snapshot = state.snapshot()
    assert [w["window_start"] for w in snapshot["windows"]] == ["2026-11-29T21:00:00Z"]
    assert queue.qsize() == 3
    event = queue.get_nowait().decode()
    assert (
        event.startswith("event: aggregate\ndata: ") and json.loads(event.split("data: ", 1)[1])["posts"] == 5
    )


def test_rates_count_records_stamped_in_the_last_ten_seconds_and_text_only_when_allowed():
    now = time.time()
    hidden = DashboardState(DashboardSettings())
    hidden.on_post({"id": "p1", "text": "secret words"})
    hidden.on_result({"id": "p1", "label": "joy", "score": 0.9, "processed_at": "x"}, int((now - 5) * 1000))
    hidden.on_result({"id": "p2", "label": "fear", "score": 0.8, "processed_at": "x"}, int(now * 1000))
    hidden.on_result(
        {"id": "p0", "label": "fear", "score": 0.8, "processed_at": "x"}, int((now - 600) * 1000)
    )
    hidden.on_dead_letter(timestamp_ms=int((now - 1) * 1000))
    assert hidden.rates(now=now + 0.1) == {"posts_per_s": 0.2, "dead_letters_per_s": 0.1}
    assert hidden.rates(now=now + 30) == {"posts_per_s": 0.0, "dead_letters_per_s": 0.0}
    assert "text" not in hidden.recent[0] and [r["id"] for r in hidden.recent] == ["p0", "p2", "p1"]

    shown = DashboardState(DashboardSettings(dashboard_show_text=True))
    shown.on_post({"id": "p1", "text": "words allowed"})
    shown.on_result({"id": "p1", "label": "joy", "score": 0.9, "processed_at": "x"}, timestamp_ms=1)
    assert shown.recent[0]["text"] == "words allowed" and shown.snapshot()["show_text"] is True


# -- posts the model could not read, or was unsure of: counted apart from the six emotions -----


def _result(ident: str, label: str, score: float = 0.9, **reading) -> dict:
    """A result as the worker writes it (schema 1.3); ``reading``: its language fields."""
    rest = (1.0 - score) / (len(LABELS) - 1)
    return EmotionResult(
        id=ident,
        label=label,
        score=score,
        scores={name: score if name == label else rest for name in LABELS},
        model=ModelInfo(name="m", version="1"),
        source=ResultSource(topic="t", partition=0, offset=0),
        **reading,
    ).model_dump(mode="json")


SET_APART_RESULTS = [
    (_result("read", "joy", language="en", language_score=0.99), None),
    (_result("es", "joy", language="es", language_score=0.97, unreadable="other_language"), "other_language"),
    (_result("emoji", "anger", unreadable="no_text"), "no_text"),
    (_result("unsure", "fear", 0.31, language="en", confident=False), "unsure"),
    ({**_result("old", "sadness"), "schema_version": "1.2", "confident": None, "unreadable": None}, None),
]


def test_a_readable_confident_result_counts_toward_its_label_and_the_others_count_apart():
    now = time.time()
    state = DashboardState(DashboardSettings())
    queue: asyncio.Queue = asyncio.Queue()
    state.subscribers.add(queue)
    windows = Windows(size_s=60, grace_s=10, retain_s=3600, dimensions=("lang",), clock=lambda: now)
    for result, _ in SET_APART_RESULTS:
        state.on_record(state.settings.output_topic, json.dumps(result).encode(), int(now * 1000))
        assert windows.add_result(result)
    (totals,) = windows.snapshot({})
    state.on_record(state.settings.aggregates_topic, json.dumps(totals).encode(), int(now * 1000))
    assert not state.skipped

    snapshot = state.snapshot()
    shown = [(r["id"], r["label"], r["set_apart"], r["language"]) for r in reversed(snapshot["recent"])]
    assert shown == [
        ("read", "joy", None, "en"),
        ("es", "joy", "other_language", "es"),
        ("emoji", "anger", "no_text", None),
        ("unsure", "fear", "unsure", "en"),
        ("old", "sadness", None, None),
    ]
    events = [queue.get_nowait().decode().split("data: ", 1)[1] for _ in range(queue.qsize())]
    assert [json.loads(e).get("set_apart") for e in events[:-1]] == [k for _, k in SET_APART_RESULTS]
    # The mix (the window's counts) is the readable, confident posts; the others are counted apart.
    (window,) = snapshot["windows"]
    assert window["counts"] == {**dict.fromkeys(LABELS, 0), "joy": 1, "sadness": 1} and window["posts"] == 2
    assert (window["unsure"], window["other_language"], window["no_text"]) == (1, 1, 1)
    assert json.loads(events[-1]) == window


@pytest.mark.parametrize(
    ("fields", "set_apart", "language"),
    [
        (
            {"unreadable": "other_language", "confident": False, "language": "zh-cn"},
            "other_language",
            "zh-cn",
        ),
        ({"unreadable": "no_text", "confident": False}, "no_text", None),
        ({"unreadable": "klingon", "language": "x" * 100}, None, None),
        ({"unreadable": ["no_text"], "confident": "false", "language": "<b>es</b>"}, None, None),
        ({"unreadable": None, "confident": 0, "language": 12}, None, None),
        ({"unreadable": {"a": 1}, "confident": False, "language": "es\n"}, "unsure", None),
    ],
)
def test_what_a_result_counts_as_is_read_defensively(fields, set_apart, language):
    state = _shown_state()
    value = json.dumps({"id": "p", "label": "joy", "score": 0.5, **fields}).encode()
    state.on_record(TOPICS.output_topic, value, 1)
    assert (state.recent[0]["set_apart"], state.recent[0]["language"]) == (set_apart, language)


# -- garbage on the topics: skipped and counted, never a crash ---------------------------------

TOPICS = DashboardSettings(dashboard_show_text=True)
NESTED = b"[" * 5000 + b"]" * 5000
GARBAGE = {
    "nested": (NESTED, "not_json"),
    "nested object": (b'{"a":' * 5000 + b"1" + b"}" * 5000, "not_json"),
    "not JSON": (b"this is not json", "not_json"),
    "huge integer": (b'{"id": "p", "text": "t", "n": ' + b"9" * 100_000 + b"}", "invalid_post"),
    "not UTF-8": (b'{"id": "\xff\xfe"}', "not_utf8"),
    "lone surrogate": (b'{"id": "p", "text": "\\ud800"}', "not_utf8"),
    "tombstone": (None, "invalid_post"),
    "too large": (b'"' + b"x" * (2 << 20) + b'"', "too_large"),
}


def _shown_state() -> DashboardState:
    return DashboardState(TOPICS)


@pytest.mark.parametrize("name", sorted(GARBAGE))
@pytest.mark.parametrize(
    "topic", [TOPICS.aggregates_topic, TOPICS.output_topic, TOPICS.dlq_topic, TOPICS.input_topic]
)
def test_a_garbage_record_on_any_topic_is_skipped_and_counted_by_reason(topic, name):
    value, reason = GARBAGE[name]
    state = _shown_state()
    queue: asyncio.Queue = asyncio.Queue()
    state.subscribers.add(queue)
    state.on_record(topic, value, int(time.time() * 1000))
    assert state.skipped == {(topic, reason): 1}
    assert state.read == {topic: 1}
    assert queue.empty() and not state.recent and not state.windows and not state.texts
    assert state.rates() == {"posts_per_s": 0.0, "dead_letters_per_s": 0.0}
    metrics = state.metrics_text()
    assert f'emotion_dashboard_records_skipped_total{{reason="{reason}",topic="{topic}"}} 1.0' in metrics
    assert f'emotion_dashboard_records_total{{topic="{topic}"}} 1.0' in metrics


@pytest.mark.parametrize(
    "record",
    [
        {"window_start": "not a time", "dimension": {}, "posts": 1},
        {"window_start": "2026-11-29T20:00:00Z", "dimension": {}, "posts": 1e400},
        ["a", "list"],
    ],
)
def test_an_aggregate_the_page_cannot_chart_is_skipped(record):
    state = _shown_state()
    raw = json.dumps(record).encode()
    state.on_record(TOPICS.aggregates_topic, raw, 1)
    assert not state.windows and sum(state.skipped.values()) == 1
    json.loads(json.dumps(state.snapshot(), allow_nan=False))  # what the page is sent stays JSON


def test_a_result_with_a_score_that_is_not_a_finite_number_is_skipped():
    state = _shown_state()
    state.on_record(TOPICS.output_topic, b'{"id": "p", "label": "joy", "score": 1e999}', 1)
    state.on_record(TOPICS.output_topic, b'{"id": "p", "label": {"a": 1}, "score": 0.5}', 1)
    assert not state.recent and state.skipped == {(TOPICS.output_topic, "invalid_record"): 2}


def test_good_records_pass_through_the_reader():
    now_ms = int(time.time() * 1000)
    state = _shown_state()
    state.on_record(TOPICS.input_topic, b'{"id": "p1", "text": "words allowed"}', now_ms)
    state.on_record(TOPICS.output_topic, b'{"id": "p1", "label": "joy", "score": 0.9}', now_ms)
    state.on_record(TOPICS.dlq_topic, b'{"error": {"kind": "not_json", "message": "x"}}', now_ms)
    state.on_record(TOPICS.aggregates_topic, json.dumps(_aggregate("2026-11-29T20:00:00Z", 5)).encode(), 1)
    assert state.recent[0]["text"] == "words allowed" and state.windows and not state.skipped
    assert state.rates()["dead_letters_per_s"] == 0.1


@given(topic=st.sampled_from(["aggregates", "output", "dlq", "input"]), value=st.none() | st.binary())
def test_arbitrary_bytes_on_any_topic_never_raise(topic, value):
    state = _shown_state()
    name = getattr(TOPICS, f"{topic}_topic")
    state.on_record(name, value, int(time.time() * 1000))
    state.on_record(name, value, -1)  # a record without a timestamp
    assert state.read == {name: 2}
    json.dumps(state.snapshot(), allow_nan=False)


@given(
    topic=st.sampled_from(["aggregates", "output", "dlq", "input"]),
    value=st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
        max_leaves=20,
    ),
    fields=st.fixed_dictionaries(
        {},
        optional={
            "id": st.text(max_size=8) | st.integers(),
            "text": st.text(max_size=8),
            "label": st.text(max_size=8) | st.integers(),
            "score": st.floats() | st.text(max_size=3),
            "window_start": st.text(max_size=30) | st.just("2026-11-29T20:00:00Z"),
            "dimension": st.just({}) | st.dictionaries(st.text(max_size=3), st.text(max_size=3)),
        },
    ),
)
def test_arbitrary_json_on_any_topic_never_raises_and_the_page_stays_json(topic, value, fields):
    state = _shown_state()
    name = getattr(TOPICS, f"{topic}_topic")
    for record in (value, {**fields, "extra": value}):
        state.on_record(name, json.dumps(record).encode(), int(time.time() * 1000))
    json.loads(json.dumps(state.snapshot(), allow_nan=False))


@pytest.mark.parametrize(
    "topic", [TOPICS.aggregates_topic, TOPICS.output_topic, TOPICS.dlq_topic, TOPICS.input_topic]
)
def test_a_record_standing_for_an_undecodable_batch_is_counted_as_such_not_as_a_tombstone(topic):
    from emotion_stream.worker.codec import UNDECODABLE_HEADER

    state = _shown_state()
    state.on_record(
        topic, None, int(time.time() * 1000), [(UNDECODABLE_HEADER, b"record batch at offsets 4..9")]
    )
    assert state.skipped == {(topic, "undecodable"): 1}
