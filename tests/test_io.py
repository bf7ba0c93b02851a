"""load_checkpoint refuses code-carrying pickles (URL masking: tests/lab/test_search.py)."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

import actreg
from actreg._io import load_checkpoint


class Exploit:
    """Unpickling this would create a marker file (a stand-in for os.system)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_training_checkpoint_round_trip(tmp_path):
    model = nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    saved = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "config": {"penalty": "l1", "coef": 1e-3, "layers": ["act"], "seed": 0, "x": None},
        "version": actreg.__version__,
        "epoch": 7,
    }
    path = tmp_path / "ckpt.pt"
    torch.save(saved, path)
    loaded = load_checkpoint(path)
    assert loaded["epoch"] == 7 and loaded["version"] == actreg.__version__
    assert loaded["config"] == saved["config"]
    fresh = nn.Linear(3, 2)
    fresh.load_state_dict(loaded["model"])
    torch.optim.Adam(fresh.parameters()).load_state_dict(loaded["optimizer"])
    torch.testing.assert_close(fresh.weight, model.weight)


def test_code_carrying_checkpoint_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": nn.Linear(2, 2).state_dict(), "payload": Exploit(str(marker))}, path)
    assert not marker.exists()
    with pytest.raises(actreg.ActregError, match=r"refusing to load .*evil\.pt.*could run code"):
        load_checkpoint(path)
    assert not marker.exists()  # the payload never ran
    torch.load(path, weights_only=False)  # proof the payload is real
    assert marker.exists()


@pytest.mark.parametrize(
    ("content", "match"),
    [(None, "no checkpoint file"), (b"not a checkpoint", "cannot read checkpoint")],
    ids=["missing", "garbage"],
)
def test_unreadable_checkpoint(tmp_path, content, match):
    path = tmp_path / "x.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(actreg.ActregError, match=match):
        load_checkpoint(os.fspath(path))
