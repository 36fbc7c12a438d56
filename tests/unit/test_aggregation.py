"""Tumbling windows of emotion counts: what goes in which window, when it closes, how it resumes."""

import json
import time
from datetime import datetime, timezone

import pytest

from emotion_stream.schemas.aggregates import EmotionAggregate, aggregate_key
from emotion_stream.schemas.labels import LABELS
from emotion_stream.worker.aggregates.windows import Windows


def _result(label: str, at: str, score: float = 0.9, **dimensions) -> dict:
    rest = (1.0 - score) / (len(LABELS) - 1)
    scores = {name: (score if name == label else rest) for name in LABELS}
    return {"label": label, "scores": scores, "posted_at": at, "dimensions": dimensions}


WALL_CLOCK = datetime(2026, 11, 29, 22, 0, tzinfo=timezone.utc).timestamp()
"""The wall clock of the tests below: their times lie within the bounds around it."""


def _windows(**overrides) -> Windows:
    options = {
        "size_s": 60.0,
        "grace_s": 10.0,
        "retain_s": 3600.0,
        "dimensions": ("source", "lang"),
        "clock": lambda: WALL_CLOCK,
    }
    return Windows(**{**options, **overrides})


def test_results_count_in_the_window_of_their_post_time_for_the_totals_and_each_dimension():
    windows = _windows()
    windows.add_result(_result("joy", "2026-11-29T21:00:05Z", source="app", lang="en"))
    windows.add_result(_result("joy", "2026-11-29T21:00:59.9Z", source="web"))
    windows.add_result(_result("fear", "2026-11-29T21:01:00Z", 0.6, source="app"))
    windows.add_dead_letter({"failed_at": "2026-11-29T21:00:30Z"})
    records = dict(windows.due(now=0))
    first = records[aggregate_key("2026-11-29T21:00:00Z", {})]
    assert first["counts"] == {**dict.fromkeys(LABELS, 0), "joy": 2}
    assert first["posts"] == 2 and first["dead_letters"] == 1 and not first["closed"]
    assert first["window_end"] == "2026-11-29T21:01:00Z"
    assert first["mean_scores"]["joy"] == pytest.approx(0.9)
    assert sum(first["mean_scores"].values()) == pytest.approx(1.0)
    assert records[aggregate_key("2026-11-29T21:00:00Z", {"source": "app"})]["posts"] == 1
    assert records[aggregate_key("2026-11-29T21:00:00Z", {"source": "web"})]["counts"]["joy"] == 1
    assert records[aggregate_key("2026-11-29T21:00:00Z", {"lang": "en"})]["posts"] == 1
    second = records[aggregate_key("2026-11-29T21:01:00Z", {})]
    assert second["counts"]["fear"] == 1 and second["mean_scores"]["fear"] == pytest.approx(0.6)
    assert second["dead_letters"] == 0
    for record in records.values():
        EmotionAggregate.model_validate(record)  # every record matches the published schema


def test_a_window_is_published_only_when_it_changed_and_closes_after_the_grace_period():
    windows = _windows()
    windows.add_result(_result("joy", "2026-11-29T21:00:05Z"))
    assert len(windows.due(now=0)) == 1
    assert windows.due(now=0) == []  # nothing changed
    windows.add_result(_result("sadness", "2026-11-29T21:01:09Z"))  # within the grace period
    assert [r["closed"] for _, r in windows.due(now=0)] == [False]
    windows.add_result(_result("sadness", "2026-11-29T21:01:10Z"))  # the first window's grace is over
    closed = {r["window_start"]: r["closed"] for _, r in windows.due(now=0)}
    assert closed == {"2026-11-29T21:00:00Z": True, "2026-11-29T21:01:00Z": False}


def test_a_late_result_reopens_nothing_but_updates_its_retained_window():
    windows = _windows(retain_s=120.0)
    windows.add_result(_result("joy", "2026-11-29T21:00:05Z"))
    windows.add_result(_result("joy", "2026-11-29T21:02:30Z"))
    windows.due(now=0)
    assert windows.add_result(_result("anger", "2026-11-29T21:00:30Z"))  # late, still retained
    (late,) = [r for _, r in windows.due(now=0) if r["window_start"] == "2026-11-29T21:00:00Z"]
    assert late["closed"] and late["counts"]["anger"] == 1 and late["posts"] == 2
    windows.add_result(_result("joy", "2026-11-29T21:10:00Z"))
    windows.due(now=0)  # forgets windows older than the retention
    assert not windows.add_result(_result("love", "2026-11-29T21:00:40Z"))
    assert windows.too_late == 1


def test_restored_state_carries_on_where_the_published_records_left_off():
    before = _windows()
    for i in range(5):
        before.add_result(_result(LABELS[i % 3], f"2026-11-29T21:00:{10 + i}Z", 0.7, source="app"))
    published = [record for _, record in before.due(now=0)]
    after = _windows()
    for record in published:
        after.restore(record)
    after.add_result(_result("joy", "2026-11-29T21:00:40Z", 0.7, source="app"))
    before.add_result(_result("joy", "2026-11-29T21:00:40Z", 0.7, source="app"))
    expected = {k: r for k, r in before.due(now=0)}
    got = {k: r for k, r in after.due(now=0)}
    assert got.keys() == expected.keys()
    for key, record in got.items():
        assert record["counts"] == expected[key]["counts"] and record["posts"] == expected[key]["posts"]
        assert record["mean_scores"] == pytest.approx(expected[key]["mean_scores"])


def test_a_result_without_post_time_counts_at_its_processing_time_and_unknown_dimensions_are_ignored():
    windows = _windows(dimensions=("source",))
    result = _result("love", None, lang="fr")
    result["processed_at"] = "2026-11-29T21:03:04Z"
    windows.add_result(result)
    (key,) = dict(windows.due(now=0))
    assert key == aggregate_key("2026-11-29T21:03:00Z", {})


# Issue 24: one post's time must neither crash the aggregator nor bend its clock. These use
# the wall clock (the bounds are relative to it), with times taken from it, never slept on.


def _iso_at(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat().replace("+00:00", "Z")


def _window_start(seconds: float, size_s: float = 60.0) -> str:
    return _iso_at(seconds - seconds % size_s)


EXTREME_TIMES = (
    "9999-12-31T23:59:30Z",  # its window would end in the year 10000
    "9999-12-31T23:59:59.999999Z",  # rounds to the year 10000 as a float
    "9999-12-31T23:59:30-05:00",  # past the year 9999 once in UTC
    "0001-01-01T00:00:00Z",
    "0001-01-01T00:00:00+05:00",  # before the year 1 in UTC
    "2999-01-01T00:00:00Z",
)


def test_a_post_time_at_the_edge_of_the_calendar_is_counted_out_of_range_never_a_crash():
    windows = Windows(60.0, 10.0, 3600.0, ("source",))
    for at in EXTREME_TIMES:
        counted = windows.add_result(_result("joy", at, source="app"))
        windows.add_dead_letter({"failed_at": at})
        windows.due()  # what the aggregator does every interval: crashed on a year-10000 end
        assert not counted
    assert windows.out_of_range == 2 * len(EXTREME_TIMES) and len(windows) == 0
    assert windows.newest <= time.time()


def test_a_result_whose_own_time_is_out_of_range_counts_at_its_record_timestamp():
    windows = Windows(60.0, 10.0, 3600.0, ())
    now = time.time()
    assert windows.add_result(_result("joy", "9999-12-31T23:59:30Z"), record_time=now)
    assert not windows.add_result(_result("joy", "9999-12-31T23:59:30Z"), record_time=now + 10 * 86400)
    (record,) = [r for _, r in windows.due()]
    assert record["window_start"] == _window_start(now) and record["counts"]["joy"] == 1
    assert (windows.retimed, windows.out_of_range) == (1, 1)


def test_a_post_far_in_the_future_neither_moves_the_clock_nor_stops_the_counting():
    windows = Windows(60.0, 10.0, 3600.0, ("source",))
    now = time.time()
    windows.add_result(_result("joy", _iso_at(now), source="app"))
    windows.add_result(_result("fear", "2999-01-01T00:00:00Z", source="app"))
    assert windows.newest <= time.time()
    assert windows.add_result(_result("sadness", _iso_at(now), source="app"))  # not too late
    records = {r["window_start"]: r for _, r in windows.due() if r["dimension"] == {}}
    assert list(records) == [_window_start(now)]  # no year-2999 window
    current = records[_window_start(now)]
    assert current["counts"]["joy"] == 1 and current["counts"]["sadness"] == 1
    assert not current["closed"] and windows.too_late == 0 and windows.out_of_range == 1


def test_a_recovered_window_in_the_far_future_is_dropped_and_does_not_move_the_clock():
    windows = Windows(60.0, 10.0, 3600.0, ())
    now = time.time()
    future = {
        "window_start": "2999-01-01T00:00:00Z",
        "window_end": "2999-01-01T00:01:00Z",
        "dimension": {},
        "counts": {**dict.fromkeys(LABELS, 0), "joy": 1},
        "mean_scores": dict.fromkeys(LABELS, 0.1),
        "posts": 1,
        "dead_letters": 0,
        "closed": False,
    }
    assert windows.restore(future) == "out_of_range"
    last = {"window_start": "9999-12-31T23:59:00Z", "window_end": "9999-12-31T23:59:59.999999Z"}
    assert windows.restore({**future, **last}) == "out_of_range"
    assert len(windows) == 0 and windows.newest <= time.time()
    assert windows.add_result(_result("joy", _iso_at(now)))
    assert [r["window_start"] for _, r in windows.due()] == [_window_start(now)]


def test_the_aggregator_serves_health_ready_and_metrics_and_turns_unhealthy_without_progress():
    import asyncio

    from aiohttp.test_utils import TestClient, TestServer

    from emotion_stream.worker.aggregates.service import Aggregator
    from emotion_stream.worker.settings import AggregatorSettings

    now = [1000.0]
    aggregator = Aggregator(
        AggregatorSettings(output_topic="out", dlq_topic="dlq", _env_file=None), clock=lambda: now[0]
    )
    wall = time.time()
    aggregator.count("out", json.dumps(_result("joy", _iso_at(wall))).encode(), int(wall * 1000))
    aggregator.count("out", json.dumps(_result("joy", "2999-01-01T00:00:00Z")).encode(), -1)
    aggregator.count("out", b"not json", None)
    aggregator.count("dlq", json.dumps({"failed_at": "9999-12-31T23:59:30Z"}).encode(), int(wall * 1000))

    async def scenario() -> dict:
        seen = {}
        async with TestClient(TestServer(aggregator.web_app())) as client:
            for path in ("/health", "/ready", "/metrics"):
                response = await client.get(path)
                seen[path] = (response.status, await response.text())
            now[0] += 11  # the event loop has not beaten for 11 s
            response = await client.get("/health")
            seen["stalled"] = (response.status, await response.json())
            aggregator.watchdog.beat()
            aggregator.lag = 5
            now[0] += 61  # and the consumer received nothing for 61 s with records waiting
            aggregator.watchdog.beat()
            response = await client.get("/health")
            seen["consumer"] = (response.status, await response.json())
        return seen

    seen = asyncio.run(scenario())
    assert seen["/health"][0] == 200
    assert seen["/ready"][0] == 503  # not recovered, no partitions
    status, metrics = seen["/metrics"]
    assert status == 200
    for line in (
        'emotion_aggregate_records_read_total{topic="results"} 3.0',
        'emotion_aggregate_records_counted_total{topic="results"} 1.0',
        'emotion_aggregate_records_counted_total{topic="dead_letters"} 1.0',  # at its record's time
        'emotion_aggregate_records_skipped_total{reason="not_json"} 1.0',
        "emotion_aggregate_out_of_range_total 1.0",
        "emotion_aggregate_retimed_total 1.0",
        "emotion_aggregate_too_late_total 0.0",
    ):
        assert line in metrics.splitlines(), line
    clock = next(v for v in metrics.splitlines() if v.startswith("emotion_aggregate_clock_seconds "))
    assert wall - 1 <= float(clock.split()[1]) <= time.time()
    assert seen["stalled"][0] == 503 and "event loop" in seen["stalled"][1]["problems"][0]
    assert seen["consumer"][0] == 503 and "5 messages waiting" in seen["consumer"][1]["problems"][0]


def test_the_aggregator_counts_a_record_standing_for_an_undecodable_batch_as_such():
    from emotion_stream.worker.aggregates.service import Aggregator
    from emotion_stream.worker.codec import UNDECODABLE_HEADER
    from emotion_stream.worker.settings import AggregatorSettings

    aggregator = Aggregator(AggregatorSettings())
    assert not aggregator.count("post-emotions", None, None, [(UNDECODABLE_HEADER, b"offsets 1..2")])
    assert aggregator.skipped["undecodable"] == 1
    assert not aggregator.count("post-emotions", None, None, [("other", b"x")])
    assert aggregator.skipped["invalid_post"] == 1  # a plain tombstone


def test_unsure_other_language_and_no_text_count_apart_from_the_six_emotions():
    windows = _windows()
    at = "2026-11-29T21:00:05Z"
    windows.add_result(_result("joy", at, lang="en"))
    windows.add_result({**_result("joy", at, lang="es"), "unreadable": "other_language", "language": "es"})
    windows.add_result({**_result("anger", at), "unreadable": "no_text"})
    windows.add_result({**_result("fear", at, 0.3, lang="en"), "confident": False, "unreadable": None})
    windows.add_result({**_result("fear", at, lang="en"), "confident": True, "unreadable": None})
    windows.add_dead_letter(
        {
            "failed_at": at,
            "error": {"kind": "unreadable", "message": "other_language: the text reads as 'fr'"},
        }
    )
    windows.add_dead_letter({"failed_at": at, "error": {"kind": "not_json", "message": "other_language: x"}})
    totals = EmotionAggregate.model_validate(windows.snapshot({})[0])
    assert totals.counts["joy"] == 1 and totals.counts["fear"] == 1 and totals.counts["anger"] == 0
    assert totals.posts == 2 and totals.dead_letters == 2
    assert (totals.unsure, totals.other_language, totals.no_text) == (1, 2, 1)
    assert totals.mean_scores["joy"] == pytest.approx((0.9 + 0.02) / 2)  # the two counted posts only
    english = EmotionAggregate.model_validate(windows.snapshot({"lang": "en"})[0])
    assert (english.posts, english.unsure) == (2, 1)
    # A restarted aggregator picks the counts up from the published record.
    restored = _windows()
    restored.restore(json.loads(json.dumps(windows.snapshot({})[0])))
    again = EmotionAggregate.model_validate(restored.snapshot({})[0])
    assert (again.unsure, again.other_language, again.no_text, again.posts) == (1, 2, 1, 2)
