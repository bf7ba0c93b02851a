"""The Monitor's blocked sweep: a batch's statistics in reused buffers (:func:`batch_stats`).

:class:`actreg.Monitor` calls :func:`batch_stats` once per hooked batch on the PyTorch path
(the C++ kernel in ``csrc/monitor.cpp`` computes the same in one pass). It gives the same
numbers as the pure measures of :mod:`actreg.metrics`, from which it takes the counting
helpers; it lives apart because it is an implementation of the Monitor's hot path
(buffers, blocks, prepared views), not a measure.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from actreg.metrics import _count_dtype, _count_layout

#: Elements per block of :func:`batch_stats`: a block's ``|x|`` and flags stay in cache
#: between the passes over it (1 MiB of float32; the best of 2**17..2**20 measured
#: inside the CNN training step of ``benchmarks/bench_step.py`` on a 1 MiB-L2 CPU).
BLOCK = 2**18


class _Block(NamedTuple):
    """One block of :func:`batch_stats`: where it lies in ``x`` and where its work goes."""

    start: int
    size: int
    work: Tensor  # |x|, then x**2
    flags: Tensor  # |x| > eps
    tally: Tensor  # flags as uint8, (before, units, after), or (units, after) if before == 1
    wide: torch.dtype | None  # the type to sum ``tally`` over ``before`` in, None: no sum
    l1_out: Tensor
    sq_out: Tensor
    count_out: Tensor  # (units,), or (units, 1) when after == 1
    top_out: Tensor


class _Plan:
    """Views for :func:`batch_stats` on one input shape, over buffers of :class:`Scratch`
    (or fresh ones): per block its ``|x|`` and flags buffers and its output slices."""

    __slots__ = ("axis", "blocks", "counts", "norms", "tops")

    def __init__(self, shape: tuple[int, ...], dim: int, buffers: Scratch) -> None:
        axis = 1 if dim == 0 else 0
        rows = shape[axis]
        per_row = math.prod(shape) // rows
        step = max(1, min(rows, BLOCK // max(per_row, 1)))
        units, vectors = shape[dim], math.prod(shape) // shape[dim]
        acc = _count_dtype(vectors)
        starts = range(0, rows, step)
        self.axis = axis
        self.norms = buffers.get("norms", 2 * vectors).view(2, vectors)
        per_vector = [s for d, s in enumerate(shape) if d != dim]
        l1n, sq = self.norms[0].view(per_vector), self.norms[1].view(per_vector)
        self.counts = buffers.get("counts", len(starts) * units, acc).view(-1, units)
        self.tops = buffers.get("tops", len(starts))
        self.blocks: list[_Block] = []
        for i, start in enumerate(starts):
            size = min(step, rows - start)
            block = list(shape)
            block[axis] = size
            n = size * per_row
            flags = buffers.get("flags", n).view(block)
            before, _, after, narrow = _count_layout(tuple(block), dim, acc)
            count = flags.view(torch.uint8).view(before, units, after)
            self.blocks.append(
                _Block(
                    start=start,
                    size=size,
                    work=buffers.get("work", n).view(block),
                    flags=flags,
                    tally=count if before > 1 else count[0],
                    wide=narrow if before > 1 else None,
                    l1_out=l1n.narrow(0, start, size),
                    sq_out=sq.narrow(0, start, size),
                    count_out=self.counts[i] if after > 1 else self.counts[i].view(units, 1),
                    top_out=self.tops[i],
                )
            )


class Scratch:
    """Buffers of :func:`batch_stats` for one dtype and device, reused from call to call.

    On the CPU a fresh temporary of some MiB costs page faults at every call; reusing
    buffers costs nothing. ``fresh=True`` makes new ones at every :meth:`get` (for
    devices whose allocator caches memory anyway). The prepared views of the last few
    input shapes are kept with them.
    """

    __slots__ = ("buffers", "device", "dtype", "fresh", "plans")

    def __init__(self, dtype: torch.dtype, device: torch.device, fresh: bool = False) -> None:
        self.dtype, self.device, self.fresh = dtype, device, fresh
        self.buffers: dict[str, Tensor] = {}
        self.plans: dict[tuple[tuple[int, ...], int], _Plan] = {}

    def get(self, name: str, n: int, dtype: torch.dtype | None = None) -> Tensor:
        """The first ``n`` elements of buffer ``name`` (grown if too small)."""
        dtype = dtype or (torch.bool if name == "flags" else self.dtype)
        buf = self.buffers.get(name)
        if self.fresh or buf is None or buf.numel() < n or buf.dtype != dtype:
            buf = torch.empty(n, dtype=dtype, device=self.device)
            if not self.fresh:
                self.buffers[name] = buf
                self.plans.clear()  # their views point into the old buffer
        return buf[:n]

    def plan(self, shape: tuple[int, ...], dim: int) -> _Plan:
        """The views for inputs of ``shape`` (kept for the last 16 shapes)."""
        key = (shape, dim)
        plan = self.plans.get(key)
        if plan is None:
            plan = _Plan(shape, dim, self)
            if not self.fresh:  # building may grow buffers and clear the cache: add after
                if len(self.plans) >= 16:
                    self.plans.clear()
                self.plans[key] = plan
        return plan


def batch_stats(
    x: Tensor, dim: int, eps: float, scratch: Scratch | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Everything the Monitor needs from a batch, in few passes over ``x``.

    Returns ``norms``, shape ``(2, vectors)``: per vector along ``dim`` ``||v||_1`` and
    ``||v||_2**2`` (the values of ``functional._l1_sq``; with ``dim=0`` up to the
    rounding of another summation order); per unit the active counts
    (those of :func:`actreg.metrics.active_counts`, int32 or int64); and the largest value of ``x``
    (0-dim, NaN if any is NaN).

    ``x`` is cut into blocks of about :data:`BLOCK` elements along its first axis other
    than ``dim`` (vectors stay whole); each block is read from memory once and worked on
    in cache: ``|x|`` is written once and reduced twice (``|x|``, then squared in place,
    ``x**2``: ``|x|*|x| == x*x`` exactly). With ``scratch`` no temporary is allocated
    and the results are views of its buffers, valid until its next use. ``x`` must
    already be checked and detached, ``dim`` non-negative.
    """
    if x.dim() == 1:
        x, dim = x.unsqueeze(0), 1
    if scratch is None:
        scratch = Scratch(x.dtype, x.device, fresh=True)
    plan = scratch.plan(tuple(x.shape), dim)
    whole = len(plan.blocks) == 1
    for b in plan.blocks:
        xb = x if whole else x.narrow(plan.axis, b.start, b.size)
        a = torch.abs(xb, out=b.work)
        torch.sum(a, dim, out=b.l1_out)
        if eps == 0.0:
            b.flags.copy_(xb)  # x != 0, NaN included
            a.mul_(a)
        else:
            nn.functional.threshold(a, eps, 0.0, inplace=True)  # |x| <= eps -> 0, NaN stays
            b.flags.copy_(a)
            torch.mul(xb, xb, out=a)
        torch.sum(a, dim, out=b.sq_out)
        counts = b.tally if b.wide is None else b.tally.sum(0, dtype=b.wide)
        torch.sum(counts, -1, keepdim=b.count_out.dim() == 2, out=b.count_out)
        torch.amax(xb, out=b.top_out)
    if whole:
        return plan.norms, plan.counts[0], plan.tops[0]
    return plan.norms, plan.counts.sum(0, dtype=plan.counts.dtype), plan.tops.amax()
