"""Tests of the IDX reader and the MNIST-style directory loader."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from idxfake import make_idx_dir

from actreg import ActregError
from actreg.lab.data.idx import idx_bytes, load_idx_dir, parse_idx, read_idx

DTYPES = ["u1", "i1", "i2", "i4", "f4", "f8"]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPES)
@pytest.mark.parametrize(
    "shape", [(5,), (2, 3), (2, 3, 4), (1, 2, 1, 3)], ids=["1d", "2d", "3d", "4d"]
)
def test_roundtrip_all_dtypes_and_dims(dtype: str, shape: tuple[int, ...]) -> None:
    arr = (np.arange(np.prod(shape)) - 2).reshape(shape).astype(dtype)
    if dtype == "u1":
        arr = np.arange(np.prod(shape), dtype=np.uint8).reshape(shape)
    out = parse_idx(idx_bytes(arr))
    assert out.shape == shape and out.dtype == arr.dtype and out.dtype.isnative
    np.testing.assert_array_equal(out, arr)


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
def test_read_file(tmp_path: Path, gz: bool) -> None:
    arr = np.array([[1, 2], [3, 255]], dtype=np.uint8)
    data = idx_bytes(arr)
    path = tmp_path / ("a.gz" if gz else "a")
    path.write_bytes(gzip.compress(data) if gz else data)
    np.testing.assert_array_equal(read_idx(path), arr)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"\x01\x00\x08\x01", "not an IDX file"),
        (b"", "not an IDX file"),
        (bytes([0, 0, 0x0A, 1, 0, 0, 0, 1, 0]), "unknown IDX type code 0x0A"),
        (bytes([0, 0, 0x08, 0]), "0 dimensions"),
        (bytes([0, 0, 0x08, 2, 0, 0, 0, 1]), "header is truncated"),
        (bytes([0, 0, 0x08, 1, 0, 0, 0, 3, 1, 2]), "need 11 bytes, the file has 10"),
        (bytes([0, 0, 0x08, 1, 0, 0, 0, 1, 1, 2]), "need 9 bytes, the file has 10"),
        (b"\x1f\x8b\x08garbage", "corrupt gzip"),
    ],
    ids=["magic", "empty", "dtype", "ndim0", "header", "short", "long", "gzip"],
)
def test_bad_files(data: bytes, match: str) -> None:
    with pytest.raises(ActregError, match=match):
        parse_idx(data)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ActregError, match="does not exist"):
        read_idx(tmp_path / "nope")


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
def test_load_dir(tmp_path: Path, gz: bool) -> None:
    arrays = make_idx_dir(tmp_path, gz=gz)
    s = load_idx_dir(tmp_path)
    np.testing.assert_array_equal(s.train_images, arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(s.test_labels, arrays["t10k-labels-idx1-ubyte"])
    assert s.files["train_images"].name.endswith(".gz") == gz


def test_load_dir_dot_variant(tmp_path: Path) -> None:
    make_idx_dir(tmp_path)
    (tmp_path / "train-images-idx3-ubyte").rename(tmp_path / "train-images.idx3-ubyte")
    assert load_idx_dir(tmp_path).train_images.shape == (60, 4, 4)


def test_load_dir_missing_file(tmp_path: Path) -> None:
    make_idx_dir(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(ActregError, match=r"no t10k-labels-idx1-ubyte \(or t10k-labels"):
        load_idx_dir(tmp_path)


def test_load_dir_mismatched_counts(tmp_path: Path) -> None:
    make_idx_dir(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(3, dtype=np.uint8)))
    with pytest.raises(ActregError, match="train images must be"):
        load_idx_dir(tmp_path)


@pytest.mark.parametrize("dtype", ["i8", "u2", "c8"])
def test_idx_bytes_refuses_element_types_idx_cannot_store(dtype):
    with pytest.raises(ActregError, match=f"IDX stores .* not {np.dtype(dtype)}; convert"):
        idx_bytes(np.zeros(3, dtype=dtype))
