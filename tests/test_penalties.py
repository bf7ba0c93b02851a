"""Every penalty goes through one checker: reference formula, gradcheck, pickling, repr."""

from __future__ import annotations

import math
import pickle

import pytest
import torch

import actreg
from actreg import functional as F


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


def _pos(shape):
    return torch.rand(*shape, dtype=torch.float64) * 0.9 + 0.05


def _any(shape):
    return torch.randn(*shape, dtype=torch.float64)


# (id, penalty, input maker, reference(x) -> float)
CASES = [
    ("l1", actreg.L1(0.01), _any, lambda x: 0.01 * float(x.abs().sum()) / x.shape[0]),
    ("l1-mean", actreg.L1(0.01, "mean"), _any, lambda x: 0.01 * float(x.abs().mean())),
    ("l1-sum", actreg.L1(0.01, "sum"), _any, lambda x: 0.01 * float(x.abs().sum())),
    ("l2", actreg.L2(0.02), _any, lambda x: 0.02 * float((x**2).sum()) / x.shape[0]),
    (
        "l1l2",
        actreg.L1L2(l1=0.01, l2=0.03),
        _any,
        lambda x: (0.01 * float(x.abs().sum()) + 0.03 * float((x**2).sum())) / x.shape[0],
    ),
    ("ar", actreg.AR(2.0), _any, lambda x: 2.0 * float((x**2).mean())),
    (
        "tar",
        actreg.TAR(1.5),
        _any,
        lambda x: 1.5 * float(((x[:, 1:] - x[:, :-1]) ** 2).mean()),
    ),
    (
        "tar-time-first-batch",
        actreg.TAR(1.0, time_dim=0, reduction="batch"),
        _any,
        lambda x: float(((x[1:] - x[:-1]) ** 2).sum()) / x.shape[1],
    ),
    ("kl", actreg.KLSparsity(3.0, target=0.05), _pos, lambda x: _kl_ref(x, 3.0, 0.05)),
    ("kl-dim1", actreg.KLSparsity(1.0, 0.1, dim=1), _pos, lambda x: _kl_ref(x, 1.0, 0.1, 1)),
    ("hoyer", actreg.Hoyer(0.1), _any, lambda x: _hoyer_ref(x, 0.1, False)),
    ("hoyer-square", actreg.HoyerSquare(0.1), _any, lambda x: _hoyer_ref(x, 0.1, True)),
    (
        "log",
        actreg.Log(0.5),
        _any,
        lambda x: 0.5 * float(torch.log(1 + x**2).sum()) / x.shape[0],
    ),
    ("decov", actreg.DeCov(0.7), _any, lambda x: 0.7 * _decov_ref(x)),
    ("binary", actreg.Binary(0.2), _pos, lambda x: 0.2 * float((x * (1 - x)).sum()) / x.shape[0]),
    (
        "sum",
        actreg.L1(0.01) + actreg.L2(0.02),
        _any,
        lambda x: (0.01 * float(x.abs().sum()) + 0.02 * float((x**2).sum())) / x.shape[0],
    ),
    ("scaled", 0.5 * actreg.AR(2.0), _any, lambda x: float((x**2).mean())),
]
SHAPES = [(4, 5), (3, 4, 5)]


@pytest.mark.parametrize("shape", SHAPES, ids=["2d", "3d"])
@pytest.mark.parametrize(
    ("penalty", "make", "ref"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_reference_formula(penalty, make, ref, shape):
    x = make(shape)
    out = penalty(x)
    assert out.dim() == 0
    assert float(out) == pytest.approx(ref(x), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize(("penalty", "make"), [c[1:3] for c in CASES], ids=[c[0] for c in CASES])
def test_gradcheck_float64(penalty, make):
    x = make((3, 4, 5)).requires_grad_()
    assert torch.autograd.gradcheck(penalty, (x,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize(("penalty", "make"), [c[1:3] for c in CASES], ids=[c[0] for c in CASES])
def test_pickle_and_repr_round_trip(penalty, make):
    clone = pickle.loads(pickle.dumps(penalty))
    assert repr(clone) == repr(penalty)
    x = make((3, 4))
    assert torch.equal(clone(x), penalty(x))


@pytest.mark.parametrize("batch", [1, 2, 7, 64])
def test_keras_l2_example(batch):
    # Keras' own test: activity_regularizer="l2" on ones((B, 5)) * 2 gives 0.2 for every B.
    assert float(actreg.L2(0.01)(torch.ones(batch, 5) * 2)) == pytest.approx(0.2)


@pytest.mark.parametrize(
    "penalty", [actreg.L1(1.0, "sum"), actreg.L2(1.0, "sum"), actreg.Log(1.0, "sum")], ids=repr
)
def test_sum_reduction_splits_over_batches(penalty):
    x = torch.randn(10, 6, dtype=torch.float64)
    whole = penalty(x)
    parts = penalty(x[:4]) + penalty(x[4:])
    assert float(whole) == pytest.approx(float(parts))


def test_empty_batch_is_zero():
    for p in (actreg.L1(1.0), actreg.AR(1.0), actreg.Hoyer(1.0), actreg.DeCov(1.0)):
        assert float(p(torch.zeros(0, 4))) == 0.0


def test_hoyer_zero_vector_counts_zero():
    assert float(actreg.Hoyer(1.0)(torch.zeros(2, 3))) == 0.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_precision_accumulates_in_float32(dtype):
    x = torch.full((64, 4096), 200.0, dtype=dtype)  # sum of squares overflows float16
    out = actreg.L2(1.0, "sum")(x)
    assert out.dtype == torch.float32
    assert math.isfinite(float(out))
    assert float(out) == pytest.approx(64 * 4096 * 200.0**2, rel=1e-3)


def test_repr_shows_whole_configuration():
    p = actreg.L1(1e-3) + 0.5 * actreg.TAR(1.0, time_dim=0) + actreg.KLSparsity(3, 0.01, dim=1)
    assert repr(p) == "L1(0.001) + 0.5 * TAR(1, time_dim=0) + KLSparsity(3, target=0.01, dim=1)"
    assert repr(actreg.L1L2(l1=0.01, l2=0.0, reduction="sum")) == (
        "L1L2(l1=0.01, l2=0, reduction='sum')"
    )


def test_composition_flattens_sums():
    p = (actreg.L1(1.0) + actreg.L2(1.0)) + actreg.AR(1.0)
    assert len(p.terms) == 3


def test_topk_functional_matches_manual():
    x = torch.tensor([[1.0, 5.0, 3.0, -2.0], [0.0, -1.0, 4.0, 2.0]])
    assert torch.equal(F.topk(x, 2), torch.tensor([[0.0, 5.0, 3.0, 0.0], [0.0, 0.0, 4.0, 2.0]]))


def test_make_penalty_registry():
    assert actreg.make_penalty("tar", 1.0) == actreg.TAR(1.0)
    with pytest.raises(actreg.ActregError, match="did you mean"):
        actreg.make_penalty("l11", 1.0)


# ---- bad input ------------------------------------------------------------------------

BAD_COEFS = [-1.0, float("nan"), float("inf"), "0.1", None, True]


@pytest.mark.parametrize("value", BAD_COEFS, ids=["negative", "nan", "inf", "str", "none", "bool"])
@pytest.mark.parametrize(
    "cls", [actreg.L1, actreg.L2, actreg.AR, actreg.TAR, actreg.Log, actreg.Hoyer, actreg.DeCov]
)
def test_bad_coefficient(cls, value):
    with pytest.raises(actreg.ActregError):
        cls(value)


def test_bad_coefficient_message_says_fix():
    with pytest.raises(ValueError, match="finite and >= 0"):
        actreg.L1(-0.1)


def test_bad_scale_factor():
    with pytest.raises(actreg.ActregError, match="scale factor"):
        -1 * actreg.L1(0.1)


def test_bad_coef_setter_keeps_old_value():
    p = actreg.L1(0.1)
    with pytest.raises(actreg.ActregError):
        p.coef = float("nan")
    assert p.coef == 0.1


@pytest.mark.parametrize("cls", [actreg.L1, actreg.L2, actreg.Log, actreg.Binary])
def test_unknown_reduction(cls):
    with pytest.raises(actreg.ActregError, match="unknown reduction 'avg'"):
        cls(0.1, reduction="avg")


def test_tar_time_dim_out_of_range():
    with pytest.raises(actreg.ActregError, match="time_dim=3 is out of range"):
        actreg.TAR(1.0, time_dim=3)(torch.randn(2, 4, 5))


def test_tar_needs_two_steps():
    with pytest.raises(actreg.ActregError, match="at least 2 steps"):
        actreg.TAR(1.0)(torch.randn(2, 1, 5))


@pytest.mark.parametrize("cls", [actreg.KLSparsity, actreg.Binary], ids=["kl", "binary"])
def test_unit_interval_checked(cls):
    with pytest.raises(actreg.ActregError, match=r"values in \[0, 1\]"):
        cls(1.0)(torch.tensor([[0.5, 1.5]]))


def test_kl_bad_target():
    with pytest.raises(actreg.ActregError, match="strictly between 0 and 1"):
        actreg.KLSparsity(1.0, target=1.0)


def test_topk_k_too_large():
    with pytest.raises(actreg.ActregError, match="k=5 is larger"):
        actreg.TopK(5)(torch.randn(2, 4))


def test_non_float_tensor():
    with pytest.raises(actreg.ActregError, match="floating-point"):
        actreg.L1(0.1)(torch.ones(2, 3, dtype=torch.long))
