"""Keeps the benchmarks working: their arithmetic, and a tiny run of the pipeline ceiling."""

import math

import pytest

from bench.run import histogram_median
from bench.streaming import StreamRun


def test_histogram_median_interpolates_within_the_bucket_of_the_middle_observation():
    name = "emotion_batch_seconds"
    before = {
        f'{name}_bucket{{le="0.1"}}': 1.0,
        f'{name}_bucket{{le="0.2"}}': 1.0,
        f'{name}_bucket{{le="+Inf"}}': 1.0,
    }
    # Over the interval: 2 observations <= 0.1, 6 in (0.1, 0.2], none above.
    after = {
        f'{name}_bucket{{le="0.1"}}': 3.0,
        f'{name}_bucket{{le="0.2"}}': 9.0,
        f'{name}_bucket{{le="+Inf"}}': 9.0,
    }
    median = histogram_median(before, after, name)
    assert 0.1 < median < 0.2
    assert math.isclose(median, 0.1 + 0.1 * (4 - 2) / 6)
    assert math.isnan(histogram_median(after, after, name))


def test_stream_run_percentiles_and_rate():
    run = StreamRun(posts=100, seconds=4.0, latencies_ms=[float(i) for i in range(1, 101)])
    assert run.rate == 25.0
    assert run.percentile(50) in (50.0, 51.0)
    assert run.percentile(99) == 99.0


def test_the_steady_rate_leaves_out_the_wait_for_the_first_results():
    # The first 4 results after 1 s (the first batch's way through), then 4 more every second.
    received = [1.0] * 4 + [2.0] * 4 + [3.0] * 4 + [4.0] * 4
    run = StreamRun(posts=16, seconds=4.0, latencies_ms=[], received_s=received)
    assert run.rate == 4.0
    assert run.steady_rate == 12 / 3.0  # the 12 results after the first fetch's, over 3 s
    assert StreamRun(posts=1, seconds=2.0, latencies_ms=[], received_s=[2.0]).steady_rate == 0.5


@pytest.mark.integration
def test_pipeline_ceiling_smoke(tmp_path, monkeypatch):
    import bench.run as bench_run

    monkeypatch.setattr(bench_run, "CACHE", tmp_path)
    rates = bench_run.ceiling(400)
    assert set(rates) == {"worker", "plain aiokafka"}
    assert all(rate > 0 for rate in rates.values())


@pytest.mark.parametrize("option", ["packing", "prepack"])
def test_on_and_off_measures_both_on_every_window(tiny_model, option, monkeypatch):
    import bench.measure as measure

    seen = []
    real = measure.EmotionClassifier

    def recording(model, options):
        seen.append(getattr(options, option))
        return real(model, options)

    monkeypatch.setattr(measure, "EmotionClassifier", recording)
    rows = measure.on_and_off(
        tiny_model, ["i feel fine today", "so very angry", "ok"] * 6, (2, 8), 4, option, rounds=1
    )
    assert [r["window"] for r in rows] == [2, 8]
    assert seen == [True, False, True, False]  # in turn, on each window
    for r in rows:
        assert r["on"] > 0 and r["off"] > 0 and math.isclose(r["ratio"], r["on"] / r["off"])


def test_the_gpu_benchmark_runs_its_sections_on_the_cpu(tiny_model, tmp_path):
    import json

    from bench.gpu import main

    data = tmp_path / "data"
    data.mkdir()
    lines = ["i feel so happy today;joy", "this makes me angry;anger", "i am scared of the dark;fear"] * 20
    (data / "validation.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    assert (
        main(
            [
                "--device",
                "cpu",
                "--quick",
                "--no-e2e",
                "--data",
                str(data),
                "--model",
                str(tiny_model),
                "--distilbert",
                str(tiny_model),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads((out / "results.json").read_text())
    assert set(report["models"]) == {"DistilBERT arch.", f"trained ({tiny_model.name})"}
    for section in report["models"].values():
        assert section["best"]["rate"] > 0 and section["fp32"]["rate"] > 0 and section["naive"] > 0
        assert section["best"]["rate"] == max(r["rate"] for r in section["sweep"])
    trained = report["models"][f"trained ({tiny_model.name})"]
    assert set(trained["accuracy"]) == {"auto", "fp32"}
    # On the CPU "auto" is fp32: the same predictions, and the naive pipeline agrees with both.
    assert trained["accuracy"]["auto"] == trained["accuracy"]["fp32"] == trained["naive_accuracy"]
    assert "no GPU" in report["machine"]


def test_the_gpu_benchmark_refuses_to_run_without_a_gpu_unless_told(tmp_path, capsys):
    import torch

    from bench.gpu import main

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible here")
    (tmp_path / "validation.txt").write_text("i feel fine;joy\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["--data", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "no CUDA device is visible" in capsys.readouterr().err


def test_the_kills_benchmark_counts_duplicates_per_kill(tiny_model, tmp_path, monkeypatch):
    import bench.faults as faults

    monkeypatch.setattr(faults, "OUT", tmp_path)
    # One interval: the benchmark runs each the same way, and two would double this test's minute.
    args = faults.argparse.Namespace(model=str(tiny_model), rate=40.0, kills=1, period=4.0, intervals=[100])
    report = faults.kills(args)
    assert set(report) == {"commit interval 100 ms"}
    for row in report.values():
        assert row["missing"] == 0 and row["posts"] == 320 and row["duplicates per kill"] >= 0


@pytest.mark.integration
def test_the_fuzz_benchmark_runs_the_mix_through_all_three_components(tmp_path, monkeypatch):
    import json
    import signal

    import bench.faults as faults

    monkeypatch.setattr(faults, "OUT", tmp_path)
    # The bench's entry point sets these for its own process: keep them from leaking into the
    # rest of this suite (a quiet log level would silence every later worker's log).
    monkeypatch.setenv("EMOTION_LOG_LEVEL", "WARNING")
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        assert faults.main(["fuzz", "--minutes", "0.1", "--rate", "60", "--model", "keywords:"]) == 0
    finally:
        signal.signal(signal.SIGTERM, sigterm)
    report = json.loads((tmp_path / "faults-fuzz.json").read_text())
    for field in ("messages sent", "sent by kind", "results", "dead letters by kind", "components"):
        assert field in report
    assert set(report["components"]) == {"worker", "aggregator", "dashboard"}
    for component in report["components"].values():
        assert component["restarts"] == 0 and component["exit code at stop"] == 0
        assert component["peak RSS MiB"] > 0
    assert report["records with no answer"] == 0
    assert report["valid posts"]["balanced"] and report["aggregates"]["balanced"]
    assert report["sent by kind"]["valid"] > 0 and any(
        k.startswith("gzip bomb") for k in report["sent by kind"]
    )


def test_the_plain_model_of_the_quality_benchmark_scores_every_post_in_order(tiny_model):
    """The yardstick of bench.quality: transformers in-process on sorted padded batches gives
    each text what the model gives it alone (more texts than a batch, mixed lengths)."""
    import numpy as np
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import bench.quality as quality

    texts = [("so glad " * (i % 7 + 1)).strip() + f" {i}" for i in range(quality.PLAIN_BATCH + 9)]
    texts += ["i feel so angry and scared " * 3, "what a lovely surprise"]
    rate, logits = quality.plain_rate(tiny_model, texts, threads=1)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model).eval()
    with torch.inference_mode():
        alone = np.concatenate([model(**tokenizer(t, return_tensors="pt")).logits.numpy() for t in texts])
    assert rate > 0 and np.allclose(logits, alone, atol=1e-4)
    assert len({tuple(row.round(4)) for row in logits}) > 10  # a wrong order would show


def test_a_worker_setting_without_name_and_value_stops_the_benchmark_with_the_form_to_use(capsys):
    """``--env`` of bench.faults and bench.cpu_profile: NAME=VALUE pairs (the value may hold
    '='), anything else a usage error naming the form, not a traceback."""
    import bench.faults as faults
    from bench.host import setting

    assert setting("EMOTION_X=a=b") == ("EMOTION_X", "a=b")
    with pytest.raises(SystemExit) as stop:
        faults.main(["memory", "--env", "EMOTION_BATCH_SIZE"])
    assert stop.value.code == 2
    assert "give a worker setting as NAME=VALUE" in capsys.readouterr().err
