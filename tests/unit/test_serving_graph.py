"""The serving graph: the model process serves a saved graph of the model's int8 passes with the
tokenizer read by ``tokenizers``, without ``transformers``, and gives the full load's answers."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emotion_stream.worker.model.api import ModelOptions
from emotion_stream.worker.model.graph import graph_key, graph_tokenizer, read_record
from emotion_stream.worker.model.runner import EmotionClassifier
from emotion_stream.worker.model.serving import _private, load_classifier

# Small windows run packed, the long one as padded sub-batches: both of the graph's passes.
WINDOWS = [
    ["i feel wonderful", "ok", "so scared of tomorrow"],
    [("i feel so happy and then so scared " * (k % 9 + 1))[: 3 + 7 * k] for k in range(40)],
]
INT8 = dict(device="cpu", numeric="int8", torch_threads=1, cpu_passes=1, call_cost_tokens=20.0)


def _serve_from_cache(model, cache, windows, options) -> dict:
    """What a fresh process (as the model process is) loads and answers, and whether it
    imported transformers."""
    script = textwrap.dedent(
        f"""
        import json, sys
        from emotion_stream.worker.model.api import ModelOptions
        from emotion_stream.worker.model.serving import load_classifier
        clf = load_classifier({str(model)!r}, ModelOptions(**{options!r}, graph_cache_dir={str(cache)!r}),
                              ("WARNING", "json"))
        print(json.dumps({{
            "from_graph": clf.from_graph,
            "packing": clf.packing,
            "transformers": "transformers" in sys.modules,
            "probs": [clf.predict_proba(w).tolist() for w in {windows!r}],
        }}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=dict(os.environ)
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_fresh_process_serves_the_saved_graph_without_transformers_and_gives_the_same_answers(
    tiny_model, tmp_path
):
    cache = tmp_path / "graphs"
    first = _serve_from_cache(tiny_model, cache, WINDOWS, INT8)  # builds the graph in a child
    (graph,) = list(cache.iterdir())
    assert read_record(graph)["served"] and (graph / "graph.pt").is_file()
    built = (graph / "graph.pt").stat().st_mtime_ns
    options = ModelOptions(**INT8, graph_cache_dir=str(cache))
    again = load_classifier(str(tiny_model), options, ("WARNING", "json"))  # served from the cache
    assert again.from_graph and again.packing
    assert (graph / "graph.pt").stat().st_mtime_ns == built and len(list(cache.iterdir())) == 1
    full = EmotionClassifier(str(tiny_model), ModelOptions(**INT8))
    assert full.traced and full.packing and not full.from_graph
    assert first["from_graph"] and first["packing"] and not first["transformers"]
    for window, probs in zip(WINDOWS, first["probs"], strict=True):
        expected = full.predict_proba(window)
        torch.testing.assert_close(torch.tensor(probs), expected, rtol=0, atol=1e-6)
        torch.testing.assert_close(again.predict_proba(window), expected, rtol=0, atol=1e-6)


def test_a_model_in_a_mode_without_a_traced_graph_is_loaded_the_full_way_without_a_builder(
    tiny_model, tmp_path
):
    options = ModelOptions(device="cpu", numeric="fp32", torch_threads=1, graph_cache_dir=str(tmp_path))
    classifier = load_classifier(str(tiny_model), options, ("WARNING", "json"))
    assert not classifier.from_graph and classifier.numeric == "fp32"
    assert list(tmp_path.iterdir()) == []  # decided from the model directory's record, no child spawned


def test_a_model_whose_graph_cannot_be_made_is_recorded_once_and_loaded_the_full_way(tiny_model, tmp_path):
    from emotion_stream.worker.model.graph import save_graph

    options = ModelOptions(**INT8, graph_cache_dir=str(tmp_path))
    untraced = EmotionClassifier(str(tiny_model), dataclasses.replace(options, trace=False))
    target = tmp_path / graph_key(tiny_model, options)
    assert save_graph(untraced, target) == "int8 on cpu runs no traced graph"
    classifier = load_classifier(str(tiny_model), options, ("WARNING", "json"))
    assert not classifier.from_graph and classifier.traced
    assert read_record(target) == {"format": 1, "served": False, "reason": "int8 on cpu runs no traced graph"}


def test_a_damaged_graph_is_not_served_the_model_is_loaded_the_full_way(tiny_model, tmp_path, capsys):
    options = ModelOptions(**INT8, graph_cache_dir=str(tmp_path))
    graph = tmp_path / graph_key(tiny_model, options)
    graph.mkdir()
    (graph / "graph.json").write_text(json.dumps({"format": 1, "served": True, "packs": True}))
    (graph / "graph.pt").write_bytes(b"not a graph")
    classifier = load_classifier(str(tiny_model), options, ("INFO", "json"))
    assert not classifier.from_graph and classifier.traced
    assert "the serving graph does not load" in capsys.readouterr().out


def test_an_unusable_cache_directory_leaves_the_full_load(tiny_model, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    options = ModelOptions(**INT8, graph_cache_dir=str(blocker / "graphs"))
    classifier = load_classifier(str(tiny_model), options, ("INFO", "json"))
    assert not classifier.from_graph and classifier.traced
    assert "the graph cache is not usable" in capsys.readouterr().out


def test_a_cache_directory_other_users_can_write_is_never_served_from(tiny_model, tmp_path, capsys):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    options = ModelOptions(**INT8, graph_cache_dir=str(shared))
    classifier = load_classifier(str(tiny_model), options, ("INFO", "json"))
    assert not classifier.from_graph and list(shared.iterdir()) == []
    assert "is writable by other users" in capsys.readouterr().out
    made = tmp_path / "made" / "graphs"
    _private(made)  # what a cache directory is made as
    assert made.stat().st_mode & 0o777 == 0o700


def test_the_graph_key_follows_the_model_files_and_the_options_that_shape_it(tiny_model, tmp_path):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    options = ModelOptions(**INT8)
    key = graph_key(model, options)
    assert graph_key(model, dataclasses.replace(options, batch_size=7, torch_threads=2)) == key
    assert graph_key(model, dataclasses.replace(options, max_length=64)) != key
    assert graph_key(model, dataclasses.replace(options, packing=False)) != key
    weights = model / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1_000_000_000))
    assert graph_key(model, options) != key  # a retrained model in the same place: a new graph


@pytest.fixture(scope="module")
def tokenizers_both_ways(tiny_model, tmp_path_factory):
    """The tiny model's tokenizer as the full load calls it, and its saved form as the graph's."""
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(tiny_model))
    path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.json"
    hf.backend_tokenizer.save(str(path))
    return hf, path


def _full_way(hf, texts, max_length):
    return hf(
        texts,
        truncation=True,
        max_length=max_length,
        padding=False,
        return_attention_mask=False,
        return_token_type_ids=False,
    )["input_ids"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    texts=st.lists(st.text(min_size=0, max_size=300), min_size=1, max_size=6),
    max_length=st.sampled_from([8, 16, 128]),
)
def test_the_saved_tokenizer_gives_the_full_loads_token_ids(tokenizers_both_ways, texts, max_length):
    hf, path = tokenizers_both_ways
    assert graph_tokenizer(path, max_length)(texts) == _full_way(hf, texts, max_length)


def test_the_saved_tokenizer_agrees_on_real_posts_and_truncates_on_the_models_side(tokenizers_both_ways):
    hf, path = tokenizers_both_ways
    posts = [
        "i feel like i am still looking at a blank canvas blank pieces of paper",
        "im feeling quite sad and sorry for myself but ill snap out of it soon " * 20,
        "Ça me rend TELLEMENT heureux 😊😊 #joy @friend https://example.com/x?y=1",
        "\u200b\u0301 mixed\ttabs\nand newlines\r\n",
    ]
    assert graph_tokenizer(path, 128)(posts) == _full_way(hf, posts, 128)
    left = graph_tokenizer(path, 12, side="left")(posts[1:2])[0]
    assert len(left) == 12 and left == [hf.cls_token_id, *hf(posts[1])["input_ids"][-11:]]
