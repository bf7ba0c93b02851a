"""Tests of load_vision: splits, scaling, limit, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from idxfake import make_idx_dir

from actreg import ActregError
from actreg.lab.data import load_vision
from actreg.lab.data.digits import load_digits_arrays
from actreg.lab.data.vision import stratified_order


def test_digits_default_split() -> None:
    d = load_vision("digits")
    assert (len(d.x_train), len(d.x_val), len(d.x_test)) == (1078, 360, 359)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert d.x_train.shape[1] == 64 and d.image_shape == (8, 8) and d.n_classes == 10
    json.dumps(d.info)
    # each class is present in proportion in every split
    for y in (d.y_train, d.y_val, d.y_test):
        counts = torch.bincount(y, minlength=10).float() / len(y)
        assert float(counts.min()) > 0.08 and float(counts.max()) < 0.12


def test_digits_test_split_fixed_val_seeded() -> None:
    a, b = load_vision("digits", seed=0), load_vision("digits", seed=1)
    ua = load_vision("digits", seed=0, scaling="none")
    ub = load_vision("digits", seed=1, scaling="none")
    assert torch.equal(ua.x_test, ub.x_test)
    assert not torch.equal(ua.x_val, ub.x_val)
    assert a.info["split_sha256"] != b.info["split_sha256"]
    again = load_vision("digits", seed=0)
    assert again.info["split_sha256"] == a.info["split_sha256"]
    assert torch.equal(again.x_train, a.x_train)


def test_splits_partition_the_data() -> None:
    d = load_vision("digits", scaling="none")
    got = torch.cat([d.x_train, d.x_val, d.x_test]).numpy()
    full, _ = load_digits_arrays()
    key = sorted(map(tuple, got.tolist()))
    assert key == sorted(map(tuple, full.tolist()))


@pytest.mark.parametrize("scaling", ["standard", "feature", "minmax", "none"])
def test_scalings(scaling: str) -> None:
    d = load_vision("digits", scaling=scaling)
    x = d.x_train.double()
    if scaling == "standard":
        assert abs(float(x.mean())) < 1e-5 and abs(float(x.std(unbiased=False)) - 1) < 1e-5
        assert d.info["scaler"]["std"] > 0
    elif scaling == "feature":
        assert float(x.mean(0).abs().max()) < 1e-5
        assert float(x.std(0, unbiased=False).max()) <= 1 + 1e-5
        assert d.info["scaler"]["n_floored"] > 0  # the digits' border pixels
    elif scaling == "minmax":
        assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    else:
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert torch.isfinite(d.x_test).all() and torch.isfinite(d.x_val).all()


def test_limit_digits() -> None:
    d = load_vision("digits", limit=50, seed=3)
    assert (len(d.x_train), len(d.x_val), len(d.x_test)) == (50, 17, 17)
    assert d.info["limit"] == 50 and d.info["sizes"]["train"] == 50
    assert set(d.y_train.tolist()) == set(range(10))


def test_idx_dir(tmp_path: Path) -> None:
    arrays = make_idx_dir(tmp_path / "fashion", gz=True)
    d = load_vision(str(tmp_path / "fashion"), val_size=12, scaling="none")
    assert (len(d.x_train), len(d.x_val), len(d.x_test)) == (48, 12, 20)
    assert d.image_shape == (4, 4) and d.n_classes == 3 and d.x_train.shape[1] == 16
    expected = arrays["t10k-images-idx3-ubyte"].reshape(20, -1).astype(np.float32) / 255
    np.testing.assert_allclose(d.x_test.numpy(), expected)
    assert d.info["name"] == "fashion" and len(d.info["files_sha256"]) == 4
    json.dumps(d.info)
    # a folder name under the data directory works too
    by_name = load_vision("fashion", data_dir=tmp_path, val_size=0.2, scaling="none")
    assert len(by_name.x_val) == 12


@pytest.mark.parametrize(("n_train", "n_val"), [(60, 10), (300, 50), (7291, 1215), (66000, 10000)])
def test_idx_default_validation_fits_a_small_training_file(
    tmp_path: Path, n_train: int, n_val: int
) -> None:
    # MNIST's 10,000 of 60,000 is a sixth; a smaller file (USPS: 7,291) gets a sixth of its
    # own instead of an error about val_size, which the user never set; a larger one 10,000
    make_idx_dir(tmp_path / "d", n_train=n_train, n_test=20)
    d = load_vision(str(tmp_path / "d"), scaling="none")
    assert (len(d.x_val), len(d.x_train)) == (n_val, n_train - n_val)
    assert d.info["val_size"] == n_val


def test_idx_limit_fraction(tmp_path: Path) -> None:
    make_idx_dir(tmp_path / "d", n_train=300, n_test=100)
    d = load_vision(str(tmp_path / "d"), val_size=100, limit=20)
    assert (len(d.x_train), len(d.x_val), len(d.x_test)) == (20, 10, 10)


def test_mnist_missing_says_fetch_command(tmp_path: Path) -> None:
    with pytest.raises(ActregError, match="actreg data fetch mnist") as err:
        load_vision("mnist", data_dir=tmp_path)
    assert "--data-dir" in str(err.value) and "ACTREG_DATA" in str(err.value)
    make_idx_dir(tmp_path / "mnist")
    (tmp_path / "mnist" / "train-images-idx3-ubyte").unlink()  # partial data: same advice
    with pytest.raises(ActregError, match="actreg data fetch mnist"):
        load_vision("mnist", data_dir=tmp_path)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "mnsit"}, "unknown vision data set"),
        ({"scaling": "zscore"}, "unknown scaling"),
        ({"val_size": 0}, "val_size"),
        ({"val_size": 1.0}, "val_size"),
        ({"val_size": "10"}, "val_size"),
        ({"limit": 0}, "limit"),
    ],
    ids=["name", "scaling", "val0", "val1", "valstr", "limit"],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    kwargs.setdefault("data_dir", tmp_path)
    with pytest.raises(ActregError, match=match):
        load_vision(**kwargs)


def test_stratified_order_is_permutation() -> None:
    y = np.random.default_rng(0).integers(0, 5, 200)
    order = stratified_order(y, np.random.default_rng(1))
    assert sorted(order.tolist()) == list(range(200))
