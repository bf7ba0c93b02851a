"""actreg.layers: ActivityRegularization (Keras' marker layer) and TopK."""

from __future__ import annotations

import pytest
import torch

import actreg


def test_activity_regularization_is_keras_l1l2():
    layer = actreg.ActivityRegularization(l1=0.1, l2=0.2)
    assert layer.penalty == actreg.L1L2(l1=0.1, l2=0.2)
    assert layer.penalty.coef == pytest.approx(0.3)
    x = torch.randn(3, 4)
    assert torch.equal(layer(x), x)


def test_activity_regularization_with_penalty_object():
    layer = actreg.ActivityRegularization(actreg.Hoyer(0.5))
    assert "Hoyer(0.5)" in repr(layer)
    with pytest.raises(actreg.ActregError, match="either a penalty or l1"):
        actreg.ActivityRegularization(actreg.L1(1.0), l1=0.1)


def test_topk_gradient_flows_through_kept_values():
    x = torch.tensor([[3.0, -1.0, 2.0, 0.5]], requires_grad=True)
    actreg.TopK(2)(x).sum().backward()
    assert torch.equal(x.grad, torch.tensor([[1.0, 0.0, 1.0, 0.0]]))


def test_topk_k_too_large():
    with pytest.raises(actreg.ActregError, match="k=5 is larger"):
        actreg.TopK(5)(torch.randn(2, 4))


@pytest.mark.parametrize("k", [0, 1.5, True], ids=["zero", "float", "bool"])
def test_topk_bad_k(k):
    with pytest.raises(actreg.ActregError, match="integer k >= 1"):
        actreg.TopK(k)
