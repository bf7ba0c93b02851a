"""``cnn``: activity regularization on the feature maps of a small CNN.

Usage::

    actreg run cnn --set data=mnist --set epochs=10

Two 3x3 conv blocks (32 and 64 channels) and a 128-unit head; the penalty goes on both
conv activations (unit axis 1: channels). Test error and feature-map sparsity, with and
without the penalty.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import actreg
from actreg.experiments._common import (
    VisionConfig,
    classification_loss,
    classification_metrics,
    make_run_dir,
    save_results,
)
from actreg.models import CNN
from actreg.train import evaluate, fit, seed_everything

__all__ = ["CNNConfig", "run"]

MAPS = ["features.act1", "features.act2"]


@dataclass
class CNNConfig(VisionConfig):
    """The CNN experiment."""

    channels: tuple[int, ...] = (32, 64)  # channels of the two conv blocks
    hidden: int = 128  # width of the dense head
    penalty: str = "l1"  # penalty on both conv feature maps
    coef: float = 1e-4  # its coefficient (Keras scaling: sum over C*H*W / batch)
    compare: bool = True  # also train without the penalty

    def __post_init__(self) -> None:
        super().__post_init__()
        actreg.make_penalty(self.penalty, self.coef)


def run(cfg: CNNConfig) -> dict[str, Any]:
    """Train with (and without) the penalty; writes ``results.json``."""
    data = cfg.load_data()
    run_dir = make_run_dir(cfg, "cnn")
    label = f"{cfg.penalty} {cfg.coef:g}"
    variants = [(label, True)] + ([("none", False)] if cfg.compare else [])
    results: dict[str, Any] = {"variants": {}}
    c1, c2 = cfg.channels
    for name, penalized in variants:
        seed_everything(cfg.seed)
        model = CNN(1, data.n_classes, data.image_shape, (c1, c2), cfg.hidden)
        reg = (
            actreg.attach(model, dict.fromkeys(MAPS, actreg.make_penalty(cfg.penalty, cfg.coef)))
            if penalized
            else None
        )
        monitor = actreg.Monitor(model, MAPS, dim=1)
        out = fit(
            model,
            (data.x_train, data.y_train),
            (data.x_val, data.y_val),
            loss_fn=classification_loss,
            metrics_fn=classification_metrics,
            objective="error",
            cfg=cfg.train_config(),
            reg=reg,
            monitor=monitor,
            run_dir=run_dir / name.replace(" ", "_"),
            desc=name,
        )
        monitor.reset()
        test = evaluate(model, data.x_test, data.y_test, classification_metrics)
        out["test_error"] = test["error"]
        out["maps"] = monitor.compute()
        monitor.remove()
        results["variants"][name] = out
    results["data"] = data.info
    results["run_dir"] = str(run_dir)
    save_results(run_dir, "cnn", cfg, results)
    return results


def summary_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per variant: test error and zero share per feature map."""
    rows = []
    for name, out in results["variants"].items():
        row: dict[str, Any] = {"variant": name, "test_error": out["test_error"]}
        for layer, stats in out["maps"].items():
            row[f"{layer}_zero_fraction"] = stats["zero_fraction"]
        rows.append(row)
    return rows
