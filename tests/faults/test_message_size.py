"""Messages too large to pass through as they are: each moves on, and the posts behind it too."""

import hashlib
import os

import pytest

from emotion_stream.schemas import DeadLetter
from emotion_stream.worker.cli.worker_process import WorkerProcess
from tests.integration.helpers import collect, create_topic, make_posts, produce_in_order, result_ids

pytestmark = [pytest.mark.integration, pytest.mark.faults]


def test_oversized_messages_are_dead_lettered_and_the_posts_behind_them_still_get_results(
    broker, topics, worker_env, tmp_path
):
    binary = b"\xff" + os.urandom(800_000)  # not UTF-8: as base64 its dead letter would pass 1 MB
    huge = b'{"id": "huge", "text": "' + b"word " * 300_000 + b'"}'  # 1.5 MB: over the input bound
    posts = make_posts(30)
    create_topic(broker.bootstrap, topics.input, 1, broker.client_options)
    produce_in_order(broker, topics.input, [(b"bin", binary), *posts[:15], (b"huge", huge), *posts[15:]])

    worker = WorkerProcess(worker_env, log_path=tmp_path / "worker.log").start()
    try:
        worker.wait_ready(timeout=90)
        seen = collect(
            broker,
            [topics.output, topics.dlq],
            lambda s: len(s[topics.output]) >= len(posts) and len(s[topics.dlq]) >= 2,
            timeout=90,
        )
    finally:
        code = worker.stop()
    log = (tmp_path / "worker.log").read_text()
    assert code == 0, log
    assert sorted(result_ids(seen[topics.output])) == sorted(k.decode() for k, _ in posts)
    letters = {r.key: (DeadLetter.model_validate_json(r.value), len(r.value)) for r in seen[topics.dlq]}
    for key, original, kind in ((b"bin", binary, "not_utf8"), (b"huge", huge, "too_large")):
        letter, size = letters[key]
        assert letter.error.kind == kind and size <= 1 << 20
        assert letter.payload.truncated and letter.payload.size == len(original)
        assert letter.payload.sha256 == hashlib.sha256(original).hexdigest()
        assert original.startswith(letter.payload.to_bytes())  # a prefix, as the dead letter says
