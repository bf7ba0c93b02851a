"""actreg.sparse.measure and flop_limit (no timing assertions)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import actreg
from actreg import sparse
from actreg.sparse._kernels import random_sparse

KERNELS = "sparse"  # see tests/conftest.py: cpp


def test_flop_limit_counts_zeros() -> None:
    net = nn.Sequential(nn.Linear(4, 10), nn.ReLU(), nn.Linear(10, 2))
    fast = sparse.convert(net, threshold=0.0)
    x = torch.randn(6, 4)
    limit, zeros = sparse.flop_limit(fast, [x])
    with torch.no_grad():
        h = torch.relu(net[0](x))
    frac = float((h == 0).float().mean())
    assert zeros == {"2": pytest.approx(frac)}
    dense = 6 * (4 * 10 + 10 * 2)
    left = 6 * 4 * 10 + int((h != 0).sum()) * 2
    assert limit == pytest.approx(dense / left)


def test_measure_report_fields() -> None:
    net = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 3))
    fast = sparse.convert(net, threshold=0.0)
    rep = sparse.measure(net, fast, torch.randn(4, 4), batch_size=2, repeats=1)
    assert rep.identical and rep.max_abs_diff < 1e-5
    assert rep.dense_s > 0 and rep.sparse_s > 0 and rep.limit >= 1.0
    assert set(rep.zero_fractions) == {"2"} and net.training and fast.training


@pytest.mark.parametrize("bad", [torch.zeros(0, 4), "x"], ids=["empty", "not-tensor"])
def test_measure_bad_inputs(bad: object) -> None:
    net = nn.Sequential(nn.ReLU(), nn.Linear(4, 3))
    with pytest.raises(actreg.ActregError, match="non-empty tensor"):
        sparse.measure(net, net, bad)  # type: ignore[arg-type]


def test_measure_with_converted_inputs() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    raw = random_sparse((8, 6), 0.7)
    shift, scale = 0.2, 0.4
    fast = copy.deepcopy(net)
    fast[0] = sparse.fold_input_scaling(net[0], shift, scale)
    fast = sparse.convert(fast, ["0", "2"], threshold=0.0)
    rep = sparse.measure(
        net, fast, (raw - shift) / scale, converted_inputs=raw, batch_size=1, repeats=1
    )
    assert rep.identical and rep.max_abs_diff < 1e-5
    assert rep.zero_fractions["0"] == pytest.approx(float((raw == 0).float().mean()))
    with pytest.raises(actreg.ActregError, match="same examples"):
        sparse.measure(net, fast, raw, converted_inputs=raw[:3])
