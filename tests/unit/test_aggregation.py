"""Tumbling windows of emotion counts: what goes in which window, when it closes, how it resumes."""

import pytest

from schemas.aggregates import EmotionAggregate, aggregate_key
from schemas.labels import LABELS
from worker.aggregation import Windows


def _result(label: str, at: str, score: float = 0.9, **dimensions) -> dict:
    rest = (1.0 - score) / (len(LABELS) - 1)
    scores = {name: (score if name == label else rest) for name in LABELS}
    return {"label": label, "scores": scores, "posted_at": at, "dimensions": dimensions}


def _windows(**overrides) -> Windows:
    options = {"size_s": 60.0, "grace_s": 10.0, "retain_s": 3600.0, "dimensions": ("source", "lang")}
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
