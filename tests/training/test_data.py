"""Loading splits: every supported format, and errors that name the file, the line and the problem."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from emotion_stream.schemas import LABEL2ID
from emotion_stream.training.data import DataError, load_emotion_data, load_hub, read_split_file
from emotion_stream.training.sampling import carve_dev_split, stratified_sample
from emotion_stream.training.settings import resolve_data_dir


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_txt_splits_on_the_last_separator_and_accepts_names_and_ids(tmp_path: Path) -> None:
    write(tmp_path / "train.txt", "so happy; truly;joy\nI am scared;4\n\n  i love this ;LOVE\n")
    write(tmp_path / "validation.txt", "wow;surprise\n")
    data = load_emotion_data(tmp_path)
    train = data.split("train")
    assert train.texts == ["so happy; truly", "I am scared", "i love this"]
    assert train.labels == [LABEL2ID["joy"], LABEL2ID["fear"], LABEL2ID["love"]]
    assert data.split("validation").labels == [LABEL2ID["surprise"]]
    assert "test" not in data.splits
    assert data.source == str(tmp_path.resolve())


def test_csv_jsonl_and_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    csv_split = read_split_file(write(tmp_path / "train.csv", 'text,label\n"hello, world",joy\nugh,anger\n'))
    assert csv_split.texts == ["hello, world", "ugh"] and csv_split.labels == [1, 3]
    jsonl = write(
        tmp_path / "validation.jsonl",
        json.dumps({"text": "oh no", "label": "fear"})
        + "\n"
        + json.dumps({"text": "sad", "label": 0})
        + "\n",
    )
    assert read_split_file(jsonl).labels == [4, 0]
    pq.write_table(pa.table({"text": ["a surprise", "miss you"], "label": [5, 0]}), tmp_path / "test.parquet")
    assert read_split_file(tmp_path / "test.parquet").texts == ["a surprise", "miss you"]
    assert set(load_emotion_data(tmp_path).splits) == {"train", "validation", "test"}


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        (
            "train.txt",
            "fine;joy\nok;sadness\nnope;happy\n",
            "train.txt line 3: unknown label 'happy': expected one of sadness",
        ),
        ("train.txt", "fine;joy\nno separator here\n", "train.txt line 2: no ';' separator"),
        ("train.txt", "fine;joy\n   ;anger\n", "train.txt line 2: empty text"),
        ("train.txt", "fine;\n", "train.txt line 1: missing label"),
        ("train.csv", "text,label\nfine,joy\nmeh,9\n", "train.csv line 3: unknown label '9'"),
        (
            "train.csv",
            "post,emotion\nfine,joy\n",
            "train.csv line 1: the header needs columns text and label",
        ),
        ("train.jsonl", '{"text": "x", "label": "joy"}\n{not json\n', "train.jsonl line 2: not valid JSON"),
        ("train.jsonl", '{"text": "", "label": "joy"}\n', "train.jsonl line 1: empty text"),
    ],
)
def test_bad_rows_name_the_file_line_and_problem(
    tmp_path: Path, name: str, content: str, expected: str
) -> None:
    write(tmp_path / name, content)
    write(tmp_path / "validation.txt", "ok;joy\n")
    with pytest.raises(DataError) as caught:
        load_emotion_data(tmp_path)
    assert expected in str(caught.value)
    assert str(tmp_path) in str(caught.value)


def test_unknown_extension_and_missing_split(tmp_path: Path) -> None:
    write(tmp_path / "train.xlsx", "whatever")
    write(tmp_path / "validation.txt", "ok;joy\n")
    with pytest.raises(DataError, match=r"train\.xlsx: unknown extension '\.xlsx': use one of \.txt, \.csv"):
        load_emotion_data(tmp_path)
    (tmp_path / "train.xlsx").unlink()
    with pytest.raises(DataError, match=re.escape("has no train file: expected one of train.txt")):
        load_emotion_data(tmp_path)
    with pytest.raises(DataError, match="does not exist: pass --data DIR"):
        load_emotion_data(tmp_path / "nowhere")
    write(tmp_path / "train.txt", "ok;joy\n")
    with pytest.raises(DataError, match="has no 'test' split"):
        load_emotion_data(tmp_path).split("test")


def test_hub_failure_says_how_to_use_local_data(hub_offline: None, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError) as caught:
        load_hub("emotion-stream-tests/no-such-dataset")
    message = str(caught.value)
    assert "emotion-stream-tests/no-such-dataset" in message
    assert "--data DIR" in message and "EMOTION_DATA_DIR" in message


def test_data_dir_comes_from_the_option_then_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("EMOTION_DATA_DIR", str(tmp_path))
    assert resolve_data_dir(None) == tmp_path
    assert resolve_data_dir(Path("/elsewhere")) == Path("/elsewhere")
    monkeypatch.delenv("EMOTION_DATA_DIR")
    assert resolve_data_dir(None) is None


def test_stratified_subset_and_dev_split_keep_every_class(emotion_data: Path) -> None:
    train = load_emotion_data(emotion_data).split("train")  # 10 posts of each emotion
    subset = stratified_sample(train, 12, seed=1)
    assert len(subset) == 12 and set(subset.label_counts().values()) == {2}
    assert stratified_sample(train, 12, seed=1).texts == subset.texts  # the seed fixes the draw
    assert len(stratified_sample(train, 500, seed=1)) == len(train)
    rest, dev = carve_dev_split(train, 0.2, seed=1)
    assert len(dev) == 12 and len(rest) == 48
    assert set(dev.label_counts().values()) == {2}
    assert not set(dev.texts) & set(rest.texts)
    with pytest.raises(DataError, match="--dev-fraction must be between 0 and 1"):
        carve_dev_split(train, 1.5, seed=1)
