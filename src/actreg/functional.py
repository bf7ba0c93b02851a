"""Pure penalty formulas: tensor in, 0-dim tensor out.

Every formula of actreg lives here once; the penalty objects in
:mod:`actreg.penalties` only add coefficients, validation and composition.

Reductions (the ``reduction`` argument of the element-wise penalties):

* ``"batch"``: sum over every element, divided by the batch size (the size of
  the batch axis, 0 unless stated). This is the Keras >= 3.14 convention.
* ``"mean"``: mean over every element (the AR/TAR reference code).
* ``"sum"``: plain sum.

An empty tensor gives 0 under every reduction (Keras' ``divide_no_nan``).

Example:
    >>> import torch
    >>> from actreg import functional as F
    >>> F.l2(torch.ones(4, 5) * 2, 0.01)  # Keras' own example
    tensor(0.2000)
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor

from actreg._errors import ActregError

#: The reductions of the element-wise penalties (see the module docstring).
Reduction = Literal["batch", "mean", "sum"]
REDUCTIONS: tuple[Reduction, ...] = get_args(Reduction)

__all__ = [
    "REDUCTIONS",
    "Reduction",
    "ar",
    "binary",
    "decov",
    "hoyer",
    "hoyer_square",
    "kl_sparsity",
    "l1",
    "l1l2",
    "l2",
    "log",
    "reduce",
    "tar",
    "topk",
]

_EPS = 1e-12


def as_float(x: object, what: str, fix: str) -> Tensor:
    """Return ``x`` if it is a floating-point tensor, half precision upcast to float32.

    Penalties and metrics accumulate sums; float16/bfloat16 would overflow or lose
    precision, so they are computed in float32. ``what`` names the caller in the error,
    ``fix`` says how to mend it.
    """
    if not isinstance(x, Tensor):
        raise ActregError(f"{what} needs a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ActregError(f"{what} needs a floating-point tensor, got dtype {x.dtype}; {fix}")
    if x.dtype in (torch.float16, torch.bfloat16):
        return x.float()
    return x


def check_reduction(reduction: object) -> Reduction:
    """Return ``reduction`` if it is one of :data:`REDUCTIONS`, else raise :class:`ActregError`.

    Example:
        >>> check_reduction("sum")
        'sum'
    """
    for known in REDUCTIONS:
        if isinstance(reduction, str) and reduction == known:
            return known
    raise ActregError(
        f"unknown reduction {reduction!r}; use one of {', '.join(map(repr, REDUCTIONS))}"
    )


def check_dim(x: Tensor, dim: int, what: str = "dim") -> int:
    """Return ``dim`` made non-negative, or raise if it is out of range for ``x``."""
    if not isinstance(dim, int) or isinstance(dim, bool):
        raise ActregError(f"{what} must be an int, got {type(dim).__name__}")
    if not -x.dim() <= dim < max(x.dim(), 1):
        raise ActregError(
            f"{what}={dim} is out of range for a tensor of shape {tuple(x.shape)} "
            f"(valid: {-x.dim()} to {x.dim() - 1})"
        )
    return dim % max(x.dim(), 1)


def reduce(values: Tensor, reduction: Reduction = "batch", batch_dim: int = 0) -> Tensor:
    """Reduce per-element penalty ``values`` to a 0-dim tensor.

    Args:
        values: per-element penalty values, batch axis at ``batch_dim``.
        reduction: ``"batch"``, ``"mean"`` or ``"sum"`` (see the module docstring).
        batch_dim: the axis whose size ``"batch"`` divides by.
    """
    check_reduction(reduction)
    if values.numel() == 0:
        return values.new_zeros(())
    total = values.sum()
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / values.numel()
    if values.dim() == 0:
        raise ActregError(
            "reduction='batch' needs a tensor with a batch axis, got a 0-dim tensor; "
            "use reduction='sum'"
        )
    return total / values.shape[batch_dim]


def l1(x: Tensor, coef: float = 0.01, reduction: Reduction = "batch") -> Tensor:
    """``coef * reduce(|x|)``: Keras' ``L1``."""
    return coef * reduce(x.abs(), reduction)


def l2(x: Tensor, coef: float = 0.01, reduction: Reduction = "batch") -> Tensor:
    """``coef * reduce(x**2)``: Keras' ``L2`` (no factor 1/2)."""
    return coef * reduce(x.square(), reduction)


def l1l2(x: Tensor, l1: float = 0.0, l2: float = 0.0, reduction: Reduction = "batch") -> Tensor:
    """``reduce(l1 * |x| + l2 * x**2)``: Keras' ``L1L2`` (elastic net).

    Computed as two reductions, ``l1 * reduce(|x|) + l2 * reduce(x**2)``: in eager mode
    that is faster than one fused element-wise expression, which needs three full-size
    temporaries (benchmarks/bench_growth.py); ``torch.compile`` fuses either form.
    """
    return l1 * reduce(x.abs(), reduction) + l2 * reduce(x.square(), reduction)


def ar(x: Tensor, alpha: float = 2.0, reduction: Reduction = "mean") -> Tensor:
    """Activation regularization (Merity et al. 2017): ``alpha * reduce(x**2)``.

    The reference code applies it to the last layer's output after dropout, as a mean.
    """
    return alpha * reduce(x.square(), reduction)


def tar(x: Tensor, beta: float = 1.0, time_dim: int = 1, reduction: Reduction = "mean") -> Tensor:
    """Temporal activation regularization: ``beta * reduce((x[t+1] - x[t])**2)``.

    Differences are taken along ``time_dim`` (1 for batch-first, 0 for time-first).
    ``"batch"`` divides by the batch axis: 1 when ``time_dim`` is 0, else 0.
    """
    time_dim = check_dim(x, time_dim, "time_dim")
    if x.dim() < 2:
        raise ActregError(f"TAR needs a (batch, time, ...) tensor, got shape {tuple(x.shape)}")
    steps = x.shape[time_dim]
    if steps < 2:
        raise ActregError(
            f"TAR needs at least 2 steps along time_dim={time_dim}, got shape "
            f"{tuple(x.shape)}; check time_dim (1 for batch-first, 0 for time-first)"
        )
    diff = x.narrow(time_dim, 1, steps - 1) - x.narrow(time_dim, 0, steps - 1)
    return beta * reduce(diff.square(), reduction, batch_dim=1 if time_dim == 0 else 0)


def _check_unit_interval(x: Tensor, name: str) -> None:
    if x.numel() and bool(((x < 0) | (x > 1)).any()):
        raise ActregError(
            f"{name} needs values in [0, 1] (e.g. sigmoid outputs); got values in "
            f"[{x.min().item():.4g}, {x.max().item():.4g}]. Put it after a sigmoid, "
            "or pass validate=False to skip this check"
        )


def _units_last(x: Tensor, dim: int) -> Tensor:
    """View ``x`` as (positions, units) with the unit axis ``dim`` last."""
    dim = check_dim(x, dim)
    return x.movedim(dim, -1).reshape(-1, x.shape[dim])


def kl_sparsity(
    x: Tensor, beta: float = 3.0, target: float = 0.05, dim: int = -1, validate: bool = True
) -> Tensor:
    """Sparse-autoencoder KL penalty: ``beta * sum_j KL(target || rho_hat_j)``.

    ``rho_hat_j`` is the mean of unit ``j`` (axis ``dim``) over every other position.
    Values must lie in [0, 1]; ``rho_hat`` is clamped to ``[1e-6, 1 - 1e-6]``.
    """
    if validate:
        _check_unit_interval(x, "KLSparsity")
    rows = _units_last(x, dim)
    if rows.shape[0] == 0:
        return x.new_zeros(())
    q = rows.mean(0).clamp(1e-6, 1 - 1e-6)
    rho = target
    kl = rho * torch.log(rho / q) + (1 - rho) * torch.log((1 - rho) / (1 - q))
    return beta * kl.sum()


def _l1_sq(x: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """Per vector along ``dim``: ``||v||_1`` and ``||v||_2**2``.

    ``_sweep.batch_stats`` (the Monitor's) computes the same values in reused buffers.
    """
    dim = check_dim(x, dim)
    # Reduce along the unit axis in place of moving it last: no copy of conv maps (dim=1).
    return x.abs().sum(dim).reshape(-1), x.square().sum(dim).reshape(-1)


def _hoyer_ratio(x: Tensor, dim: int, squared: bool) -> Tensor:
    return _ratio_from_norms(*_l1_sq(x, dim), squared)


def _ratio_from_norms(l1n: Tensor, sq: Tensor, squared: bool, inplace: bool = False) -> Tensor:
    """``||v||_1 / ||v||_2`` (or its square) from :func:`_l1_sq`; a zero vector gives 0.

    ``inplace=True`` (no autograd) computes the same values into ``l1n``, overwriting
    ``sq`` too: no temporaries.
    """
    if inplace:
        root = sq.clamp_min_(_EPS) if squared else sq.sqrt_().clamp_min_(_EPS)
        return (l1n.square_() if squared else l1n).div_(root)
    if squared:
        return l1n.square() / sq.clamp_min(_EPS)
    return l1n / sq.sqrt().clamp_min(_EPS)


def _per_vector_reduce(ratio: Tensor, x: Tensor, reduction: Reduction, dim: int) -> Tensor:
    check_reduction(reduction)
    if reduction == "batch":
        batch = x.shape[0] if x.dim() > 1 and check_dim(x, dim) != 0 else 1
        return ratio.sum() / batch if ratio.numel() else ratio.new_zeros(())
    return reduce(ratio, reduction)


def hoyer(x: Tensor, coef: float = 1e-3, dim: int = -1, reduction: Reduction = "batch") -> Tensor:
    """Hoyer penalty: ``coef * reduce(||v||_1 / ||v||_2)`` over vectors ``v`` along ``dim``.

    A zero vector counts 0. ``"batch"`` sums over vectors and divides by the batch size.
    """
    return coef * _per_vector_reduce(_hoyer_ratio(x, dim, False), x, reduction, dim)


def hoyer_square(
    x: Tensor, coef: float = 1e-3, dim: int = -1, reduction: Reduction = "batch"
) -> Tensor:
    """Hoyer-Square (DeepHoyer): ``coef * reduce(||v||_1**2 / ||v||_2**2)`` along ``dim``."""
    return coef * _per_vector_reduce(_hoyer_ratio(x, dim, True), x, reduction, dim)


def log(x: Tensor, coef: float = 1e-3, reduction: Reduction = "batch") -> Tensor:
    """Log (Cauchy prior) sparsity penalty: ``coef * reduce(log(1 + x**2))``."""
    return coef * reduce(torch.log1p(x.square()), reduction)


def decov(x: Tensor, coef: float = 1e-3, dim: int = -1) -> Tensor:
    """DeCov (Cogswell et al. 2016): ``coef * 0.5 * (||C||_F**2 - ||diag(C)||**2)``.

    ``C`` is the covariance of the units (axis ``dim``) over every other position,
    normalized by the number of positions (as the chainer reference).
    """
    rows = _units_last(x, dim)
    if rows.shape[0] == 0:
        return x.new_zeros(())
    centered = rows - rows.mean(0, keepdim=True)
    cov = centered.T @ centered / rows.shape[0]
    return coef * 0.5 * (cov.square().sum() - torch.diagonal(cov).square().sum())


def binary(
    x: Tensor, coef: float = 1e-3, reduction: Reduction = "batch", validate: bool = True
) -> Tensor:
    """Binarizing penalty on [0, 1] values: ``coef * reduce(x * (1 - x))``, 0 at 0 and 1."""
    if validate:
        _check_unit_interval(x, "Binary")
    return coef * reduce(x * (1 - x), reduction)


def topk(x: Tensor, k: int, dim: int = -1) -> Tensor:
    """Keep the ``k`` largest values along ``dim`` and set the rest to zero.

    Gradients flow through the kept values only.
    """
    dim = check_dim(x, dim)
    if k > x.shape[dim]:
        raise ActregError(
            f"TopK k={k} is larger than axis {dim} of a tensor of shape {tuple(x.shape)}; "
            f"use k <= {x.shape[dim]} or another dim"
        )
    values, indices = x.topk(k, dim=dim)
    return torch.zeros_like(x).scatter(dim, indices, values)
