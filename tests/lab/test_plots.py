"""actreg.lab.plots: every figure writes a real PNG; bad input raises ActregError."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

import actreg
from actreg import ActregError

plots = pytest.importorskip("actreg.lab.plots")
pytest.importorskip("matplotlib")

PNG = b"\x89PNG\r\n\x1a\n"


def _monitor_stats() -> dict:
    model = nn.Sequential(OrderedDict(fc=nn.Linear(8, 32), act=nn.ReLU()))
    with actreg.Monitor(model, "act") as mon:
        model(torch.randn(64, 8))
        return mon.compute()


FIGURES = {
    "histograms": lambda p: plots.activation_histograms(
        {"a": torch.relu(torch.randn(64, 16)), "b": torch.tanh(torch.randn(3, 5, 7)), "c": [0.0]},
        p,
        title="sample",
    ),
    "firing_rates_from_monitor": lambda p: plots.firing_rates(_monitor_stats(), p),
    "firing_rates_from_rates": lambda p: plots.firing_rates(
        {"x": torch.rand(50) ** 3, "dead": torch.zeros(10), "list": [0.5, 0.1]}, p
    ),
    "tradeoff_with_zero": lambda p: plots.tradeoff(
        [1e-3, 0.0, 1e-4, 1e-2], [0.97, 0.98, 0.975, 0.9], [0.8, 0.5, 0.7, 0.95], p
    ),
    "tradeoff_positive": lambda p: plots.tradeoff(
        [1e-5, 1e-4], [0.3, 0.4], [0.2, 0.1], p, task_label="mse", sparsity_label="l0"
    ),
    "tiles_square": lambda p: plots.feature_tiles(torch.randn(10, 64), None, p),
    "tiles_shape_ncols": lambda p: plots.feature_tiles(
        torch.randn(150, 12), (3, 4), p, ncols=10, title="features"
    ),
}


@pytest.mark.parametrize("name", list(FIGURES), ids=list(FIGURES))
def test_writes_png(tmp_path, name):
    path = tmp_path / "sub" / f"{name}.png"
    out = FIGURES[name](path)
    assert out == path
    data = path.read_bytes()
    assert data[:8] == PNG
    assert len(data) > 5_000


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda p: plots.activation_histograms({}, p), "at least one layer"),
        (lambda p: plots.firing_rates({}, p), "at least one layer"),
        (lambda p: plots.firing_rates({"a": {"l0": 1.0}}, p), "no 'firing_rate'"),
        (lambda p: plots.firing_rates({"a": torch.tensor([2.0])}, p), r"in \[0, 1\]"),
        (lambda p: plots.firing_rates({"a": torch.tensor([True])}, p), "must hold numbers"),
        (lambda p: plots.tradeoff([0.1], [1.0, 2.0], [0.5], p), "one non-zero length"),
        (lambda p: plots.tradeoff([-1.0], [1.0], [0.5], p), "coefficients >= 0"),
        (lambda p: plots.feature_tiles(torch.randn(4, 10), None, p), "not a square"),
        (lambda p: plots.feature_tiles(torch.randn(4, 10), (3, 3), p), "has 9 pixels"),
        (lambda p: plots.feature_tiles(torch.randn(10), None, p), r"\(n_features, H\*W\)"),
        (lambda p: plots.feature_tiles(torch.randn(4, 9), None, p, ncols=0), "ncols"),
    ],
    ids=[
        "hist_empty",
        "rates_empty",
        "rates_no_key",
        "rates_range",
        "rates_bool",
        "tradeoff_lengths",
        "tradeoff_negative",
        "tiles_not_square",
        "tiles_shape",
        "tiles_1d",
        "tiles_ncols",
    ],
)
def test_bad_input(tmp_path, call, match):
    with pytest.raises(ActregError, match=match):
        call(tmp_path / "x.png")
