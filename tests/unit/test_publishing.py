"""The publisher: outputs the broker refuses as too large are replaced, anything else fails the batch."""

import asyncio
import json

import pytest
from aiokafka.errors import MessageSizeTooLargeError

from emotion_stream.schemas import DeadLetter
from emotion_stream.worker.codec import InboundRecord, OutboundMessage
from emotion_stream.worker.processing import BatchOutcome
from emotion_stream.worker.publishing import Publisher, SendFailed

SOURCE = InboundRecord("posts", 3, 41, b"k", b'{"id": "k", "text": "fine"}')


class Broker:
    def __init__(self, refuse=lambda topic, value: None, never_ack: bool = False) -> None:
        self.refuse, self.never_ack = refuse, never_ack
        self.acked: list[tuple[str, bytes]] = []

    async def send(self, topic, key, value, partition, timestamp, headers):
        loop = asyncio.get_running_loop()
        ack = loop.create_future()
        error = self.refuse(topic, value)
        if error is not None:
            ack.set_exception(error)
        elif not self.never_ack:
            self.acked.append((topic, value))
            ack.set_result(None)
        return ack


def _publisher(broker, timeout_s=5.0):
    return Publisher(broker.send, "out", "dlq", 1 << 20, timeout_s)


def test_a_result_the_broker_refuses_as_too_large_is_answered_by_a_minimal_dead_letter():
    broker = Broker(refuse=lambda topic, value: MessageSizeTooLargeError() if topic == "out" else None)
    outcome = BatchOutcome(results=[OutboundMessage(b"k", b"x" * 5000, source=SOURCE)])
    asyncio.run(_publisher(broker).publish(outcome))
    assert [topic for topic, _ in broker.acked] == ["dlq"]
    letter = DeadLetter.model_validate_json(broker.acked[0][1])
    assert letter.error.kind == "too_large" and "refused the result" in letter.error.message
    assert letter.payload.data == "" and letter.payload.truncated and letter.source.offset == 41
    assert outcome.dead_letter_kinds == ["too_large"] and outcome.refused_results == 1


def test_a_refusal_for_any_other_reason_fails_the_batch():
    broker = Broker(refuse=lambda topic, value: RuntimeError("not leader"))
    outcome = BatchOutcome(results=[OutboundMessage(b"k", b"{}", source=SOURCE)])
    with pytest.raises(SendFailed, match="not leader"):
        asyncio.run(_publisher(broker).publish(outcome))


def test_a_minimal_dead_letter_refused_too_fails_the_batch_instead_of_retrying_for_ever():
    broker = Broker(refuse=lambda topic, value: MessageSizeTooLargeError())
    outcome = BatchOutcome(dead_letters=[OutboundMessage(b"k", json.dumps({"x": 1}).encode(), source=SOURCE)])
    with pytest.raises(SendFailed, match="even the minimal dead letter"):
        asyncio.run(_publisher(broker).publish(outcome))


def test_outputs_never_acknowledged_fail_the_batch_after_the_send_timeout():
    broker = Broker(never_ack=True)
    outcome = BatchOutcome(results=[OutboundMessage(b"k", b"{}", source=SOURCE)])
    with pytest.raises(SendFailed, match=r"did not acknowledge .* within 0s"):
        asyncio.run(_publisher(broker, timeout_s=0.2).publish(outcome))


def test_a_refusal_the_broker_expects_to_lift_is_sent_again_until_it_is_taken():
    from aiokafka.errors import NotLeaderForPartitionError

    refusals = []

    def leader_moving(topic, value):
        if len(refusals) < 2:
            refusals.append(topic)
            return NotLeaderForPartitionError()
        return None

    broker = Broker(refuse=leader_moving)
    outcome = BatchOutcome(results=[OutboundMessage(b"k", b"{}", source=SOURCE)])
    asyncio.run(_publisher(broker).publish(outcome))
    assert refusals == ["out", "out"] and broker.acked == [("out", b"{}")] and outcome.dead_letter_kinds == []


def test_acknowledged_outputs_cost_no_task_each_and_a_refused_one_among_them_still_gets_its_own():
    """A batch's outputs are waited for as the broker's futures, not as a task per output (256 of
    them a batch: a task each was a visible share of the worker's CPU); only an output the
    broker refused takes the slow path, and every other one is still acknowledged."""
    broker = Broker(refuse=lambda topic, value: MessageSizeTooLargeError() if value == b"big" else None)
    values = [b"{}"] * 200 + [b"big"] + [b"{}"] * 55
    outcome = BatchOutcome(results=[OutboundMessage(b"k", v, source=SOURCE) for v in values])
    tasks = []

    async def run():
        loop = asyncio.get_running_loop()
        made = loop.create_task

        def counted(*args, **kwargs):
            tasks.append(args[0])
            return made(*args, **kwargs)

        loop.create_task = counted
        try:
            await _publisher(broker).publish(outcome)
        finally:
            loop.create_task = made

    asyncio.run(run())
    # The wait with its timeout, and the refused output's own.
    assert len(tasks) == 2, f"{len(tasks)} tasks for {len(values)} outputs"
    assert [topic for topic, _ in broker.acked] == ["out"] * 255 + ["dlq"]
    assert outcome.dead_letter_kinds == ["too_large"] and outcome.refused_results == 1
