"""Reading the labelled emotion splits, from the hub dataset or from a local directory.

A local directory holds one file per split (``train``, ``validation``, optionally ``test``),
each ``.txt`` (``text;label`` per line), ``.csv`` (header ``text,label``), ``.jsonl``
(``{"text": ..., "label": ...}``) or ``.parquet``. Labels are emotion names or class ids,
checked against ``schemas``. A bad row stops the load with the file, line and problem:
dropping rows silently would skew the class balance without anyone noticing.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from emotion_stream.schemas import ID2LABEL, parse_label
from emotion_stream.training.errors import TrainingError

HUB_DATASET = "dair-ai/emotion"
DATASET_LANGUAGES = ("en",)
"""The languages of the dataset's posts: what a model trained on it reads (recorded with it)."""
SPLITS = ("train", "validation", "test")
REQUIRED_SPLITS = ("train", "validation")
FORMATS = (".txt", ".csv", ".jsonl", ".parquet")

Row = tuple[int, object, object]  # (line number, raw text, raw label)


class DataError(TrainingError, ValueError):
    """The data cannot be used; the message names the file, the line and what to fix."""


@dataclass(frozen=True)
class LabeledTexts:
    """One split: texts and their class ids, in file order."""

    texts: list[str]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: Sequence[int]) -> LabeledTexts:
        return LabeledTexts([self.texts[i] for i in indices], [self.labels[i] for i in indices])

    def label_counts(self) -> dict[str, int]:
        counts = Counter(self.labels)
        return {name: counts.get(i, 0) for i, name in ID2LABEL.items()}


@dataclass(frozen=True)
class EmotionData:
    """The splits that were found, and where they came from (for the training record)."""

    source: str
    splits: dict[str, LabeledTexts] = field(default_factory=dict)

    def split(self, name: str) -> LabeledTexts:
        if name not in self.splits:
            raise DataError(
                f"{self.source} has no {name!r} split (it has {', '.join(self.splits) or 'none'}): "
                f"add a {name}.txt file or pick another split"
            )
        return self.splits[name]


def load_emotion_data(data_dir: Path | None) -> EmotionData:
    """The splits in ``data_dir``, or the hub dataset when it is None."""
    return load_local(Path(data_dir)) if data_dir is not None else load_hub()


def load_hub(name: str = HUB_DATASET) -> EmotionData:
    """Download (or read from the local cache) the hub dataset; needs network the first time."""
    try:
        import datasets

        dataset = datasets.load_dataset(name)
    except Exception as exc:  # offline, DNS, auth or a missing cache all end the same way
        raise DataError(
            f"cannot load the hub dataset {name} ({type(exc).__name__}: {exc}). "
            "Without network access pass --data DIR (a directory with train.txt and validation.txt, "
            "`text;label` per line) or set EMOTION_DATA_DIR."
        ) from exc
    splits = {}
    for split_name in dataset:
        rows = ((i + 1, r["text"], r["label"]) for i, r in enumerate(dataset[split_name]))
        splits[split_name] = _validated(f"{name}[{split_name}] row", rows)
    return EmotionData(source=f"hub:{name}", splits=splits)


def load_local(directory: Path) -> EmotionData:
    if not directory.is_dir():
        raise DataError(
            f"data directory {directory} does not exist: pass --data DIR with train and validation files"
        )
    splits = {}
    for name in SPLITS:
        path = find_split_file(directory, name)
        if path is None:
            if name in REQUIRED_SPLITS:
                raise DataError(
                    f"{directory} has no {name} file: expected one of "
                    + ", ".join(f"{name}{ext}" for ext in FORMATS)
                )
            continue
        splits[name] = read_split_file(path)
    return EmotionData(source=str(directory.resolve()), splits=splits)


def find_split_file(directory: Path, split: str) -> Path | None:
    """The one file named ``<split>.<ext>``; None when there is none."""
    candidates = sorted(p for p in directory.iterdir() if p.is_file() and p.stem == split)
    supported = [p for p in candidates if p.suffix.lower() in FORMATS]
    if len(supported) > 1:
        raise DataError(
            f"{directory} has several {split} files ({', '.join(p.name for p in supported)}): keep one"
        )
    if not supported and candidates:
        raise DataError(
            f"{candidates[0]}: unknown extension {candidates[0].suffix!r}: use one of {', '.join(FORMATS)}"
        )
    return supported[0] if supported else None


def read_split_file(path: Path) -> LabeledTexts:
    readers = {".txt": _txt_rows, ".csv": _csv_rows, ".jsonl": _jsonl_rows, ".parquet": _parquet_rows}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"{path}: unknown extension {path.suffix!r}: use one of {', '.join(FORMATS)}")
    unit = "row" if path.suffix.lower() == ".parquet" else "line"
    try:
        split = _validated(f"{path} {unit}", reader(path))
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}): save it as UTF-8"
        ) from None
    if not split.texts:
        raise DataError(f"{path}: no examples found: the file is empty")
    return split


def _validated(where: str, rows: Iterable[Row]) -> LabeledTexts:
    """Check each row; ``where`` prefixes the line number in errors (``train.txt line``)."""
    texts, labels = [], []
    for line_no, raw_text, raw_label in rows:
        text = "" if raw_text is None else str(raw_text).strip()
        if not text:
            raise DataError(f"{where} {line_no}: empty text: every example needs a post text")
        if raw_label is None or str(raw_label).strip() == "":
            raise DataError(f"{where} {line_no}: missing label")
        try:
            label = parse_label(raw_label if isinstance(raw_label, int) else str(raw_label).strip())
        except ValueError as exc:
            raise DataError(f"{where} {line_no}: {exc}") from None
        texts.append(text)
        labels.append(label)
    return LabeledTexts(texts, labels)


def _txt_rows(path: Path) -> Iterator[Row]:
    with _open_text(path) as fh:
        for line_no, line in enumerate(fh, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue  # blank lines (a trailing newline, spacing) carry no example
            if ";" not in line:
                raise DataError(f"{path} line {line_no}: no ';' separator: expected `text;label`")
            text, label = line.rsplit(";", 1)  # the text itself may contain ';'
            yield line_no, text, label


def _csv_rows(path: Path) -> Iterator[Row]:
    with _open_text(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"text", "label"} - set(reader.fieldnames or [])
        if missing:
            raise DataError(
                f"{path} line 1: the header needs columns text and label (missing "
                f"{', '.join(sorted(missing))})"
            )
        for row in reader:
            yield reader.line_num, row.get("text"), row.get("label")


def _jsonl_rows(path: Path) -> Iterator[Row]:
    with _open_text(path) as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path} line {line_no}: not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise DataError(f"{path} line {line_no}: expected an object with text and label")
            yield line_no, record.get("text"), record.get("label")


def _parquet_rows(path: Path) -> Iterator[Row]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    missing = {"text", "label"} - set(table.column_names)
    if missing:
        raise DataError(f"{path}: needs columns text and label (missing {', '.join(sorted(missing))})")
    for row_no, record in enumerate(table.select(["text", "label"]).to_pylist(), start=1):
        yield row_no, record["text"], record["label"]


def _open_text(path: Path, newline: str | None = None):
    try:
        return path.open(encoding="utf-8", newline=newline)
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror}") from None
