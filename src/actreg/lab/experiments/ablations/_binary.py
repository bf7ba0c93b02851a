"""A classifier with a binary code: a sigmoid bottleneck of ``ceil(log2(classes))`` units.

``x -> fc1 -> act1 (ReLU) -> fc_code -> code (sigmoid) -> out (linear, classes)``; the
binarizing penalty ``coef * sum(h * (1 - h)) / batch`` (:class:`actreg.Binary`) is attached
to ``code``. After training the code is also thresholded at 0.5 and fed to the same output
layer, which measures what a truly binary code would cost.

Example:
    >>> m = binary_classifier(64, 10, hidden=8)
    >>> m.fc_code.out_features, m(torch.randn(2, 64)).shape
    (4, torch.Size([2, 10]))
"""

from __future__ import annotations

import math
import tempfile
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import actreg
from actreg.lab.experiments._common import classification_loss, classification_metrics
from actreg.lab.train import TrainConfig, evaluate, fit, seed_everything

__all__ = ["BINARY_METRICS", "binary_classifier", "code_bits", "measure_binary"]

BINARY_METRICS = ("acc", "hard_acc", "dist01", "near01", "distinct_codes")
"""Metrics of every binary-code variant (see :func:`measure_binary`)."""


def code_bits(n_classes: int) -> int:
    """``ceil(log2(n_classes))``, at least 1.

    Example:
        >>> code_bits(10), code_bits(2), code_bits(16)
        (4, 1, 4)
    """
    return max(1, math.ceil(math.log2(n_classes)))


def binary_classifier(
    in_features: int, n_classes: int, hidden: int = 256, width: int | None = None
) -> nn.Sequential:
    """The classifier above; ``width`` defaults to :func:`code_bits` of ``n_classes``."""
    width = width or code_bits(n_classes)
    return nn.Sequential(
        OrderedDict(
            fc1=nn.Linear(in_features, hidden),
            act1=nn.ReLU(),
            fc_code=nn.Linear(hidden, width),
            code=nn.Sigmoid(),
            out=nn.Linear(width, n_classes),
        )
    )


def _encode(model: nn.Sequential, x: Tensor) -> Tensor:
    return model[:4](x)


def measure_binary(
    data: Any,
    coef: float,
    cfg: TrainConfig,
    hidden: int = 256,
    width: int | None = None,
    checkpoints: Path | None = None,
) -> dict[str, Any]:
    """Train the classifier with ``Binary(coef)`` on its code (``coef=0``: no penalty).

    Returns:
        ``acc`` (test accuracy), ``hard_acc`` (with the code thresholded at 0.5),
        ``dist01`` (mean distance of code values to the nearer of 0 and 1), ``near01``
        (share of code values within 0.05 of 0 or 1), ``distinct_codes`` (distinct
        thresholded codes on the test split), ``width``, ``best_epoch``, ``seconds``.
    """
    start = time.perf_counter()
    seed_everything(cfg.seed)
    model = binary_classifier(data.x_train.shape[1], data.n_classes, hidden, width)
    spec = {"code": actreg.Binary(coef)} if coef > 0 else None
    with tempfile.TemporaryDirectory() as tmp:
        folder = checkpoints if checkpoints is not None else Path(tmp)
        out = fit(
            model,
            (data.x_train, data.y_train),
            (data.x_val, data.y_val),
            loss_fn=classification_loss,
            metrics_fn=classification_metrics,
            objective="error",
            cfg=cfg,
            spec=spec,
            run_dir=folder / "model",
            desc=f"binary {coef:g}",
        )
    model.eval()
    test = evaluate(model, data.x_test, data.y_test, classification_metrics)
    with torch.no_grad():
        code = _encode(model, data.x_test)
        hard = (code > 0.5).float()
        head = model.out
        assert isinstance(head, nn.Linear)
        hard_acc = float((head(hard).argmax(1) == data.y_test).float().mean())
        dist = torch.minimum(code, 1 - code)
        distinct = len(torch.unique(hard, dim=0))
    return {
        "acc": 1.0 - test["error"],
        "hard_acc": hard_acc,
        "dist01": float(dist.mean()),
        "near01": float((dist <= 0.05).float().mean()),
        "distinct_codes": float(distinct),
        "width": code.shape[1],
        "best_epoch": out["best_epoch"],
        "seconds": time.perf_counter() - start,
    }
