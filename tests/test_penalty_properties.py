"""Every registered penalty through the shared checker (tests/_checker.py).

The cases are keyed by registry name (``actreg.penalties.PENALTIES``): a penalty registered
without a case here fails ``test_every_registered_penalty_has_a_case``. Each reference is
written here in plain torch, independently of ``actreg.functional``.
"""

from __future__ import annotations

import math

import pytest
import torch

import actreg
from _checker import (
    Case,
    check_batch_split,
    check_compile,
    check_config,
    check_gradcheck,
    check_half_precision,
    check_linear_in_coef,
    check_pickle_and_deepcopy,
    check_reference,
    check_state_dict,
    merge_sum,
    signed,
    unit,
)
from actreg.control import TargetSparsity
from actreg.penalties import PENALTIES, Penalty
from actreg.schedule import Scheduled


def _kl_ref(x, beta, rho, dim=-1):
    rows = x.movedim(dim, -1).reshape(-1, x.shape[dim])
    q = rows.mean(0)
    return beta * sum(
        rho * math.log(rho / float(qj)) + (1 - rho) * math.log((1 - rho) / (1 - float(qj)))
        for qj in q
    )


def _decov_ref(x):
    h = x.reshape(-1, x.shape[-1])
    n, d = h.shape
    mu = h.mean(0)
    total = 0.0
    for i in range(d):
        for j in range(d):
            c = sum((h[k, i] - mu[i]) * (h[k, j] - mu[j]) for k in range(n)) / n
            if i != j:
                total += float(c) ** 2
    return 0.5 * total


def _hoyer_ref(x, coef, squared):
    rows = x.reshape(-1, x.shape[-1])
    vals = []
    for r in rows:
        l1n = float(r.abs().sum())
        l2n = math.sqrt(float((r**2).sum()))
        vals.append((l1n**2 / l2n**2) if squared else l1n / l2n)
    return coef * sum(vals) / x.shape[0]


def _batch(x):
    return x.shape[0]


def _l1l2_ref(x, l1, l2):
    return (l1 * x.abs().sum() + l2 * x.square().sum()) / _batch(x)


def _t(value):
    return torch.as_tensor(value, dtype=torch.float64)


def _target_sparsity():
    """A controller on L1L2, three training steps in (its scale has moved; no fade-in, and
    a ramp that reaches the target at once, so the scale moves from the first step)."""
    ctl = TargetSparsity(actreg.L1L2(l1=0.01, l2=0.02), target=0.5, rate=0.1, warmup=0, ramp=10.0)
    for _ in range(3):
        ctl(torch.relu(torch.randn(4, 5, dtype=torch.float64)).requires_grad_())
    assert ctl.coef != pytest.approx(0.03)
    return ctl


def _scheduled():
    """A warm-up over 4 steps on a sum, one step in (factor 0.5)."""
    p = Scheduled(actreg.L1(0.1) + actreg.L2(0.2), warmup=4)
    p(torch.ones(2, 3, dtype=torch.float64, requires_grad=True))
    return p


def _floor_ref(x, coef, floor):
    rate = (x.reshape(-1, x.shape[-1]) > 0).double().mean(0)
    return coef * (floor - rate).clamp_min(0).mean()


KL_SYNC = "validate=True checks [0, 1] on the host (one sync): a graph break"
KL_SPLIT = "a statistic of the whole batch (unit means): parts do not add up"

# (registry name, case)
CASES = [
    (
        "firing_floor",
        Case(
            "firing-floor",
            lambda: actreg.FiringFloor(0.7, floor=0.5),
            lambda x, p: _floor_ref(x, 0.7, 0.5),
            signed,
            split="a mean over units of a hinge on the batch's firing rates: parts do not add up",
            grad="straight-through: the gradient is a sigmoid surrogate's, not the step rate's",
        ),
    ),
    (
        "l1",
        Case("l1", lambda: actreg.L1(0.01), lambda x, p: 0.01 * x.abs().sum() / _batch(x), signed),
    ),
    (
        "l1",
        Case(
            "l1-mean", lambda: actreg.L1(0.01, "mean"), lambda x, p: 0.01 * x.abs().mean(), signed
        ),
    ),
    (
        "l1",
        Case(
            "l1-sum",
            lambda: actreg.L1(0.01, "sum"),
            lambda x, p: 0.01 * x.abs().sum(),
            signed,
            split=merge_sum,
        ),
    ),
    (
        "l2",
        Case(
            "l2-sum",
            lambda: actreg.L2(0.02, "sum"),
            lambda x, p: 0.02 * x.square().sum(),
            signed,
            split=merge_sum,
        ),
    ),
    (
        "log",
        Case(
            "log-sum",
            lambda: actreg.Log(0.5, "sum"),
            lambda x, p: 0.5 * torch.log1p(x.square()).sum(),
            signed,
            split=merge_sum,
        ),
    ),
    (
        "l2",
        Case(
            "l2", lambda: actreg.L2(0.02), lambda x, p: 0.02 * x.square().sum() / _batch(x), signed
        ),
    ),
    (
        "l1l2",
        Case(
            "l1l2",
            lambda: actreg.L1L2(l1=0.01, l2=0.03),
            lambda x, p: _l1l2_ref(x, 0.01, 0.03),
            signed,
        ),
    ),
    ("ar", Case("ar", lambda: actreg.AR(2.0), lambda x, p: 2.0 * x.square().mean(), signed)),
    (
        "tar",
        Case(
            "tar",
            lambda: actreg.TAR(1.5),
            lambda x, p: 1.5 * (x[:, 1:] - x[:, :-1]).square().mean(),
            signed,
        ),
    ),
    (
        "tar",
        Case(
            "tar-time-first-batch",
            lambda: actreg.TAR(1.0, time_dim=0, reduction="batch"),
            lambda x, p: (x[1:] - x[:-1]).square().sum() / x.shape[1],
            signed,
            split_dim=1,
        ),
    ),
    (
        "kl",
        Case(
            "kl",
            lambda: actreg.KLSparsity(3.0, target=0.05),
            lambda x, p: _t(_kl_ref(x, 3.0, 0.05)),
            unit,
            split=KL_SPLIT,
            fullgraph=KL_SYNC,
        ),
    ),
    (
        "kl",
        Case(
            "kl-dim1",
            lambda: actreg.KLSparsity(1.0, 0.1, dim=1),
            lambda x, p: _t(_kl_ref(x, 1.0, 0.1, 1)),
            unit,
            split=KL_SPLIT,
            fullgraph=KL_SYNC,
        ),
    ),
    (
        "hoyer",
        Case(
            "hoyer", lambda: actreg.Hoyer(0.1), lambda x, p: _t(_hoyer_ref(x, 0.1, False)), signed
        ),
    ),
    (
        "hoyer_square",
        Case(
            "hoyer-square",
            lambda: actreg.HoyerSquare(0.1),
            lambda x, p: _t(_hoyer_ref(x, 0.1, True)),
            signed,
        ),
    ),
    (
        "log",
        Case(
            "log",
            lambda: actreg.Log(0.5),
            lambda x, p: 0.5 * torch.log1p(x.square()).sum() / _batch(x),
            signed,
        ),
    ),
    (
        "decov",
        Case(
            "decov",
            lambda: actreg.DeCov(0.7),
            lambda x, p: _t(0.7 * _decov_ref(x)),
            signed,
            split="a statistic of the whole batch (unit covariance): parts do not add up",
        ),
    ),
    (
        "binary",
        Case(
            "binary",
            lambda: actreg.Binary(0.2),
            lambda x, p: 0.2 * (x * (1 - x)).sum() / _batch(x),
            unit,
            fullgraph=KL_SYNC,
        ),
    ),
    (
        "sum",
        Case(
            "sum",
            lambda: actreg.L1(0.01) + actreg.L2(0.02),
            lambda x, p: _l1l2_ref(x, 0.01, 0.02),
            signed,
        ),
    ),
    (
        "scaled",
        Case("scaled", lambda: 0.5 * actreg.AR(2.0), lambda x, p: x.square().mean(), signed),
    ),
    (
        "target_sparsity",
        Case(
            "target-sparsity-l1l2",
            _target_sparsity,
            lambda x, p: p.coef / 0.03 * _l1l2_ref(x, 0.01, 0.02),
            signed,
            grad="in training the backward weights each unit by its firing rate (by design)",
        ),
    ),
    (
        "scheduled",
        Case("scheduled-sum", _scheduled, lambda x, p: 0.5 * _l1l2_ref(x, 0.1, 0.2), signed),
    ),
]
IDS = [c.id for _, c in CASES]
ALL = [c for _, c in CASES]


def test_every_registered_penalty_has_a_case():
    missing = set(PENALTIES) - {name for name, _ in CASES}
    assert not missing, f"add a Case for {sorted(missing)} to CASES in this file"


def test_cases_build_the_registered_class():
    for name, case in CASES:
        assert type(case.make()) is PENALTIES[name], case.id


@pytest.mark.parametrize(
    "cls",
    sorted(
        {
            obj
            for module in (actreg, actreg.penalties, actreg.control, actreg.schedule)
            for obj in (getattr(module, n) for n in module.__all__)
            if isinstance(obj, type) and issubclass(obj, Penalty) and obj is not Penalty
        },
        key=lambda c: c.__name__,
    ),
    ids=lambda c: c.__name__,
)
def test_every_exported_penalty_is_registered(cls):
    assert PENALTIES[cls.name] is cls


@pytest.mark.parametrize("shape", [(4, 5), (3, 4, 5)], ids=["2d", "3d"])
@pytest.mark.parametrize("case", ALL, ids=IDS)
def test_reference_formula(case, shape):
    check_reference(case, shape)


@pytest.mark.parametrize("case", ALL, ids=IDS)
def test_gradcheck_float64(case):
    check_gradcheck(case)


@pytest.mark.parametrize("case", ALL, ids=IDS)
def test_batch_split_equals_whole(case):
    check_batch_split(case)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("case", ALL, ids=IDS)
def test_half_precision_accumulates_in_float32(case, dtype):
    check_half_precision(case, dtype)


@pytest.mark.parametrize("case", ALL, ids=IDS)
def test_pickle_and_deepcopy(case):
    check_pickle_and_deepcopy(case)


@pytest.mark.parametrize("case", ALL, ids=IDS)
def test_state_dict_round_trip(case):
    check_state_dict(case)


@pytest.mark.parametrize("case", ALL, ids=IDS)
def test_config_round_trip(case):
    check_config(case)


@pytest.mark.parametrize("case", ALL, ids=IDS)
def test_linear_in_coef(case):
    check_linear_in_coef(case)


@pytest.fixture
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.skipif(not hasattr(torch, "compile"), reason="torch.compile needs torch >= 2.0")
@pytest.mark.parametrize("case", ALL, ids=IDS)
def test_torch_compile(case, _fresh_dynamo):
    check_compile(case)
