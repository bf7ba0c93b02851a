"""Builders of small fake IDX files and MNIST-style directories, for tests."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from actreg.lab.data.idx import idx_bytes


def make_idx_dir(
    folder: Path, n_train: int = 60, n_test: int = 20, hw: int = 4, gz: bool = False
) -> dict[str, np.ndarray]:
    """Write four MNIST-style files with 3 classes; return the arrays."""
    rng = np.random.default_rng(123)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, hw, hw), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 3).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, hw, hw), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % 3).astype(np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        data = idx_bytes(arr)
        if gz:
            (folder / (name + ".gz")).write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return arrays
