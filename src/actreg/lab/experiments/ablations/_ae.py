"""One sparse-autoencoder variant trained and measured, by :func:`sparse_ae.train_variant`.

The training is the ``sparse-ae`` experiment's own (:func:`~actreg.lab.experiments.sparse_ae.
train_variant`); this module adds what the ablations compare: normalized reconstruction
error, near-zero fraction and a linear probe on the code (no noisy probe, no raw probe).
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from actreg.lab.experiments._common import features, linear_probe
from actreg.lab.experiments.sparse_ae import SparseAEConfig, train_variant

__all__ = ["AE_METRICS", "DataCache", "ae_config", "measure_ae", "set_threads"]

AE_METRICS = ("nmse", "zero_fraction", "near_zero", "l0", "dead_fraction", "probe_acc")
"""Metrics of every autoencoder variant (see :func:`measure_ae`)."""


class DataCache:
    """Loaded data sets by (data, scaling, limit, seed), so variants share one load."""

    def __init__(self) -> None:
        self._data: dict[tuple[Any, ...], Any] = {}

    def get(self, cfg: SparseAEConfig) -> Any:
        """The data set ``cfg`` describes (loaded once)."""
        key = (cfg.data, cfg.data_dir, cfg.scaling, cfg.limit, cfg.val_size, cfg.seed)
        if key not in self._data:
            self._data[key] = cfg.load_data()
        return self._data[key]

    def first_info(self) -> dict[str, Any] | None:
        """``info`` of the first data set loaded (None before any)."""
        return next(iter(self._data.values())).info if self._data else None


def measure_ae(
    cfg: SparseAEConfig,
    data: Any,
    penalized: bool,
    zero_eps: float,
    checkpoints: Path | None = None,
) -> dict[str, Any]:
    """Train one autoencoder and return its metrics on the test split.

    Args:
        cfg: the full sparse-AE config of this variant and seed.
        data: its data set.
        penalized: train with the configured penalty (else without any).
        zero_eps: ``near_zero`` counts code values with ``|h| <= zero_eps``.
        checkpoints: keep the best-epoch checkpoint under this folder (None: discard).

    Returns:
        ``nmse`` (test MSE over the MSE of predicting the training mean), ``zero_fraction``
        (exact zeros), ``near_zero``, ``l0``, ``dead_fraction`` (units never active on the
        test split), ``probe_acc`` (logistic regression on ``probe_size`` training codes),
        ``test_mse``, ``best_epoch``, ``resampled_units``, ``revived_units`` (target mode:
        units revived per penalized layer, else ``{}``) and ``seconds``.
    """
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = checkpoints if checkpoints is not None else Path(tmp)
        model, out = train_variant(cfg, data, penalized, folder, "model")
    model.eval()
    n_probe = cfg.probe_size or len(data.x_train)
    train_codes = features(model.encode, data.x_train[:n_probe])
    test_codes = features(model.encode, data.x_test)
    probe = linear_probe(
        (train_codes, data.y_train[:n_probe].numpy()),
        {"test": (test_codes, data.y_test.numpy())},
        seed=cfg.seed,
        scaling=cfg.probe_scaling,
    )
    baseline = float((data.x_test - data.x_train.mean(0)).square().mean())
    stats = out["code"]
    return {
        "nmse": out["test_mse"] / baseline,
        "test_mse": out["test_mse"],
        "zero_fraction": stats["zero_fraction"],
        "near_zero": float((abs(test_codes) <= zero_eps).mean()),
        "l0": stats["l0"],
        "dead_fraction": stats["dead_fraction"],
        "probe_acc": probe["test"],
        "best_epoch": out["best_epoch"],
        "resampled_units": out["resampled_units"],
        "revived_units": out.get("revived_units", {}),
        "seconds": time.perf_counter() - start,
    }


def ae_config(base: SparseAEConfig, seed: int, changes: dict[str, Any]) -> SparseAEConfig:
    """``base`` with ``seed`` and the variant's ``changes`` (validated by the config).

    Example:
        >>> c = ae_config(SparseAEConfig(data="digits"), 3, {"code": 16})
        >>> (c.seed, c.code, c.compare)
        (3, 16, False)
    """
    return dataclasses.replace(base, seed=seed, compare=False, **changes)


def set_threads(threads: int) -> None:
    """Set torch's thread count when ``threads`` is positive."""
    if threads:
        torch.set_num_threads(threads)
