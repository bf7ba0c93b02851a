"""Measurement: a converted model against its original, and the FLOP-based limit."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from actreg._errors import ActregError
from actreg.sparse.calibrate import time_interleaved
from actreg.sparse.linear import SparseInputLinear

__all__ = ["SparseReport", "flop_limit", "measure"]


@dataclass
class SparseReport:
    """What :func:`measure` found. Times are seconds per batch (medians over repeats).

    Attributes:
        zero_fractions: fraction of zeros in the input of each SparseInputLinear.
        limit: dense Linear FLOPs over the FLOPs left when zero inputs are skipped.
        identical: whether the argmax over the last dimension agrees on every example.
    """

    dense_s: float
    sparse_s: float
    dense_spread: tuple[float, float]
    sparse_spread: tuple[float, float]
    limit: float
    identical: bool
    max_abs_diff: float
    zero_fractions: dict[str, float] = field(default_factory=dict)

    @property
    def speedup(self) -> float:
        """Dense time over converted time."""
        return self.dense_s / self.sparse_s

    @property
    def of_limit(self) -> float:
        """Measured speedup as a fraction of the FLOP-based limit."""
        return self.speedup / self.limit


def flop_limit(converted: nn.Module, batches: Iterable[Tensor]) -> tuple[float, dict[str, float]]:
    """FLOP-based speedup limit of ``converted`` over ``batches``, and each sparse layer's
    input zero fraction. Counts ``nn.Linear`` work only: a SparseInputLinear costs
    ``nnz * out`` per call, any other Linear ``rows * in * out``.

    Example:
        >>> import torch, actreg.sparse
        >>> net = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Linear(4, 4))
        >>> fast = actreg.sparse.convert(net, threshold=0.0)
        >>> limit, zeros = flop_limit(fast, [torch.tensor([[1.0, -1.0, -1.0, -1.0]])])
        >>> limit, zeros
        (4.0, {'1': 0.75})
    """
    dense, left = [0.0], [0.0]
    counts: dict[str, list[int]] = {}
    handles = []

    def hook(name: str, mod: nn.Linear) -> Any:
        def pre(_: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0]
            rows = x.numel() // mod.in_features
            dense[0] += rows * mod.in_features * mod.out_features
            if isinstance(mod, SparseInputLinear):
                nnz = int(torch.count_nonzero(x))
                left[0] += nnz * mod.out_features
                c = counts.setdefault(name, [0, 0])
                c[0] += x.numel() - nnz
                c[1] += x.numel()
            else:
                left[0] += rows * mod.in_features * mod.out_features

        return pre

    for name, mod in converted.named_modules():
        if isinstance(mod, nn.Linear):
            handles.append(mod.register_forward_pre_hook(hook(name, mod)))
    try:
        with torch.inference_mode():
            for xb in batches:
                converted(xb)
    finally:
        for h in handles:
            h.remove()
    zeros = {n: z / max(t, 1) for n, (z, t) in counts.items()}
    return dense[0] / max(left[0], 1.0), zeros


def measure(
    model: nn.Module,
    converted: nn.Module,
    inputs: Tensor,
    *,
    batch_size: int = 1,
    repeats: int = 7,
    clock: str = "auto",
    converted_inputs: Tensor | None = None,
) -> SparseReport:
    """Latency of ``model`` against ``converted`` on ``inputs`` split into batches, with the
    prediction check and the FLOP-based limit. Both run in eval mode under
    ``torch.inference_mode()``, interleaved so background load hits both alike.
    ``converted_inputs`` (same examples, in the same order) feeds ``converted`` when it takes
    another form of the input, e.g. raw pixels after :func:`fold_input_scaling`.
    ``clock="auto"`` is CPU time with one CPU thread, else wall time
    (see :func:`actreg.sparse.calibrate.time_interleaved`).

    Example:
        >>> rep = measure(net, actreg.sparse.convert(net), x)  # doctest: +SKIP
        >>> rep.speedup, rep.limit, rep.identical  # doctest: +SKIP
        (6.1, 7.3, True)
    """
    if not isinstance(inputs, Tensor) or inputs.dim() == 0 or len(inputs) == 0:
        raise ActregError("measure needs a non-empty tensor of inputs (examples along dim 0)")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ActregError(f"batch_size must be a positive int, got {batch_size!r}")
    batches = list(inputs.split(batch_size))
    if converted_inputs is None:
        fast_batches = batches
    elif not isinstance(converted_inputs, Tensor) or len(converted_inputs) != len(inputs):
        raise ActregError(
            "converted_inputs must be a tensor with the same examples as inputs "
            f"({len(inputs)} along dim 0)"
        )
    else:
        fast_batches = list(converted_inputs.split(batch_size))
    if clock == "auto":
        clock = "cpu" if torch.get_num_threads() == 1 and inputs.device.type == "cpu" else "wall"
    modes = [(m, m.training) for m in (model, converted)]
    model.eval()
    converted.eval()
    try:
        limit, zeros = flop_limit(converted, fast_batches)
        with torch.inference_mode():
            ref = [model(xb) for xb in batches]
            got = [converted(xb) for xb in fast_batches]
            same = all(
                torch.equal(r.argmax(-1), g.argmax(-1)) for r, g in zip(ref, got, strict=True)
            )
            diff = max(float((r - g).abs().max()) for r, g in zip(ref, got, strict=True))
            t = time_interleaved(
                {
                    "dense": lambda: [model(xb) for xb in batches],
                    "sparse": lambda: [converted(xb) for xb in fast_batches],
                },
                repeats=repeats,
                min_time=0.05,
                device=inputs.device,
                clock=clock,
            )
    finally:
        for m, mode in modes:
            m.train(mode)
    n = len(batches)
    per = {k: sorted(s / n for s in v) for k, v in t.items()}
    return SparseReport(
        dense_s=statistics.median(per["dense"]),
        sparse_s=statistics.median(per["sparse"]),
        dense_spread=(per["dense"][0], per["dense"][-1]),
        sparse_spread=(per["sparse"][0], per["sparse"][-1]),
        limit=limit,
        identical=same,
        max_abs_diff=diff,
        zero_fractions=zeros,
    )
