"""The model process's model runner: from the model's serving graph (:mod:`worker.model.graph`)
where it has one, built in a child process the first time, else the model loaded the full way."""

from __future__ import annotations

import multiprocessing
import sys
from dataclasses import replace
from pathlib import Path

import structlog
import torch

from emotion_stream.schemas.model_directory import read_identity
from emotion_stream.worker.model.api import ModelLoadError, ModelOptions, graph_cache_problem, model_source
from emotion_stream.worker.model.graph import graph_key, read_record, save_graph
from emotion_stream.worker.model.loading import resolve_numeric, select_device
from emotion_stream.worker.model.runner import EmotionClassifier

log = structlog.get_logger(__name__)

_UNLOADABLE = 3
"""The builder's exit code when the model does not load at all."""


def _build(model: str, options: ModelOptions, target: Path, logging: tuple[str, str]) -> None:
    """In a child process: load ``model`` the full way and save its serving graph."""
    from emotion_stream.worker.observability import configure_logging

    configure_logging(*logging)
    try:
        # One pass thread and no timing: only the graphs are kept.
        classifier = EmotionClassifier(model, replace(options, cpu_passes=1, call_cost_tokens=1.0))
    except ModelLoadError:
        sys.exit(_UNLOADABLE)  # the model process's own load says what is wrong, once
    why = save_graph(classifier, target)
    if why is None:
        log.info("serving graph saved", graph=str(target))
    else:
        log.info("no serving graph for this model: it is served through transformers", reason=why)


def _private(cache_dir: Path) -> None:
    """Make ``cache_dir`` (only this user may write it) or check that it is so: a graph is code
    the model process runs, so one that others could have put there is never loaded."""
    problem = graph_cache_problem(cache_dir)
    if problem is None:
        cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        problem = graph_cache_problem(cache_dir)
    if problem is not None:
        raise PermissionError(f"{problem}: set EMOTION_GRAPH_CACHE_DIR to a directory of this user's own")


def serving_graph(
    model: str, options: ModelOptions, cache_dir: Path, logging: tuple[str, str] = ("INFO", "json")
) -> Path | None:
    """The directory of ``model``'s serving graph under ``cache_dir``, built in a child process
    if the cache has none yet; None where the model is not served from a graph."""
    directory = model_source(model).directory
    if directory is None or not directory.is_dir() or select_device(options.device).type != "cpu":
        return None
    # Only int8 runs traced graphs: any other mode is loaded the full way, no child spawned.
    recorded = (read_identity(directory) or {}).get("numeric_modes")
    if not options.trace or resolve_numeric(options.numeric, torch.device("cpu"), recorded)[0] != "int8":
        return None
    _private(cache_dir)
    target = cache_dir / graph_key(directory, options)
    if read_record(target) is None:
        log.info("building the model's serving graph in a child process", graph=str(target))
        context = multiprocessing.get_context("spawn")
        builder = context.Process(target=_build, name="emotion-graph", args=(model, options, target, logging))
        builder.start()
        builder.join()
        if builder.exitcode == _UNLOADABLE:
            return None
        if builder.exitcode != 0:
            log.warning(
                "building the serving graph failed: serving the model through transformers",
                exit_code=builder.exitcode,
            )
            return None
    record = read_record(target)
    if not record or not record.get("served"):
        if record:
            log.info("the model has no serving graph", reason=record.get("reason"))
        return None
    return target


def load_classifier(
    model: str, options: ModelOptions, logging: tuple[str, str] = ("INFO", "json")
) -> EmotionClassifier:
    """The model runner the model process serves: from the model's serving graph where it has
    one in ``options.graph_cache_dir`` (None: never), else loaded the full way."""
    graph = None
    if options.graph_cache_dir is not None:
        try:
            graph = serving_graph(model, options, Path(options.graph_cache_dir), logging)
        except OSError as exc:  # an unwritable cache: serve as before, and say so
            log.warning("no serving graph: the graph cache is not usable", error=repr(exc))
        except Exception as exc:  # anything else the full load reports in its own words
            log.warning("no serving graph: loading the model the full way", error=repr(exc))
    if graph is not None:
        try:
            return EmotionClassifier(model, options, graph=graph)
        except Exception as exc:  # a damaged graph: the full way, and the log says why
            log.warning("the serving graph does not load: serving through transformers", error=repr(exc))
    return EmotionClassifier(model, options)
