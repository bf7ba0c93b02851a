"""The pure-PyTorch sparse-input kernels of :mod:`actreg.sparse`, and the dispatch to the C++ ones.

The C++ kernels (``actreg/csrc/sparse.cpp``) come as a loaded module ``ext`` from a
:class:`actreg._cpp.Backend` (see :mod:`actreg.sparse._backend`); the functions here take it
as an argument (None: pure PyTorch). Two pure-PyTorch kernels compute ``x @ W.T + b`` from
``wt = W.T`` (``in x out``, contiguous):

* :func:`bag_linear` (the one :class:`actreg.sparse.SparseInputLinear` uses): every example
  is a bag of its own non-zero input columns, weighted by their values, and
  ``F.embedding_bag(mode="sum")`` sums the matching rows of ``wt`` without copying them out.
  It reads only ``nnz`` rows per example, so its work does not grow with the union of the
  batch's non-zeros.
* :func:`gather_linear`: copy the rows of ``wt`` for the union of non-zero columns over the
  batch (``index_select``) and multiply (``addmm``). Kept as the reference point the benchmark
  compares against.

:func:`gated_sparse` is the same gather for the rest of a gated FFN once its gate is known
(:class:`actreg.sparse.SparseGatedMLP` without the C++ kernels).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from actreg.sparse._backend import takes

__all__ = [
    "bag_linear",
    "gated_sparse",
    "gather_linear",
    "nonzero_fraction",
    "random_sparse",
    "sparse_linear",
]

_NUMPY_DTYPES = (torch.float32, torch.float64, torch.float16)


def _on_numpy(x: Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype in _NUMPY_DTYPES


def nonzero_fraction(x: Tensor, ext: Any = None, max_samples: int = 4096) -> float:
    """The fraction of non-zero entries of ``x``, counted exactly up to ``max_samples``
    entries and estimated on an odd-strided subsample beyond (a cheap decision, not a metric);
    counted by the C++ module ``ext`` where given.

    Example:
        >>> import torch
        >>> nonzero_fraction(torch.tensor([[0.0, 1.0, 0.0, 2.0]]))
        0.5
    """
    flat = x.detach().reshape(-1)
    if flat.numel() > max_samples:
        flat = flat[:: (flat.numel() // max_samples) | 1]
    if flat.numel() == 0:
        return 0.0
    if takes(ext, flat, flat):
        return int(ext.count_nonzero(flat)) / flat.numel()
    if _on_numpy(flat):  # numpy counts faster than torch.count_nonzero on CPU
        return int(np.count_nonzero(flat.numpy())) / flat.numel()
    return int(torch.count_nonzero(flat)) / flat.numel()


def bag_linear(x: Tensor, wt: Tensor, bias: Tensor | None) -> Tensor:
    """``x @ wt + bias`` reading only the rows of ``wt`` where ``x`` is non-zero.

    Args:
        x: ``(N, in)`` input.
        wt: ``(in, out)`` contiguous transposed weight.
        bias: ``(out,)`` or None.

    Example:
        >>> import torch
        >>> x = torch.tensor([[0.0, 2.0, 0.0], [1.0, 0.0, 0.0]])
        >>> w = torch.arange(6.0).reshape(2, 3)
        >>> bag_linear(x, w.t().contiguous(), torch.ones(2))
        tensor([[3., 9.],
                [1., 4.]])
    """
    n, k = x.shape
    offsets: Tensor | None = None
    if _on_numpy(x):  # on CPU, numpy finds the non-zeros faster than torch.nonzero
        a = x.detach().numpy().reshape(-1)
        i = np.flatnonzero(a)
        idx, vals = torch.from_numpy(i), torch.from_numpy(a[i])
        if n > 1:
            offsets = torch.from_numpy(np.searchsorted(i, np.arange(0, n * k, k)))
    else:
        flat = x.reshape(-1)
        idx = flat.nonzero().view(-1)
        vals = flat.index_select(0, idx)
        if n > 1:
            counts = (x != 0).sum(1)
            offsets = counts.cumsum(0) - counts
    if idx.numel() == 0:
        out = x.new_zeros(n, wt.shape[1])
    elif offsets is None:
        out = F.embedding_bag(idx.view(1, -1), wt, mode="sum", per_sample_weights=vals.view(1, -1))
    else:
        out = F.embedding_bag(idx.remainder(k), wt, offsets, mode="sum", per_sample_weights=vals)
    return out if bias is None else out.add_(bias)


def sparse_linear(x: Tensor, wt: Tensor, bias: Tensor | None, ext: Any = None) -> Tensor:
    """``x @ wt + bias`` skipping zero inputs: the C++ kernel of the loaded module ``ext``
    where it takes the tensors, else :func:`bag_linear`.

    Example:
        >>> import torch
        >>> sparse_linear(torch.tensor([[0.0, 2.0]]), torch.eye(2), None)
        tensor([[0., 2.]])
    """
    if takes(ext, x, wt, bias):
        return ext.sparse_linear(x, wt, bias)
    return bag_linear(x, wt, bias)


def gather_linear(x: Tensor, wt: Tensor, bias: Tensor | None) -> Tensor:
    """``x @ wt + bias`` over the union of non-zero columns of ``x`` (gather, then ``addmm``).

    Example:
        >>> import torch
        >>> x = torch.tensor([[0.0, 2.0, 0.0], [1.0, 0.0, 0.0]])
        >>> w = torch.arange(6.0).reshape(2, 3)
        >>> gather_linear(x, w.t().contiguous(), torch.ones(2))
        tensor([[3., 9.],
                [1., 4.]])
    """
    nz = (x != 0).any(0).nonzero().view(-1)
    xs = x.index_select(1, nz)
    ws = wt.index_select(0, nz)
    return xs @ ws if bias is None else torch.addmm(bias, xs, ws)


def gated_sparse(
    x: Tensor, g: Tensor, wu: Tensor, bu: Tensor | None, wdt: Tensor, bd: Tensor | None
) -> Tensor:
    """``(g * (x @ wu.T + bu)) @ wdt + bd`` over the units where some row of ``g`` is
    non-zero: the rest of a gated FFN once its gate ``g`` is known (``wu``: ``up_proj``'s
    ``(k, d)`` weight, ``wdt``: ``down_proj``'s weight transposed, ``(k, out)``).

    Example:
        >>> import torch
        >>> g = torch.tensor([[0.0, 2.0]])
        >>> gated_sparse(torch.ones(1, 2), g, torch.eye(2), None, torch.eye(2), None)
        tensor([[0., 2.]])
    """
    idx = (g != 0).any(0).nonzero().view(-1)
    u = F.linear(x, wu.index_select(0, idx), None if bu is None else bu.index_select(0, idx))
    a = g.index_select(1, idx).mul_(u)
    w = wdt.index_select(0, idx)
    return a @ w if bd is None else torch.addmm(bd, a, w)


def random_sparse(
    shape: Sequence[int], sparsity: float, *, generator: torch.Generator | None = None
) -> Tensor:
    """Non-negative values with exactly ``round(sparsity * row)`` zeros per row, placed at
    random independently for each row (as in real ReLU activations)."""
    *lead, k = shape
    rows = math.prod(lead)
    x = torch.rand(rows, k, generator=generator) + 0.1
    n_zero = min(k, round(sparsity * k))
    if n_zero:
        order = torch.rand(rows, k, generator=generator).argsort(1)[:, :n_zero]
        x.scatter_(1, order, 0.0)
    return x.reshape(*lead, k)
