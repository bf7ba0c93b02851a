"""Image classification data as flat float tensors with seeded train/val/test splits.

Splits are stratified: indices are ordered by a seeded interleaving of the classes
(:func:`stratified_order`), so any prefix holds the classes in proportion.

* ``digits`` (1,797 images) has no official test split: a fixed stratified 20 % test split
  (seed 0, the same for every ``seed``), then a stratified validation split of the rest drawn
  with ``seed``: ``val_size=0.25`` of the remaining 80 % gives 60/20/20.
* MNIST and any IDX directory: the official test set; ``val_size`` images of the training
  file become the validation split: by default 10,000 (of MNIST's 60,000, as Glorot et al.),
  or a sixth of a training file smaller than 60,000 images (``IDX_VAL_SIZE``).

Pixels are first put in [0, 1], then scaled with statistics of the training split only.
``"standard"`` uses ONE global mean and std over all training pixels: per-pixel z-scores
divide by near-zero stds at the almost-constant border pixels and blow their few non-zero
values up to huge magnitudes. ``"feature"`` is the per-pixel z-score with the std floored at
``FEATURE_STD_FLOOR``; ``"minmax"`` maps each pixel's training range to [0, 1] (constant
pixels: range 1; other splits are not clipped); ``"none"`` keeps the [0, 1] pixels.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from actreg._errors import ActregError
from actreg.lab.data._store import resolve_data_dir, sha256_file
from actreg.lab.data.digits import load_digits_arrays
from actreg.lab.data.fetch import missing_data_message
from actreg.lab.data.idx import IDX_FILES, find_idx_file, load_idx_dir

__all__ = ["SCALINGS", "VisionData", "load_vision", "stratified_order"]

SCALINGS = ("standard", "feature", "minmax", "none")
FEATURE_STD_FLOOR = 0.1
"""Smallest per-pixel std used by ``scaling="feature"`` (pixels are in [0, 1])."""


@dataclass
class VisionData:
    """Flattened images (float32, ``(N, H*W)``) and int64 labels for three splits.

    ``info`` is JSON-serializable: name, source, file checksums, split settings and sizes,
    the checksum of the split indices, and the scaler statistics.
    """

    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor
    image_shape: tuple[int, int]
    n_classes: int
    info: dict[str, Any]


def stratified_order(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A seeded permutation whose every prefix holds each class in proportion.

    Example:
        >>> y = np.array([0] * 6 + [1] * 3)
        >>> order = stratified_order(y, np.random.default_rng(0))
        >>> sorted(y[order[:3]].tolist())
        [0, 0, 1]
    """
    n = len(y)
    perm = rng.permutation(n)
    yp = y[perm]
    counts = np.bincount(yp)
    starts = np.cumsum(counts) - counts
    by_class = np.argsort(yp, kind="stable")
    rank = np.empty(n, dtype=np.float64)
    rank[by_class] = np.arange(n) - starts[yp[by_class]]
    key = (rank + 0.5) / counts[yp]
    return perm[np.argsort(key, kind="stable")]


IDX_VAL_SIZE = 10000  # an IDX set's validation images: MNIST's 10,000 of 60,000 (a sixth)


def _count(size: float | int, n: int, what: str) -> int:
    if isinstance(size, bool) or not isinstance(size, int | float):
        raise ActregError(f"{what} must be an int count or a float fraction, got {size!r}")
    k = round(size * n) if isinstance(size, float) and size <= 1 else int(size)  # 5000.0: a count
    if not 0 < k < n:
        raise ActregError(f"{what}={size!r} leaves no data: it must give 1..{n - 1} of {n}")
    return int(k)


def _stats(x: np.ndarray, per_feature: bool) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std in float64, summed in chunks (MNIST is 188 MB as float32)."""
    axis = 0 if per_feature else None
    s = np.zeros(x.shape[1] if per_feature else (), dtype=np.float64)
    s2 = np.zeros_like(s)
    for i in range(0, len(x), 8192):
        c = x[i : i + 8192].astype(np.float64)
        s += c.sum(axis=axis)
        s2 += (c * c).sum(axis=axis)
    count = len(x) if per_feature else x.size
    mean = s / count
    return mean, np.sqrt(np.maximum(s2 / count - mean * mean, 0.0))


def affine_scaler(train: np.ndarray, scaling: str) -> tuple[Any, Any, dict[str, Any]]:
    """``(shift, scale, info)`` such that ``scaling`` maps ``x`` to ``(x - shift) / scale``,
    fitted on ``train`` (examples along axis 0); scalars for ``"standard"`` and ``"none"``,
    per-feature float32 vectors for ``"feature"`` and ``"minmax"``."""
    if scaling == "none":
        return 0.0, 1.0, {"kind": "none", "note": "pixels in [0, 1]"}
    if scaling == "standard":
        mean, std = _stats(train, per_feature=False)
        info = {"kind": "standard", "mean": float(mean), "std": float(std)}
        return float(mean), max(float(std), 1e-12), info
    if scaling == "feature":
        mean, std = _stats(train, per_feature=True)
        floored = np.maximum(std, FEATURE_STD_FLOOR)
        info = {
            "kind": "feature",
            "std_floor": FEATURE_STD_FLOOR,
            "n_floored": int((std < FEATURE_STD_FLOOR).sum()),
            "note": "per-pixel mean/std of the training split",
        }
        return mean.astype(np.float32), floored.astype(np.float32), info
    if scaling == "minmax":
        lo, hi = train.min(axis=0), train.max(axis=0)
        rng = np.where(hi > lo, hi - lo, 1.0).astype(np.float32)
        info = {
            "kind": "minmax",
            "n_constant": int((hi <= lo).sum()),
            "note": "per-pixel training min/max; other splits not clipped",
        }
        return lo, rng, info
    raise ActregError(f"unknown scaling {scaling!r}; choose one of {', '.join(SCALINGS)}")


def _scale(xs: list[np.ndarray], scaling: str) -> tuple[list[np.ndarray], dict[str, Any]]:
    shift, scale, info = affine_scaler(xs[0], scaling)
    if scaling == "none":
        return xs, info
    return [((x - shift) / scale).astype(np.float32) for x in xs], info


def _source(name: str, data_dir: str | Path | None) -> tuple[str, Path | None]:
    if name == "digits":
        return "digits", None
    path = Path(name).expanduser()
    if name not in ("mnist",) and path.is_dir():
        return path.resolve().name, path
    folder = resolve_data_dir(data_dir) / name
    if name == "mnist":
        if all(find_idx_file(folder, f) for f in IDX_FILES.values()):
            return name, folder
        raise ActregError(missing_data_message("mnist", folder))
    if folder.is_dir() and any(folder.iterdir()):
        return name, folder
    raise ActregError(
        f"unknown vision data set {name!r}: use 'digits', 'mnist', a directory of IDX files, "
        f"or a folder name under the data directory ({folder.parent})"
    )


def load_vision(
    name: str = "digits",
    *,
    data_dir: str | Path | None = None,
    val_size: float | int | None = None,
    seed: int = 0,
    scaling: str = "standard",
    limit: int | None = None,
) -> VisionData:
    """Load an image classification data set with seeded splits and train-fitted scaling.

    Args:
        name: ``"digits"``, ``"mnist"``, a path to a directory of MNIST-style IDX files, or
            the name of such a folder under the data directory.
        data_dir: the data directory (default ``$ACTREG_DATA`` or the user cache).
        val_size: validation size, a count or a fraction of the non-test pool; default 0.25
            for digits (60/20/20 overall); for IDX sets 10000, or a sixth of a training
            file of fewer than 60,000 images.
        seed: seed of the validation split and of ``limit``'s subset.
        scaling: ``"standard"``, ``"feature"``, ``"minmax"`` or ``"none"`` (module docstring).
        limit: keep this many training examples (a seeded stratified subset) and cut
            validation and test in the same proportion, for tiny runs.

    Example:
        >>> d = load_vision("digits", limit=100)
        >>> d.x_train.shape, d.x_val.shape, d.x_test.shape, d.image_shape, d.n_classes
        (torch.Size([100, 64]), torch.Size([33, 64]), torch.Size([33, 64]), (8, 8), 10)
    """
    if scaling not in SCALINGS:
        raise ActregError(f"unknown scaling {scaling!r}; choose one of {', '.join(SCALINGS)}")
    label, folder = _source(name, data_dir)
    files: dict[str, str] = {}
    if folder is None:
        x_all, y_all = load_digits_arrays()
        image_shape = (8, 8)
        n_test = _count(0.2, len(y_all), "test")
        test_idx = stratified_order(y_all, np.random.default_rng(0))[:n_test]
        pool = np.setdiff1d(np.arange(len(y_all)), test_idx)
        x_pool, y_pool, x_test, y_test = x_all[pool], y_all[pool], x_all[test_idx], y_all[test_idx]
        val_size = 0.25 if val_size is None else val_size
        source = "sklearn.datasets.load_digits"
    else:
        s = load_idx_dir(folder)
        image_shape = (int(s.train_images.shape[1]), int(s.train_images.shape[2]))
        scale = 255.0 if s.train_images.dtype == np.uint8 else 1.0
        x_pool = s.train_images.reshape(len(s.train_images), -1).astype(np.float32) / scale
        x_test = s.test_images.reshape(len(s.test_images), -1).astype(np.float32) / scale
        y_pool, y_test = s.train_labels.astype(np.int64), s.test_labels.astype(np.int64)
        pool = np.arange(len(y_pool))
        test_idx = np.arange(len(y_test))
        files = {p.name: sha256_file(p) for p in s.files.values()}
        if val_size is None:
            val_size = max(1, min(IDX_VAL_SIZE, len(y_pool) // 6))
        source = str(folder.resolve())
    if y_pool.min() < 0 or y_test.min() < 0:
        raise ActregError(f"{label}: labels must be non-negative class indices")
    rng = np.random.default_rng(seed)
    order = stratified_order(y_pool, rng)
    n_val = _count(val_size, len(y_pool), "val_size")
    val_idx, train_idx = order[:n_val], order[n_val:]
    test_pos = np.arange(len(y_test))
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ActregError(f"limit must be a positive int, got {limit!r}")
        frac = min(1.0, limit / len(train_idx))
        sub = np.random.default_rng([seed, 1])
        train_idx = train_idx[stratified_order(y_pool[train_idx], sub)[:limit]]
        val_idx = val_idx[stratified_order(y_pool[val_idx], sub)[: max(1, round(frac * n_val))]]
        k = max(1, round(frac * len(y_test)))
        test_pos = stratified_order(y_test, sub)[:k]
    digest = hashlib.sha256()
    for idx in (pool[train_idx], pool[val_idx], test_idx[test_pos]):
        digest.update(np.ascontiguousarray(idx, dtype=np.int64).tobytes())
    xs, scaler = _scale([x_pool[train_idx], x_pool[val_idx], x_test[test_pos]], scaling)
    ys = [y_pool[train_idx], y_pool[val_idx], y_test[test_pos]]
    n_classes = int(max(y_pool.max(), y_test.max())) + 1
    info = {
        "name": label,
        "source": source,
        "files_sha256": files,
        "val_size": val_size,
        "seed": seed,
        "split": "stratified; digits: fixed 20% test (seed 0); IDX: official test set",
        "split_sha256": digest.hexdigest(),
        "scaling": scaling,
        "scaler": scaler,
        "sizes": {"train": len(ys[0]), "val": len(ys[1]), "test": len(ys[2])},
        "limit": limit,
        "image_shape": list(image_shape),
        "n_classes": n_classes,
    }
    t = [torch.from_numpy(np.ascontiguousarray(a)) for a in (*xs, *ys)]
    return VisionData(t[0], t[3], t[1], t[4], t[2], t[5], image_shape, n_classes, info)
