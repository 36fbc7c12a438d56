import asyncio
import json

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer


async def send_and_collect(bootstrap: str, posts: list[dict]) -> dict[str, str]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for post in posts:
            await producer.send_and_wait("posts", json.dumps(post).encode(), key=post["id"].encode())
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer("post-emotions", bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    labels: dict[str, str] = {}
    try:
        while len(labels) < len(posts):
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                for record in records:
                    result = json.loads(record.value)
                    labels[result["id"]] = result["label"]
    finally:
        await consumer.stop()
    return labels


def test_my_pipeline_gets_an_emotion_for_every_post(emotion_worker, kafka_bootstrap):
    worker = emotion_worker(kafka_bootstrap)  # the keyword stand-in: posts -> post-emotions
    posts = [
        {"id": "1", "text": "I am so happy today"},
        {"id": "2", "text": "this delay makes me furious"},
        {"id": "3", "text": "scared of the storm tonight"},
    ]
    labels = asyncio.run(asyncio.wait_for(send_and_collect(kafka_bootstrap, posts), timeout=60))
    assert labels == {"1": "joy", "2": "anger", "3": "fear"}
    assert worker.stop() == 0
