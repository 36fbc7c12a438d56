"""Planning a window's forward passes: where to cut it, how to share it out, how many threads each pass gets.

Pure arithmetic on token lengths (numpy, no torch), so it is tested against brute force.
Each forward pass has a fixed cost (on the CPU, matrix products over few rows run far below
peak; on a GPU, launching the kernels), measured when the model loads, and the planner
weighs it against the padding that one more cut would save.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MAX_CALL_COST_TOKENS = 1024.0
"""The most a forward pass's fixed cost is planned at, in tokens of work."""

MAX_AUTO_CPU_PASSES = 4
"""Passes run at once when not told: beyond this, each pass gets more threads instead."""


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


def split_threads(threads: int, passes: int | None) -> list[int]:
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
