"""The model card (``README.md``) written into every exported model directory."""

from __future__ import annotations

from emotion_stream.schemas import LABELS
from emotion_stream.training.metrics import REPORTED, fmt, per_class_markdown


def model_card(identity: dict, record: dict, metrics: dict) -> str:
    """Markdown describing what the model is for, how it was made and how well it does."""
    report = metrics[metrics["eval_split"]]
    hp = record["hyperparameters"]
    base = record["base_model"]
    data = record["data"]
    base_line = f"`{base['requested']}`"
    if base["origin"] == "fallback":
        base_line += f", replaced by `{base['name']}` ({base['note']})"
    elif base["source"] != base["requested"]:
        base_line += f" (loaded from `{base['source']}`)"
    sections = [
        f"---\nlibrary_name: transformers\npipeline_tag: text-classification\nlanguage: en\n"
        f"tags: [emotion, text-classification, emotion-stream]\n---\n\n# {identity['name']}\n",
        f"Version `{identity['version']}`, created {identity['created_at']}. Classifies a short English "
        f"social-media post as one of six emotions: {', '.join(LABELS)}. Fine-tuned from {base_line}.\n",
        "## Intended use\n\nLabelling streams of English posts (tweets and similar short texts) for "
        "aggregate monitoring: emotion trends over time, dashboards, routing posts for human review. "
        'Load it with `transformers.pipeline("text-classification", model=DIR)` or serve it with '
        "`emotion-stream worker` (`EMOTION_MODEL=DIR`).\n",
        "## Out-of-scope use\n\nDecisions about individuals (hiring, credit, moderation sanctions, "
        "health or mental-state assessment) without human review; texts that are long, non-English, "
        "or far from social-media posts; anything that treats one predicted emotion as the author's "
        "real state of mind. Every post gets one of the six labels, even when it expresses none.\n",
        "## Limitations and bias\n\nThe training data labels a post by the emotion words it contains, so "
        "the model leans on keywords and misses sarcasm, negation and context. " + _balance(data) + " "
        "The texts are English tweets from one period and community; dialects, slang and topics "
        "outside them are handled worse, and biases in the source posts carry over. Validation "
        "figures overstate performance on new data: measure on your own posts before relying on it.\n",
        f"## Data\n\nSource: `{data['source']}`. The dair-ai/emotion dataset is licensed for research "
        f"and education use only; check the licence of any other data. Trained on {data['train_examples']} "
        "posts; selected and measured on the "
        f"{data['eval_split']} split ({data['eval_examples']} posts).\n\n"
        + "| emotion | training posts |\n|---|---|\n"
        + "\n".join(f"| {k} | {v} |" for k, v in data["train_label_counts"].items())
        + "\n",
        "## Training\n\n"
        + "\n".join(f"- {k}: `{v}`" for k, v in hp.items())
        + f"\n- seed: `{record['seed']}`\n- max length: `{record['max_length']}` tokens\n"
        f"- precision: `{record['precision']}`, device: `{record['device']}`\n"
        f"- command: `{' '.join(record['command_line']) or 'n/a'}`\n",
        _soup_section(record, metrics),
        _distillation_section(record),
        _calibration_section(metrics),
        f"## Metrics ({data['eval_split']} split)\n\n| metric | value |\n|---|---|\n"
        + "\n".join(f"| {k} | {fmt(report.get(k))} |" for k in REPORTED)
        + "\n\n"
        + per_class_markdown(report)
        + "\n\n![confusion matrix](confusion_matrix.png)\n",
    ]
    return "\n".join(section for section in sections if section)


def _balance(data: dict) -> str:
    """A sentence on class imbalance, from the training counts."""
    counts = sorted(data["train_label_counts"].items(), key=lambda kv: kv[1], reverse=True)
    if counts[0][1] <= 1.5 * max(counts[-1][1], 1):
        return (
            "The training classes were roughly balanced; real streams are not, so expect other error rates."
        )
    return (
        f"The training classes are imbalanced ({counts[0][0]} {counts[0][1]} posts, {counts[-1][0]} "
        f"{counts[-1][1]}): the rare classes ({counts[-1][0]}, {counts[-2][0]}) are learnt least well."
    )


def _soup_section(record: dict, metrics: dict) -> str:
    """For a model soup: the models averaged, how each was trained and how each scored alone."""
    if not record.get("soup_of"):
        return ""
    alone = {m["directory"]: m["validation"] for m in metrics.get("soup", [])}
    rows = []
    for part in record["soup_of"]:
        v = alone.get(part["directory"], {})
        rows.append(
            f"| `{part['version']}` | {fmt(v.get('accuracy'))} | {fmt(v.get('f1_weighted'))} | "
            f"{fmt(v.get('f1_macro'))} | `{' '.join(part.get('command_line') or []) or 'n/a'}` |"
        )
    return (
        f"## Model soup\n\nThe weights are the average of {len(record['soup_of'])} models fine-tuned from "
        "the same "
        "base (the hyperparameters above are the first one's). Each alone, on validation:\n\n"
        "| version | accuracy | weighted F1 | macro F1 | command |\n|---|---|---|---|---|\n"
        + "\n".join(rows)
        + "\n"
    )


def _calibration_section(metrics: dict) -> str:
    calibration = metrics.get("calibration")
    if not calibration:
        return ""
    before, after = calibration["before"], calibration["after"]
    rows = "\n".join(
        f"| {name} | {fmt(before.get(key))} | {fmt(after.get(key))} |"
        for name, key in (
            ("expected calibration error (15 bins)", "ece"),
            ("Brier score", "brier"),
            ("log loss", "log_loss"),
            ("mean top-label probability", "mean_confidence"),
            ("accuracy", "accuracy"),
        )
    )
    head = calibration.get("head_refit") or {}
    if head.get("applied"):
        how = (
            "The head (the layers between the encoder and the logits) was trained again, the encoder "
            f"frozen, on the {head['train_posts']} training posts' features mixed in pairs (mixup, "
            f"alpha {head['alpha']}, {head['epochs']} epochs), so ambiguous posts score as ambiguous; "
            f"then a temperature of `{calibration['temperature']:.4f}`, fitted on the "
            f"{calibration['fitted_on']} split (minimum log loss), was folded into it (its final weight and "
            f"bias divided by it). {head['labels_changed']} of the {calibration['fitted_on']} split's "
            "labels changed with the head."
        )
    else:
        how = (
            f"A temperature of `{calibration['temperature']:.4f}`, fitted on the {calibration['fitted_on']} "
            "split (minimum log loss), is folded into the classification head (its weight and bias "
            "divided by it). The labels do not change."
        )
        if head.get("reason") or "applied" in head:
            how += " The head was not re-fitted: " + (
                head.get("reason") or "re-fitting it lost validation accuracy, so the trained head was kept."
            )
    confidence = calibration.get("confidence")
    unsure = ""
    if confidence:
        below = confidence["accuracy_below"]
        unsure = (
            f"\nConfidence threshold: `{confidence['threshold']}`, the {confidence['rule']} "
            f"({confidence['share_below']:.1%} of the {confidence['posts']} posts are below it"
            + (f", {below:.1%} of them labelled right" if below is not None else "")
            + (
                f"; {confidence['accuracy_at_or_above']:.1%} of the others"
                if confidence["accuracy_at_or_above"] is not None
                else ""
            )
            + "). The worker marks a result whose top score is below it as not confident "
            "(`confident: false`), and the aggregates count it as unsure (EMOTION_MIN_CONFIDENCE "
            "overrides it).\n"
        )
    return (
        f"## Calibration\n\nThe scores are calibrated, so any loader returns calibrated probabilities. "
        f"{how}\n\n| on {calibration['fitted_on']} | before | after |\n|---|---|---|\n{rows}\n\n"
        "![reliability diagram](reliability.png)\n" + unsure
    )


def _distillation_section(record: dict) -> str:
    distillation = record.get("distillation")
    if not distillation:
        return ""
    teacher = distillation.get("teacher_identity") or {}
    return (
        "## Distillation\n\nA student of "
        f"`{teacher.get('name', distillation['teacher'])}` (version `{teacher.get('version', 'n/a')}`): the "
        f"teacher's lowest {distillation['layers']} encoder layers, embeddings and head, trained on the "
        f"teacher's soft labels (weight {distillation['alpha']}, temperature "
        f"{distillation['kd_temperature']}) and the gold labels.\n"
    )
