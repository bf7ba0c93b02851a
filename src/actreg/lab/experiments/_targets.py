"""Target mode in the experiments: which epoch to keep, and the penalized variant's name.

In target mode (``target_sparsity`` or ``target_l0``) an experiment asks each penalized
layer for a sparsity instead of a coefficient. The epoch whose weights it keeps must then
be at the target: ranked by the validation task metric alone, a run keeps an epoch from
before the controller got there, since sparser is worse for the task (digits CNN, lr
1e-3, 30 epochs: epoch 4 kept, first conv map at 0.55 zeros for a 0.9 target). So in
target mode an epoch is ranked first by how far its validation sparsity misses the target
(:func:`target_miss`, 0 within :data:`TARGET_TOL`), then by the task metric.

Design: the vision experiments get this through the validation metrics
(:func:`at_target` adds ``target_error``: the error where every watched layer is on the
target, else ``1 +`` the largest miss, so an epoch on the target always ranks first),
which leaves the training loop (:func:`actreg.lab.train.fit`) as it is. The sequence
experiments, with their own loop, rank ``(miss, val_loss)`` directly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor, nn

from actreg import metrics

__all__ = ["TARGET_TOL", "MetricsFn", "at_target", "penalized_label", "target_miss"]

TARGET_TOL = 0.02
"""A layer whose zero fraction (or active share, for ``target_l0``) lies this close to the
target's is on the target: issue 15's tolerance."""

MetricsFn = Callable[[nn.Module, Tensor, Tensor], dict[str, float]]


def target_miss(cfg: Any, stats: Mapping[str, float] | None, units: int) -> float:
    """How far a layer's measured ``stats`` miss ``cfg``'s target, beyond
    :data:`TARGET_TOL`, as a share of its ``units`` (0: on target, or no target).

    Example:
        >>> from types import SimpleNamespace as NS
        >>> cfg = NS(target_sparsity=0.9, target_l0=None)
        >>> round(target_miss(cfg, {"zero_fraction": 0.85}, 100), 4)
        0.03
        >>> target_miss(cfg, {"zero_fraction": 0.91}, 100)
        0.0
    """
    sparsity, l0 = getattr(cfg, "target_sparsity", None), getattr(cfg, "target_l0", None)
    if stats is None:
        return 0.0
    if sparsity is not None:
        gap = stats["zero_fraction"] - sparsity
    elif l0 is not None:
        gap = (stats["l0"] - l0) / units
    else:
        return 0.0
    return max(0.0, abs(gap) - TARGET_TOL)


def at_target(metrics_fn: MetricsFn, cfg: Any, watch: list[str], dim: int = -1) -> MetricsFn:
    """``metrics_fn`` plus ``target_miss`` (the largest over the modules ``watch``) and
    ``target_error`` (``error`` when that is 0, else ``1 + target_miss``).

    The validation pass averages metrics over batches weighted by examples; a batch's miss
    is measured on that batch (1000 examples by default).

    Example:
        >>> import torch
        >>> from types import SimpleNamespace as NS
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> fn = at_target(lambda m, x, y: {"error": 0.25, "n": float(len(m(x)))},
        ...                NS(target_sparsity=0.99, target_l0=None), ["1"])
        >>> out = fn(model, torch.randn(16, 4), torch.zeros(16))
        >>> out["target_miss"] > 0, out["target_error"] > 1
        (True, True)
    """

    def measured(model: nn.Module, x: Tensor, y: Tensor) -> dict[str, float]:
        seen: dict[str, Tensor] = {}
        handles = [
            model.get_submodule(name).register_forward_hook(
                lambda m, a, out, name=name: seen.__setitem__(name, out.detach())
            )
            for name in watch
        ]
        try:
            out = dict(metrics_fn(model, x, y))
        finally:
            for handle in handles:
                handle.remove()
        miss = 0.0
        for act in seen.values():
            stats = {
                "zero_fraction": float(metrics.zero_fraction(act)),
                "l0": float(metrics.l0(act, dim)),
            }
            miss = max(miss, target_miss(cfg, stats, act.shape[dim]))
        out["target_miss"] = miss
        out["target_error"] = out["error"] if miss == 0 else 1.0 + miss
        return out

    return measured


def penalized_label(cfg: Any) -> str:
    """A penalized variant's name from ``cfg.penalty`` and ``cfg.coef``, or in target mode
    from the target (``cfg.target_sparsity`` or ``cfg.target_l0``).

    Example:
        >>> from types import SimpleNamespace as NS
        >>> penalized_label(NS(penalty="l1", coef=1e-4, target_sparsity=None, target_l0=None))
        'l1 0.0001'
        >>> penalized_label(NS(penalty="l1", coef=1e-4, target_sparsity=0.9, target_l0=None))
        'l1 target 0.9'
    """
    if cfg.target_sparsity is not None:
        return f"{cfg.penalty} target {cfg.target_sparsity:g}"
    if cfg.target_l0 is not None:
        return f"{cfg.penalty} target_l0 {cfg.target_l0:g}"
    return f"{cfg.penalty} {cfg.coef:g}"
