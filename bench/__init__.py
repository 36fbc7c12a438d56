"""Benchmarks of emotion-stream (not tests): `python -m bench.run --help`."""
