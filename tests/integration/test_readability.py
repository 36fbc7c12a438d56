"""A stream that mixes English, other languages and posts with no words, through a real worker
and aggregator: only the readable English posts count toward the six emotions; the others are
counted apart, whether marked in the output topic or routed to a topic of their own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from emotion_stream.worker.cli.worker_process import WorkerProcess
from tests.integration.helpers import collect, produce_sync, start_command, stop_command

pytestmark = pytest.mark.integration

LABELLED = [
    json.loads(line)
    for line in (Path(__file__).parents[1] / "data/languages.jsonl").read_text(encoding="utf-8").splitlines()
    if line.strip()
]
ENGLISH = [p["text"] for p in LABELLED if p["lang"] == "en"][:12]
NO_TEXT = [p["text"] for p in LABELLED if p["lang"] == "none"][:8]
# Posts of several words in other languages: the ones the detector is surest of.
OTHER = [p["text"] for p in LABELLED if p["lang"] not in ("en", "none") and len(p["text"].split()) >= 6][:10]


def _posts() -> list[tuple[bytes, bytes]]:
    kinds = [("en", ENGLISH), ("other", OTHER), ("none", NO_TEXT)]
    posts = []
    for kind, texts in kinds:
        for i, text in enumerate(texts):
            post_id = f"{kind}-{i}"
            posts.append((post_id.encode(), json.dumps({"id": post_id, "text": text}).encode()))
    return posts


def _run(broker, topics, env: dict, tmp_path, result_topics: list[str]) -> tuple[dict, dict]:
    """Send the mixed posts; return every result by id and the aggregates' totals summed."""
    aggregates = f"aggregates-{topics.group}"
    env = {
        **env,
        "EMOTION_MODEL": "keywords:",
        "EMOTION_AGGREGATES_TOPIC": aggregates,
        "EMOTION_AGGREGATE_GROUP_ID": f"aggregate-{topics.group}",
        "EMOTION_AGGREGATE_UPDATE_S": "0.5",
    }
    worker = WorkerProcess(env, log_path=tmp_path / "worker.log").start()
    aggregator = None
    try:
        worker.wait_ready(timeout=90)
        aggregator = start_command("aggregate", env, "aggregator started")
        posts = _posts()
        produce_sync(broker, topics.input, posts)
        seen = collect(
            broker, result_topics, lambda s: sum(len(s[t]) for t in result_topics) >= len(posts), 90
        )
        results = {
            json.loads(r.value)["id"]: (t, json.loads(r.value)) for t in result_topics for r in seen[t]
        }
        totals: dict[str, dict] = {}

        def balanced(got) -> bool:
            for record in got[aggregates]:
                value = json.loads(record.value)
                if value["dimension"] == {}:
                    totals[value["window_start"]] = value
            counted = sum(
                v["posts"] + v["unsure"] + v["other_language"] + v["no_text"] for v in totals.values()
            )
            return counted >= len(posts)

        collect(broker, [aggregates], balanced, timeout=60)
    finally:
        if aggregator is not None:
            stop_command(aggregator)
        assert worker.stop() == 0
    summed = {
        key: sum(v[key] for v in totals.values()) for key in ("posts", "unsure", "other_language", "no_text")
    }
    return results, summed


def _check(results: dict, summed: dict) -> None:
    assert set(results) == {f"{k}-{i}" for k, n in (("en", 12), ("other", 10), ("none", 8)) for i in range(n)}
    for post_id, (_, result) in results.items():
        expected = {"en": None, "other": "other_language", "none": "no_text"}[post_id.split("-")[0]]
        assert result["unreadable"] == expected, (post_id, result)
        assert result["confident"] is True and result["label"]  # labelled all the same
    assert all(results[f"en-{i}"][1]["language"] == "en" for i in range(12))
    assert summed == {"posts": 12, "unsure": 0, "other_language": 10, "no_text": 8}


def test_marked_posts_stay_in_the_output_and_the_aggregates_count_them_apart(
    broker, topics, worker_env, tmp_path
):
    results, summed = _run(broker, topics, worker_env, tmp_path, [topics.output])
    _check(results, summed)


def test_routed_posts_go_to_their_own_topic_and_are_still_counted_apart(broker, topics, worker_env, tmp_path):
    routed = f"unreadable-{topics.group}"
    env = {**worker_env, "EMOTION_UNREADABLE": "route", "EMOTION_UNREADABLE_TOPIC": routed}
    results, summed = _run(broker, topics, env, tmp_path, [topics.output, routed])
    _check(results, summed)
    for post_id, (topic, result) in results.items():
        assert topic == (topics.output if result["unreadable"] is None else routed), post_id
