"""scripts/fashion_idx.py: the npm package's per-class JSON files become a loadable IDX folder."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from actreg.lab.data.idx import load_idx_dir


@pytest.fixture
def script(load_script, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    module = load_script("fashion_idx")
    monkeypatch.setattr(module, "TRAIN_PER_CLASS", 3)
    return module


def _package(path: Path, rows: dict[int, list[list[int]]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for cls, data in rows.items():
            blob = json.dumps({"data": data}).encode()
            info = tarfile.TarInfo(f"package/src/clothes/{cls}.json")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


def test_split_per_class_labels_and_empty_rows(script, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rows = {c: [[(c * 10 + i) % 256] * 784 for i in range(5)] for c in range(10)}
    rows[0].insert(2, [])  # the real package's class 0 holds two empty rows
    out = tmp_path / "fashion"
    script.build(_package(tmp_path / "p.tgz", rows), out)
    splits = load_idx_dir(out)
    assert splits.train_images.shape == (30, 28, 28)
    assert splits.test_images.shape == (20, 28, 28)
    assert np.bincount(splits.train_labels).tolist() == [3] * 10
    assert np.bincount(splits.test_labels).tolist() == [2] * 10
    # class 7's fourth image (index 3) is the first test image of class 7
    first7 = int(np.flatnonzero(splits.test_labels == 7)[0])
    assert int(splits.test_images[first7, 0, 0]) == 73


def test_a_malformed_row_is_refused(script, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rows = {c: [[0] * 784] * 4 for c in range(10)}
    rows[4] = [[0] * 783] * 4
    with pytest.raises(SystemExit, match="class 4"):
        script.build(_package(tmp_path / "p.tgz", rows), tmp_path / "out")
