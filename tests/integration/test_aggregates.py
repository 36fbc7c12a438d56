"""`emotion-stream aggregate` against a real broker: exact counts per window, and restarts."""

from __future__ import annotations

import json
import os
import subprocess
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest

from schemas.aggregates import EmotionAggregate
from schemas.labels import LABELS
from tests.integration.helpers import collect, produce_sync, start_command, stop_command

pytestmark = pytest.mark.integration

START = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
WINDOW_S = 10


def _results(first: int, n: int) -> list[tuple[bytes, bytes]]:
    """Results with known labels, sources and post times spread over three 10 s windows."""
    messages = []
    for i in range(first, first + n):
        label = LABELS[(i * 7) % len(LABELS)]
        scores = {name: (0.75 if name == label else 0.05) for name in LABELS}
        result = {
            "schema_version": "1.1",
            "id": f"r-{i}",
            "label": label,
            "score": 0.75,
            "scores": scores,
            "posted_at": (START + timedelta(seconds=(i % 30) + 0.5)).isoformat().replace("+00:00", "Z"),
            "processed_at": "2026-01-01T13:00:00Z",
            "dimensions": {"source": "app" if i % 3 else "web"},
        }
        messages.append((result["id"].encode(), json.dumps(result).encode()))
    return messages


def _dead_letters(n: int) -> list[tuple[bytes, bytes]]:
    at = (START + timedelta(seconds=3)).isoformat().replace("+00:00", "Z")
    return [(None, json.dumps({"error": {"kind": "not_json"}, "failed_at": at}).encode()) for _ in range(n)]


def _expected(results: list[tuple[bytes, bytes]]) -> dict[tuple[str, str], Counter]:
    """(window start, dimension as JSON) -> label counts, computed from the results themselves."""
    expected: dict[tuple[str, str], Counter] = {}
    for _, value in results:
        result = json.loads(value)
        at = datetime.fromisoformat(result["posted_at"].replace("Z", "+00:00"))
        start = at.replace(second=at.second - at.second % WINDOW_S, microsecond=0)
        key = start.isoformat().replace("+00:00", "Z")
        for dimension in ({}, result["dimensions"]):
            expected.setdefault((key, json.dumps(dimension, sort_keys=True)), Counter())[result["label"]] += 1
    return expected


def _latest(broker, topic: str, enough) -> dict[tuple[str, str], dict]:
    """The latest aggregate per key, read until ``enough(latest)`` or 60 s."""
    latest: dict[tuple[str, str], dict] = {}

    read = 0

    def done(seen) -> bool:
        nonlocal read
        for record in seen[topic][read:]:
            value = json.loads(record.value)
            EmotionAggregate.model_validate(value)
            latest[(value["window_start"], json.dumps(value["dimension"], sort_keys=True))] = value
            assert record.key.decode().startswith(value["window_start"] + "|")
        read = len(seen[topic])
        return enough(latest)

    collect(broker, [topic], done, timeout=60)
    return latest


def _start(env: dict) -> subprocess.Popen:
    return start_command("aggregate", env, "aggregator started")


def _stop(process: subprocess.Popen, kill: bool = False) -> str:
    return stop_command(process, kill)


def _reached(expected):
    """A condition: every window and breakdown of ``expected`` seen at its final count."""
    return lambda got: all(k in got and got[k]["posts"] == sum(c.values()) for k, c in expected.items())


def _posts_in(latest, dimension: str = "{}") -> int:
    return sum(r["posts"] for (_, d), r in latest.items() if d == dimension)


@pytest.fixture
def aggregate_env(broker, topics, tiny_model) -> dict:
    from tests.conftest import worker_settings

    return {
        **worker_settings(broker, tiny_model, topics),
        "EMOTION_AGGREGATES_TOPIC": f"aggregates-{topics.group}",
        "EMOTION_AGGREGATE_GROUP_ID": f"aggregate-{topics.group}",
        "EMOTION_AGGREGATE_WINDOW_S": str(WINDOW_S),
        "EMOTION_AGGREGATE_UPDATE_S": "0.5",
    }


def test_known_results_give_exactly_the_expected_counts_per_window_and_dimension(
    broker, topics, aggregate_env
):
    results = _results(0, 90)
    produce_sync(broker, topics.output, results)
    produce_sync(broker, topics.dlq, _dead_letters(4))
    expected = _expected(results)

    def complete(got) -> bool:
        return _reached(expected)(got) and sum(r["dead_letters"] for r in got.values()) >= 4

    aggregator = _start(aggregate_env)
    try:
        latest = _latest(broker, aggregate_env["EMOTION_AGGREGATES_TOPIC"], complete)
    finally:
        output = _stop(aggregator)
    assert aggregator.returncode == 0, output[-3000:]
    assert set(latest) == set(expected), output[-2000:]
    for key, counts in expected.items():
        record = latest[key]
        assert record["counts"] == {name: counts.get(name, 0) for name in LABELS}, key
        assert record["posts"] == sum(counts.values())
        for name in LABELS:  # each result gave its label 0.75 and every other label 0.05
            mean = (0.75 * counts.get(name, 0) + 0.05 * (record["posts"] - counts.get(name, 0))) / record[
                "posts"
            ]
            assert record["mean_scores"][name] == pytest.approx(mean, abs=1e-6)
    totals = {start: r for (start, d), r in latest.items() if d == "{}"}
    assert [totals[s]["dead_letters"] for s in sorted(totals)] == [4, 0, 0]
    assert set(totals) == {"2026-01-01T12:00:00Z", "2026-01-01T12:00:10Z", "2026-01-01T12:00:20Z"}


def test_a_restart_carries_on_from_the_published_state_and_a_crash_loses_nothing(
    broker, topics, aggregate_env
):
    topic = aggregate_env["EMOTION_AGGREGATES_TOPIC"]
    first, second, third = _results(0, 60), _results(60, 30), _results(90, 30)
    produce_sync(broker, topics.output, first)
    aggregator = _start(aggregate_env)
    try:
        _latest(broker, topic, _reached(_expected(first)))
    finally:
        _stop(aggregator)  # a clean stop publishes and commits first
    assert aggregator.returncode == 0

    produce_sync(broker, topics.output, second)
    aggregator = _start(aggregate_env)
    try:
        expected = _expected(first + second)
        latest = _latest(broker, topic, _reached(expected))
        assert {k: latest[k]["posts"] for k in expected} == {k: sum(c.values()) for k, c in expected.items()}
        assert {k: latest[k]["counts"] for k in expected} == {
            k: {name: c.get(name, 0) for name in LABELS} for k, c in expected.items()
        }
        produce_sync(broker, topics.output, third)
        _latest(broker, topic, lambda got: _posts_in(got) >= 120)
    finally:
        _stop(aggregator, kill=True)  # a crash: the last interval's offsets may be uncommitted

    aggregator = _start(aggregate_env)
    try:
        # Results behind whatever was uncommitted, in a window of their own: once it is
        # complete, the restarted aggregator has read everything before it.
        fourth = [
            (k, v.replace(b'"posted_at": "2026-01-01T12:00:', b'"posted_at": "2026-01-01T12:01:'))
            for k, v in _results(120, 6)
        ]
        produce_sync(broker, topics.output, fourth)
        latest = _latest(broker, topic, _reached(_expected(fourth)))
    finally:
        output = _stop(aggregator)
    assert aggregator.returncode == 0, output[-3000:]
    before_crash = _posts_in({k: r for k, r in latest.items() if not k[0].startswith("2026-01-01T12:01")})
    assert 120 <= before_crash <= 150, before_crash  # nothing lost; at most one interval counted twice


def test_posts_labelled_by_a_worker_give_exactly_their_known_counts(broker, topics, aggregate_env, tmp_path):
    """End to end: posts whose labels the keyword stand-in decides, through a worker and the
    aggregator, counted per window of their `created_at` and per source."""
    from worker.cli.worker_process import WorkerProcess
    from worker.model.keywords import DEFAULT_TABLE

    posts, known = [], []
    for i in range(60):
        label = LABELS[i % len(LABELS)]
        created = (START + timedelta(seconds=(i * 7) % 30)).isoformat().replace("+00:00", "Z")
        source = "app" if i % 4 else "web"
        text = f"so {DEFAULT_TABLE[label][0]} about post {i}"
        posts.append(
            (
                f"k-{i}".encode(),
                json.dumps({"id": f"k-{i}", "text": text, "created_at": created, "source": source}).encode(),
            )
        )
        known.append(
            (
                None,
                json.dumps({"label": label, "posted_at": created, "dimensions": {"source": source}}).encode(),
            )
        )
    expected = _expected(known)
    env = {**aggregate_env, "EMOTION_MODEL": "keywords:"}
    worker = WorkerProcess({**os.environ, **env}, log_path=tmp_path / "worker.log").start()
    aggregator = None
    try:
        worker.wait_ready(timeout=90)
        aggregator = _start(env)
        produce_sync(broker, topics.input, posts)
        latest = _latest(broker, env["EMOTION_AGGREGATES_TOPIC"], _reached(expected))
    finally:
        if aggregator is not None:
            _stop(aggregator)
        worker.stop()
    assert {k: latest[k]["counts"] for k in expected} == {
        k: {name: c.get(name, 0) for name in LABELS} for k, c in expected.items()
    }
