"""The aggregator (`emotion-stream aggregate`): emotion counts per tumbling window and dimension.

:mod:`.windows` holds the windows and their clock, free of Kafka; :mod:`.service` reads the
results and dead letters, counts them into the windows, publishes each window's state and
recovers it on start.
"""
