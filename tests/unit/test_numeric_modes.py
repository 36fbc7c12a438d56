"""EMOTION_NUMERIC=auto on the CPU: the fastest mode verified for this model, and the record behind it."""

import dataclasses
import json
import shutil

import pytest

from emotion_stream.worker.model.loading import choose_numeric, cpu_runs

FP32 = {
    "accuracy": 0.936,
    "f1_macro": 0.913,
    "agreement": 1.0,
    "posts_per_s": 100.0,
    "speedup": 1.0,
    "verified": True,
}


def _record(**modes) -> dict:
    return {"modes": {"fp32": FP32, **modes}}


def _mode(accuracy, agreement, posts_per_s, verified):
    return {
        "accuracy": accuracy,
        "f1_macro": 0.9,
        "agreement": agreement,
        "posts_per_s": posts_per_s,
        "speedup": posts_per_s / 100,
        "verified": verified,
    }


def test_auto_runs_the_fastest_verified_mode_the_cpu_runs_well():
    record = _record(bf16=_mode(0.936, 1.0, 150.0, True), int8=_mode(0.935, 0.995, 250.0, True))
    assert choose_numeric(record, flags={"avx512_bf16"})[0] == "int8"
    record["modes"]["int8"]["verified"] = False
    mode, reason = choose_numeric(record, flags={"avx512_bf16"})
    assert mode == "bf16" and "1.50x" in reason and "0.9360" in reason
    assert choose_numeric(record, flags={"avx2"})[0] == "fp32"  # no bf16 hardware here
    assert choose_numeric(_record(int8=_mode(0.9, 0.95, 300.0, False)), flags=set())[0] == "fp32"


def test_auto_without_a_record_runs_fp32_and_says_how_to_get_one():
    mode, reason = choose_numeric(None)
    assert mode == "fp32" and "emotion-stream verify-modes" in reason


def test_bf16_needs_avx512_bf16_or_amx():
    assert cpu_runs("bf16", {"amx_bf16"}) and cpu_runs("bf16", {"avx512_bf16"})
    assert not cpu_runs("bf16", {"avx2", "avx512f"})
    assert cpu_runs("int8", set()) and cpu_runs("fp32", set())


def test_verification_on_the_tiny_model_is_recorded_and_read_by_auto(tiny_model, tmp_path):
    from emotion_stream.schemas.model_directory import model_info, read_identity
    from emotion_stream.worker.model.api import ModelOptions
    from emotion_stream.worker.model.runner import EmotionClassifier
    from emotion_stream.worker.model.verify import record_numeric_modes, verify_numeric_modes

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    version = model_info(model).version
    texts = [f"i feel {w} today" for w in ("glad", "scared", "lonely", "furious", "amazed", "tender")] * 4
    labels = [i % 6 for i in range(len(texts))]
    verification = verify_numeric_modes(model, texts, labels, threads=1, modes=["fp32", "int8"])
    modes = verification["modes"]
    assert set(modes) == {"fp32", "int8"} and modes["fp32"]["agreement"] == 1.0
    for figures in modes.values():
        assert 0 <= figures["accuracy"] <= 1 and figures["posts_per_s"] > 0
        assert figures["verified"] == (
            figures["accuracy"] >= modes["fp32"]["accuracy"] - 0.002 and figures["agreement"] >= 0.99
        )
    record_numeric_modes(model, verification)
    identity = read_identity(model)
    assert identity["numeric_modes"]["posts"] == len(texts)
    assert model_info(model).version == version  # same weights, same version
    json.dumps(identity)  # plain JSON

    # A record that verifies int8 as fastest: auto runs it, and says why.
    identity["numeric_modes"]["modes"]["int8"].update(verified=True, posts_per_s=1e9, speedup=9.0)
    (model / "emotion_model.json").write_text(json.dumps(identity))
    classifier = EmotionClassifier(str(model), ModelOptions(device="cpu", numeric="auto", torch_threads=1))
    try:
        assert classifier.numeric == "int8" and "verified for this model" in classifier.numeric_reason
    finally:
        classifier.close()
    fixed = EmotionClassifier(str(model), ModelOptions(device="cpu", numeric="fp32", torch_threads=1))
    try:
        assert fixed.numeric == "fp32"  # an explicit mode is kept
    finally:
        fixed.close()


def test_a_model_with_no_record_runs_fp32_under_auto(tiny_model):
    from emotion_stream.worker.model.api import ModelOptions
    from emotion_stream.worker.model.runner import EmotionClassifier

    classifier = EmotionClassifier(
        str(tiny_model), ModelOptions(device="cpu", numeric="auto", torch_threads=1)
    )
    try:
        assert classifier.numeric == "fp32" and "verify-modes" in classifier.numeric_reason
    finally:
        classifier.close()


def test_int8_quantizes_every_linear_layer_with_a_scale_per_output_channel(tiny_model):
    import torch
    from transformers import AutoModelForSequenceClassification

    from emotion_stream.worker.model.loading import apply_numeric

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model).eval()
    linears = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    quantized, autocast = apply_numeric(model, "int8", torch.device("cpu"))
    layers = [m for m in quantized.modules() if type(m).__name__ == "Linear" and hasattr(m, "weight")]
    weights = [m.weight() for m in layers if callable(m.weight)]
    assert autocast is None and len(weights) == linears
    assert {w.qscheme() for w in weights} == {torch.per_channel_affine}


def test_int8_keeps_the_named_layers_in_fp32_and_refuses_unknown_names(tiny_model):
    import pytest
    import torch
    from transformers import AutoModelForSequenceClassification

    from emotion_stream.worker.model.api import ModelLoadError
    from emotion_stream.worker.model.loading import apply_numeric

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model).eval()
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    kept = names[-2:]
    quantized, _ = apply_numeric(model, "int8", torch.device("cpu"), kept)
    still_fp32 = [n for n, m in quantized.named_modules() if type(m) is torch.nn.Linear]
    assert still_fp32 == kept and len(names) > len(kept)
    fresh = AutoModelForSequenceClassification.from_pretrained(tiny_model).eval()
    with pytest.raises(ModelLoadError, match="verify-modes"):
        apply_numeric(fresh, "int8", torch.device("cpu"), ["encoder.layer.99.output.dense"])


def test_a_failing_int8_is_searched_for_the_layers_to_keep_and_auto_loads_them(tiny_model, tmp_path):
    """The search ranks every linear layer, keeps the most sensitive in fp32 until the criteria
    pass, records the split, and the runner loads int8 with exactly those layers in fp32."""
    import numpy as np

    from emotion_stream.schemas import LABELS
    from emotion_stream.worker.model.api import ModelOptions
    from emotion_stream.worker.model.runner import EmotionClassifier
    from emotion_stream.worker.model.verify import (
        _int8_keeping_sensitive_layers,
        layer_sensitivity,
        record_numeric_modes,
        timed_predictions,
        verify_numeric_modes,
    )

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    texts = [f"i feel {w} today" for w in ("glad", "scared", "lonely", "furious", "amazed", "tender")] * 4
    ranked = layer_sensitivity(model, texts, threads=1)
    scores = [v for _, v in ranked]
    assert len(ranked) >= 4 and scores == sorted(scores, reverse=True) and all(v >= 0 for v in scores)

    predictions, speed, _ = timed_predictions(model, "fp32", texts, 1)
    reference = np.array([LABELS.index(p.label) for p in predictions])
    fp32 = {"accuracy": 0.5, "agreement": 1.0, "posts_per_s": speed}
    failing = {"accuracy": 0.1, "f1_macro": 0.1, "agreement": 0.5, "posts_per_s": speed, "verified": False}
    found = _int8_keeping_sensitive_layers(model, texts, reference, reference, failing, fp32, 1)
    assert found["verified"] and found["fp32_layers"] == [ranked[0][0]]
    assert found["kept_in"] == ("bf16" if cpu_runs("bf16") else "fp32")  # as measured
    assert found["search"]["tried"][0]["fp32_layers"] == 0 and found["search"]["tried"][1]["fp32_layers"] == 1

    verification = verify_numeric_modes(
        model, texts, [i % 6 for i in range(len(texts))], threads=1, modes=["fp32"]
    )
    verification["modes"]["int8"] = {**found, "posts_per_s": 1e9, "speedup": 9.0}
    record_numeric_modes(model, verification)
    classifier = EmotionClassifier(str(model), ModelOptions(device="cpu", numeric="auto", torch_threads=1))
    try:
        assert classifier.numeric == "int8" and classifier.fp32_layers == (ranked[0][0],)
        quantized = {
            n
            for n, m in classifier.model.named_modules()
            if type(m).__name__ == "Linear" and "quantized" in type(m).__module__
        }
        assert quantized == {n for n, _ in ranked} - {ranked[0][0]}
        kept = type(classifier.model.get_submodule(ranked[0][0])).__name__
        # In fp32 the kept layer is prepacked, unless the int8 graph is traced (it does not trace).
        fp32_kept = "Linear" if classifier.traced else "PrepackedLinear"
        assert kept == ("Bf16Linear" if found["kept_in"] == "bf16" else fp32_kept)
    finally:
        classifier.close()


def test_kept_layers_run_in_bf16_only_where_verified_so_and_the_cpu_runs_it():
    from emotion_stream.worker.model.loading import recorded_kept_in

    bf16_record = {"modes": {"int8": {"fp32_layers": ["a"], "kept_in": "bf16"}}}
    assert recorded_kept_in(bf16_record, {"avx512_bf16"})[0] == "bf16"
    assert recorded_kept_in(bf16_record, {"avx2"})[0] == "fp32"  # closer to fp32 than verified
    assert recorded_kept_in({"modes": {"int8": {"fp32_layers": ["a"]}}}, {"avx512_bf16"})[0] == "fp32"
    assert recorded_kept_in(None, {"avx512_bf16"})[0] == "fp32"


def test_a_bf16_linear_gives_what_the_linear_gives_to_bf16_rounding():
    import torch

    from emotion_stream.worker.model.prepack import Bf16Linear

    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48)
    x = torch.randn(3, 7, 64)
    with torch.inference_mode():
        expected, got = linear(x), Bf16Linear(linear)(x)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    assert torch.allclose(got, expected, rtol=0.05, atol=0.05) and not torch.equal(got, expected)


@pytest.mark.parametrize("architecture", ["bert", "distilbert"])
def test_int8_runs_a_traced_graph_that_gives_the_models_own_results(tmp_path, architecture):
    """Padded passes through the traced, frozen graph: the same probabilities as the model run
    operator by operator, on the same plan of sub-batches (one pass thread, a fixed call cost)."""
    import torch

    from emotion_stream.worker.model.api import ModelOptions
    from emotion_stream.worker.model.runner import EmotionClassifier
    from tests.tiny_model import build_tiny_model

    model = build_tiny_model(tmp_path / "model", architecture=architecture)
    options = dict(device="cpu", numeric="int8", torch_threads=1, packing=False, call_cost_tokens=20.0)
    traced = EmotionClassifier(str(model), ModelOptions(**options))
    plain = EmotionClassifier(str(model), ModelOptions(**options, trace=False))
    texts = [("i feel so happy and then so scared " * (k % 9 + 1))[: 3 + 7 * k] for k in range(40)]
    assert traced.traced and not plain.traced
    assert torch.allclose(traced.predict_proba(texts), plain.predict_proba(texts), atol=1e-5)


def _freeze_gone_wrong(monkeypatch, wrong: str) -> None:
    """Frozen graphs whose ``wrong`` pass (forward: padded, or packed) is off by one, as if a
    branch the tracing example took were wrong for other shapes."""
    import torch

    real_freeze = torch.jit.freeze

    class Off:
        def __init__(self, graph) -> None:
            self.graph = graph

        def __call__(self, ids, mask):
            return self.forward(ids, mask)

        def forward(self, ids, mask):
            return self.graph(ids, mask) + (wrong == "forward")

        def packed(self, *inputs):
            return self.graph.packed(*inputs) + (wrong == "packed")

    monkeypatch.setattr(torch.jit, "freeze", lambda module, **kw: Off(real_freeze(module, **kw)))


def test_a_traced_graph_that_differs_from_the_model_is_not_used(tiny_model, monkeypatch):
    from emotion_stream.worker.model.api import ModelOptions
    from emotion_stream.worker.model.runner import EmotionClassifier

    _freeze_gone_wrong(monkeypatch, "forward")
    options = ModelOptions(device="cpu", numeric="int8", torch_threads=1, packing=False)
    classifier = EmotionClassifier(str(tiny_model), options)
    assert not classifier.traced
    untraced = EmotionClassifier(str(tiny_model), dataclasses.replace(options, trace=False))
    texts = ["so happy", "i am scared of what comes next " * 4]
    assert [p.label for p in classifier.predict(texts)] == [p.label for p in untraced.predict(texts)]


@pytest.mark.parametrize("architecture", ["bert", "distilbert"])
def test_int8_packed_passes_run_the_traced_graph_and_give_the_models_own_results(tmp_path, architecture):
    """Small windows run packed: through the graph's ``packed`` pass, the same probabilities as
    the packed model run operator by operator."""
    import torch

    from emotion_stream.worker.model.api import ModelOptions
    from emotion_stream.worker.model.runner import EmotionClassifier
    from tests.tiny_model import build_tiny_model

    model = build_tiny_model(tmp_path / "model", architecture=architecture)
    options = dict(device="cpu", numeric="int8", torch_threads=1, call_cost_tokens=20.0)
    traced = EmotionClassifier(str(model), ModelOptions(**options))
    plain = EmotionClassifier(str(model), ModelOptions(**options, trace=False))
    assert traced.traced and traced._traced_packs and traced.packing and plain.packing
    windows = [["so happy"], ["i feel so happy", "and then so scared " * 5, "ok", "x" * 90]]
    for texts in windows:
        prepared = traced.prepare(texts)
        assert all(x.firsts is not None for x in prepared.inputs)  # packed
        assert torch.allclose(traced.run(prepared), plain.predict_proba(texts), atol=1e-5)


def test_a_packed_pass_that_traces_wrong_runs_the_model_and_keeps_the_padded_graph(tiny_model, monkeypatch):
    from emotion_stream.worker.model.api import ModelOptions
    from emotion_stream.worker.model.runner import EmotionClassifier

    _freeze_gone_wrong(monkeypatch, "packed")
    options = ModelOptions(device="cpu", numeric="int8", torch_threads=1, call_cost_tokens=20.0)
    classifier = EmotionClassifier(str(tiny_model), options)
    assert classifier.traced and not classifier._traced_packs and classifier.packing
    untraced = EmotionClassifier(str(tiny_model), dataclasses.replace(options, trace=False))
    texts = ["so happy", "i am scared of what comes next " * 4]
    assert classifier.predict_proba(texts).tolist() == untraced.predict_proba(texts).tolist()


def test_timing_a_mode_runs_the_split_the_directory_records_as_the_worker_does(
    tiny_model, tmp_path, monkeypatch
):
    """bench.quality times `auto` through timed_predictions: it must run the recorded split, not
    every layer in int8 (verification's first step asks for that explicitly)."""
    from emotion_stream.worker.model import serving
    from emotion_stream.worker.model.verify import record_numeric_modes, timed_predictions

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    kept = "bert.encoder.layer.0.output.dense"
    figures = {
        "accuracy": 0.5,
        "f1_macro": 0.5,
        "agreement": 1.0,
        "posts_per_s": 1.0,
        "speedup": 1.0,
        "verified": True,
    }
    record_numeric_modes(
        model,
        {"modes": {"fp32": figures, "int8": {**figures, "posts_per_s": 9.0, "fp32_layers": [kept]}}},
    )
    built = []
    real = serving.EmotionClassifier

    def recording(*args, **kwargs):
        built.append(real(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(serving, "EmotionClassifier", recording)
    texts = ["so happy today", "i am scared"]
    assert timed_predictions(model, "auto", texts, 1)[2] == "int8"
    assert timed_predictions(model, "int8", texts, 1, (), "fp32")[2] == "int8"
    assert [c.fp32_layers for c in built] == [(kept,), ()]
