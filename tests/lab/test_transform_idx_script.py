"""scripts/transform_idx.py: the permuted and inverted copies of an IDX folder."""

from __future__ import annotations

import numpy as np
import pytest

from actreg.lab.data.idx import IDX_FILES, idx_bytes, parse_idx


@pytest.fixture(scope="module")
def script(load_script):
    return load_script("transform_idx")


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "src"
    src.mkdir()
    for role, name in IDX_FILES.items():
        n = 6 if role.startswith("train") else 3
        data = (
            rng.integers(0, 256, (n, 4, 4), dtype=np.uint8)
            if role.endswith("images")
            else rng.integers(0, 10, n, dtype=np.uint8)
        )
        (src / name).write_bytes(idx_bytes(data))
    return src


def read(folder, role):
    return parse_idx((folder / IDX_FILES[role]).read_bytes())


@pytest.mark.parametrize(
    ("flags", "expect"),
    [
        (["--invert"], lambda x, order: 255 - x),
        (["--permute", "3"], lambda x, order: x.reshape(len(x), -1)[:, order].reshape(x.shape)),
        (
            ["--permute", "3", "--invert"],
            lambda x, order: 255 - x.reshape(len(x), -1)[:, order].reshape(x.shape),
        ),
    ],
    ids=["invert", "permute", "both"],
)
def test_images_are_transformed_and_labels_copied(script, folder, tmp_path, flags, expect):
    out = tmp_path / "out"
    script.main([str(folder), str(out), *flags])
    order = np.random.default_rng(3).permutation(16)
    for split in ("train", "test"):
        x = read(folder, f"{split}_images")
        np.testing.assert_array_equal(read(out, f"{split}_images"), expect(x, order))
        np.testing.assert_array_equal(read(out, f"{split}_labels"), read(folder, f"{split}_labels"))


def test_one_permutation_for_every_image_and_split(script):
    """The same pixel moves to the same place in every image (a fixed permutation)."""
    x = np.zeros((2, 4, 4), dtype=np.uint8)
    x[:, 0, 0] = 255
    y = script.transform(x, permute=1, invert=False)
    assert (y[0] == y[1]).all() and y.sum() == 2 * 255 and y[0].sum() == 255


@pytest.mark.parametrize(
    ("flags", "match"), [([], "nothing to do"), (["--invert", "--same"], "OUT is SOURCE")]
)
def test_bad_arguments_are_refused(script, folder, flags, match):
    out = folder if "--same" in flags else folder.parent / "out"
    with pytest.raises(SystemExit, match=match):
        script.main([str(folder), str(out), *[f for f in flags if f != "--same"]])
