"""Write a transformed copy of an IDX image folder: a tuning set that is not the held-out one.

actreg's defaults are chosen on MNIST and checked on Fashion-MNIST, which nothing is tuned
to. Where MNIST cannot tell two settings apart (its CNN errors differ by less than the
seeds do), a second tuning set is needed, and no other MNIST-format image set is reachable
from this machine. This script makes one from MNIST itself, keeping Fashion-MNIST held out:

* ``--permute SEED``: one fixed permutation of the 784 pixel positions, the same for every
  image (permuted MNIST, a standard continual-learning benchmark): a convolution loses
  the images' locality, so the task is harder and its errors larger;
* ``--invert``: ``255 - x``, a white background: the first layer's inputs are mostly
  large instead of mostly zero.

Labels are copied unchanged. Usage::

    python scripts/transform_idx.py ~/.cache/actreg/mnist ~/.cache/actreg/mnist-permuted --permute 0

then ``actreg run cnn --set data=~/.cache/actreg/mnist-permuted ...``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from actreg.lab.data.idx import IDX_FILES, idx_bytes, parse_idx


def transform(images: np.ndarray, permute: int | None, invert: bool) -> np.ndarray:
    """The images (``(N, H, W)`` uint8) with the transforms applied, permutation first."""
    if images.ndim != 3 or images.dtype != np.uint8:
        raise SystemExit(f"expected (N, H, W) uint8 images, got {images.shape} {images.dtype}")
    out = images
    if permute is not None:
        n, h, w = images.shape
        order = np.random.default_rng(permute).permutation(h * w)
        out = out.reshape(n, h * w)[:, order].reshape(n, h, w)
    if invert:
        out = 255 - out
    return np.ascontiguousarray(out, dtype=np.uint8)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="folder with the four IDX files")
    parser.add_argument("out", type=Path, help="folder for the transformed copy")
    parser.add_argument("--permute", type=int, default=None, metavar="SEED")
    parser.add_argument("--invert", action="store_true")
    args = parser.parse_args(argv)
    if args.permute is None and not args.invert:
        raise SystemExit("nothing to do: give --permute SEED and/or --invert")
    if args.source.resolve() == args.out.resolve():
        raise SystemExit("the copy needs a folder of its own: OUT is SOURCE")
    args.out.mkdir(parents=True, exist_ok=True)
    for role, name in IDX_FILES.items():
        data = parse_idx((args.source / name).read_bytes())
        if role.endswith("_images"):
            data = transform(data, args.permute, args.invert)
        (args.out / name).write_bytes(idx_bytes(data))
        print(f"{name}: {data.shape} -> {args.out}")


if __name__ == "__main__":
    main()
