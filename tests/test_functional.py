"""actreg.functional: reductions, the object/functional twins, topk."""

from __future__ import annotations

import pytest
import torch

import actreg
from actreg import functional as F
from actreg.penalties import PENALTIES

# The functional twin of every formula penalty; its positional arguments after ``x`` are
# the penalty's config values, in order.
TWINS = {
    "l1": F.l1,
    "l2": F.l2,
    "l1l2": F.l1l2,
    "ar": F.ar,
    "tar": F.tar,
    "kl": F.kl_sparsity,
    "hoyer": F.hoyer,
    "hoyer_square": F.hoyer_square,
    "log": F.log,
    "decov": F.decov,
    "binary": F.binary,
}
# Penalties whose value depends on state carried across batches, not on ``x`` alone: no
# pure twin (their reference formulas are in tests/test_penalty_properties.py).
STATEFUL = {"firing_floor"}  # a running firing rate per unit
FORMULAS = sorted(
    name for name, cls in PENALTIES.items() if not cls.composite and name not in STATEFUL
)


def test_every_formula_penalty_has_a_twin():
    assert sorted(TWINS) == FORMULAS


@pytest.mark.parametrize("name", FORMULAS)
def test_penalty_object_equals_its_functional_twin(name):
    penalty = PENALTIES[name](0.3)
    x = torch.rand(3, 4, 5, dtype=torch.float64)
    want = TWINS[name](x, *penalty.get_config().values())
    assert torch.equal(penalty(x), want)


@pytest.mark.parametrize(
    ("reduction", "expected"), [("sum", 24.0), ("mean", 1.0), ("batch", 12.0)], ids=str
)
def test_reduce(reduction, expected):
    assert float(F.reduce(torch.ones(2, 3, 4), reduction)) == expected


def test_reduce_batch_dim():
    assert float(F.reduce(torch.ones(2, 3, 4), "batch", batch_dim=1)) == 8.0


@pytest.mark.parametrize("reduction", F.REDUCTIONS)
def test_reduce_empty_is_zero(reduction):
    assert float(F.reduce(torch.zeros(0, 4), reduction)) == 0.0


def test_reduce_batch_needs_a_batch_axis():
    with pytest.raises(actreg.ActregError, match="use reduction='sum'"):
        F.reduce(torch.tensor(3.0), "batch")


def test_check_reduction_returns_the_literal():
    assert F.REDUCTIONS == ("batch", "mean", "sum")
    assert [F.check_reduction(r) for r in F.REDUCTIONS] == list(F.REDUCTIONS)
    with pytest.raises(actreg.ActregError, match="unknown reduction 'Sum'"):
        F.check_reduction("Sum")
    with pytest.raises(actreg.ActregError, match="unknown reduction None"):
        F.check_reduction(None)


def test_topk_functional_matches_manual():
    x = torch.tensor([[1.0, 5.0, 3.0, -2.0], [0.0, -1.0, 4.0, 2.0]])
    assert torch.equal(F.topk(x, 2), torch.tensor([[0.0, 5.0, 3.0, 0.0], [0.0, 0.0, 4.0, 2.0]]))
