"""Three workers in one group on six partitions, mid-stream: one joins, one is stopped, one is killed."""

import threading
import time
from collections import Counter

import pytest

from emotion_stream.worker.cli.worker_process import WorkerProcess
from tests.integration.helpers import (
    collect,
    create_topic,
    explain_missing,
    make_posts,
    produce_sync,
    result_ids,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]


def test_workers_joining_stopping_and_dying_mid_stream_leave_no_post_unanswered(
    broker, topics, worker_env, tmp_path
):
    create_topic(broker.bootstrap, topics.input, 6, broker.client_options)
    posts = make_posts(3000)
    stop_producing = threading.Event()

    def paced() -> None:  # about 100 posts/s for 30 s: the stream outlives every change below
        for start in range(0, len(posts), 50):
            if stop_producing.is_set():
                return
            produce_sync(broker, topics.input, posts[start : start + 50])
            time.sleep(0.5)

    env = {**worker_env, "EMOTION_BATCH_SIZE": "16"}
    workers = {name: WorkerProcess(env, log_path=tmp_path / f"{name}.log") for name in ("a", "b", "c")}
    producer = threading.Thread(target=paced, daemon=True)
    try:
        workers["a"].start(), workers["b"].start()
        workers["a"].wait_ready(timeout=90), workers["b"].wait_ready(timeout=90)
        producer.start()
        collect(broker, [topics.output], lambda s: len(s[topics.output]) >= 300, timeout=90)
        workers["c"].start()  # joins
        workers["c"].wait_ready(timeout=90)
        collect(broker, [topics.output], lambda s: len(s[topics.output]) >= 900, timeout=90)
        assert workers["a"].stop() == 0  # SIGTERM: finishes, commits, leaves
        collect(broker, [topics.output], lambda s: len(s[topics.output]) >= 1500, timeout=90)
        workers["b"].kill()  # SIGKILL: its partitions move once the group notices
        producer.join(timeout=120)
        wanted = {k.decode() for k, _ in posts}
        seen = collect(
            broker, [topics.output], lambda s: wanted <= set(result_ids(s[topics.output])), timeout=180
        )
    finally:
        stop_producing.set()
        codes = {name: w.stop() for name, w in workers.items()}
    ids = result_ids(seen[topics.output])
    missing = wanted - set(ids)
    duplicates = sum(n - 1 for n in Counter(ids).values())
    logs = "\n".join(f"--- {n}\n" + (tmp_path / f"{n}.log").read_text()[-3000:] for n in workers)
    where = explain_missing(broker, topics, missing) if missing else ""
    assert missing == set(), f"{len(missing)} posts never answered\n{where}\n{logs}"
    assert codes["c"] == 0, logs
    print(f"scale-out: {len(ids)} results for {len(wanted)} posts, {duplicates} duplicates")
