"""`emotion-stream aggregate` against a real broker: exact counts per window, and restarts."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest

from emotion_stream.schemas.aggregates import EmotionAggregate
from emotion_stream.schemas.labels import LABELS
from tests.integration.helpers import collect, produce_sync, start_command, stop_command

pytestmark = pytest.mark.integration

# Post times a few minutes back, on a minute boundary: within the bounds the aggregator takes
# times in (EMOTION_AGGREGATE_MAX_AGE_S), so they count at their own times.
START = datetime.now(timezone.utc).replace(second=0, microsecond=0) - timedelta(minutes=5)
WINDOW_S = 10


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


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
            "posted_at": _iso(START + timedelta(seconds=(i % 30) + 0.5)),
            "processed_at": _iso(START + timedelta(minutes=1)),
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
    assert set(totals) == {_iso(START + timedelta(seconds=s)) for s in (0, 10, 20)}


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
        minute, next_minute = (_iso(START + timedelta(minutes=m))[:17].encode() for m in (0, 1))
        fourth = [
            (k, v.replace(b'"posted_at": "' + minute, b'"posted_at": "' + next_minute))
            for k, v in _results(120, 6)
        ]
        produce_sync(broker, topics.output, fourth)
        latest = _latest(broker, topic, _reached(_expected(fourth)))
    finally:
        output = _stop(aggregator)
    assert aggregator.returncode == 0, output[-3000:]
    before_crash = _posts_in({k: r for k, r in latest.items() if not k[0].startswith(next_minute.decode())})
    assert 120 <= before_crash <= 150, before_crash  # nothing lost; at most one interval counted twice


def test_posts_labelled_by_a_worker_give_exactly_their_known_counts(broker, topics, aggregate_env, tmp_path):
    """End to end: posts whose labels the keyword stand-in decides, through a worker and the
    aggregator, counted per window of their `created_at` and per source."""
    from emotion_stream.worker.cli.worker_process import WorkerProcess
    from emotion_stream.worker.model.keywords import DEFAULT_TABLE

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


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _metrics(port: int) -> dict[str, float]:
    status, text = _get(port, "/metrics")
    assert status == 200, text
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def _port(process: subprocess.Popen) -> int:
    found = re.search(r"web_port=(\d+)", "".join(process.output))  # type: ignore[attr-defined]
    assert found, "".join(process.output)[-2000:]  # type: ignore[attr-defined]
    return int(found[1])


def test_posts_from_the_year_2999_and_9999_neither_stop_nor_bend_the_aggregator(
    broker, topics, aggregate_env, tmp_path
):
    """Issue 24: one post with a far-future `created_at` used to crash-loop the aggregator
    (a window ending in the year 10000) or move its clock so that every later result was too
    late. Through a real worker, it now counts at its record's timestamp, the normal posts keep
    counting in the current window, and the aggregator stays up and answers its probes."""
    from emotion_stream.worker.cli.worker_process import WorkerProcess
    from emotion_stream.worker.model.keywords import DEFAULT_TABLE

    at = time.time() - 1  # the normal posts: all in the current window
    created = _iso(datetime.fromtimestamp(at, timezone.utc))
    window = _iso(datetime.fromtimestamp(at - at % WINDOW_S, timezone.utc))
    posts, known = [], Counter()
    for i, at in enumerate(["2999-01-01T00:00:00Z", "9999-12-31T23:59:30Z"] + [created] * 20):
        label = LABELS[i % len(LABELS)]
        text = f"so {DEFAULT_TABLE[label][0]} about post {i}"
        post = {"id": f"t-{i}", "text": text, "created_at": at, "source": "app"}
        posts.append((post["id"].encode(), json.dumps(post).encode()))
        if at == created:
            known[label] += 1
    env = {**aggregate_env, "EMOTION_MODEL": "keywords:", "EMOTION_AGGREGATE_PORT": "0"}
    worker = WorkerProcess({**os.environ, **env}, log_path=tmp_path / "worker.log").start()
    aggregator = None
    try:
        worker.wait_ready(timeout=90)
        aggregator = _start(env)
        port = _port(aggregator)
        produce_sync(broker, topics.input, posts)
        produce_sync(broker, topics.output, [(None, b"\xff not a result")])

        def counted(got) -> bool:
            totals = [r for (_, d), r in got.items() if d == "{}"]
            return sum(r["posts"] + r["dead_letters"] for r in totals) >= len(posts)

        latest = _latest(broker, env["EMOTION_AGGREGATES_TOPIC"], counted)
        assert counted(latest), latest
        deadline = time.monotonic() + 30  # the record after the posts may be read a little later
        while not (metrics := _metrics(port)).get(
            'emotion_aggregate_records_skipped_total{reason="not_utf8"}'
        ):
            assert time.monotonic() < deadline, metrics
            time.sleep(0.2)
        status, health = _get(port, "/health")
        assert status == 200, health
        assert aggregator.poll() is None, "".join(aggregator.output)[-3000:]

        # Counted where they belong: the normal posts in the current window, nothing beyond
        # the wall clock, nothing out of range (their records' timestamps are sane).
        starts = [datetime.fromisoformat(start.replace("Z", "+00:00")).timestamp() for start, _ in latest]
        assert max(starts) <= time.time(), sorted(latest)
        current = latest[(window, "{}")]
        assert all(current["counts"][label] >= n for label, n in known.items()), (current, known)
        assert metrics['emotion_aggregate_records_skipped_total{reason="not_utf8"}'] == 1
        assert metrics["emotion_aggregate_out_of_range_total"] == 0
        counted_in = sum(
            v for k, v in metrics.items() if k.startswith("emotion_aggregate_records_counted_total")
        )
        assert counted_in == len(posts) and metrics["emotion_aggregate_too_late_total"] == 0
        assert 0 < metrics["emotion_aggregate_clock_seconds"] <= time.time()
        assert _get(port, "/ready")[0] == 200

        # A restart reads those windows back and comes up again (it used to crash-loop).
        output = _stop(aggregator)
        assert aggregator.returncode == 0, output[-3000:]
        aggregator = _start(env)
        port = _port(aggregator)
        assert _get(port, "/health")[0] == 200
        restarted = _metrics(port)
        assert restarted['emotion_aggregate_recovered_total{outcome="restored"}'] >= 2
        assert 'emotion_aggregate_recovered_total{outcome="out_of_range"}' not in restarted
        # The clock picks up from the newest window read back, never from beyond the wall clock.
        clock = restarted["emotion_aggregate_clock_seconds"]
        assert metrics["emotion_aggregate_clock_seconds"] - WINDOW_S <= clock <= time.time()
    finally:
        if aggregator is not None and aggregator.poll() is None:
            output = _stop(aggregator)
            assert aggregator.returncode == 0, output[-3000:]
        worker.stop()
