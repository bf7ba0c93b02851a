"""Pure sparsity measures: a tensor with a unit axis ``dim`` in, a tensor out.

Every measure of activation sparsity is defined here once; :class:`actreg.Monitor`
accumulates the same quantities over many batches and agrees with these functions.

Terms used below, for a tensor ``x`` whose unit (feature, channel) axis is ``dim``:

* a *unit* is one index along ``dim``;
* a *position* is one index along every other axis together: one example of an
  ``(N, H)`` batch, one ``(example, time step)`` pair of an ``(N, T, H)`` sequence,
  one ``(example, row, column)`` triple of an ``(N, C, H, W)`` map with ``dim=1``;
* a value is *zero* when ``|x| <= eps`` and *active* otherwise (NaN counts as active).

An empty tensor gives 0 (and zero firing rates), never a division by zero.

Example:
    >>> import torch
    >>> from actreg import metrics
    >>> x = torch.tensor([[0.0, 2.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    >>> metrics.zero_fraction(x)
    tensor(0.3750)
    >>> metrics.l0(x)  # (1 + 4) / 2 active units per example
    tensor(2.5000)
    >>> metrics.hoyer(x)  # one-hot scores 1, constant scores 0
    tensor(0.5000)
    >>> metrics.firing_rate(x)
    tensor([0.5000, 1.0000, 0.5000, 0.5000])
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from actreg._errors import ActregError
from actreg.functional import _l1_sq, _ratio_from_norms, as_float, check_dim

__all__ = ["METRICS", "firing_rate", "hoyer", "l0", "mean_abs", "rms", "zero_fraction"]

#: The scalar metrics of this module, by name (the keys of :meth:`Monitor.compute`).
METRICS: tuple[str, ...] = ("zero_fraction", "l0", "mean_abs", "rms", "hoyer")


def check_tensor(x: object, what: str = "a sparsity metric") -> Tensor:
    """Return ``x`` (half precision upcast to float32) if it is a floating-point tensor."""
    return as_float(x, what, "measure a layer whose output is float (or call .float() first)")


def check_eps(eps: object) -> float:
    """Return ``eps`` as a float if it is a finite number >= 0, else raise."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise ActregError(f"eps must be a number >= 0, got {eps!r}")
    if not math.isfinite(eps) or eps < 0:
        raise ActregError(
            f"eps must be finite and >= 0, got {eps!r}; values with |x| <= eps count as "
            "zero, so use eps=0.0 for exact zeros or a small positive threshold"
        )
    return float(eps)


def check_unit_dim(x: Tensor, dim: int) -> int:
    """Return the non-negative unit axis of ``x``; raise for a 0-dim tensor or a bad axis."""
    if x.dim() == 0:
        raise ActregError(
            "a sparsity metric needs a tensor with a unit axis, got a 0-dim tensor; "
            "pass a batch such as (N, H)"
        )
    return check_dim(x, dim)


def _active_flags(x: Tensor, eps: float, out: Tensor | None = None) -> Tensor:
    """``|x| > eps`` as a bool tensor (NaN counts active), into ``out`` if given.

    A cast to bool and ``threshold`` are vectorized on CPU where comparison operators
    (``le``, ``gt``) are not (about 7x slower for a float32 conv map). ``eps`` is rounded
    to ``x``'s dtype first, as a comparison with a Python number does.
    """
    if eps != 0.0:  # |x| <= eps -> 0, NaN stays NaN
        x = nn.functional.threshold(x.detach().abs(), eps, 0.0, inplace=True)
    return x.bool() if out is None else out.copy_(x)


def _count_layout(
    shape: tuple[int, ...], dim: int, acc: torch.dtype
) -> tuple[int, int, int, torch.dtype]:
    """``(before, units, after)`` of a contiguous tensor around ``dim``, and the
    narrowest integer type that sums ``before`` bools without overflow (else ``acc``)."""
    units = shape[dim]
    after = math.prod(shape[dim + 1 :])
    before = math.prod(shape[:dim])
    narrow = torch.uint8 if before < 2**8 else torch.int16 if before < 2**15 else acc
    return before, units, after, narrow


def _count_dtype(positions: int) -> torch.dtype:
    return torch.int32 if positions < 2**31 else torch.int64


def _count_per_unit(flags: Tensor, dim: int) -> Tensor:
    """Per unit (axis ``dim``), the number of True entries of the bool tensor ``flags``.

    int32 counts (int64 from 2**31 positions). On the contiguous view ``(before, units,
    after)`` the sum over ``before`` runs in the narrowest integer type that cannot
    overflow (uint8 up to 255 rows: vectorized, 3x faster on CPU than int32 sums of
    bools), then the sum over ``after`` in int32.
    """
    units = flags.shape[dim]
    acc = _count_dtype(flags.numel() // max(units, 1))
    if flags.dim() == 1:
        return flags.to(acc)
    if flags.numel() == 0 or not flags.is_contiguous():
        return flags.sum([d for d in range(flags.dim()) if d != dim], dtype=acc)
    before, units, after, narrow = _count_layout(tuple(flags.shape), dim, acc)
    view = flags.view(torch.uint8).view(before, units, after)
    counts = view.sum(0, dtype=narrow) if before > 1 else view[0]
    return counts.sum(1, dtype=acc) if after > 1 else counts.view(units).to(acc)


def active_counts(x: Tensor, dim: int, eps: float) -> Tensor:
    """Per unit (axis ``dim``), the number of positions where ``|x| > eps``.

    ``x`` must already be checked; ``dim`` must be non-negative.
    """
    return _count_per_unit(_active_flags(x, eps), dim)


def normalized_hoyer(ratio: Tensor, n: int, inplace: bool = False) -> Tensor:
    """Map ``||v||_1 / ||v||_2`` of vectors with ``n`` entries to sparsity in [0, 1].

    ``(sqrt(n) - ratio) / (sqrt(n) - 1)``, clamped to [0, 1]: 1 for a one-hot vector,
    0 for a constant one. A zero vector (ratio 0) scores 1. With ``n == 1`` the formula
    is undefined; a zero scores 1 and anything else 0. ``inplace=True`` (no autograd)
    writes the same values into ``ratio``.
    """
    if n == 1:
        return (ratio == 0).to(ratio.dtype)
    root = math.sqrt(n)
    if inplace:  # (r - root) / (1 - root) == (root - r) / (root - 1) exactly
        return ratio.sub_(root).div_(1.0 - root).clamp_(0.0, 1.0)
    return ((root - ratio) / (root - 1.0)).clamp_(0.0, 1.0)


def hoyer_from_norms(l1n: Tensor, sq: Tensor, n: int, inplace: bool = False) -> Tensor:
    """Normalized Hoyer sparsity from per-vector ``||v||_1`` and ``||v||_2**2``.

    The ratio is :mod:`actreg.functional`'s, the one the Hoyer penalty uses.
    ``inplace=True`` (no autograd) writes the result into ``l1n`` and overwrites ``sq``.
    """
    return normalized_hoyer(_ratio_from_norms(l1n, sq, False, inplace), n, inplace)


def hoyer_per_vector(x: Tensor, dim: int) -> Tensor:
    """Normalized Hoyer sparsity of every vector of ``x`` along ``dim`` (checked input)."""
    return hoyer_from_norms(*_l1_sq(x, dim), x.shape[dim])


def _positions(x: Tensor, dim: int) -> int:
    return x.numel() // x.shape[dim] if x.shape[dim] else 0


def zero_fraction(x: Tensor, eps: float = 0.0) -> Tensor:
    """Share of the values of ``x`` with ``|x| <= eps``.

    Example:
        >>> import torch
        >>> zero_fraction(torch.tensor([0.0, 0.05, -3.0, 1.0]), eps=0.1)
        tensor(0.5000)
    """
    x, eps = check_tensor(x), check_eps(eps)
    if x.numel() == 0:
        return x.new_zeros(())
    return (x.abs().le(eps).sum().double() / x.numel()).to(x.dtype)


def l0(x: Tensor, dim: int = -1, eps: float = 0.0) -> Tensor:
    """Mean number of active units (``|x| > eps`` along ``dim``) per position.

    For ``(N, H)`` this is the mean number of non-zero units per example. For a sequence
    ``(N, T, H)`` it is per *position*: averaged over every ``(example, time step)``,
    not summed over time. For ``(N, C, H, W)`` with ``dim=1``, per pixel.

    Example:
        >>> import torch
        >>> l0(torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 3.0]]))
        tensor(1.5000)
    """
    x, eps = check_tensor(x), check_eps(eps)
    dim = check_unit_dim(x, dim)
    positions = _positions(x, dim)
    if positions == 0:
        return x.new_zeros(())
    return (active_counts(x, dim, eps).sum().double() / positions).to(x.dtype)


def mean_abs(x: Tensor) -> Tensor:
    """Mean of ``|x|`` over every value.

    Example:
        >>> import torch
        >>> mean_abs(torch.tensor([1.0, -3.0]))
        tensor(2.)
    """
    x = check_tensor(x)
    return x.abs().mean() if x.numel() else x.new_zeros(())


def rms(x: Tensor) -> Tensor:
    """Root mean square of every value: ``sqrt(mean(x**2))``.

    Example:
        >>> import torch
        >>> rms(torch.tensor([3.0, -4.0, 0.0, 0.0]))
        tensor(2.5000)
    """
    x = check_tensor(x)
    return x.square().mean().sqrt() if x.numel() else x.new_zeros(())


def hoyer(x: Tensor, dim: int = -1) -> Tensor:
    """Normalized Hoyer sparsity in [0, 1], per vector along ``dim``, averaged.

    For a vector ``v`` of ``n`` units: ``(sqrt(n) - ||v||_1 / ||v||_2) / (sqrt(n) - 1)``.
    1 for a one-hot vector, 0 for a constant one; a zero vector counts 1 (fully sparse).
    The ratio is :mod:`actreg.functional`'s Hoyer ratio, the formula of the penalty.

    Example:
        >>> import torch
        >>> hoyer(torch.tensor([[0.0, 0.0, 5.0, 0.0]]))
        tensor(1.)
        >>> hoyer(torch.ones(3, 4))
        tensor(0.)
    """
    x = check_tensor(x)
    dim = check_unit_dim(x, dim)
    if x.numel() == 0:
        return x.new_zeros(())
    return hoyer_per_vector(x, dim).mean()


def firing_rate(x: Tensor, dim: int = -1, eps: float = 0.0) -> Tensor:
    """Per unit (axis ``dim``), the share of positions where it is active (``|x| > eps``).

    Returns a 1-D tensor with one rate per unit: the feature density of sparse-autoencoder
    practice. Positions are as in :func:`l0` (examples, time steps, pixels).

    Example:
        >>> import torch
        >>> firing_rate(torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 0.0], [3.0, 1.0]]))
        tensor([0.7500, 0.2500])
    """
    x, eps = check_tensor(x), check_eps(eps)
    dim = check_unit_dim(x, dim)
    positions = _positions(x, dim)
    if positions == 0:
        return x.new_zeros(x.shape[dim])
    return (active_counts(x, dim, eps).double() / positions).to(x.dtype)
