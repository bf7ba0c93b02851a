"""The optional C++ kernel behind :class:`actreg.Monitor`: all of a batch's statistics in one
pass over the activations.

:func:`_sweep.batch_stats` computes them with blocked PyTorch ops (about seven kernels per
block: abs, two reductions, square, bool cast, tally, amax). ``batch_stats`` here reads
each value once: ``x`` is viewed as ``(outer, units, inner)`` around the unit axis; for each
outer index it walks the units one after the other over the contiguous inner axis (one
sequential stream through memory) and adds ``|v|`` and ``v * v`` into the per-vector rows
``||v||_1`` and ``||v||_2**2`` (``inner`` values each, kept in L1 cache), counts the active
values per unit and keeps a running maximum per inner position. With the unit axis last
(``inner == 1``) each row of units is reduced in 16 independent lanes instead. The inner
loops have no dependence between iterations, so ``-O3 -march=native`` vectorizes them.
No threads (one call per hooked layer, under a training step that has its own).

Precision: sums are accumulated in the input dtype (as the PyTorch path does), in another
order (16 lanes when the unit axis is last), so they agree with it to floating-point
rounding; counts and the maximum are exact (the maximum is NaN if any value is NaN:
``||v||_1`` of a vector is NaN exactly when the vector holds a NaN).

The C++ source is ``actreg/csrc/monitor.cpp``; :mod:`actreg._cpp` builds it (once per machine,
cached) and decides whether to use it (``ACTREG_EXTENSION``). A Monitor asks its backend with
:meth:`actreg._cpp.Backend.poll`, which never waits: on a machine without the build yet, the
first hook call starts it in a background process and the Monitor keeps the PyTorch path
(:func:`actreg._sweep.batch_stats`) until the build is ready, so a short script such as
``actreg demo`` does not stall; the statistics are the same either way (to float rounding).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor

from actreg._cpp import Backend

__all__ = ["backend", "batch_stats", "usable"]


@functools.cache
def backend() -> Backend:
    """The process's Monitor kernel backend (mode from ``ACTREG_EXTENSION``), decided on use.

    Example:
        >>> backend() is backend()
        True
    """
    return Backend("actreg_monitor", "monitor.cpp", "the C++ Monitor kernel")


def usable(x: Tensor) -> bool:
    """Whether the C++ kernel takes ``x`` (contiguous, CPU, float32/64, not empty), outside
    ``torch.compile`` tracing (there the PyTorch ops are traced into the graph; the C++ call
    would break it)."""
    return (
        not torch.compiler.is_compiling()
        and x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)
        and x.is_contiguous()
        and x.numel() > 0
    )


def batch_stats(
    ext: Any, x: Tensor, dim: int, eps: float, out: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """What :func:`actreg._sweep.batch_stats` returns, in one C++ pass of the loaded module
    ``ext`` (see the module doc).

    ``x`` must pass :func:`usable`, ``dim`` be non-negative. With ``out`` (a 1-D buffer of
    ``x``'s dtype, at least ``2 * vectors`` elements) the norms are a view of it.
    """
    norms, counts, top = ext.batch_stats(x, dim, eps, out)
    return norms, counts, top
