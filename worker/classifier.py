"""The model runner: texts in, emotion probabilities out. No Kafka, no event loop.

Loads a Hugging Face sequence-classification directory (or hub id) with safetensors only
and no remote code. A call to :meth:`EmotionClassifier.predict` tokenizes the whole window
once without padding, sorts it by token length and runs it as sub-batches of similar
length, each padded only to its own longest post: the padding a stream of short posts
would otherwise carry is most of the work (see FACTS.md: sorting doubles throughput).
Where the sub-batches are cut is planned per window (:func:`plan_sub_batches`): each
forward pass has a fixed cost (on the CPU, matrix products over few rows run far below
peak; on a GPU, launching the kernels), measured when the model loads, and it is weighed
against the padding saved.
A small window on the CPU is packed instead (:func:`pack_rows`): its posts are shared out
among the parallel passes by token count, and each pass runs its share as a few rows of
posts laid end to end, every post attending only to its own tokens and counting its
positions from 0. That is the same arithmetic as padded sub-batches (results agree to
float rounding) with no padding at all and exactly one forward pass per pass thread, which
a planned window of a few posts cannot have (bench/: 1.2-1.35x on windows of 4-24 posts).
On the CPU the sub-batches of a window run as parallel passes, each on its own share of the
torch threads (:func:`split_threads`), rather than one pass at a time on all of them: a
pass on one thread never waits at a barrier for a sibling thread the OS has lent to the
broker or the event loop, so the model keeps its pace on a machine it shares.
On CUDA, inputs go through pinned memory and the forward pass runs under autocast (bf16, or
fp16 where the GPU lacks bf16) unless fp32 is asked for.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import queue
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import structlog
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from schemas import LABELS, ModelInfo

log = structlog.get_logger(__name__)


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message says what to do."""


class ModelUnavailable(RuntimeError):
    """The model runner itself is gone (its process died), not a post it failed on: the
    batch must not be retried post by post or dead-lettered, but re-read after a restart."""


@dataclass(frozen=True)
class Prediction:
    label: str
    score: float
    scores: dict[str, float]


@dataclass(frozen=True)
class ModelInput:
    """The tensors of one forward pass: a padded sub-batch, or rows of packed posts."""

    ids: torch.Tensor
    """Token ids, (rows, width)."""
    mask: torch.Tensor
    """Padded: (rows, width), 1 on real tokens. Packed: (rows, 1, width, width), where each
    token may attend (bool; additive floats for eager attention)."""
    positions: Optional[torch.Tensor] = None
    """Packed only: each token's position within its own post, (rows, width)."""
    firsts: Optional[torch.Tensor] = None
    """Packed only: where each post's first token is, as an index into the flattened rows."""

    @property
    def posts(self) -> int:
        return int(self.ids.shape[0] if self.firsts is None else self.firsts.shape[0])


@dataclass(frozen=True)
class PreparedTexts:
    """Texts tokenized and padded into planned sub-batches (or packed), ready for the model."""

    rows: list[int]
    """For each post of the passes' outputs, in order, the index of its text."""
    inputs: list[ModelInput]
    """What each forward pass runs."""


def to_predictions(rows: Sequence[Sequence[float]], columns: Sequence[str]) -> list[Prediction]:
    """One prediction per row of probabilities, ``columns`` naming the emotion of each."""
    out = []
    for row in rows:
        scores = {columns[i]: float(p) for i, p in enumerate(row)}
        best = max(range(len(row)), key=row.__getitem__)
        out.append(Prediction(label=columns[best], score=float(row[best]), scores=scores))
    return out


def plan_sub_batches(lengths: Sequence[int], max_size: int, call_cost_tokens: float) -> list[tuple[int, int]]:
    """Cut posts sorted by ascending token length into contiguous sub-batches, cheapest first.

    A sub-batch ``[start, end)`` costs one forward pass (``call_cost_tokens``, the fixed
    cost of a pass in units of one token's work) plus ``(end - start) * lengths[end - 1]``
    tokens of work, as each is padded to its longest post. Returns the ``(start, end)``
    pairs, each at most ``max_size`` long, that minimise the total (dynamic programming
    over the cut points, O(len * max_size)).
    """
    n = len(lengths)
    if max_size < 1:
        raise ValueError("max_size must be at least 1")
    best = np.full(n + 1, np.inf)  # best[j]: cheapest way to run the first j posts
    best[0] = 0.0
    cut = [0] * (n + 1)
    starts = np.arange(n + 1, dtype=np.float64)
    for end in range(1, n + 1):
        low = max(0, end - max_size)
        # Every start at once (a window of 1,024 posts in sub-batches of 256 is 262,144
        # candidates: a GPU's planning, not its model, would otherwise set the pace).
        costs = best[low:end] + call_cost_tokens + (end - starts[low:end]) * lengths[end - 1]
        at = int(costs.argmin())  # the first of equal costs, as a strict < would keep
        best[end], cut[end] = costs[at], low + at
    plan = []
    end = n
    while end > 0:
        plan.append((cut[end], end))
        end = cut[end]
    return plan[::-1]


def share_out(lengths: Sequence[int], parts: int) -> list[list[int]]:
    """Indices of ``lengths`` shared among at most ``parts`` groups of near-equal total
    length: longest first, each to the lightest group so far. Empty groups are left out."""
    groups: list[list[int]] = [[] for _ in range(max(1, parts))]
    loads = [0] * len(groups)
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        lightest = loads.index(min(loads))
        groups[lightest].append(i)
        loads[lightest] += lengths[i]
    return [g for g in groups if g]


def pack_rows(lengths: Sequence[int], row_tokens: int) -> list[list[int]]:
    """Posts laid end to end in rows of about ``row_tokens`` tokens: as few rows as hold
    them all, each about as full as the others (rows are padded to the fullest)."""
    total = sum(lengths)
    return share_out(lengths, -(-total // max(1, row_tokens)))


PACKED_ROW_TOKENS = 128
"""Tokens in a packed row (or the longest post, if longer). Attention in a row costs its
length squared, so rows stay short; the linear layers do not care."""

PACK_ROWS_PER_PASS = 4
"""Windows of up to this many packed rows per parallel pass run packed; bigger ones run as
planned sub-batches, as fast there (sorted, they carry almost no padding) and kinder to
the caches than one big pass per thread (bench/: 0.85-0.9x packed at 512 posts)."""


def _distilbert_head(model, first: torch.Tensor) -> torch.Tensor:
    return model.classifier(model.dropout(torch.relu(model.pre_classifier(first))))


def _bert_head(model, first: torch.Tensor) -> torch.Tensor:
    return model.classifier(model.dropout(model.bert.pooler(first[:, None, :])))


_PACKED_HEADS = {
    "DistilBertForSequenceClassification": _distilbert_head,
    "BertForSequenceClassification": _bert_head,
}
"""Classification heads, from the first token's hidden state, of the architectures that run
packed: the ones emotion-stream trains and serves. Any other runs padded."""


_CUDA_ATTENTION = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
"""Attention kernels on CUDA, cuDNN's left out: it builds a plan for every new (rows, width)
shape, and the worker's sub-batches come in hundreds of shapes (measured on an H100, bf16:
about 25 ms more per forward pass until each shape has been seen once)."""

MAX_CALL_COST_TOKENS = 1024.0
"""The most a forward pass's fixed cost is planned at, in tokens of work."""


class PrepackedLinear(torch.nn.Module):
    """An ``nn.Linear`` for CPU inference whose weight is laid out once, at load, in oneDNN's
    blocked format, instead of being repacked by the matrix product on every call.

    The same fp32 arithmetic (results agree with ``nn.Linear`` to float rounding); what it
    saves is the per-call packing of the weight, which on passes of a few dozen tokens costs
    about as much as the product itself (bench/: 1.1-1.35x on whole DistilBERT and MiniLM
    passes of 3-64 posts on one thread).
    """

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        with torch.no_grad():
            self.register_buffer("packed_weight", torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), None))
            self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.packed_weight, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, prepacked"


def prepack_linears(model: torch.nn.Module) -> int:
    """Replace every fp32 ``nn.Linear`` of a CPU ``model`` by a :class:`PrepackedLinear`, in place.

    Checked first on the model's own first layer: where this torch has no oneDNN (or its
    result differs), nothing is replaced. Returns how many layers were.
    """
    linears = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
               if type(child) is torch.nn.Linear and child.weight.dtype == torch.float32
               and child.weight.device.type == "cpu"]
    if not linears or not torch.backends.mkldnn.is_available():
        return 0
    first = linears[0][2]
    probe = torch.randn(3, 5, first.in_features)
    try:
        with torch.inference_mode():
            expected, got = first(probe), PrepackedLinear(first)(probe)
    except (RuntimeError, AttributeError, NotImplementedError) as exc:
        log.warning("linear layers left unpacked: this torch cannot prepack them", error=repr(exc))
        return 0
    if not torch.allclose(expected, got, rtol=1e-4, atol=1e-4):
        log.warning("linear layers left unpacked: prepacked results differ", max_diff=float((expected - got).abs().max()))
        return 0
    for parent, name, child in linears:
        setattr(parent, name, PrepackedLinear(child))
    return len(linears)


MAX_AUTO_CPU_PASSES = 4
"""Passes run at once when not told: beyond this, each pass gets more threads instead."""


def split_threads(threads: int, passes: Optional[int]) -> list[int]:
    """Torch threads of each parallel CPU pass: ``threads`` shared as evenly as can be.

    ``passes`` None means one pass per thread up to :data:`MAX_AUTO_CPU_PASSES` (on two
    cores, two single-thread passes: measured 1.1-1.2x the throughput of one two-thread
    pass on MiniLM windows of 512 posts, equal on DistilBERT, and steadier beside a busy
    neighbour). More passes than threads are not possible.
    """
    if threads < 1:
        raise ValueError("threads must be at least 1")
    if passes is None:
        passes = min(threads, MAX_AUTO_CPU_PASSES)
    if not 1 <= passes <= threads:
        raise ValueError(f"cpu_passes={passes} needs between 1 and {threads} (the torch threads)")
    return [threads // passes + (i < threads % passes) for i in range(passes)]


def _take_thread_share(shares: queue.SimpleQueue) -> None:
    torch.get_num_threads()  # a thread's first use of torch sets its count from the default: first, not after ours
    torch.set_num_threads(shares.get_nowait())


def select_device(requested: str) -> torch.device:
    """Map ``auto|cpu|cuda`` to a torch device, refusing ``cuda`` when there is none."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("EMOTION_DEVICE=cuda but no CUDA device is visible: use auto or cpu")
    if requested not in ("cpu", "cuda"):
        raise ModelLoadError(f"unknown device {requested!r}: use auto, cpu or cuda")
    return torch.device(requested)


def _model_info(source: str, directory: Optional[Path], config) -> ModelInfo:
    """Name and version of the model, for every result it produces.

    A directory written by the training module carries `emotion_model.json`; otherwise the
    version is a digest of the weights, so two different models never share a version.
    """
    if directory is not None:
        card = directory / "emotion_model.json"
        if card.is_file():
            meta = json.loads(card.read_text(encoding="utf-8"))
            return ModelInfo(name=str(meta.get("name", directory.name)), version=str(meta.get("version", "unknown")))
        weights = directory / "model.safetensors"
        digest = hashlib.sha256()
        if weights.is_file():
            with weights.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
        return ModelInfo(name=directory.resolve().name, version=digest.hexdigest()[:12])
    return ModelInfo(name=source, version=str(getattr(config, "_commit_hash", None) or "hub"))


class EmotionClassifier:
    """A sequence-classification model with the six emotion labels, ready to predict."""

    def __init__(
        self,
        model: str,
        *,
        device: str = "auto",
        max_length: int = 128,
        batch_size: int = 32,
        torch_threads: Optional[int] = None,
        numeric: str = "auto",
        call_cost_tokens: Optional[float] = None,
        cpu_passes: Optional[int] = None,
        packing: bool = True,
        prepack: bool = True,
    ) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a progress bar in a service log is noise

        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.device = select_device(device)
        self.max_length = max_length
        self.batch_size = batch_size
        directory = Path(model) if Path(model).exists() else None
        if directory is not None and not (directory / "config.json").is_file():
            raise ModelLoadError(f"{model} has no config.json: it is not a Hugging Face model directory")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model)
            self.model = AutoModelForSequenceClassification.from_pretrained(
                model, use_safetensors=True, trust_remote_code=False
            )
        except OSError as exc:
            raise ModelLoadError(
                f"cannot load model {model!r}: {exc}. Set EMOTION_MODEL to a model directory "
                "(train one with `emotion-stream train`) or to a hub id reachable from here."
            ) from exc
        self._columns = self._label_columns(self.model.config)
        self.info = _model_info(model, directory, self.model.config)
        self.model.to(self.device).eval()
        self._pad_id = self.tokenizer.pad_token_id or 0
        # Packing needs the head (see _PACKED_HEADS) and an attention that takes a full mask.
        # It stays off on CUDA, where it has not been measured: padded sub-batches there.
        self._head = _PACKED_HEADS.get(type(self.model).__name__)
        self._attention = getattr(self.model.config, "_attn_implementation", None)
        self.packing = bool(
            packing and self.device.type == "cpu" and self._head is not None and self._attention in ("sdpa", "eager")
        )
        if numeric == "auto":  # mixed precision where it is the norm: on a GPU
            numeric = "bf16" if self.device.type == "cuda" else "fp32"
        self.numeric = numeric
        self._autocast_dtype = self._numeric_mode(numeric)
        # fp32 on the CPU: the weights laid out once for the matrix products (PrepackedLinear).
        self.prepacked = prepack_linears(self.model) if prepack and numeric == "fp32" and self.device.type == "cpu" else 0
        # One pass at a time on CUDA: passes queue on the device anyway.
        try:
            self.pass_threads = [torch.get_num_threads()] if self.device.type == "cuda" else split_threads(
                torch.get_num_threads(), cpu_passes
            )
        except ValueError as exc:
            raise ModelLoadError(f"{exc}: set EMOTION_CPU_PASSES within that range, or leave it unset") from None
        self._passes: Optional[ThreadPoolExecutor] = None
        if len(self.pass_threads) > 1:
            # Torch's thread count is per OS thread: each pass thread takes its share as it starts.
            shares: queue.SimpleQueue = queue.SimpleQueue()
            for share in self.pass_threads:
                shares.put(share)
            self._passes = ThreadPoolExecutor(
                len(self.pass_threads), thread_name_prefix="model-pass",
                initializer=_take_thread_share, initargs=(shares,),
            )
            # Start every pass thread now, then give threads started later (the worker's own)
            # the whole count again: a thread's first set_num_threads also sets the default.
            everyone = threading.Barrier(len(self.pass_threads))
            list(self._passes.map(lambda _: everyone.wait(), self.pass_threads))
            torch.set_num_threads(sum(self.pass_threads))
        if call_cost_tokens is None:
            # Planned for the threads a pass runs on.
            call_cost_tokens = self._in_pass(self._measure_call_cost)
        self.call_cost_tokens = call_cost_tokens
        log.info(
            "model loaded", model=self.info.name, version=self.info.version, device=str(self.device),
            numeric=numeric, call_cost_tokens=round(self.call_cost_tokens, 1), pass_threads=self.pass_threads,
            packing=self.packing, prepacked_linears=self.prepacked,
        )

    @property
    def leaves_cpu_to_spare(self) -> bool:
        """Whether CPU work can run beside the model without slowing it: on a GPU, or when
        torch uses fewer threads than there are cores."""
        return self.device.type == "cuda" or torch.get_num_threads() < (os.cpu_count() or 1)

    def _measure_call_cost(self) -> float:
        """The fixed cost of one forward pass, in tokens of work, timed on this device.

        Two shapes, a single short post and a padded sub-batch, give the per-pass and the
        per-token time; their ratio is what :func:`plan_sub_batches` weighs padding against.
        The first passes also warm the model up (allocations, kernel selection).
        """
        def timed(rows: int, width: int, repeats: int) -> float:
            ids = torch.full((rows, width), self._pad_id + 1, dtype=torch.long)
            mask = torch.ones_like(ids)
            times = []
            with torch.inference_mode():
                for _ in range(repeats + 1):
                    started = time.perf_counter()
                    probs = self._forward(ModelInput(ids, mask))
                    probs.cpu()  # waits for the device
                    times.append(time.perf_counter() - started)
            return statistics.median(times[1:])

        small_tokens = 8
        if self.device.type == "cuda":  # a GPU hardly notices 16 rows: time a real sub-batch
            large_rows, large_width = max(1, min(self.batch_size, 256)), 64
        else:
            large_rows, large_width = max(1, min(self.batch_size, 16)), 48
        small = timed(1, small_tokens, 3)
        large = timed(large_rows, large_width, 3)
        per_token = (large - small) / (large_rows * large_width - small_tokens)
        if per_token <= 0:  # the fixed cost swamped the work (a GPU): as few passes as can be
            return MAX_CALL_COST_TOKENS
        return float(min(MAX_CALL_COST_TOKENS, max(1.0, small / per_token - small_tokens)))

    def _numeric_mode(self, numeric: str) -> Optional[torch.dtype]:
        """Apply ``numeric`` (fp32, bf16 or int8) and return the autocast dtype, if any.

        On CUDA, bf16 runs the forward pass under autocast (bf16 where supported, else fp16;
        the default there) and fp32 runs it in full precision. On the CPU, bf16 autocast pays
        on AVX512-BF16/AMX hardware and int8 dynamic quantization of the linear layers on
        VNNI; bench/ measures both speed and accuracy (bench/gpu.py on a GPU).
        """
        if numeric not in ("fp32", "bf16", "int8"):
            raise ModelLoadError(f"unknown numeric mode {numeric!r}: use auto, fp32, bf16 or int8")
        if self.device.type == "cuda":
            if numeric == "int8":
                raise ModelLoadError("EMOTION_NUMERIC=int8 is a CPU mode: use auto, fp32 or bf16 on CUDA")
            if numeric == "fp32":
                return None
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if numeric == "int8":
            from torch.ao.quantization import quantize_dynamic

            self.model = quantize_dynamic(self.model, {torch.nn.Linear}, dtype=torch.qint8)
            return None
        return torch.bfloat16 if numeric == "bf16" else None

    @staticmethod
    def _label_columns(config) -> list[str]:
        """The emotion name of each output column, checked against the label set."""
        id2label = {int(k): str(v).lower() for k, v in (config.id2label or {}).items()}
        names = [id2label.get(i, "") for i in range(config.num_labels)]
        if sorted(names) != sorted(LABELS):
            raise ModelLoadError(
                f"the model's labels {names} are not the six emotions {list(LABELS)}: "
                "serve a model fine-tuned for emotion-stream (its config.json needs id2label)"
            )
        return names

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        """The most likely emotion of each text, with all six probabilities, in the order given."""
        return self.predict_prepared(self.prepare(texts))

    def predict_proba(self, texts: Sequence[str]) -> torch.Tensor:
        """A (len(texts), 6) float32 CPU tensor of probabilities, columns as in the model."""
        return self.run(self.prepare(texts))

    def prepare(self, texts: Sequence[str]) -> PreparedTexts:
        """The CPU half of a prediction: tokenize, sort, plan the sub-batches and pad them.

        Needs nothing from the model, so the worker runs it for the next batch while the
        model is still busy with the current one (on a GPU that hides the tokenizer).
        """
        encoded = self.tokenizer(
            list(texts), truncation=True, max_length=self.max_length, padding=False,
            return_attention_mask=False, return_token_type_ids=False,
        )["input_ids"] if texts else []
        lengths = [len(e) for e in encoded]
        row_tokens = max([PACKED_ROW_TOKENS, *lengths])
        if self.packing and sum(lengths) <= len(self.pass_threads) * PACK_ROWS_PER_PASS * row_tokens:
            shares = share_out(lengths, len(self.pass_threads))
            packed = [self._pack([encoded[i] for i in share], row_tokens) for share in shares]
            return PreparedTexts(
                rows=[share[j] for share, (_, order) in zip(shares, packed) for j in order],
                inputs=[model_input for model_input, _ in packed],
            )
        order = sorted(range(len(encoded)), key=lambda i: lengths[i])
        plan = plan_sub_batches([lengths[i] for i in order], self.batch_size, self.call_cost_tokens)
        chunks = [order[start:end] for start, end in plan]
        inputs = [ModelInput(*self._pad([encoded[i] for i in idx])) for idx in chunks]
        if self.device.type == "cuda":
            # Pinned host memory lets each copy to the device run asynchronously.
            inputs = [ModelInput(x.ids.pin_memory(), x.mask.pin_memory()) for x in inputs]
        return PreparedTexts(rows=[i for idx in chunks for i in idx], inputs=inputs)

    def run(self, prepared: PreparedTexts) -> torch.Tensor:
        """The model half: probabilities, a (posts, 6) float32 CPU tensor in the texts' order."""
        if self._passes is not None and len(prepared.inputs) > 1:
            outputs = self._run_parallel(prepared.inputs)
        else:
            with torch.inference_mode():
                # On CUDA each forward pass is only queued: the copies and kernels of the next
                # sub-batch are queued behind this one, and the results come back to the host
                # in one synchronising copy at the end.
                outputs = [self._forward(model_input) for model_input in prepared.inputs]
        probs = torch.cat(outputs).cpu() if outputs else torch.empty((0, len(self._columns)))
        result = torch.empty((len(prepared.rows), len(self._columns)), dtype=torch.float32)
        if prepared.rows:
            result[torch.tensor(prepared.rows, dtype=torch.long)] = probs
        return result

    def _run_parallel(self, inputs: list[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
        """Forward passes spread over the pass threads, costliest first, outputs in input order.

        Each idle pass thread takes the next costliest sub-batch, so the passes finish close
        together and a pass slowed by a neighbour on its core simply takes fewer.
        """
        assert self._passes is not None
        order = sorted(range(len(inputs)), key=lambda i: -inputs[i].ids.numel())
        futures = {i: self._passes.submit(self._forward_pass, inputs[i]) for i in order}
        return [futures[i].result() for i in range(len(inputs))]

    def _forward_pass(self, model_input: ModelInput) -> torch.Tensor:
        with torch.inference_mode():  # per thread
            return self._forward(model_input)

    def _in_pass(self, work):
        """``work()`` on the threads one pass runs on."""
        return work() if self._passes is None else self._passes.submit(work).result()

    def predict_prepared(self, prepared: PreparedTexts) -> list[Prediction]:
        """:meth:`run`, as predictions."""
        return to_predictions(self.run(prepared).tolist(), self._columns)

    @property
    def columns(self) -> list[str]:
        """The emotion of each column of :meth:`run`'s probabilities."""
        return list(self._columns)

    def _pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        width = int(lengths.max())
        mask = np.arange(width) < lengths[:, None]
        ids = np.full((len(rows), width), self._pad_id, dtype=np.int64)
        # Row-major, each row's tokens are the leading run of its mask: one copy for all rows
        # (a row at a time costs more than the model on a GPU).
        ids[mask] = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=int(lengths.sum()))
        return torch.from_numpy(ids), torch.from_numpy(mask.astype(np.int64))

    def _pack(self, rows: list[list[int]], row_tokens: int) -> tuple[ModelInput, list[int]]:
        """Token rows laid end to end (see :func:`pack_rows`), and the order of the posts in
        the pass's output (indices into ``rows``)."""
        lines = pack_rows([len(r) for r in rows], row_tokens)
        width = max(sum(len(rows[i]) for i in line) for line in lines)
        ids = torch.full((len(lines), width), self._pad_id, dtype=torch.long)
        positions = torch.zeros((len(lines), width), dtype=torch.long)
        owner = torch.full((len(lines), width), -1, dtype=torch.long)  # which post each token is; -1: padding
        firsts, order = [], []
        for j, line in enumerate(lines):
            at = 0
            for i in line:
                n = len(rows[i])
                ids[j, at:at + n] = torch.tensor(rows[i], dtype=torch.long)
                positions[j, at:at + n] = torch.arange(n)
                owner[j, at:at + n] = i
                firsts.append(j * width + at)
                order.append(i)
                at += n
        # A token attends to its own post's tokens only (padding to padding, so no row of
        # the mask is empty).
        mask = (owner[:, :, None] == owner[:, None, :])[:, None]
        if self._attention == "eager":  # eager attention adds the mask to its scores
            mask = torch.zeros(mask.shape).masked_fill_(~mask, torch.finfo(torch.float32).min)
        return ModelInput(ids, mask, positions, torch.tensor(firsts, dtype=torch.long)), order

    def _logits(self, x: ModelInput) -> torch.Tensor:
        if x.firsts is None:
            return self.model(input_ids=x.ids, attention_mask=x.mask).logits
        hidden = self.model.base_model(input_ids=x.ids, attention_mask=x.mask, position_ids=x.positions)[0]
        return self._head(self.model, hidden.reshape(-1, hidden.shape[-1])[x.firsts])

    def _forward(self, x: ModelInput) -> torch.Tensor:
        if self.device.type == "cuda":
            # From pinned memory (see prepare) the copy runs asynchronously with the previous kernel.
            x = ModelInput(x.ids.to(self.device, non_blocking=True), x.mask.to(self.device, non_blocking=True))
            with sdpa_kernel(_CUDA_ATTENTION):
                return self._forward_on_device(x)
        return self._forward_on_device(x)

    def _forward_on_device(self, x: ModelInput) -> torch.Tensor:
        if self._autocast_dtype is not None:
            with torch.autocast(self.device.type, dtype=self._autocast_dtype):
                logits = self._logits(x)
        else:
            logits = self._logits(x)
        return torch.softmax(logits.float(), dim=-1)
