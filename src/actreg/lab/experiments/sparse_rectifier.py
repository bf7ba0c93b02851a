"""``sparse-rectifier``: deep sparse rectifier networks (Glorot, Bordes, Bengio 2011).

Usage::

    actreg run sparse-rectifier --set data=mnist --set epochs=30

A ReLU MLP with three hidden layers of 1000 and an L1 penalty (1e-3) on every hidden
activation, against the same network without it and a tanh network: test error and the
share of exact zeros per hidden layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, TypedDict, cast

import actreg
from actreg._errors import ActregError
from actreg.lab._checks import check_fraction
from actreg.lab.experiments._common import (
    RAMP_SHARE,
    VisionConfig,
    check_layer_settings,
    layer_coefs,
    layer_penalties,
    planned_steps,
    train_classifier,
)
from actreg.lab.experiments._contract import best_epoch_metrics, layer_means
from actreg.lab.experiments._rundir import make_run_dir, save_results
from actreg.lab.models import mlp
from actreg.lab.train import seed_everything

__all__ = [
    "VARIANTS",
    "RectifierVariant",
    "SparseRectifierConfig",
    "SparseRectifierResults",
    "run",
    "search_metrics",
]

VARIANTS = ("relu-l1", "relu", "tanh")


@dataclass
class SparseRectifierConfig(VisionConfig):
    """The deep sparse rectifier experiment."""

    POSITIVE: ClassVar[tuple[str, ...]] = ("hidden",)  # >= 1, besides the base class's

    hidden: tuple[int, ...] = (1000, 1000, 1000)  # hidden widths (Glorot et al.: 3 x 1000)
    penalty: str = "l1"  # penalty on every hidden activation of the relu-l1 variant
    coef: float = 1e-3  # its coefficient (Glorot et al.: 0.001)
    layer_coefs: tuple[float, ...] | None = None  # one per hidden layer instead, in order
    ramp_share: float = RAMP_SHARE  # target_sparsity: the ramp's share of training (0: ~100 steps)
    lead: float = 0.0  # target mode: the controllers' look-ahead (TargetSparsity(lead=))
    dropout: float = 0.0  # dropout after each hidden activation
    variants: tuple[str, ...] = VARIANTS  # which of relu-l1, relu, tanh to train

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.hidden:
            raise ActregError("hidden needs at least one width, e.g. hidden=1000,1000,1000")
        check_fraction(self, "dropout")
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown or not self.variants:
            raise ActregError(f"unknown variants {unknown}; choose from {VARIANTS}")
        check_layer_settings(self, len(self.hidden))


class RectifierVariant(TypedDict):
    """One trained network in :class:`SparseRectifierResults`."""

    history: list[dict[str, Any]]  # per-epoch rows of actreg.lab.train.fit
    best_epoch: int  # the epoch whose weights were kept (1-based)
    steps: int
    seconds: float
    layers: dict[str, dict[str, Any]]  # the Monitor's statistics per hidden layer (test split)
    test_error: float
    test_loss: float
    mean_zero_fraction: float  # over the hidden layers


class SparseRectifierResults(TypedDict):
    """What :func:`run` returns and writes to ``results.json`` (after the config)."""

    variants: dict[str, RectifierVariant]  # by name, in the order of cfg.variants
    data: dict[str, Any]
    run_dir: str


def search_metrics(results: SparseRectifierResults) -> dict[str, float]:
    """A search trial's metrics: the ``relu-l1`` variant's (else the first's) validation
    values at its best epoch, test values, and sparsity averaged over the hidden layers.

    Example:
        >>> out = {"history": [{"val_error": 0.2}, {"val_error": 0.1}], "best_epoch": 2,
        ...        "test_error": 0.15, "layers": {"act1": {"zero_fraction": 0.5}}}
        >>> search_metrics({"variants": {"relu": {}, "relu-l1": out}})
        {'val_error': 0.1, 'test_error': 0.15, 'zero_fraction': 0.5}
    """
    variants = results["variants"]
    out = variants["relu-l1"] if "relu-l1" in variants else next(iter(variants.values()))
    return {**best_epoch_metrics(out), **layer_means(out["layers"])}


def run(cfg: SparseRectifierConfig) -> SparseRectifierResults:
    """Train the variants; writes ``results.json`` into the run folder."""
    data = cfg.load_data()
    run_dir = make_run_dir(cfg, "sparse-rectifier")
    hidden_names = [f"act{i}" for i in range(1, len(cfg.hidden) + 1)]
    coefs = layer_coefs(cfg, hidden_names)
    results: dict[str, Any] = {"variants": {}}
    for variant in cfg.variants:
        seed_everything(cfg.seed)
        act = "tanh" if variant == "tanh" else "relu"
        model = mlp(data.x_train.shape[1], cfg.hidden, data.n_classes, act, cfg.dropout)
        spec = layer_penalties(
            hidden_names,
            lambda layer: actreg.make_penalty(cfg.penalty, coefs[layer]),
            cfg,
            steps=planned_steps(len(data.x_train), cfg),
        )
        out = train_classifier(
            model,
            data,
            cfg,
            spec=spec if variant == "relu-l1" else None,
            watch=hidden_names,
            run_dir=run_dir,
            name=variant,
        )
        stats = out["layers"]
        out["mean_zero_fraction"] = sum(s["zero_fraction"] for s in stats.values()) / len(stats)
        results["variants"][variant] = out
    results["data"] = data.info
    save_results(run_dir, "sparse-rectifier", cfg, results)
    return cast(SparseRectifierResults, results)


def summary_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per variant: test error, mean and per-layer exact-zero share."""
    rows = []
    for name, out in results["variants"].items():
        row: dict[str, Any] = {"variant": name, "test_error": out["test_error"]}
        row["mean_zero_fraction"] = out["mean_zero_fraction"]
        for layer, stats in out["layers"].items():
            row[f"{layer}_zero_fraction"] = stats["zero_fraction"]
        row["best_epoch"] = out["best_epoch"]
        rows.append(row)
    return rows
