"""``cnn``: activity regularization on the feature maps of a small CNN.

Usage::

    actreg run cnn --set data=mnist --set epochs=10
    actreg run cnn --set data=mnist --set target_sparsity=0.9   # ask for 90% zeros
    actreg run cnn --set data=fashion --set layer_coefs=2e-4,6e-4  # one coefficient per map

Two 3x3 conv blocks (32 and 64 channels) and a 128-unit head; the penalty goes on both
conv activations (unit axis 1: channels). Test error and feature-map sparsity, with and
without the penalty.

Target mode (``target_sparsity`` or ``target_l0``) wraps each map's penalty in
:class:`actreg.TargetSparsity` with ``dim=1``: a unit is a channel, its firing rate the
share of (example, pixel) positions where it is active, and an ``l0`` target counts active
channels per pixel. ``coef`` (or ``layer_coefs``) is then the starting coefficient. The
wanted sparsity comes down to the target in ~100 steps (the library's ramp, ``ramp_share=0``),
not over 60 % of training as in ``sparse-rectifier`` (and under ``push="auto"`` the push
up steers toward that ramp): the 3-epoch CNN's training losses in epochs 2 and 3 and its
test loss on MNIST were lower with it (docs/TARGET.md, "Where target mode's cost lies").
The ramp waits for each map (``ahead=0.5``: the coefficient's wanted share stays within
0.5 nats of the map's running mean, :class:`actreg.TargetSparsity`), and the controllers
start where a pilot ends: the run's first epoch (``pilot_epochs=1``) is run once with the
controllers started at ``coef``, and their final coefficients start the real run. A
controller started at a fixed ``coef`` spends its first ~100 steps finding the
coefficient, and on Fashion-MNIST that start made most of the gap to grid-searched
coefficients; the pilot measures it on the data at hand for one more epoch of training.
Chosen on permuted MNIST, checked on Fashion-MNIST (docs/TARGET.md, "The ramp waits for
the layer"). ``lead=1 ahead=none pilot_epochs=0`` gives the previous default, ``lead=0
ahead=none pilot_epochs=0`` the one before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, TypedDict, cast

import actreg
from actreg._errors import ActregError
from actreg.lab.experiments._common import (
    VisionConfig,
    check_layer_settings,
    layer_coefs,
    layer_penalties,
    pilot_coefs,
    planned_steps,
    train_classifier,
)
from actreg.lab.experiments._contract import NotRequired, best_epoch_metrics, layer_means
from actreg.lab.experiments._rundir import make_run_dir, save_results
from actreg.lab.experiments._targets import in_target_mode, penalized_label
from actreg.lab.models import CNN
from actreg.lab.train import seed_everything

__all__ = ["CNNConfig", "CNNResults", "CNNVariant", "run", "search_metrics"]

MAPS = ["features.act1", "features.act2"]


@dataclass
class CNNConfig(VisionConfig):
    """The CNN experiment."""

    POSITIVE: ClassVar[tuple[str, ...]] = ("channels", "hidden")  # >= 1, besides the base class's

    channels: tuple[int, ...] = (32, 64)  # channels of the two conv blocks
    hidden: int = 128  # width of the dense head
    penalty: str = "l1"  # penalty on both conv feature maps
    coef: float = 1e-4  # its coefficient (Keras scaling: sum over C*H*W / batch)
    layer_coefs: tuple[float, ...] | None = None  # one per map (act1,act2) instead, e.g. 2e-4,6e-4
    ramp_share: float = 0.0  # target_sparsity: the ramp's share of training (0: ~100 steps)
    lead: float = 0.0  # target mode: the controllers' look-ahead (TargetSparsity(lead=))
    ahead: float | None = 0.5  # target mode: the ramp waits for the map (TargetSparsity(ahead=))
    pilot_epochs: int = 1  # target mode: epochs of a pilot whose coefficients start the run
    compare: bool = True  # also train without the penalty

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.channels) != 2:
            raise ActregError(
                f"channels takes the widths of the two conv blocks, e.g. channels=32,64, "
                f"got {self.channels!r}"
            )
        check_layer_settings(self, len(MAPS))
        if self.ahead is not None and not self.ahead > 0:
            raise ActregError(f"ahead must be > 0 nats (or none: no wait), got {self.ahead!r}")
        if self.pilot_epochs >= self.epochs and in_target_mode(self):
            raise ActregError(
                f"pilot_epochs={self.pilot_epochs} needs more epochs than that (epochs="
                f"{self.epochs}): the pilot is the run's first epochs; lower it or set 0"
            )


class CNNVariant(TypedDict):
    """One trained CNN in :class:`CNNResults`."""

    history: list[dict[str, Any]]  # per-epoch rows of actreg.lab.train.fit
    best_epoch: int  # the epoch whose weights were kept (1-based)
    steps: int
    seconds: float
    test_error: float
    test_loss: float
    maps: dict[str, dict[str, Any]]  # the Monitor's statistics per feature map (test split)


class CNNResults(TypedDict):
    """What :func:`run` returns and writes to ``results.json`` (after the config)."""

    variants: dict[str, CNNVariant]  # the penalized variant first, then "none"
    pilot_coefs: NotRequired[dict[str, float]]  # target mode: the pilot's coefficients per map
    data: dict[str, Any]
    run_dir: str


def search_metrics(results: CNNResults) -> dict[str, float]:
    """A search trial's metrics: the penalized (first) variant's validation values at its
    best epoch, test values, and sparsity averaged over the feature maps.

    Example:
        >>> out = {"history": [{"val_error": 0.2}], "best_epoch": 1, "test_error": 0.25,
        ...        "maps": {"a": {"l0": 2.0}, "b": {"l0": 4.0}}}
        >>> search_metrics({"variants": {"l1 0.0001": out}})
        {'val_error': 0.2, 'test_error': 0.25, 'l0': 3.0}
    """
    out = next(iter(results["variants"].values()))
    return {**best_epoch_metrics(out), **layer_means(out["maps"])}


def run(cfg: CNNConfig) -> CNNResults:
    """Train with (and without) the penalty; writes ``results.json``."""
    data = cfg.load_data()
    run_dir = make_run_dir(cfg, "cnn")
    label = penalized_label(cfg)
    variants = [(label, True)] + ([("none", False)] if cfg.compare else [])
    results: dict[str, Any] = {"variants": {}}
    c1, c2 = cfg.channels
    coefs = layer_coefs(cfg, MAPS)

    def build(start: dict[str, float]) -> tuple[Any, dict[str, actreg.Penalty]]:
        model = CNN(1, data.n_classes, data.image_shape, (c1, c2), cfg.hidden)
        spec = layer_penalties(
            MAPS,
            lambda layer: actreg.make_penalty(cfg.penalty, start[layer]),
            cfg,
            dim=1,
            steps=planned_steps(len(data.x_train), cfg),
        )
        return model, spec

    if in_target_mode(cfg) and cfg.pilot_epochs:
        coefs = pilot_coefs(build, coefs, data, cfg, run_dir=run_dir, dim=1)
        results["pilot_coefs"] = coefs
    for name, penalized in variants:
        seed_everything(cfg.seed)
        model, spec = build(coefs)
        out = train_classifier(
            model,
            data,
            cfg,
            spec=spec if penalized else None,
            watch=MAPS,
            run_dir=run_dir,
            name=name,
            dim=1,
        )
        out["maps"] = out.pop("layers")
        results["variants"][name] = out
    results["data"] = data.info
    save_results(run_dir, "cnn", cfg, results)
    return cast(CNNResults, results)


def summary_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per variant: test error, zero share and dead share per feature map."""
    rows = []
    for name, out in results["variants"].items():
        row: dict[str, Any] = {"variant": name, "test_error": out["test_error"]}
        for layer, stats in out["maps"].items():
            row[f"{layer}_zero_fraction"] = stats["zero_fraction"]
        for layer, stats in out["maps"].items():
            row[f"{layer}_dead_fraction"] = stats["dead_fraction"]
        rows.append(row)
    return rows
