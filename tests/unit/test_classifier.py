import itertools
import json
import random
import re
import threading

import pytest
import torch

from emotion_stream.schemas import LABELS
from emotion_stream.worker.model.api import ModelLoadError, ModelOptions
from emotion_stream.worker.model.loading import select_device
from emotion_stream.worker.model.planning import plan_sub_batches, split_threads
from emotion_stream.worker.model.runner import EmotionClassifier

TEXTS = [
    "i feel wonderful",
    "a much longer post about how i have been feeling rather anxious and uneasy for most of the week now",
    "ok",
    "i am so angry about the delayed train this morning",
    "tiny",
]


@pytest.fixture(scope="module")
def classifier(tiny_model):
    # A huge per-pass cost makes the plan deterministic: as few passes as the size allows;
    # one pass at a time keeps their order (parallel passes and packing are tested on their
    # own below).
    return EmotionClassifier(
        str(tiny_model),
        ModelOptions(device="cpu", batch_size=2, call_cost_tokens=1e6, cpu_passes=1, packing=False),
    )


def test_predictions_are_distributions_over_the_six_labels(classifier):
    predictions = classifier.predict(TEXTS)
    assert len(predictions) == len(TEXTS)
    for p in predictions:
        assert set(p.scores) == set(LABELS)
        assert abs(sum(p.scores.values()) - 1.0) < 1e-5
        assert p.label == max(p.scores, key=p.scores.get) and p.score == p.scores[p.label]


def test_length_sorted_sub_batches_match_one_post_at_a_time(classifier):
    together = classifier.predict_proba(TEXTS)
    alone = torch.cat([classifier.predict_proba([t]) for t in TEXTS])
    # Sorting and padding per sub-batch must not change any post's result or its position.
    assert torch.allclose(together, alone, atol=1e-5)


def test_sub_batches_pad_only_to_their_own_longest_post(classifier, monkeypatch):
    widths = []
    forward = classifier._forward

    def spy(x):
        widths.append(x.ids.shape[1])
        return forward(x)

    monkeypatch.setattr(classifier, "_forward", spy)
    classifier.predict(TEXTS)
    assert len(widths) == 3  # five posts, sub-batches of two
    assert widths == sorted(widths) and widths[0] < widths[-1]


def test_long_posts_are_truncated_to_max_length(tiny_model):
    for packing in (False, True):
        short = EmotionClassifier(str(tiny_model), ModelOptions(device="cpu", max_length=16, packing=packing))
        seen = []
        forward = short._forward
        short._forward = lambda x, seen=seen, forward=forward: (seen.append(x.ids.shape[1]), forward(x))[1]
        short.predict(["word " * 500])
        assert seen == [16]


def test_empty_input_gives_no_predictions(classifier):
    assert classifier.predict([]) == []


def test_model_version_is_a_digest_without_a_card_and_the_card_when_present(tiny_model, tmp_path):
    import shutil

    info = EmotionClassifier(str(tiny_model), ModelOptions(device="cpu")).info
    assert info.name == tiny_model.name and len(info.version) == 12
    copy = tmp_path / "carded"
    shutil.copytree(tiny_model, copy)
    (copy / "emotion_model.json").write_text(json.dumps({"name": "emotion-minilm", "version": "2026.11.22"}))
    assert EmotionClassifier(str(copy), ModelOptions(device="cpu")).info.model_dump() == {
        "name": "emotion-minilm",
        "version": "2026.11.22",
    }


def test_a_model_without_the_emotion_labels_is_refused(tiny_model, tmp_path):
    import shutil

    copy = tmp_path / "generic"
    shutil.copytree(tiny_model, copy)
    config = json.loads((copy / "config.json").read_text())
    config["id2label"] = {str(i): f"LABEL_{i}" for i in range(6)}
    config["label2id"] = {f"LABEL_{i}": i for i in range(6)}
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="not the six emotions"):
        EmotionClassifier(str(copy), ModelOptions(device="cpu"))


def test_a_directory_that_is_not_a_model_is_refused(tmp_path):
    with pytest.raises(ModelLoadError, match=re.escape("config.json")):
        EmotionClassifier(str(tmp_path), ModelOptions(device="cpu"))


def test_device_selection():
    assert select_device("cpu").type == "cpu"
    assert select_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="no CUDA device"):
            select_device("cuda")


@pytest.mark.parametrize("numeric,tolerance", [("bf16", 0.02), ("int8", 0.02)])
def test_faster_numeric_modes_stay_close_to_fp32(tiny_model, numeric, tolerance):
    exact = EmotionClassifier(str(tiny_model), ModelOptions(device="cpu")).predict_proba(TEXTS)
    fast = EmotionClassifier(str(tiny_model), ModelOptions(device="cpu", numeric=numeric))
    approx = fast.predict_proba(TEXTS)
    assert approx.dtype == torch.float32
    assert torch.allclose(approx.sum(dim=1), torch.ones(len(TEXTS)), atol=1e-4)
    assert (approx - exact).abs().max() < tolerance


def test_unknown_numeric_mode_is_refused(tiny_model):
    with pytest.raises(ModelLoadError, match="use auto, fp32, bf16 or int8"):
        EmotionClassifier(str(tiny_model), ModelOptions(device="cpu", numeric="fp8"))


def _plan_cost(lengths, plan, call_cost):
    return sum(call_cost + (end - start) * lengths[end - 1] for start, end in plan)


def _is_partition(plan, n, max_size):
    return (
        [start for start, _ in plan] == [0] + [end for _, end in plan[:-1]]
        and plan[-1][1] == n
        and all(0 < end - start <= max_size for start, end in plan)
    )


def test_plan_cuts_a_long_post_off_from_short_ones():
    lengths = [5, 5, 5, 5, 60]
    assert plan_sub_batches(lengths, max_size=8, call_cost_tokens=10) == [(0, 4), (4, 5)]
    # When a pass costs more than the padding it saves, they stay together.
    assert plan_sub_batches(lengths, max_size=8, call_cost_tokens=500) == [(0, 5)]


def test_plan_extremes_are_fixed_chunks_and_one_post_per_pass():
    lengths = sorted(random.Random(3).randint(3, 60) for _ in range(50))
    chunks = plan_sub_batches(lengths, max_size=16, call_cost_tokens=1e9)
    assert len(chunks) == 4 and _is_partition(chunks, 50, 16)
    distinct = list(range(3, 53))  # free passes and no ties: each post alone, padded to nothing
    assert plan_sub_batches(distinct, max_size=16, call_cost_tokens=0) == [(i, i + 1) for i in range(50)]
    assert plan_sub_batches([], max_size=16, call_cost_tokens=10) == []
    with pytest.raises(ValueError):
        plan_sub_batches(lengths, max_size=0, call_cost_tokens=10)


@pytest.mark.parametrize("seed", range(20))
def test_plan_is_the_cheapest_of_all_cuts(seed):
    rng = random.Random(seed)
    n, max_size, call_cost = rng.randint(1, 9), rng.randint(1, 4), rng.choice([0.5, 8, 30, 200])
    lengths = sorted(rng.randint(1, 64) for _ in range(n))
    plan = plan_sub_batches(lengths, max_size, call_cost)
    assert _is_partition(plan, n, max_size)
    every = []
    for cuts in itertools.product([False, True], repeat=n - 1):
        points = [0] + [i + 1 for i, c in enumerate(cuts) if c] + [n]
        candidate = list(itertools.pairwise(points))
        if _is_partition(candidate, n, max_size):
            every.append(_plan_cost(lengths, candidate, call_cost))
    assert _plan_cost(lengths, plan, call_cost) == pytest.approx(min(every))


def test_the_cost_of_a_pass_is_measured_when_the_model_loads(tiny_model):
    clf = EmotionClassifier(str(tiny_model), ModelOptions(device="cpu", batch_size=8))
    assert 1.0 <= clf.call_cost_tokens <= 1024.0
    given = EmotionClassifier(
        str(tiny_model), ModelOptions(device="cpu", batch_size=8, call_cost_tokens=12.5)
    )
    assert given.call_cost_tokens == 12.5


def test_a_pass_cost_the_clock_cannot_see_is_planned_as_large_as_allowed(tiny_model, monkeypatch):
    # A GPU runs one post and a padded sub-batch in the same time: the fixed cost is then all
    # there is, and the planner must cut as few sub-batches as it can, not as many.
    import emotion_stream.worker.model.runner as classifier_module

    ticks = iter(range(10_000))
    monkeypatch.setattr(classifier_module.time, "perf_counter", lambda: float(next(ticks)))
    clf = EmotionClassifier(str(tiny_model), ModelOptions(device="cpu", batch_size=8))
    assert clf.call_cost_tokens == classifier_module.MAX_CALL_COST_TOKENS


def test_auto_numeric_mode_is_fp32_on_the_cpu(tiny_model):
    auto = EmotionClassifier(str(tiny_model), ModelOptions(device="cpu", batch_size=8, call_cost_tokens=4))
    assert auto.numeric == "fp32" and auto._autocast_dtype is None
    texts = ["i feel fine", "so angry right now"]
    explicit = EmotionClassifier(
        str(tiny_model), ModelOptions(device="cpu", batch_size=8, call_cost_tokens=4, numeric="fp32")
    )
    assert torch.equal(auto.predict_proba(texts), explicit.predict_proba(texts))


def test_prepare_then_run_is_predict_and_prepare_leaves_the_model_alone(classifier, monkeypatch):
    calls = []
    forward = classifier._forward
    monkeypatch.setattr(classifier, "_forward", lambda x: (calls.append(x.ids.shape), forward(x))[1])
    prepared = classifier.prepare(TEXTS)
    assert calls == []  # tokenizing and padding only
    assert sorted(prepared.rows) == list(range(len(TEXTS)))
    assert sum(x.ids.shape[0] for x in prepared.inputs) == len(TEXTS)
    assert torch.allclose(classifier.run(prepared), classifier.predict_proba(TEXTS))
    assert [p.label for p in classifier.predict_prepared(prepared)] == [
        p.label for p in classifier.predict(TEXTS)
    ]
    assert classifier.run(classifier.prepare([])).shape == (0, len(LABELS))


def test_cpu_to_spare_beside_the_model(classifier, monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 4)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert not classifier.leaves_cpu_to_spare  # every core runs the model: prepare in turn
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert classifier.leaves_cpu_to_spare


def test_threads_are_shared_evenly_between_passes():
    assert split_threads(2, None) == [1, 1]  # auto: one pass per thread
    assert split_threads(1, None) == [1]
    assert split_threads(16, None) == [4, 4, 4, 4]  # at most four passes; more threads each
    assert split_threads(7, 2) == [4, 3]
    assert split_threads(8, 1) == [8]
    for threads, passes in ((2, 3), (4, 0)):
        with pytest.raises(ValueError, match=f"cpu_passes={passes} needs between 1 and {threads}"):
            split_threads(threads, passes)


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _threads_of_each_pass(clf):
    everyone = threading.Barrier(len(clf.pass_threads))  # one call per pass thread, all at once
    return sorted(clf._passes.map(lambda _: (everyone.wait(), torch.get_num_threads())[1], clf.pass_threads))


def test_parallel_passes_give_the_same_results_on_their_own_threads(tiny_model, two_threads):
    texts = TEXTS * 7
    parallel = EmotionClassifier(
        str(tiny_model),
        ModelOptions(device="cpu", batch_size=2, cpu_passes=2, call_cost_tokens=4, packing=False),
    )
    serial = EmotionClassifier(
        str(tiny_model),
        ModelOptions(device="cpu", batch_size=2, cpu_passes=1, call_cost_tokens=4, packing=False),
    )
    assert parallel.pass_threads == [1, 1] and serial.pass_threads == [2] and serial._passes is None
    ran_on = set()
    forward = parallel._forward
    parallel._forward = lambda x: (ran_on.add(threading.current_thread().name), forward(x))[1]
    assert torch.allclose(parallel.predict_proba(texts), serial.predict_proba(texts), atol=1e-6)
    assert len(parallel.prepare(texts).inputs) > 2
    assert ran_on and all(name.startswith("model-pass") for name in ran_on)
    # Each pass thread keeps its share; threads started later (the worker's) get them all.
    assert _threads_of_each_pass(parallel) == [1, 1]
    later = []
    thread = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    assert later == [2] and torch.get_num_threads() == 2


def test_more_passes_than_threads_is_refused_with_what_to_do(tiny_model, two_threads):
    with pytest.raises(ModelLoadError, match=r"cpu_passes=3 needs between 1 and 2.*EMOTION_CPU_PASSES"):
        EmotionClassifier(str(tiny_model), ModelOptions(device="cpu", cpu_passes=3, call_cost_tokens=4))


def test_a_hub_model_is_loaded_at_the_pinned_revision_and_a_directory_refuses_one(tiny_model, monkeypatch):
    import transformers

    from emotion_stream.worker.model.loading import load_pretrained

    with pytest.raises(ModelLoadError, match="EMOTION_MODEL_REVISION=abc123 pins a hub model"):
        EmotionClassifier(str(tiny_model), ModelOptions(device="cpu", revision="abc123"))
    seen = []
    for auto in (transformers.AutoTokenizer, transformers.AutoModelForSequenceClassification):
        real = auto.from_pretrained

        def recording(source, *args, _real=real, **kwargs):
            seen.append(kwargs.get("revision"))
            return _real(str(tiny_model), *args, **{k: v for k, v in kwargs.items() if k != "revision"})

        monkeypatch.setattr(auto, "from_pretrained", recording)
    loaded = load_pretrained("someorg/emotion-model", revision="0123abc")
    assert seen == ["0123abc", "0123abc"] and loaded.info.name == "someorg/emotion-model"
