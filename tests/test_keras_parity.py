"""Cross-check against a real peer: Keras 3 (torch backend) activity regularizers.

Skipped when keras is not installed (it is a benchmark-only extra: ``pip install -e
'.[bench]'``). The same weights and input give the same per-layer penalty in Keras'
``model.losses`` and in actreg's ``reg.last``. Keras >= 3.14 divides the activity penalty
by the batch size, like actreg's default ``reduction="batch"``; Keras 3.0-3.13 did not.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras", exc_type=ImportError)

import torch  # noqa: E402
from torch import nn  # noqa: E402

import actreg  # noqa: E402

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "torch", reason="needs KERAS_BACKEND=torch"
)

_VERSION = tuple(int(v) for v in keras.__version__.split(".")[:2])
BATCH_DIVIDES = _VERSION >= (3, 14)


def _pair(keras_reg, hidden=(16, 12), n_in=10):
    """A torch MLP and its Keras twin with the same weights."""
    torch.manual_seed(0)
    sizes = [n_in, *hidden]
    layers: list[nn.Module] = []
    for i in range(len(hidden)):
        layers += [nn.Linear(sizes[i], sizes[i + 1]), nn.ReLU()]
    tm = nn.Sequential(*layers)
    km = keras.Sequential(
        [keras.Input((n_in,))]
        + [
            keras.layers.Dense(h, activation="relu", activity_regularizer=keras_reg())
            for h in hidden
        ]
    )
    linears = [m for m in tm if isinstance(m, nn.Linear)]
    for lin, dense in zip(linears, km.layers, strict=True):
        dense.kernel.assign(lin.weight.detach().T.numpy())
        dense.bias.assign(lin.bias.detach().numpy())
    return tm, km


@pytest.mark.parametrize(
    ("keras_reg", "ours"),
    [
        (lambda: keras.regularizers.L1(1e-3), lambda: actreg.L1(1e-3)),
        (lambda: keras.regularizers.L2(1e-2), lambda: actreg.L2(1e-2)),
        (
            lambda: keras.regularizers.L1L2(l1=1e-3, l2=1e-2),
            lambda: actreg.L1L2(l1=1e-3, l2=1e-2),
        ),
    ],
    ids=["L1", "L2", "L1L2"],
)
@pytest.mark.parametrize("batch", [1, 7, 32])
def test_same_penalty_as_keras(keras_reg, ours, batch):
    tm, km = _pair(keras_reg)
    x = torch.randn(batch, 10)
    reg = actreg.attach(tm, {"1": ours(), "3": ours()}, when="always")
    with torch.no_grad():
        t_out = tm(x)
    reg.penalty()
    k_out = km(x, training=True)
    torch.testing.assert_close(torch.as_tensor(k_out).detach().cpu(), t_out)
    theirs = [float(loss.detach()) for loss in km.losses]
    scale = 1.0 if BATCH_DIVIDES else float(batch)
    expected = [reg.last["1"] * scale, reg.last["3"] * scale]
    assert theirs == pytest.approx(expected, rel=1e-5)


def test_keras_own_l2_example():
    # Keras' test: activity_regularizer="l2" on ones((B, 5)) * 2 gives 0.2 for every B > 0.
    layer = keras.layers.Activation("linear", activity_regularizer="l2")
    for batch in (1, 4):
        x = torch.ones(batch, 5) * 2
        layer(x)
        expected = actreg.L2(0.01)(x)
        theirs = float(layer.losses[-1].detach())
        scale = 1.0 if BATCH_DIVIDES else float(batch)
        assert theirs == pytest.approx(float(expected) * scale, rel=1e-6)
