"""Prepacked linear layers: the same fp32 results as nn.Linear, used only where they apply."""

import pytest
import torch

from emotion_stream.worker.model.api import ModelOptions
from emotion_stream.worker.model.prepack import PrepackedLinear, prepack_linears
from emotion_stream.worker.model.runner import EmotionClassifier
from emotion_stream.worker.settings import WorkerSettings
from tests.tiny_model import build_tiny_model
from tests.tiny_model import random_posts as _posts


@pytest.fixture(scope="module", params=["bert", "distilbert"])
def model_dir(request, tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("prepack") / request.param, architecture=request.param)


def _linears(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if isinstance(m, (torch.nn.Linear, PrepackedLinear))]


def test_a_prepacked_linear_computes_what_the_linear_does():
    torch.manual_seed(0)
    for bias in (True, False):
        linear = torch.nn.Linear(48, 20, bias=bias).eval()
        packed = PrepackedLinear(linear)
        for shape in ((7, 48), (2, 9, 48), (1, 1, 48)):
            x = torch.randn(*shape)
            with torch.inference_mode():
                expected = linear(x)
                assert torch.allclose(packed(x), expected, atol=1e-5)
                # A transposed (non-contiguous) input too, as attention outputs can be.
                xt = torch.randn(*shape[:-2], 48, shape[-2]).transpose(-1, -2) if len(shape) > 1 else x
                assert torch.allclose(packed(xt), linear(xt), atol=1e-5)
        assert "prepacked" in repr(packed)


@pytest.mark.parametrize("passes", [1, 2])
@pytest.mark.parametrize("packing", [True, False])
def test_prepacked_model_gives_the_plain_models_results(model_dir, passes, packing):
    torch.set_num_threads(2)
    texts = _posts(23)
    fast = EmotionClassifier(
        str(model_dir), ModelOptions(device="cpu", batch_size=4, cpu_passes=passes, packing=packing)
    )
    plain = EmotionClassifier(
        str(model_dir),
        ModelOptions(device="cpu", batch_size=4, cpu_passes=passes, packing=packing, prepack=False),
    )
    assert fast.prepacked > 0 and plain.prepacked == 0
    # Every linear layer is replaced, the head's included; the plain model keeps nn.Linear.
    assert all(type(m) is PrepackedLinear for m in _linears(fast.model))
    assert fast.prepacked == len(_linears(fast.model))
    assert all(type(m) is torch.nn.Linear for m in _linears(plain.model))
    assert torch.allclose(fast.predict_proba(texts), plain.predict_proba(texts), atol=1e-5)
    assert [p.label for p in fast.predict(texts)] == [p.label for p in plain.predict(texts)]


@pytest.mark.parametrize("numeric", ["bf16", "int8"])
def test_other_numeric_modes_are_not_prepacked(model_dir, numeric):
    clf = EmotionClassifier(str(model_dir), ModelOptions(device="cpu", batch_size=4, numeric=numeric))
    assert clf.prepacked == 0
    assert not any(type(m) is PrepackedLinear for m in clf.model.modules())
    assert len(clf.predict(_posts(5))) == 5


def test_nothing_is_replaced_where_prepacking_is_unavailable_or_wrong(model_dir, monkeypatch):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    count = len(_linears(model))
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    assert prepack_linears(model) == 0
    monkeypatch.undo()
    # A prepacked layer whose result differs from the plain one's is not used either.
    monkeypatch.setattr(
        PrepackedLinear, "forward", lambda self, x: torch.zeros(*x.shape[:-1], self.out_features)
    )
    assert prepack_linears(model) == 0
    monkeypatch.undo()

    def refuse(self, linear):
        raise RuntimeError("no oneDNN here")

    monkeypatch.setattr(PrepackedLinear, "__init__", refuse)
    assert prepack_linears(model) == 0
    monkeypatch.undo()
    assert all(type(m) is torch.nn.Linear for m in _linears(model)) and len(_linears(model)) == count
    assert prepack_linears(model) == count


def test_prepacking_is_a_worker_setting(monkeypatch):
    assert WorkerSettings().prepack_weights is True
    monkeypatch.setenv("EMOTION_PREPACK_WEIGHTS", "false")
    assert WorkerSettings().prepack_weights is False
