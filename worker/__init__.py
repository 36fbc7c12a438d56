"""The emotion-stream worker: reads posts from Kafka, labels them, writes results.

Modules, one concept each:
- settings: the one settings object (env prefix ``EMOTION_``)
- codec: bytes -> validated post, or the reason it is a dead letter
- batching: the micro-batcher (max size, max wait)
- model/: the model runner and its process (texts in, predictions out; no Kafka)
- processing: one batch of raw records -> encoded results and dead letters
- publishing: a batch's outputs sent and acknowledged by the broker
- policy: the error policy (what is dead-lettered, retried, or stops the worker)
- health: the watchdog behind /health and the broker probe behind /ready
- app: the Faust app and its thin agent
- transport: the Kafka transport (the one module on private Faust and aiokafka APIs)
- pacing: the fetch wait, following the model
- heap: keeping the garbage collector off the latency path
- broker/: broker backends (embedded launcher, per-backend quirks, TLS and SASL)
- observability: structured logs and Prometheus metrics
- cli/: the command line, the composition root (the only place that imports training)
"""
