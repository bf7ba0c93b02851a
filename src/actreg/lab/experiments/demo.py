"""``actreg demo``: the whole idea in under a minute on a laptop CPU.

A sparse overcomplete autoencoder (64 -> 256 ReLU code -> 64) on scikit-learn's bundled
8x8 digits (no download), trained with and without an L1 penalty on its code, side by side:
reconstruction error, share of exact zeros in the code, active units per image (L0),
dead units, and how well a linear probe reads the digit from the code, on clean and on
noisy test images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from actreg.lab._checks import check_fields
from actreg.lab.experiments.sparse_ae import SparseAEConfig, run, summary_rows

__all__ = ["DemoConfig", "demo"]


@dataclass
class DemoConfig:
    """The demo's few settings."""

    POSITIVE: ClassVar[tuple[str, ...]] = (
        "epochs",
        "code",
    )  # settings that must be >= 1 (counts, widths)

    out_dir: str = "runs"  # results go to a new folder OUT_DIR/sparse-ae/TIMESTAMP
    epochs: int = 30  # passes over the 1,078 training digits
    coef: float = 0.01  # L1 coefficient on the code (Keras scaling: sum / batch)
    code: int = 256  # code width (4x overcomplete)
    progress: bool = False  # progress bars

    def __post_init__(self) -> None:
        check_fields(self)

    def experiment_config(self) -> SparseAEConfig:
        """The :class:`SparseAEConfig` the demo runs."""
        return SparseAEConfig(
            data="digits",
            code=self.code,
            epochs=self.epochs,
            batch_size=64,  # 510 steps: half of batch 32's, the same zeros and probe
            lr=3e-3,
            coef=self.coef,
            penalty="l1",
            penalty_warmup_steps=150,
            resample_dead=0.5,
            probe_size=0,
            out_dir=self.out_dir,
            run_name=None,  # a new timestamped folder per run: a demo never overwrites one
            progress=self.progress,
        )


def demo(cfg: DemoConfig) -> dict[str, Any]:
    """Run the demo and return its results (the CLI prints the table)."""
    results: dict[str, Any] = dict(run(cfg.experiment_config()))
    results["rows"] = summary_rows(results)
    return results
