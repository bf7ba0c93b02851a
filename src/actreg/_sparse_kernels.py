"""Kernels and timing behind :mod:`actreg.sparse`: sparse-input matmuls and their calibration.

Two pure-PyTorch kernels compute ``x @ W.T + b`` from ``wt = W.T`` (``in x out``, contiguous):

* :func:`bag_linear` (the one :class:`actreg.sparse.SparseInputLinear` uses): every example
  is a bag of its own non-zero input columns, weighted by their values, and
  ``F.embedding_bag(mode="sum")`` sums the matching rows of ``wt`` without copying them out.
  It reads only ``nnz`` rows per example, so its work does not grow with the union of the
  batch's non-zeros.
* :func:`gather_linear`: copy the rows of ``wt`` for the union of non-zero columns over the
  batch (``index_select``) and multiply (``addmm``). Kept as the reference point the benchmark
  compares against.
"""

from __future__ import annotations

import functools
import math
import statistics
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from actreg._errors import ActregError

_CACHE: dict[tuple[object, ...], dict[int, float]] = {}


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
    flat = x.reshape(-1)
    idx = flat.nonzero().view(-1)
    if idx.numel() == 0:
        out = x.new_zeros(n, wt.shape[1])
        return out if bias is None else out.add_(bias)
    vals = flat.index_select(0, idx)
    if n == 1:
        out = F.embedding_bag(idx.view(1, -1), wt, mode="sum", per_sample_weights=vals.view(1, -1))
    else:
        counts = (x != 0).sum(1)
        offsets = counts.cumsum(0) - counts
        out = F.embedding_bag(idx.remainder(k), wt, offsets, mode="sum", per_sample_weights=vals)
    return out if bias is None else out.add_(bias)


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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    fns: dict[str, Callable[[], object]],
    *,
    repeats: int = 5,
    min_time: float = 2e-3,
    device: torch.device | str = "cpu",
) -> dict[str, list[float]]:
    """Seconds per call of each function, ``repeats`` samples each, taken in turn so that
    background load hits every function alike. Each sample runs for at least ``min_time``."""
    dev = torch.device(device)
    loops: dict[str, int] = {}
    for name, fn in fns.items():  # warm up and size the loops
        fn()
        _sync(dev)
        t0 = time.perf_counter()
        fn()
        _sync(dev)
        once = max(time.perf_counter() - t0, 1e-7)
        loops[name] = max(1, min(1000, math.ceil(min_time / once)))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(dev)
            t0 = time.perf_counter()
            for _ in range(loops[name]):
                fn()
            _sync(dev)
            samples[name].append((time.perf_counter() - t0) / loops[name])
    return samples


def crossover(sparsities: Sequence[float], ratios: Sequence[float], win: float) -> float:
    """The zero fraction from which the sparse kernel wins: ``sparse/dense <= win`` from there
    on, linearly interpolated between grid points. ``inf`` if it never wins.

    Example:
        >>> crossover([0.5, 0.7, 0.9], [1.4, 1.0, 0.4], win=1.0)
        0.7
        >>> crossover([0.5, 0.9], [2.0, 1.5], win=1.0)
        inf
    """
    pts = sorted(zip(sparsities, ratios, strict=True))
    first = len(pts)
    for i in range(len(pts) - 1, -1, -1):
        if pts[i][1] > win:
            break
        first = i
    if first == len(pts):
        return math.inf
    if first == 0:
        return float(pts[0][0])
    (s0, r0), (s1, r1) = pts[first - 1], pts[first]
    return float(round(s0 + (r0 - win) / (r0 - r1) * (s1 - s0), 4))


def measure_thresholds(
    in_features: int,
    out_features: int,
    *,
    batch_sizes: Sequence[int],
    sparsities: Sequence[float],
    dtype: torch.dtype,
    device: torch.device,
    repeats: int,
    win: float,
) -> dict[int, float]:
    """Time dense ``F.linear`` against :func:`bag_linear` per batch size and zero fraction and
    return the crossover zero fraction for each batch size."""
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(out_features, in_features, generator=gen).to(device, dtype)
    bias = torch.randn(out_features, generator=gen).to(device, dtype)
    wt = weight.t().contiguous()
    out: dict[int, float] = {}
    with torch.inference_mode():
        for b in batch_sizes:
            ratios = []
            for s in sparsities:
                x = random_sparse((b, in_features), s, generator=gen).to(device, dtype)
                fns: dict[str, Callable[[], object]] = {
                    "dense": functools.partial(F.linear, x, weight, bias),
                    "sparse": functools.partial(bag_linear, x, wt, bias),
                }
                t = time_interleaved(
                    fns,
                    repeats=repeats,
                    device=device,
                )
                ratios.append(statistics.median(t["sparse"]) / statistics.median(t["dense"]))
            out[int(b)] = crossover(sparsities, ratios, win)
    return out


def calibrate(
    in_features: int,
    out_features: int,
    *,
    batch_sizes: Sequence[int] = (1, 8, 32),
    sparsities: Sequence[float] = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95),
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    repeats: int = 5,
    win: float = 0.9,
    cache: bool = True,
) -> dict[int, float]:
    """Measure, on this machine, the zero fraction from which the sparse path beats dense.

    Times ``F.linear`` against the sparse kernel for a random ``in -> out`` layer at each
    batch size and zero fraction (zeros placed at random per example), and returns
    ``{batch_size: crossover}``, where the sparse kernel takes at most ``win`` times the
    dense time from the crossover on (``inf``: it never does). Results are cached per
    shape, dtype, device and ``torch.get_num_threads()``; takes about a second per shape.

    Example:
        >>> calibrate(1024, 1024)  # doctest: +SKIP
        {1: 0.43, 8: 0.71, 32: 0.83}
    """
    dev = torch.device(device)
    threads = torch.get_num_threads()
    key = (in_features, out_features, dtype, dev, threads, *batch_sizes, *sparsities, repeats, win)
    if cache and key in _CACHE:
        return dict(_CACHE[key])
    if not batch_sizes or not sparsities:
        raise ActregError("calibrate needs at least one batch size and one sparsity")
    result = measure_thresholds(
        in_features,
        out_features,
        batch_sizes=batch_sizes,
        sparsities=sparsities,
        dtype=dtype,
        device=dev,
        repeats=repeats,
        win=win,
    )
    _CACHE[key] = result
    return dict(result)
