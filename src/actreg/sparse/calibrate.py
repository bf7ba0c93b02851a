"""Timing, and the calibration of :class:`~actreg.sparse.SparseInputLinear` thresholds.

:func:`calibrate` finds, on this machine, the input zero fraction from which the sparse
kernel beats the dense ``addmm``, per batch size; :func:`time_interleaved` is the timer it
shares with :func:`actreg.sparse.measure`.
"""

from __future__ import annotations

import functools
import math
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from actreg._errors import ActregError
from actreg.sparse._backend import Backend, Kernels, backend, takes
from actreg.sparse._kernels import nonzero_fraction, random_sparse, sparse_linear

__all__ = ["calibrate", "crossover", "time_interleaved"]

_CACHE: dict[tuple[object, ...], dict[int, float]] = {}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    fns: dict[str, Callable[[], object]],
    *,
    repeats: int = 5,
    min_time: float = 2e-3,
    device: torch.device | str = "cpu",
    clock: str = "wall",
) -> dict[str, list[float]]:
    """Seconds per call of each function, ``repeats`` samples each, taken in turn so that
    background load hits every function alike. Each sample runs for at least ``min_time``.

    ``clock="cpu"`` counts this process's CPU time (``time.process_time``): with one torch
    thread on a shared CPU it leaves out the time other processes held the core, so it is
    much steadier than the wall clock; with several threads it sums them (use ``"wall"``).
    """
    dev = torch.device(device)
    if clock not in ("wall", "cpu"):
        raise ActregError(f'clock must be "wall" or "cpu", got {clock!r}')
    now = time.process_time if clock == "cpu" else time.perf_counter
    loops: dict[str, int] = {}
    for name, fn in fns.items():  # warm up and size the loops
        fn()
        _sync(dev)
        t0 = now()
        fn()
        _sync(dev)
        once = max(now() - t0, 1e-7)
        loops[name] = max(1, min(1000, math.ceil(min_time / once)))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(dev)
            t0 = now()
            for _ in range(loops[name]):
                fn()
            _sync(dev)
            samples[name].append((now() - t0) / loops[name])
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


def _sparse_path(x: Tensor, wt: Tensor, bias: Tensor | None) -> Tensor:
    nonzero_fraction(x)
    return sparse_linear(x, wt, bias)  # the pure-PyTorch path: what a layer runs without C++


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
    clock: str,
    ext: Any = None,
) -> dict[int, float]:
    """Time the dense path against the sparse one per batch size and zero fraction, and return
    the crossover zero fraction for each batch size. With the C++ module ``ext`` these are
    the two outcomes of the one call a converted layer makes (``addmm`` or the sparse kernel,
    after the zero count); without it ``F.linear`` against :func:`nonzero_fraction` then
    :func:`sparse_linear`."""
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
                fns: dict[str, Callable[[], object]]
                if takes(ext, x, wt, bias):  # the one C++ call a converted layer makes, both ways
                    fns = {
                        "dense": functools.partial(
                            ext.linear_auto, x, weight, wt, bias, math.inf, False
                        ),
                        "sparse": functools.partial(
                            ext.linear_auto, x, weight, wt, bias, 0.0, False
                        ),
                    }
                else:
                    fns = {
                        "dense": functools.partial(F.linear, x, weight, bias),
                        "sparse": functools.partial(_sparse_path, x, wt, bias),
                    }
                t = time_interleaved(fns, repeats=repeats, device=device, clock=clock)
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
    clock: str = "auto",
    cache: bool = True,
    kernels: Kernels | Backend = "auto",
) -> dict[int, float]:
    """Measure, on this machine, the zero fraction from which the sparse path beats dense.

    Times ``F.linear`` against the sparse kernel for a random ``in -> out`` layer at each
    batch size and zero fraction (zeros placed at random per example), and returns
    ``{batch_size: crossover}``, where the sparse kernel takes at most ``win`` times the
    dense time from the crossover on (``inf``: it never does). Results are cached per
    shape, dtype, device and ``torch.get_num_threads()``; takes about a second per shape.
    ``clock="auto"`` times CPU time with one CPU thread (steady on a shared machine) and wall
    time otherwise (see :func:`time_interleaved`). ``kernels`` chooses the sparse kernel timed
    (see :func:`actreg.sparse.backend`): calibrate with the kernels the layer will run.

    Example:
        >>> calibrate(1024, 1024)  # doctest: +SKIP
        {1: 0.43, 8: 0.71, 32: 0.83}
    """
    dev = torch.device(device)
    threads = torch.get_num_threads()
    if clock == "auto":
        clock = "cpu" if threads == 1 and dev.type == "cpu" else "wall"
    key = (in_features, out_features, dtype, dev, threads, *batch_sizes, *sparsities)
    ext = backend(kernels).load() if dev.type == "cpu" else None
    key += (repeats, win, clock, ext is not None)
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
        clock=clock,
        ext=ext,
    )
    _CACHE[key] = result
    return dict(result)
