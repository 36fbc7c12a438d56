"""The training subcommands: ``train``, ``tune``, ``soup``, ``calibrate``, ``distill``,
``verify-modes`` and ``evaluate``.

``register(subparsers)`` adds them; each sets ``run`` to a function returning an exit code.
The options they share are declared once, in groups (:func:`add_data_option`,
:func:`add_run_options`, :func:`add_export_options`), and every command that writes or
rewrites a model directory ends with :func:`after_export`.
Building the parser imports nothing heavy: torch, transformers and optuna load only when a
command runs. Problems the user can fix (``TrainingError`` from the training module, or a
:class:`~worker.cli.usage.UsageError` here) end with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from emotion_stream.training.base_models import DEFAULT_BASE_MODEL, PRESETS
from emotion_stream.training.config import DEFAULT_OUTPUT_DIR, DEFAULT_PARAMS_FILE, DEFAULT_TUNE_STORAGE
from emotion_stream.training.settings import TrainingSettings
from emotion_stream.worker.cli.usage import UsageError, load_settings


def register(subparsers) -> None:
    """Add the training subcommands to an argparse subparsers object."""
    _add_train(
        subparsers.add_parser(
            "train",
            help="fine-tune the emotion model and export it",
            description="Fine-tune a base model on the emotion data and write a model directory the worker "
            "serves.",
        )
    )
    _add_tune(
        subparsers.add_parser(
            "tune",
            help="search hyperparameters with Optuna",
            description="Search learning rate, batch size, epochs and class weighting; write the best as a "
            "--params file.",
        )
    )
    _add_soup(
        subparsers.add_parser(
            "soup",
            help="average several fine-tuned models into one",
            description="Average the weights of models fine-tuned from the same base (a uniform model soup), "
            "measure the result on validation and export it like a trained model.",
        )
    )
    _add_calibrate(
        subparsers.add_parser(
            "calibrate",
            help="calibrate an exported model's scores in place",
            description="Fit a temperature on the validation split, fold it into the classification head "
            "and update the model directory (a new version).",
        )
    )
    _add_distill(
        subparsers.add_parser(
            "distill",
            help="train a smaller student on a fine-tuned teacher's soft labels",
            description="Drop the teacher's top encoder layers, train the rest on the teacher's soft labels "
            "and the gold labels, then calibrate, measure and export it like any model.",
        )
    )
    _add_verify_modes(
        subparsers.add_parser(
            "verify-modes",
            help="measure which CPU numeric modes keep a model's quality, and record it",
            description="Run validation in fp32, bf16 (where the CPU has AVX512-BF16 or AMX) and int8; "
            "record accuracy, macro F1, agreement with fp32 and speed in the model directory, where "
            "EMOTION_NUMERIC=auto reads them.",
        )
    )
    _add_evaluate(
        subparsers.add_parser(
            "evaluate",
            help="measure a model directory on a split",
            description="Metrics, confusion matrix, confident mistakes and a TF-IDF baseline comparison.",
        )
    )


DATA_HELP = "data directory (default: EMOTION_DATA_DIR, else the hub)"
RUN_DATA_HELP = (
    "directory with train and validation files (.txt `text;label`, .csv, .jsonl, .parquet); "
    "default: EMOTION_DATA_DIR, else the hub dataset dair-ai/emotion"
)


def add_data_option(p: argparse.ArgumentParser, help: str = DATA_HELP) -> None:
    """``--data``: where the emotion data is, for every command that reads it (see :func:`_data_dir`)."""
    p.add_argument("--data", type=Path, metavar="DIR", help=help)


def add_seed_option(p: argparse.ArgumentParser, help: str = "random seed (default 42)") -> None:
    p.add_argument("--seed", type=int, default=42, help=help)


def add_max_length_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-length", type=_positive_int, default=128, help="token limit per post (default 128)")


def add_run_options(p: argparse.ArgumentParser, *, base_model: bool = True) -> None:
    """The options of a training run (``train``, ``tune``, ``distill``), read by :func:`_run_options`.

    ``base_model=False`` is distill's run, whose base is its ``--teacher``: it has no choice of
    base model (``--base-model``, ``--no-fallback``), of token limit or of selection split.
    """
    add_data_option(p, RUN_DATA_HELP if base_model else DATA_HELP)
    if base_model:
        p.add_argument(
            "--base-model",
            default=DEFAULT_BASE_MODEL,
            metavar="NAME",
            help=f"hub id, local directory or preset ({', '.join(PRESETS)}); default {DEFAULT_BASE_MODEL}, "
            "which falls back to minilm-l6 when the hub is unreachable",
        )
        p.add_argument("--no-fallback", action="store_true", help="fail instead of falling back to minilm-l6")
    add_seed_option(p)
    if base_model:
        add_max_length_option(p)
    p.add_argument(
        "--max-steps", type=_positive_int, help="stop after this many optimizer steps (smoke tests)"
    )
    p.add_argument(
        "--train-limit", type=_positive_int, metavar="N", help="train on a stratified subset of N posts"
    )
    if base_model:
        p.add_argument(
            "--dev-fraction",
            type=_fraction,
            metavar="F",
            help="select on a stratified share F of train instead of validation (validation is still "
            "reported)",
        )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_export_options(
    p: argparse.ArgumentParser,
    *,
    verify_help: str = "skip measuring the CPU numeric modes",
    calibrate_help: str | None = None,
) -> None:
    """The steps of writing a model directory that can be turned off: measuring its numeric
    modes after it (``--no-verify-modes``, see :func:`after_export`), calibrating it where the
    command does so as it exports (``--no-calibrate``, given ``calibrate_help``) and the head
    re-fit before the temperature (``--no-head-refit``)."""
    p.add_argument("--no-verify-modes", action="store_true", help=verify_help)
    if calibrate_help is not None:
        p.add_argument("--no-calibrate", action="store_true", help=calibrate_help)
    p.add_argument(
        "--no-head-refit",
        action="store_true",
        help="calibrate with the temperature alone: do not re-fit the head on the training split "
        "with mixup first (the head is kept anyway if re-fitting it loses validation accuracy)",
    )


def after_export(args: argparse.Namespace, model_dir: Path, data_dir: Path | None) -> None:
    """What follows writing a model directory: its CPU numeric modes measured on validation and
    recorded in it, unless ``--no-verify-modes``."""
    if not args.no_verify_modes:
        verify_modes(model_dir, data_dir)


def _add_train(p: argparse.ArgumentParser) -> None:
    add_run_options(p)
    p.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT_DIR,
        metavar="DIR",
        help=f"model directory to write (default {DEFAULT_OUTPUT_DIR})",
    )
    p.add_argument(
        "--params", type=Path, metavar="FILE", help="JSON hyperparameters (from `tune`); flags override it"
    )
    add_export_options(
        p,
        verify_help="skip measuring the CPU numeric modes (fp32, bf16, int8) on validation after export",
        calibrate_help="export the raw scores: no head re-fit, no temperature fitted on validation and "
        "folded in",
    )
    # None means "not given", so a --params file value survives unless a flag overrides it.
    p.add_argument("--lr", type=float, help="learning rate (default 2e-5)")
    p.add_argument("--batch-size", type=_positive_int, help="training batch size (default 16)")
    p.add_argument("--epochs", type=_positive_int, help="epochs (default 3)")
    p.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 0.01)")
    p.add_argument(
        "--warmup-ratio", type=float, help="share of steps warming up the learning rate (default 0)"
    )
    p.add_argument("--label-smoothing", type=float, help="label smoothing factor (default 0)")
    p.add_argument(
        "--class-weight-power",
        type=float,
        help="with --class-weights: weights are inverse frequency to this power (default 1; 0.5 is gentler)",
    )
    p.add_argument(
        "--class-weights",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="weight the loss by inverse class frequency (default off)",
    )
    p.add_argument(
        "--patience", type=int, help="epochs without improvement before stopping early; 0 = never (default 2)"
    )
    p.set_defaults(run=run_train)


def _add_tune(p: argparse.ArgumentParser) -> None:
    add_run_options(p)
    p.add_argument(
        "--trials",
        type=_positive_int,
        default=20,
        help="finished trials the study should hold; a resumed study runs only the missing ones (default 20)",
    )
    p.add_argument(
        "--storage", default=DEFAULT_TUNE_STORAGE, help=f"Optuna storage URL (default {DEFAULT_TUNE_STORAGE})"
    )
    p.add_argument("--study-name", default="emotion", help="study to create or resume (default emotion)")
    p.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_PARAMS_FILE,
        metavar="FILE",
        help=f"where to write the best parameters for `train --params` (default {DEFAULT_PARAMS_FILE})",
    )
    p.add_argument(
        "--lr-range",
        type=float,
        nargs=2,
        default=(1e-5, 5e-5),
        metavar=("LOW", "HIGH"),
        help="learning-rate range, searched on a log scale (default 1e-5 5e-5)",
    )
    p.add_argument(
        "--batch-sizes", type=_positive_int, nargs="+", default=[8, 16, 32], help="default 8 16 32"
    )
    p.add_argument("--epoch-choices", type=_positive_int, nargs="+", default=[2, 3, 4], help="default 2 3 4")
    p.add_argument(
        "--class-weights",
        choices=("search", "on", "off"),
        default="search",
        help="try both (search, default) or fix class weighting on or off",
    )
    p.add_argument(
        "--timeout", type=float, metavar="SECONDS", help="stop starting new trials after this long"
    )
    p.set_defaults(run=run_tune)


def _add_evaluate(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        type=Path,
        default=DEFAULT_OUTPUT_DIR,
        metavar="DIR",
        help=f"model directory (default {DEFAULT_OUTPUT_DIR})",
    )
    p.add_argument(
        "--split",
        default="validation",
        help="split to measure: train, validation or test (default validation)",
    )
    add_data_option(p)
    p.add_argument(
        "--output",
        type=Path,
        metavar="DIR",
        help="where to write the results (default MODEL/evaluation/SPLIT)",
    )
    p.add_argument(
        "--no-baseline", action="store_true", help="skip the TF-IDF + logistic regression comparison"
    )
    p.add_argument("--batch-size", type=_positive_int, default=64, help="inference batch size (default 64)")
    add_max_length_option(p)
    p.add_argument(
        "--errors",
        type=int,
        default=50,
        metavar="N",
        help="confident mistakes to list in errors.csv (default 50)",
    )
    add_seed_option(p, "random seed of the baseline (default 42)")
    p.set_defaults(run=run_evaluate)


def run_train(args: argparse.Namespace) -> int:
    from emotion_stream.training.config import TrainOptions, resolve_hyperparameters
    from emotion_stream.training.train import train

    hp = resolve_hyperparameters(
        args.params,
        {
            "learning_rate": args.lr,
            "batch_size": args.batch_size,
            "epochs": args.epochs,
            "weight_decay": args.weight_decay,
            "warmup_ratio": args.warmup_ratio,
            "label_smoothing": args.label_smoothing,
            "class_weights": args.class_weights,
            "patience": args.patience,
            "class_weight_power": args.class_weight_power,
        },
    )
    options = TrainOptions(
        **_run_options(args),
        output_dir=args.output,
        params_file=args.params,
        calibrate=not args.no_calibrate,
        refit_head=not args.no_head_refit,
    )
    result = train(options, hp)
    after_export(args, result.output_dir, options.data_dir)
    return 0


def verify_modes(model_dir: Path, data_dir: Path | None, limit: int | None = None) -> dict:
    """Measure the CPU numeric modes of an exported model on validation and record them in it."""
    from emotion_stream.training.data import load_emotion_data
    from emotion_stream.training.sampling import stratified_sample
    from emotion_stream.worker.model.verify import record_numeric_modes, verify_numeric_modes

    validation = load_emotion_data(data_dir).split("validation")
    if limit is not None and limit < len(validation.texts):
        validation = stratified_sample(validation, limit, seed=0)
    print(f"[verify-modes] {model_dir}: {len(validation.texts)} validation posts per mode", file=sys.stderr)
    verification = verify_numeric_modes(model_dir, validation.texts, validation.labels)
    record_numeric_modes(model_dir, verification)
    for mode, figures in verification["modes"].items():
        kept = figures.get("fp32_layers") or ()
        kept_in = figures.get("kept_in", "fp32")
        print(
            f"  {mode:<5} accuracy {figures['accuracy']:.4f}  macro F1 {figures['f1_macro']:.4f}  "
            f"agreement {figures['agreement']:.4f}  {figures['posts_per_s']:>7.1f} posts/s "
            f"({figures['speedup']:.2f}x)  "
            + ("verified" if figures["verified"] else "NOT verified")
            + (f" with {len(kept)} linear layers kept in {kept_in} ({', '.join(kept)})" if kept else ""),
            file=sys.stderr,
        )
        for step in (figures.get("search") or {}).get("tried", ()):
            print(
                f"        tried {step['fp32_layers']:>2} layers out of int8: "
                f"accuracy {step['accuracy']:.4f}  agreement {step['agreement']:.4f}  "
                f"{step['posts_per_s']:>7.1f} posts/s",
                file=sys.stderr,
            )
    return verification


def _add_distill(p: argparse.ArgumentParser) -> None:
    from emotion_stream.training.config import DISTILL_RECIPE, DistillOptions

    defaults = DistillOptions()
    p.add_argument(
        "--teacher", type=Path, required=True, metavar="DIR", help="the fine-tuned teacher's directory"
    )
    p.add_argument("--output", type=Path, required=True, metavar="DIR", help="model directory to write")
    p.add_argument(
        "--layers",
        type=_positive_int,
        default=defaults.layers,
        help=f"encoder layers kept (default {defaults.layers})",
    )
    p.add_argument(
        "--alpha",
        type=_fraction,
        default=defaults.alpha,
        help=f"weight of the teacher's soft labels in the loss (default {defaults.alpha})",
    )
    p.add_argument(
        "--kd-temperature",
        type=float,
        default=defaults.kd_temperature,
        help=f"softening of both distributions in that loss (default {defaults.kd_temperature})",
    )
    p.add_argument("--lr", type=float, help=f"learning rate (default {DISTILL_RECIPE.learning_rate})")
    p.add_argument("--epochs", type=_positive_int, help=f"epochs (default {DISTILL_RECIPE.epochs})")
    p.add_argument(
        "--batch-size", type=_positive_int, help=f"batch size (default {DISTILL_RECIPE.batch_size})"
    )
    add_run_options(p, base_model=False)
    add_export_options(p)
    p.set_defaults(run=run_distill)


def run_distill(args: argparse.Namespace) -> int:
    from emotion_stream.training.config import DISTILL_RECIPE, DistillOptions
    from emotion_stream.training.distill import distill

    overrides = {"learning_rate": args.lr, "epochs": args.epochs, "batch_size": args.batch_size}
    hp = DISTILL_RECIPE.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    options = DistillOptions(
        **_run_options(args),
        base_model=str(args.teacher),
        allow_fallback=False,
        output_dir=args.output,
        layers=args.layers,
        alpha=args.alpha,
        kd_temperature=args.kd_temperature,
        refit_head=not args.no_head_refit,
    )
    result = distill(options, hp)
    after_export(args, result.output_dir, options.data_dir)
    return 0


def _add_verify_modes(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model", type=Path, metavar="MODEL_DIR", help="model directory; the results are recorded in it"
    )
    add_data_option(p)
    p.add_argument("--limit", type=_positive_int, help="measure on a stratified sample of this many posts")
    p.set_defaults(run=run_verify_modes)


def run_verify_modes(args: argparse.Namespace) -> int:
    from emotion_stream.worker.model.loading import choose_numeric

    verification = verify_modes(args.model, _data_dir(args), args.limit)
    mode, reason = choose_numeric(verification)
    print(f"EMOTION_NUMERIC=auto will run {mode} on this CPU: {reason}")
    return 0


def _add_calibrate(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", type=Path, metavar="MODEL_DIR", help="model directory, calibrated in place")
    add_data_option(p)
    add_export_options(p, verify_help="skip measuring the CPU numeric modes again on the new weights")
    p.set_defaults(run=run_calibrate)


def run_calibrate(args: argparse.Namespace) -> int:
    from emotion_stream.training.calibration import calibrate_directory
    from emotion_stream.training.head import HeadRefit

    data_dir = _data_dir(args)
    record = calibrate_directory(
        args.model,
        data_dir,
        refit=None if args.no_head_refit else HeadRefit(),
        log=lambda message: print(f"[calibrate] {message}", file=sys.stderr, flush=True),
    )
    before, after = record["before"], record["after"]
    print(
        f"calibrated {args.model}: temperature {record['temperature']:.4f}; validation ECE "
        f"{before['ece']:.4f} -> {after['ece']:.4f}, Brier {before['brier']:.4f} -> {after['brier']:.4f}, "
        f"log loss {before['log_loss']:.4f} -> {after['log_loss']:.4f}, "
        f"accuracy {before['accuracy']:.4f} -> {after['accuracy']:.4f}"
    )
    after_export(args, args.model, data_dir)
    return 0


def run_tune(args: argparse.Namespace) -> int:
    from emotion_stream.training.tune import SearchSpace, TuneOptions, tune

    low, high = args.lr_range
    if not 0 < low <= high < 1:
        raise UsageError("--lr-range needs 0 < LOW <= HIGH < 1, e.g. --lr-range 1e-5 5e-5")
    weights = {"search": (False, True), "on": (True,), "off": (False,)}[args.class_weights]
    space = SearchSpace(low, high, tuple(args.batch_sizes), tuple(args.epoch_choices), weights)
    tune(
        TuneOptions(
            **_run_options(args),
            storage=args.storage,
            study_name=args.study_name,
            trials=args.trials,
            timeout_s=args.timeout,
            params_out=args.output,
            space=space,
        )
    )
    return 0


def _add_soup(p: argparse.ArgumentParser) -> None:
    p.add_argument("models", nargs="+", type=Path, metavar="MODEL_DIR", help="two or more model directories")
    p.add_argument("--output", type=Path, required=True, metavar="DIR", help="model directory to write")
    add_data_option(p)
    add_export_options(p, calibrate_help="export the averaged weights as they are, uncalibrated")
    p.set_defaults(run=run_soup)


def run_soup(args: argparse.Namespace) -> int:
    from emotion_stream.training.head import HeadRefit
    from emotion_stream.training.soup import soup

    data_dir = _data_dir(args)
    soup(
        args.models,
        args.output,
        data_dir,
        command_line=_command_line(),
        calibrate=not args.no_calibrate,
        refit=None if args.no_head_refit else HeadRefit(),
    )
    after_export(args, args.output, data_dir)
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from emotion_stream.training.evaluate import evaluate

    evaluate(
        args.model,
        split=args.split,
        data_dir=_data_dir(args),
        output_dir=args.output,
        baseline=not args.no_baseline,
        batch_size=args.batch_size,
        max_length=args.max_length,
        max_errors=args.errors,
        seed=args.seed,
    )
    return 0


def _settings() -> TrainingSettings:
    return load_settings(TrainingSettings)


def _data_dir(args: argparse.Namespace, settings: TrainingSettings | None = None) -> Path | None:
    """``--data``, else EMOTION_DATA_DIR; None means the hub."""
    if args.data is not None:
        return args.data
    return (settings or _settings()).data_dir


def _command_line() -> list[str]:
    """The command as typed, for the training record."""
    return ["emotion-stream", *sys.argv[1:]]


def _run_options(args: argparse.Namespace) -> dict:
    """The :class:`~training.config.RunOptions` fields of the options :func:`add_run_options` declared."""
    settings = _settings()
    options = dict(
        data_dir=_data_dir(args, settings),
        seed=args.seed,
        max_steps=args.max_steps,
        train_limit=args.train_limit,
        progress=not args.no_progress,
        command_line=_command_line(),
    )
    if "base_model" in args:  # not distill's: its base is the teacher
        options.update(
            base_model=args.base_model,
            allow_fallback=not args.no_fallback,
            hub_timeout=settings.hub_timeout,
            max_length=args.max_length,
            dev_fraction=args.dev_fraction,
        )
    return options


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be 1 or more")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be between 0 and 1, e.g. 0.1")
    return value
