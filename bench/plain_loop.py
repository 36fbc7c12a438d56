"""The reference for the pipeline ceiling: a plain aiokafka consume-transform-produce loop.

Same JSON work as the worker with a free model (decode, validate, build the result, encode,
keyed send, await the acks, commit), none of Faust's machinery. Run as
`python -m bench.plain_loop` with EMOTION_* settings; stops on SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench.constant_worker import constant_predict
from emotion_stream.schemas import ModelInfo
from emotion_stream.worker.broker.profiles import profile_for
from emotion_stream.worker.codec import InboundRecord
from emotion_stream.worker.processing import BatchProcessor


async def run() -> None:
    from emotion_stream.worker.cli.usage import load_settings
    from emotion_stream.worker.settings import WorkerSettings

    settings = load_settings(WorkerSettings)
    profile = profile_for(settings.broker_backend)
    consumer = AIOKafkaConsumer(
        settings.input_topic,
        bootstrap_servers=settings.bootstrap_servers,
        group_id=settings.group_id,
        enable_auto_commit=False,
        **profile.consumer,
    )
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=5, **profile.producer)
    processor = BatchProcessor(constant_predict, ModelInfo(name="constant", version="0"))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await consumer.start()
    await producer.start()
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=100, max_records=500)
            records = [
                InboundRecord(r.topic, r.partition, r.offset, r.key, r.value)
                for rs in batch.values()
                for r in rs
            ]
            if not records:
                continue
            outcome = processor.process(records)
            futures = [
                await producer.send(settings.output_topic, key=m.key, value=m.value) for m in outcome.results
            ]
            futures += [
                await producer.send(settings.dlq_topic, key=m.key, value=m.value)
                for m in outcome.dead_letters
            ]
            await asyncio.gather(*futures)
            await consumer.commit()
    finally:
        await consumer.stop()
        await producer.stop()


if __name__ == "__main__":
    asyncio.run(run())
    sys.exit(0)
