"""Linear layers whose weights are laid out once for oneDNN, for fp32 inference on the CPU.

An ``nn.Linear`` repacks its weight into oneDNN's blocked format on every call; on passes
of a few dozen tokens that costs about as much as the product itself. Prepacked once at
load, the arithmetic is the same fp32 (results agree with ``nn.Linear`` to float rounding)
and whole DistilBERT and MiniLM passes of 3-64 posts on one thread run 1.1-1.35x faster
(bench/README.md).
"""

from __future__ import annotations

import structlog
import torch

log = structlog.get_logger(__name__)


class PrepackedLinear(torch.nn.Module):
    """An ``nn.Linear`` for CPU inference whose weight is in oneDNN's blocked format."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        with torch.no_grad():
            self.register_buffer(
                "packed_weight", torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), None)
            )
            self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(
            x.contiguous(), self.packed_weight, self.bias, "none", [], ""
        )

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, prepacked"


class Bf16Linear(torch.nn.Module):
    """An ``nn.Linear`` run in bf16 on the CPU (its input rounded to bf16, its output back to
    fp32): how int8 keeps the layers whose quantization moves labels on a CPU with AVX512-BF16
    or AMX (:func:`loading.apply_numeric`). A plain bf16 product (no prepacking: it traces, and
    a prepacked one measured no faster)."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        with torch.no_grad():
            self.register_buffer("weight_bf16", linear.weight.detach().to(torch.bfloat16))
            bias = None if linear.bias is None else linear.bias.detach().to(torch.bfloat16)
            self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.nn.functional.linear(x.to(torch.bfloat16), self.weight_bf16, self.bias)
        return out.to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bf16"


def prepack_linears(model: torch.nn.Module) -> int:
    """Replace every fp32 ``nn.Linear`` of a CPU ``model`` by a :class:`PrepackedLinear`, in place.

    Checked first on the model's own first layer: where this torch has no oneDNN (or its
    result differs), nothing is replaced. Returns how many layers were.
    """
    linears = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is torch.nn.Linear
        and child.weight.dtype == torch.float32
        and child.weight.device.type == "cpu"
    ]
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
        log.warning(
            "linear layers left unpacked: prepacked results differ",
            max_diff=float((expected - got).abs().max()),
        )
        return 0
    for parent, name, child in linears:
        setattr(parent, name, PrepackedLinear(child))
    return len(linears)
