"""Every metric of actreg.metrics through the shared checker (tests/_checker.py).

The metrics are the public functions of ``actreg.metrics.__all__``: one added there without
a case here fails ``test_every_metric_has_a_case``. Each reference is written here in plain
torch, independently of ``actreg.metrics``. Metrics are pure functions: they keep no state
and have no config, so those two properties of the penalty checker do not apply (the
stateful twin, ``actreg.Monitor``, has its own state_dict tests in test_monitor.py).
"""

from __future__ import annotations

import math

import pytest
import torch

from _checker import (
    Case,
    check_batch_split,
    check_compile,
    check_gradcheck,
    check_half_precision,
    check_pickle_and_deepcopy,
    check_reference,
    merge_rms,
    relu,
    signed,
)
from actreg import metrics as M


def _rows(x, dim):
    """(positions, units), the unit axis last."""
    return x.movedim(dim, -1).reshape(-1, x.shape[dim])


def ref_zero_fraction(x, eps=0.0):
    return (x.abs() <= eps).double().mean()


def ref_l0(x, dim=-1, eps=0.0):
    return (_rows(x, dim).abs() > eps).double().sum(1).mean()


def ref_firing_rate(x, dim=-1, eps=0.0):
    return (_rows(x, dim).abs() > eps).double().mean(0)


def ref_hoyer(x, dim=-1):
    rows = _rows(x, dim)
    root = math.sqrt(rows.shape[1])
    l1, l2 = rows.abs().sum(1), rows.square().sum(1).sqrt()
    score = ((root - l1 / l2) / (root - 1)).clamp(0, 1)
    return torch.where(l2 == 0, torch.ones_like(score), score).mean()


COUNTS = "a count: piecewise constant in x, no gradient"
EPS03 = {"eps": 0.3}


def _case(id, fn, ref, inputs, **kwargs):
    kw = kwargs.pop("kw", {})
    return Case(id, lambda: fn, lambda x, _: ref(x, **kw), inputs, kwargs=kw, **kwargs)


CASES = [
    _case("zero_fraction", M.zero_fraction, ref_zero_fraction, relu, grad=COUNTS),
    _case("zero_fraction-eps", M.zero_fraction, ref_zero_fraction, relu, kw=EPS03, grad=COUNTS),
    _case("l0", M.l0, ref_l0, relu, grad=COUNTS),
    _case("l0-dim1-eps", M.l0, ref_l0, relu, kw={"dim": 1, **EPS03}, grad=COUNTS),
    _case("firing_rate", M.firing_rate, ref_firing_rate, relu, grad=COUNTS),
    _case("firing_rate-dim1", M.firing_rate, ref_firing_rate, relu, kw={"dim": 1}, grad=COUNTS),
    _case("mean_abs", M.mean_abs, lambda x: x.abs().mean(), signed),
    _case("rms", M.rms, lambda x: x.square().mean().sqrt(), signed, split=merge_rms),
    _case("hoyer", M.hoyer, ref_hoyer, signed),
    _case("hoyer-dim1", M.hoyer, ref_hoyer, signed, kw={"dim": 1}),
    _case("hoyer-relu", M.hoyer, ref_hoyer, relu, grad="|x| has no derivative at 0"),
]
IDS = [c.id for c in CASES]


def test_every_metric_has_a_case():
    public = {n for n in M.__all__ if callable(getattr(M, n))}
    covered = {c.make().__name__ for c in CASES}
    assert public == covered, f"add a Case for {sorted(public - covered)} to CASES"


@pytest.mark.parametrize("shape", [(6, 5), (3, 4, 5)], ids=["2d", "3d"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_reference_formula(case, shape):
    check_reference(case, shape)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gradcheck_float64(case):
    check_gradcheck(case)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_batch_split_equals_whole(case):
    check_batch_split(case)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_half_precision_accumulates_in_float32(case, dtype):
    check_half_precision(case, dtype)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_pickle_and_deepcopy(case):
    check_pickle_and_deepcopy(case)


@pytest.fixture
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.skipif(not hasattr(torch, "compile"), reason="torch.compile needs torch >= 2.0")
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_torch_compile(case, _fresh_dynamo):
    check_compile(case)
