"""What the vision experiments share: the base config, run folders, probes, results files."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from actreg._errors import ActregError
from actreg.lab.experiments._config import to_dict
from actreg.lab.train import TrainConfig

__all__ = [
    "VisionConfig",
    "classification_loss",
    "classification_metrics",
    "jsonable",
    "linear_probe",
    "make_run_dir",
    "save_results",
    "train_classifier",
]


@dataclass
class VisionConfig:
    """Settings every vision experiment has. Subclasses add the model and the penalty."""

    data: str = "mnist"  # digits | mnist | a folder of IDX files
    data_dir: str | None = None  # default: $ACTREG_DATA or the user cache
    limit: int | None = None  # use only this many training examples (tiny runs)
    scaling: str = "standard"  # standard | feature | minmax | none (see actreg.lab.data)
    val_size: float | None = None  # validation size (default per data set)
    seed: int = 0  # seeds data split, init and batch order
    epochs: int = 10  # passes over the training split
    batch_size: int = 128  # examples per step
    lr: float = 1e-3  # peak learning rate (cosine decay)
    optimizer: str = "adam"  # adam | adamw | sgd
    weight_decay: float = 0.0  # L2 on the weights
    warmup_steps: int = 0  # learning-rate warm-up steps
    penalty_warmup_steps: int = 0  # ramp the activity penalty in over these steps
    patience: int = 0  # early stopping patience in epochs (0 = off)
    out_dir: str = "runs"  # results go to OUT_DIR/EXPERIMENT/RUN_NAME
    run_name: str | None = None  # default: a timestamp
    progress: bool = True  # progress bars
    threads: int = 0  # torch threads (0 = leave as is)

    def __post_init__(self) -> None:
        self.train_config()  # validates the training fields
        if self.limit is not None and self.limit < 10:
            raise ActregError(f"limit must be >= 10 examples, got {self.limit}")

    def train_config(self, seed_offset: int = 0) -> TrainConfig:
        """The :class:`TrainConfig` these settings describe."""
        return TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            optimizer=self.optimizer,
            weight_decay=self.weight_decay,
            warmup_steps=self.warmup_steps,
            penalty_warmup_steps=self.penalty_warmup_steps,
            patience=self.patience,
            seed=self.seed + seed_offset,
            progress=self.progress,
        )

    def load_data(self) -> Any:
        """Load the configured data set (see :func:`actreg.lab.data.load_vision`)."""
        from actreg.lab.data import load_vision

        if self.threads:
            torch.set_num_threads(self.threads)
        return load_vision(
            self.data,
            data_dir=self.data_dir,
            val_size=self.val_size,
            seed=self.seed,
            scaling=self.scaling,
            limit=self.limit,
        )


def make_run_dir(config: Any, experiment: str) -> Path:
    """``OUT_DIR/EXPERIMENT/RUN_NAME`` (from ``config.out_dir`` and ``config.run_name``), created.

    The name defaults to a timestamp.
    """
    name = config.run_name or time.strftime("%Y%m%d-%H%M%S")
    path = Path(config.out_dir) / experiment / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def train_classifier(
    model: nn.Module,
    data: Any,
    cfg: VisionConfig,
    *,
    spec: dict[str, Any] | None,
    watch: list[str],
    run_dir: Path,
    name: str,
    dim: int = -1,
) -> dict[str, Any]:
    """Train a classifier with the penalties ``spec`` (None: none) and measure ``watch``.

    Returns :func:`actreg.lab.train.fit`'s history plus ``test_error``, ``test_loss`` and
    ``layers`` (the Monitor's statistics of the watched layers on the test split).
    """
    import actreg
    from actreg.lab.train import evaluate, fit

    monitor = actreg.Monitor(model, watch, dim=dim)
    try:
        out = fit(
            model,
            (data.x_train, data.y_train),
            (data.x_val, data.y_val),
            loss_fn=classification_loss,
            metrics_fn=classification_metrics,
            objective="error",
            cfg=cfg.train_config(),
            spec=spec,
            monitor=monitor,
            run_dir=run_dir / name.replace(" ", "_"),
            desc=name,
        )
        monitor.reset()
        test = evaluate(model, data.x_test, data.y_test, classification_metrics)
        out["layers"] = monitor.compute()
    finally:
        monitor.remove()
    out["test_error"] = test["error"]
    out["test_loss"] = test["loss"]
    return out


def classification_loss(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Cross-entropy of the model's logits."""
    return nn.functional.cross_entropy(model(x), y)


def classification_metrics(model: nn.Module, x: Tensor, y: Tensor) -> dict[str, float]:
    """Loss and error rate."""
    logits = model(x)
    return {
        "loss": float(nn.functional.cross_entropy(logits, y)),
        "error": float((logits.argmax(1) != y).float().mean()),
    }


@torch.no_grad()
def features(fn: Any, x: Tensor, batch_size: int = 2000) -> np.ndarray:
    """``fn`` applied to ``x`` in batches, as a float64 NumPy array."""
    parts = [
        fn(x[i : i + batch_size]).reshape(min(batch_size, len(x) - i), -1)
        for i in range(0, len(x), batch_size)
    ]
    return torch.cat(parts).double().numpy()


def linear_probe(
    train: tuple[np.ndarray, np.ndarray],
    tests: dict[str, tuple[np.ndarray, np.ndarray]],
    seed: int = 0,
    max_iter: int = 500,
) -> dict[str, float]:
    """Accuracy of a scikit-learn logistic regression (on standardized features) per test set."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(
        StandardScaler(), LogisticRegression(max_iter=max_iter, random_state=seed)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        probe.fit(*train)
    return {name: float(probe.score(x, y)) for name, (x, y) in tests.items()}


def jsonable(value: Any) -> Any:
    """Tensors, arrays and tuples made JSON-ready (non-finite floats become None)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Tensor):
        return jsonable(value.tolist())
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, (np.floating, np.integer)):
        return jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def save_results(run_dir: Path, experiment: str, config: Any, payload: dict[str, Any]) -> Path:
    """Write ``results.json``: experiment, library version, the whole config, then payload,
    which gets ``run_dir`` (as a string) as its last key, in place, for the caller too."""
    from actreg import __version__

    payload["run_dir"] = str(run_dir)
    doc = {
        "experiment": experiment,
        "version": __version__,
        "torch": torch.__version__,
        "config": to_dict(config),
        **payload,
    }
    path = run_dir / "results.json"
    path.write_text(json.dumps(jsonable(doc), indent=2) + "\n")
    return path
