"""Keeps the benchmarks working: their arithmetic, and a tiny run of the pipeline ceiling."""

import math

import pytest

from bench.run import histogram_median
from bench.streaming import StreamRun


def test_histogram_median_interpolates_within_the_bucket_of_the_middle_observation():
    name = "emotion_batch_seconds"
    before = {f'{name}_bucket{{le="0.1"}}': 1.0, f'{name}_bucket{{le="0.2"}}': 1.0, f'{name}_bucket{{le="+Inf"}}': 1.0}
    # Over the interval: 2 observations <= 0.1, 6 in (0.1, 0.2], none above.
    after = {f'{name}_bucket{{le="0.1"}}': 3.0, f'{name}_bucket{{le="0.2"}}': 9.0, f'{name}_bucket{{le="+Inf"}}': 9.0}
    median = histogram_median(before, after, name)
    assert 0.1 < median < 0.2
    assert math.isclose(median, 0.1 + 0.1 * (4 - 2) / 6)
    assert math.isnan(histogram_median(after, after, name))


def test_stream_run_percentiles_and_rate():
    run = StreamRun(posts=100, seconds=4.0, latencies_ms=[float(i) for i in range(1, 101)])
    assert run.rate == 25.0
    assert run.percentile(50) in (50.0, 51.0)
    assert run.percentile(99) == 99.0


@pytest.mark.integration
def test_pipeline_ceiling_smoke(tmp_path, monkeypatch):
    import bench.run as bench_run

    monkeypatch.setattr(bench_run, "CACHE", tmp_path)
    rates = bench_run.ceiling(400)
    assert set(rates) == {"worker", "plain aiokafka"}
    assert all(rate > 0 for rate in rates.values())


def test_packed_against_padded_measures_both_on_every_window(tiny_model):
    from bench.measure import packed_against_padded

    rows = packed_against_padded(tiny_model, ["i feel fine today", "so very angry", "ok"] * 6, (2, 8), 4, rounds=1)
    assert [r["window"] for r in rows] == [2, 8]
    for r in rows:
        assert r["packed"] > 0 and r["padded"] > 0 and math.isclose(r["ratio"], r["packed"] / r["padded"])
