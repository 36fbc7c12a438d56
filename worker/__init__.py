"""The emotion-stream worker: reads posts from Kafka, labels them, writes results.

Modules, one concept each:
- settings: the one settings object (env prefix ``EMOTION_``)
- codec: bytes -> validated post, or the reason it is a dead letter
- batching: the micro-batcher (max size, max wait)
- classifier: the model runner (texts in, predictions out; no Kafka)
- processing: one batch of raw records -> encoded results and dead letters
- app: the Faust app and its thin agent
- broker: broker backends (embedded launcher, per-backend quirks)
- observability: structured logs and Prometheus metrics
"""
