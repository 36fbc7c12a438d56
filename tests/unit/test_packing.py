"""Packed windows: posts laid end to end in rows give the results of padded sub-batches."""

import random

import pytest
import torch

from emotion_stream.worker.model.api import ModelOptions
from emotion_stream.worker.model.packing import PACK_ROWS_PER_PASS, pack_rows
from emotion_stream.worker.model.planning import share_out
from emotion_stream.worker.model.runner import EmotionClassifier
from tests.tiny_model import build_tiny_model
from tests.tiny_model import random_posts as _posts


@pytest.fixture(
    scope="module",
    params=[("bert", None), ("distilbert", None), ("bert", "eager"), ("distilbert", "eager")],
    ids=lambda p: f"{p[0]}-{p[1] or 'default'}",
)
def packable_model(request, tmp_path_factory):
    architecture, attention = request.param
    return build_tiny_model(
        tmp_path_factory.mktemp("packable") / architecture, architecture=architecture, attention=attention
    )


def test_share_out_balances_total_length_and_places_every_post_once():
    rng = random.Random(3)
    for _ in range(200):
        lengths = [rng.randint(1, 128) for _ in range(rng.randint(1, 60))]
        parts = rng.randint(1, 6)
        groups = share_out(lengths, parts)
        assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
        assert len(groups) == min(parts, len(lengths)) and all(groups)
        loads = [sum(lengths[i] for i in g) for g in groups]
        # Longest first to the lightest: no group is ahead by more than one post.
        assert max(loads) - min(loads) <= max(lengths)


def test_pack_rows_uses_as_few_rows_as_hold_the_tokens():
    lengths = [20] * 13  # 260 tokens
    rows = pack_rows(lengths, row_tokens=128)
    assert len(rows) == 3 and sorted(i for r in rows for i in r) == list(range(13))
    assert sorted(len(r) for r in rows) == [4, 4, 5]  # about equally full, not 128 + 128 + 4
    assert pack_rows([5, 7], row_tokens=128) in ([[1, 0]], [[0, 1]])
    assert pack_rows([], row_tokens=128) == []


@pytest.mark.parametrize("passes", [1, 2])
def test_packed_results_match_padded_sub_batches_and_posts_alone(packable_model, passes):
    torch.set_num_threads(2)
    texts = _posts(17)
    packed = EmotionClassifier(
        str(packable_model), ModelOptions(device="cpu", batch_size=4, cpu_passes=passes)
    )
    padded = EmotionClassifier(
        str(packable_model), ModelOptions(device="cpu", batch_size=4, cpu_passes=passes, packing=False)
    )
    assert packed.packing and not padded.packing
    prepared = packed.prepare(texts)
    assert all(x.firsts is not None for x in prepared.inputs)
    assert len(prepared.inputs) == passes  # one forward pass per pass thread
    assert sorted(prepared.rows) == list(range(len(texts)))
    together = packed.run(prepared)
    assert torch.allclose(together, padded.predict_proba(texts), atol=1e-5)
    alone = torch.cat([padded.predict_proba([t]) for t in texts])
    assert torch.allclose(together, alone, atol=1e-5)
    # The labels are the same as well, in the texts' order.
    assert [p.label for p in packed.predict(texts)] == [p.label for p in padded.predict(texts)]


def test_a_packed_row_restarts_positions_and_walls_off_each_post(tiny_model):
    clf = EmotionClassifier(str(tiny_model), ModelOptions(device="cpu", cpu_passes=1))
    texts = ["i feel wonderful", "so angry", "a little afraid of the dark tonight"]
    x = clf.prepare(texts).inputs[0]
    lengths = [len(clf.tokenizer(t)["input_ids"]) for t in texts]
    assert x.ids.shape == (1, sum(lengths))  # one row, no padding at all
    starts = x.firsts.tolist()
    assert sorted(starts) == starts and starts[0] == 0
    for start in starts:
        assert x.positions[0, start] == 0 and x.ids[0, start] == clf.tokenizer.cls_token_id
    mask = x.mask[0, 0]
    first, second = starts[0], starts[1]
    assert mask[first, first] and not mask[first, second] and not mask[second, first]
    assert int(mask.sum()) == sum(n * n for n in lengths)  # exactly the blocks of the posts


def test_a_window_too_big_to_pack_runs_as_planned_padded_sub_batches(tiny_model):
    clf = EmotionClassifier(str(tiny_model), ModelOptions(device="cpu", batch_size=8, cpu_passes=1))
    post = "word " * 60  # 62 tokens with the special ones
    fits = 1 * PACK_ROWS_PER_PASS * 128 // 62
    assert all(x.firsts is not None for x in clf.prepare([post] * fits).inputs)
    big = clf.prepare([post] * (fits + 1))
    assert all(x.firsts is None for x in big.inputs)
    assert sum(x.ids.shape[0] for x in big.inputs) == fits + 1


def test_an_architecture_without_a_known_head_runs_padded(tmp_path):
    electra = build_tiny_model(tmp_path / "electra", architecture="electra")
    clf = EmotionClassifier(str(electra), ModelOptions(device="cpu", batch_size=4))
    assert not clf.packing
    texts = _posts(6, seed=1)
    assert all(x.firsts is None for x in clf.prepare(texts).inputs)
    alone = torch.cat([clf.predict_proba([t]) for t in texts])
    assert torch.allclose(clf.predict_proba(texts), alone, atol=1e-5)
