"""The model runner: texts in, emotion probabilities out. No Kafka, no event loop.

A call to :meth:`EmotionClassifier.predict` tokenizes the whole window once without padding,
sorts it by token length and runs it as sub-batches of similar length, each padded only to
its own longest post: the padding a stream of short posts would otherwise carry is most of
the work (sorting a window before cutting it doubles throughput; bench/README.md). Where
the sub-batches are cut is planned per window (:mod:`worker.model.planning`); a small
window on the CPU is packed instead (:mod:`worker.model.packing`).

On the CPU the passes of a window run in parallel, each on its own share of the torch
threads, rather than one pass at a time on all of them: a pass on one thread never waits at
a barrier for a sibling thread the OS has lent to the broker or the event loop, so the
model keeps its pace on a machine it shares. On CUDA, inputs go through pinned memory and
the forward pass runs under autocast (bf16, or fp16 where the GPU lacks bf16) unless fp32
is asked for.
"""

from __future__ import annotations

import os
import queue
import statistics
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import structlog
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from emotion_stream.worker.model.api import ModelLoadError, ModelOptions, Prediction, to_predictions
from emotion_stream.worker.model.graph import read_graph
from emotion_stream.worker.model.loading import (
    apply_numeric,
    load_pretrained,
    recorded_fp32_layers,
    recorded_kept_in,
    resolve_numeric,
    select_device,
)
from emotion_stream.worker.model.packing import (
    PACK_ROWS_PER_PASS,
    PACKED_HEADS,
    PACKED_ROW_TOKENS,
    ModelInput,
    PreparedTexts,
    pack,
    pad,
)
from emotion_stream.worker.model.planning import (
    MAX_CALL_COST_TOKENS,
    plan_sub_batches,
    share_out,
    split_threads,
)
from emotion_stream.worker.model.prepack import prepack_linears
from emotion_stream.worker.model.threads import torch_threads

log = structlog.get_logger(__name__)

_CUDA_ATTENTION = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
"""Attention kernels on CUDA, cuDNN's left out: it builds a plan for every new (rows, width)
shape, and the worker's sub-batches come in hundreds of shapes (measured on an H100, bf16:
about 25 ms more per forward pass until each shape has been seen once)."""


def _take_thread_share(shares: queue.SimpleQueue) -> None:
    # A thread's first use of torch sets its count from the default: do it first, not after ours.
    torch.get_num_threads()
    torch.set_num_threads(shares.get_nowait())


class EmotionClassifier:
    """A sequence-classification model with the six emotion labels, ready to predict.

    ``model`` is a model directory or hub id; ``options`` say how to run it. A
    :class:`~worker.model.api.ModelRunner`.
    """

    def __init__(self, model: str, options: ModelOptions | None = None, *, graph: Path | None = None) -> None:
        options = options or ModelOptions()
        self.options = options
        threads, why = torch_threads(options.torch_threads)  # the CPU quota unless configured
        if threads:
            torch.set_num_threads(threads)
        log.info("torch threads", threads=torch.get_num_threads(), reason=why)
        self.device = select_device(options.device)
        self.max_length = options.max_length
        self.batch_size = options.batch_size
        self._traced_packs = False
        """Whether the traced graph also has the packed pass (its ``packed`` method)."""
        if graph is None:
            self._load_model(model, options)
        else:
            self._load_graph(graph, options)
        self.pass_threads = self._pass_threads(options.cpu_passes)
        self._passes = self._start_pass_threads()
        # Planned for the threads a pass runs on.
        self.call_cost_tokens = (
            options.call_cost_tokens
            if options.call_cost_tokens is not None
            else self._in_pass(self._measure_call_cost)
        )
        log.info(
            "model loaded",
            model=self.info.name,
            version=self.info.version,
            device=str(self.device),
            numeric=self.numeric,
            call_cost_tokens=round(self.call_cost_tokens, 1),
            pass_threads=self.pass_threads,
            packing=self.packing,
            prepacked_linears=self.prepacked,
            traced=self._traced is not None,
            int8_kept_layers=len(self.fp32_layers),
            served_from="serving graph" if self.from_graph else "model directory",
        )

    def _load_model(self, model: str, options: ModelOptions) -> None:
        """The model and tokenizer through ``transformers``, in the numeric mode asked for."""
        loaded = load_pretrained(model, options.revision)
        self.from_graph = False
        tokenizer = loaded.tokenizer
        self.tokenizer, self.info, self._columns = tokenizer, loaded.info, loaded.columns
        self.model = loaded.model.to(self.device)
        self._pad_id = tokenizer.pad_token_id or 0
        self._encode = lambda texts: tokenizer(
            texts,
            truncation=True,
            max_length=self.max_length,
            padding=False,
            return_attention_mask=False,
            return_token_type_ids=False,
        )["input_ids"]
        # Packing needs the head (see PACKED_HEADS) and an attention that takes a full mask.
        # It stays off on CUDA, where it has not been measured: padded sub-batches there.
        self._head = PACKED_HEADS.get(type(self.model).__name__)
        self._attention = getattr(self.model.config, "_attn_implementation", None)
        self.packing = bool(
            options.packing
            and self.device.type == "cpu"
            and self._head is not None
            and self._attention in ("sdpa", "eager")
        )
        self.numeric, self.numeric_reason = resolve_numeric(
            options.numeric, self.device, loaded.numeric_modes
        )
        log.info("numeric mode", mode=self.numeric, reason=self.numeric_reason, model=self.info.version)
        self.fp32_layers = (
            (
                options.int8_fp32_layers
                if options.int8_fp32_layers is not None
                else recorded_fp32_layers(loaded.numeric_modes)
            )
            if self.numeric == "int8"
            else ()
        )
        self.kept_in, kept_why = (
            (options.int8_kept_in, "ModelOptions")
            if options.int8_kept_in is not None
            else recorded_kept_in(loaded.numeric_modes)
        )
        if self.fp32_layers and options.int8_kept_in is None:
            log.info(
                "int8 keeps layers out", layers=len(self.fp32_layers), kept_in=self.kept_in, reason=kept_why
            )
        self.model, self._autocast_dtype = apply_numeric(
            self.model, self.numeric, self.device, self.fp32_layers, self.kept_in
        )
        # fp32 linear layers on the CPU (all of them, or those int8 keeps): their weights laid
        # out once for the matrix products (see prepack).
        cpu_fp32 = self.numeric in ("fp32", "int8") and self.device.type == "cpu"
        # int8 traces its graph instead (a prepacked layer's operator does not trace).
        tracing = options.trace and self.numeric == "int8" and self.device.type == "cpu"
        self.prepacked = prepack_linears(self.model) if options.prepack and cpu_fp32 and not tracing else 0
        self._traced = self._trace(packed=self.packing) if tracing else None

    def _load_graph(self, graph: Path, options: ModelOptions) -> None:
        """The model as a saved serving graph and its tokenizer, without ``transformers``
        (see :mod:`worker.model.graph`)."""
        saved = read_graph(graph, self.max_length)
        self.from_graph = True
        self.tokenizer, self._encode = None, saved.encode
        self.info, self._columns, self._pad_id = saved.info, saved.columns, saved.pad_id
        self.model, self._head, self._attention = None, None, saved.attention
        self.numeric, self.numeric_reason = saved.numeric, saved.numeric_reason
        self.fp32_layers, self.kept_in = saved.fp32_layers, saved.kept_in
        self._autocast_dtype, self.prepacked = None, 0
        self._traced, self._traced_packs = saved.graph, saved.packs
        self.packing = bool(options.packing and self._traced_packs)
        log.info("numeric mode", mode=self.numeric, reason=self.numeric_reason, model=self.info.version)

    @property
    def traced(self) -> bool:
        """Whether padded passes run through a traced graph of the model (see :meth:`_trace`)."""
        return self._traced is not None

    def _trace(self, packed: bool) -> torch.jit.ScriptModule | None:
        """The model's forward passes traced and frozen as one graph: ``forward`` the padded
        pass (ids and mask in, logits out) and, if ``packed``, ``packed`` the packed one (see
        :mod:`worker.model.packing`). A pass then runs as one graph, not as hundreds of
        operators each dispatched from Python (measured on the 3-layer default in int8: the
        model alone 1.11-1.15x; bench/README.md).

        A trace keeps the branches its example took, so each pass is traced on an example and
        checked against the model itself on shapes of other sizes, one post and many; where the
        padded pass differs (or does not trace), the model runs as it is, where only the packed
        one does, it is traced again without it; the log says why.
        """
        head = self._head

        class Passes(torch.nn.Module):
            def __init__(self, model: torch.nn.Module) -> None:
                super().__init__()
                self.model = model

            def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
                return self.model(input_ids=ids, attention_mask=mask).logits

            def packed(
                self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, firsts: torch.Tensor
            ) -> torch.Tensor:
                assert head is not None
                hidden = self.model.base_model(input_ids=ids, attention_mask=mask, position_ids=positions)[0]
                return head(self.model, hidden.reshape(-1, hidden.shape[-1])[firsts])

        def padded_input(rows: int, width: int) -> tuple[torch.Tensor, ...]:
            # The longest row sets the width, as in a real sub-batch.
            x = pad(self._example_rows(rows, width, longest_first=True), self._pad_id)
            return x.ids, x.mask

        def packed_input(posts: int, longest: int) -> tuple[torch.Tensor, ...]:
            rows = self._example_rows(posts, longest)
            x, _ = pack(rows, PACKED_ROW_TOKENS, self._pad_id, self._attention == "eager")
            assert x.positions is not None and x.firsts is not None
            return x.ids, x.mask, x.positions, x.firsts

        checks = {
            "forward": [padded_input(rows, width) for rows, width in ((1, 5), (3, 40), (17, 11), (32, 128))],
            "packed": [packed_input(posts, most) for posts, most in ((1, 5), (3, 40), (30, 30), (9, 128))],
        }
        examples = {"forward": padded_input(8, 24)} | ({"packed": packed_input(12, 40)} if packed else {})
        module = Passes(self.model).eval()
        try:
            with torch.inference_mode(), warnings.catch_warnings():
                # The tracer warns of every Python value it keeps; the check below is what counts.
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                traced = torch.jit.freeze(
                    torch.jit.trace_module(module, examples, check_trace=False),
                    preserved_attrs=[name for name in examples if name != "forward"],
                )
                for method in examples:
                    for inputs in checks[method]:
                        expected = getattr(module, method)(*inputs)
                        got = getattr(traced, method)(*inputs)
                        if not torch.allclose(expected, got, rtol=1e-4, atol=1e-4):
                            log.warning(
                                "the traced graph differs from the model: running the model as it is",
                                passes="padded" if method == "forward" else "packed",
                                shape=list(inputs[0].shape),
                                max_diff=float((expected - got).abs().max()),
                            )
                            return self._trace(packed=False) if method == "packed" else None
        except Exception as exc:  # any failure to trace leaves the model as it is
            log.warning("the model does not trace: running it as it is", packed=packed, error=repr(exc))
            return self._trace(packed=False) if packed else None
        self._traced_packs = packed
        return traced

    def _example_rows(self, posts: int, longest: int, longest_first: bool = False) -> list[list[int]]:
        """``posts`` rows of random token ids, 1 to ``longest`` long (the first that long if
        ``longest_first``), to trace and check graphs on."""
        generator = torch.Generator().manual_seed(posts * 1000 + longest)
        lengths = torch.randint(1, longest + 1, (posts,), generator=generator)
        if longest_first:
            lengths[0] = longest
        vocab = int(getattr(self.model.config, "vocab_size", 1000))
        low, high = self._pad_id + 1, max(self._pad_id + 2, vocab)
        return [torch.randint(low, high, (int(n),), generator=generator).tolist() for n in lengths]

    def _pass_threads(self, cpu_passes: int | None) -> list[int]:
        if self.device.type == "cuda":  # one pass at a time on CUDA: passes queue on the device anyway
            return [torch.get_num_threads()]
        try:
            return split_threads(torch.get_num_threads(), cpu_passes)
        except ValueError as exc:
            raise ModelLoadError(
                f"{exc}: set EMOTION_CPU_PASSES within that range, or leave it unset"
            ) from None

    def _start_pass_threads(self) -> ThreadPoolExecutor | None:
        if len(self.pass_threads) < 2:
            return None
        # Torch's thread count is per OS thread: each pass thread takes its share as it starts.
        shares: queue.SimpleQueue = queue.SimpleQueue()
        for share in self.pass_threads:
            shares.put(share)
        passes = ThreadPoolExecutor(
            len(self.pass_threads),
            thread_name_prefix="model-pass",
            initializer=_take_thread_share,
            initargs=(shares,),
        )
        # Start every pass thread now, then give threads started later (the worker's own)
        # the whole count again: a thread's first set_num_threads also sets the default.
        everyone = threading.Barrier(len(self.pass_threads))
        list(passes.map(lambda _: everyone.wait(), self.pass_threads))
        torch.set_num_threads(sum(self.pass_threads))
        return passes

    @property
    def leaves_cpu_to_spare(self) -> bool:
        """Whether CPU work can run beside the model without slowing it: on a GPU, or when
        torch uses fewer threads than there are cores."""
        return self.device.type == "cuda" or torch.get_num_threads() < (os.cpu_count() or 1)

    @property
    def columns(self) -> list[str]:
        """The emotion of each column of :meth:`run`'s probabilities."""
        return list(self._columns)

    def close(self) -> None:
        if self._passes is not None:
            self._passes.shutdown(wait=True)

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

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        """The most likely emotion of each text, with all six probabilities, in the order given."""
        return self.predict_prepared(self.prepare(texts))

    def predict_proba(self, texts: Sequence[str]) -> torch.Tensor:
        """A (len(texts), 6) float32 CPU tensor of probabilities, columns as in the model."""
        return self.run(self.prepare(texts))

    def predict_prepared(self, prepared: PreparedTexts) -> list[Prediction]:
        """:meth:`run`, as predictions."""
        return to_predictions(self.run(prepared).tolist(), self._columns)

    def prepare(self, texts: Sequence[str]) -> PreparedTexts:
        """The CPU half of a prediction: tokenize, then pack, or sort, plan and pad.

        Needs nothing from the model, so the worker runs it for the next batch while the
        model is still busy with the current one (on a GPU that hides the tokenizer).
        """
        encoded = self._tokenize(texts)
        lengths = [len(e) for e in encoded]
        row_tokens = max([PACKED_ROW_TOKENS, *lengths])
        if self.packing and sum(lengths) <= len(self.pass_threads) * PACK_ROWS_PER_PASS * row_tokens:
            shares = share_out(lengths, len(self.pass_threads))
            additive = self._attention == "eager"  # eager attention adds the mask to its scores
            packed = [
                pack([encoded[i] for i in share], row_tokens, self._pad_id, additive) for share in shares
            ]
            return PreparedTexts(
                rows=[share[j] for share, (_, order) in zip(shares, packed, strict=True) for j in order],
                inputs=[model_input for model_input, _ in packed],
            )
        order = sorted(range(len(encoded)), key=lambda i: lengths[i])
        plan = plan_sub_batches([lengths[i] for i in order], self.batch_size, self.call_cost_tokens)
        chunks = [order[start:end] for start, end in plan]
        inputs = [pad([encoded[i] for i in idx], self._pad_id) for idx in chunks]
        if self.device.type == "cuda":
            # Pinned host memory lets each copy to the device run asynchronously.
            inputs = [ModelInput(x.ids.pin_memory(), x.mask.pin_memory()) for x in inputs]
        return PreparedTexts(rows=[i for idx in chunks for i in idx], inputs=inputs)

    def _tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        return self._encode(list(texts))

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

    def _run_parallel(self, inputs: list[ModelInput]) -> list[torch.Tensor]:
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

    def _in_pass(self, work: Callable[[], Any]) -> Any:
        """``work()`` on the threads one pass runs on."""
        return work() if self._passes is None else self._passes.submit(work).result()

    def _logits(self, x: ModelInput) -> torch.Tensor:
        if x.firsts is None:
            if self._traced is not None:
                return self._traced(x.ids, x.mask)
            return self.model(input_ids=x.ids, attention_mask=x.mask).logits
        if self._traced is not None and self._traced_packs:
            return self._traced.packed(x.ids, x.mask, x.positions, x.firsts)
        hidden = self.model.base_model(input_ids=x.ids, attention_mask=x.mask, position_ids=x.positions)[0]
        return self._head(self.model, hidden.reshape(-1, hidden.shape[-1])[x.firsts])

    def _forward(self, x: ModelInput) -> torch.Tensor:
        if self.device.type == "cuda":
            # From pinned memory (see prepare) the copy runs asynchronously with the previous kernel.
            x = ModelInput(
                x.ids.to(self.device, non_blocking=True), x.mask.to(self.device, non_blocking=True)
            )
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
