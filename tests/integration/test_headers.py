"""Results and dead letters carry the schema version and the tracing headers of their posts."""

import json

import pytest

from emotion_stream.schemas import SCHEMA_VERSION
from emotion_stream.worker.cli.worker_process import WorkerProcess
from tests.integration.helpers import collect, produce_in_order

pytestmark = pytest.mark.integration


def test_outputs_carry_the_version_and_the_tracing_headers_read_back_from_the_broker(
    broker, topics, worker_env, tmp_path
):
    posts = [
        (
            f"h-{i}".encode(),
            json.dumps({"id": f"h-{i}", "text": f"i feel glad {i}"}).encode(),
            [
                ("traceparent", f"00-{i + 1:032x}-{i + 1:016x}-01".encode()),
                ("x-tenant", b"acme"),
                ("x-other", b"no"),
            ],
        )
        for i in range(10)
    ]
    broken = (b"bad", b"{not json", [("traceparent", b"00-" + b"ab" * 16 + b"-" + b"cd" * 8 + b"-01")])
    produce_in_order(broker, topics.input, [*posts, broken])
    env = {**worker_env, "EMOTION_PROPAGATE_HEADERS": '["X-Tenant"]'}
    worker = WorkerProcess(env, log_path=tmp_path / "worker.log").start()
    try:
        worker.wait_ready(timeout=90)
        seen = collect(
            broker,
            [topics.output, topics.dlq],
            lambda s: len(s[topics.output]) >= len(posts) and len(s[topics.dlq]) >= 1,
            timeout=90,
        )
    finally:
        assert worker.stop() == 0
    sent = {key.decode(): dict(headers) for key, _, headers in posts}
    for record in seen[topics.output]:
        headers = dict(record.headers)
        value = json.loads(record.value)
        assert value["schema_version"] == SCHEMA_VERSION
        assert headers["content-type"] == b"application/json"
        assert headers["schema-version"] == SCHEMA_VERSION.encode()
        assert headers["traceparent"] == sent[value["id"]]["traceparent"]
        assert headers["x-tenant"] == b"acme" and "x-other" not in headers
    letter = seen[topics.dlq][0]
    assert dict(letter.headers)["traceparent"] == b"00-" + b"ab" * 16 + b"-" + b"cd" * 8 + b"-01"
    assert json.loads(letter.value)["schema_version"] == SCHEMA_VERSION
