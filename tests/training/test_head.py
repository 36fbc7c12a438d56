"""Re-fitting the head with mixup: which layers it is, what mixup teaches them, and that the
encoder is left alone and a worse head is never kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from emotion_stream.training.calibration import calibrate_model
from emotion_stream.training.head import HeadRefit, head_layers, mixup_train, refit_head
from emotion_stream.training.predict import first_token_states, label_columns, load_emotion_model
from tests.tiny_model import build_tiny_model

TEXTS = ["i feel so happy today", "so scared of it", "i adore you", "why am i so furious", "wow"]


def _roberta(directory: Path) -> Path:
    from transformers import AutoTokenizer, RobertaConfig, RobertaForSequenceClassification

    from emotion_stream.schemas import ID2LABEL, LABEL2ID
    from tests.tiny_model import offline_vocab_dir

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(offline_vocab_dir())
    config = RobertaConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=130, num_labels=6, id2label=dict(ID2LABEL),
        label2id=dict(LABEL2ID), pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    RobertaForSequenceClassification(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.mark.parametrize("architecture", ["bert", "distilbert", "electra", "roberta"])
def test_the_head_layers_compute_the_models_own_logits(architecture: str, tmp_path):
    directory = tmp_path / architecture
    if architecture == "roberta":
        _roberta(directory)
    else:
        build_tiny_model(directory, architecture=architecture)
    tokenizer, model, _ = load_emotion_model(directory)
    _, forward = head_layers(model)
    states = first_token_states(model, tokenizer, TEXTS)
    with torch.no_grad():
        expected = model(**tokenizer(TEXTS, return_tensors="pt", padding=True)).logits
        assert torch.allclose(forward(states), expected, atol=1e-5)


def _two_clusters(n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Posts of emotion 0 around (-3, 0, ...), of emotion 1 around (+3, 0, ...)."""
    labels = rng.integers(0, 2, n)
    x = rng.normal(0, 0.3, (n, 8))
    x[:, 0] += np.where(labels == 0, -3.0, 3.0)
    return torch.tensor(x, dtype=torch.float32), torch.tensor(labels)


@pytest.mark.parametrize("alpha, quarter_way", [(2.0, (0.6, 0.9)), (0.01, (0.97, 1.0))])
def test_mixup_scores_a_post_between_two_emotions_as_between_them(alpha, quarter_way):
    # Without mixup the head separates the clusters sharply: a post a quarter of the way from
    # emotion 0 to emotion 1 is scored ~1.0 emotion 0. Trained on mixtures, it is scored
    # about 0.75: between the two, as mixing the two clusters' features would make it.
    features, labels = _two_clusters(2000, np.random.default_rng(0))
    torch.manual_seed(0)
    hidden, out = torch.nn.Linear(8, 16), torch.nn.Linear(16, 6)

    def forward(h):
        return out(torch.tanh(hidden(h)))

    params = [*hidden.parameters(), *out.parameters()]
    mixup_train(forward, params, features, labels, HeadRefit(alpha=alpha, epochs=30, learning_rate=1e-2))
    probe = torch.zeros(1, 8)
    probe[0, 0] = -1.5
    with torch.no_grad():
        p = torch.softmax(forward(probe), -1)[0]
    assert quarter_way[0] <= float(p[0]) <= quarter_way[1]
    assert float(p[0] + p[1]) > 0.97  # and nothing on the emotions it never saw


@pytest.fixture
def model_and_data(tiny_model: Path, emotion_data: Path):
    from emotion_stream.training.data import load_emotion_data

    tokenizer, model, columns = load_emotion_model(tiny_model)
    data = load_emotion_data(emotion_data)
    train, validation = data.split("train"), data.split("validation")
    return tokenizer, model, columns, (train.texts, train.labels), (validation.texts, validation.labels)


HEAD_TENSORS = {
    "bert": {"bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight", "classifier.bias"},
    "distilbert": {"pre_classifier.weight", "pre_classifier.bias", "classifier.weight", "classifier.bias"},
}


@pytest.mark.parametrize("architecture", sorted(HEAD_TENSORS))
def test_refitting_changes_the_head_and_nothing_else(architecture, model_and_data, tmp_path):
    tokenizer, model, columns, train, validation = model_and_data
    if architecture != "bert":  # the default base model's architecture when the hub is reachable
        directory = build_tiny_model(tmp_path / "m", architecture=architecture)
        tokenizer, model, columns = load_emotion_model(directory)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    record, _, after = refit_head(
        model, tokenizer, columns, train, validation, HeadRefit(epochs=20, max_accuracy_drop=1.0)
    )
    assert record["applied"] is True and record["train_posts"] == len(train[1])
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == HEAD_TENSORS[architecture]
    # The logits it returns are the model's own, now.
    with torch.no_grad():
        own = model(**tokenizer(list(validation[0]), return_tensors="pt", padding=True)).logits
    assert np.allclose(after, own.numpy(), atol=1e-4)


def test_a_refitted_head_that_loses_accuracy_is_not_kept(model_and_data):
    tokenizer, model, columns, train, validation = model_and_data
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # Asking for a gain of more than 100% of accuracy: no head can keep its place.
    record, logits, after = refit_head(
        model, tokenizer, columns, train, validation, HeadRefit(epochs=2, max_accuracy_drop=-1.0)
    )
    assert record["applied"] is False and record["labels_changed"] == 0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert np.array_equal(logits, after)


def test_a_head_of_unknown_shape_gets_the_temperature_alone(model_and_data):
    tokenizer, model, _, train, validation = model_and_data
    model.classifier = torch.nn.Sequential(model.classifier)  # a head this module does not know
    record, _ = calibrate_model(model, tokenizer, label_columns(model), train, validation)
    assert record["head_refit"]["applied"] is False
    assert "no known classification head" in record["head_refit"]["reason"]
    assert record["after"]["accuracy"] == record["before"]["accuracy"] and record["temperature"] > 0
