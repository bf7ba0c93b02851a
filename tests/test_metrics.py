"""actreg.metrics against direct references on hand-made tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from actreg import ActregError, _sweep
from actreg import metrics as M


def _rows(x: torch.Tensor, dim: int) -> np.ndarray:
    """(positions, units) as float64 numpy, the unit axis last."""
    a = np.moveaxis(x.double().numpy(), dim, -1)
    return a.reshape(-1, a.shape[-1])


def ref_zero_fraction(x, eps):
    a = x.double().numpy().ravel()
    return float(np.mean(np.abs(a) <= eps))


def ref_l0(x, dim, eps):
    return float(np.mean([np.sum(np.abs(r) > eps) for r in _rows(x, dim)]))


def ref_mean_abs(x):
    return float(np.mean(np.abs(x.double().numpy())))


def ref_rms(x):
    return math.sqrt(float(np.mean(x.double().numpy() ** 2)))


def ref_hoyer(x, dim):
    scores = []
    for r in _rows(x, dim):
        n, l1, l2 = len(r), np.abs(r).sum(), math.sqrt((r**2).sum())
        if l2 == 0:
            scores.append(1.0)
        else:
            scores.append(min(1.0, max(0.0, (math.sqrt(n) - l1 / l2) / (math.sqrt(n) - 1))))
    return float(np.mean(scores))


def ref_firing_rate(x, dim, eps):
    return (np.abs(_rows(x, dim)) > eps).mean(0)


def _one_hot():
    x = torch.zeros(6, 5)
    x[torch.arange(6), torch.tensor([0, 1, 2, 3, 4, 0])] = torch.tensor([1.0, -2, 3, 4, 5, 6])
    return x


CASES = {
    "zeros": (lambda: torch.zeros(4, 7), -1),
    "one_hot": (_one_hot, -1),
    "constant": (lambda: torch.full((3, 8), 2.5), -1),
    "random_signed": (lambda: torch.randn(16, 10), -1),
    "random_relu": (lambda: torch.relu(torch.randn(32, 12)), -1),
    "sequence": (lambda: torch.relu(torch.randn(4, 5, 6)), -1),
    "conv_dim1": (lambda: torch.relu(torch.randn(3, 4, 5, 5)), 1),
    "time_first_dim0": (lambda: torch.relu(torch.randn(6, 3, 4)), 0),
}
IDS = list(CASES)


@pytest.fixture(params=IDS, ids=IDS)
def case(request):
    make, dim = CASES[request.param]
    return make(), dim


@pytest.mark.parametrize("eps", [0.0, 0.3], ids=["eps0", "eps0.3"])
def test_counting_metrics_match_reference(case, eps):
    x, dim = case
    assert M.zero_fraction(x, eps).item() == pytest.approx(ref_zero_fraction(x, eps))
    assert M.l0(x, dim, eps).item() == pytest.approx(ref_l0(x, dim, eps))
    np.testing.assert_allclose(M.firing_rate(x, dim, eps).numpy(), ref_firing_rate(x, dim, eps))


def test_magnitude_metrics_match_reference(case):
    x, dim = case
    assert M.mean_abs(x).item() == pytest.approx(ref_mean_abs(x), rel=1e-6)
    assert M.rms(x).item() == pytest.approx(ref_rms(x), rel=1e-6)
    assert M.hoyer(x, dim).item() == pytest.approx(ref_hoyer(x, dim), abs=1e-6)


@pytest.mark.parametrize(
    ("x", "expected"),
    [
        (torch.tensor([[0.0, 0.0, 7.0, 0.0]]), 1.0),
        (torch.tensor([[-3.0, -3.0, -3.0]]), 0.0),
        (torch.zeros(2, 5), 1.0),
        (torch.tensor([[1.0, 1.0, 0.0, 0.0]]), (2 - 2 / math.sqrt(2)) / (2 - 1)),
        (torch.tensor([[4.0], [0.0]]), 0.5),  # one unit: a zero scores 1, anything else 0
    ],
    ids=["one_hot", "constant", "all_zero", "half", "single_unit"],
)
def test_hoyer_edge_values(x, expected):
    assert M.hoyer(x).item() == pytest.approx(expected, abs=1e-6)


def test_hoyer_in_unit_interval():
    h = M.hoyer_per_vector(torch.randn(200, 17) * torch.rand(200, 1) * 10, 1)
    assert bool(((h >= 0) & (h <= 1)).all())


def test_l0_is_per_position_for_sequences():
    x = torch.zeros(2, 3, 4)
    x[0, 0, :2] = 1.0  # two active units at one of six (example, step) positions
    assert M.l0(x).item() == pytest.approx(2 / 6)
    assert M.firing_rate(x).tolist() == pytest.approx([1 / 6, 1 / 6, 0, 0])


def test_firing_rate_counts_nan_as_active():
    x = torch.tensor([[float("nan"), 0.0]])
    assert M.firing_rate(x).tolist() == [1.0, 0.0]
    assert M.firing_rate(x, eps=0.1).tolist() == [1.0, 0.0]
    assert M.zero_fraction(x).item() == 0.5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64], ids=str)
def test_other_dtypes(dtype):
    x = torch.relu(torch.randn(8, 6)).to(dtype)
    ref = x.float()
    assert M.mean_abs(x).item() == pytest.approx(M.mean_abs(ref).item(), rel=1e-6)
    assert M.hoyer(x).item() == pytest.approx(M.hoyer(ref).item(), rel=1e-5)
    assert M.l0(x).item() == M.l0(ref).item()


@pytest.mark.parametrize(
    "fn",
    [M.zero_fraction, M.l0, M.mean_abs, M.rms, M.hoyer],
    ids=lambda f: f.__name__,
)
def test_empty_tensor_gives_zero(fn):
    assert fn(torch.zeros(0, 5)).item() == 0.0


def test_empty_firing_rate():
    assert M.firing_rate(torch.zeros(0, 5)).tolist() == [0.0] * 5


def test_hoyer_keeps_gradient():
    x = torch.randn(4, 6, requires_grad=True)
    M.hoyer(x).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: M.zero_fraction(torch.ones(3, dtype=torch.long)), "floating-point"),
        (lambda: M.l0([1.0, 0.0]), "torch.Tensor"),
        (lambda: M.zero_fraction(torch.ones(3), eps=-1e-3), "eps must be finite and >= 0"),
        (lambda: M.firing_rate(torch.ones(3), eps=float("nan")), "eps must be finite"),
        (lambda: M.l0(torch.ones(3), eps="0"), "eps must be a number"),
        (lambda: M.hoyer(torch.ones(2, 3), dim=2), r"dim=2 is out of range .* \(2, 3\)"),
        (lambda: M.firing_rate(torch.ones(2, 3), dim=-3), "dim=-3 is out of range"),
        (lambda: M.l0(torch.tensor(1.0)), "0-dim"),
    ],
    ids=["int_tensor", "list", "eps_negative", "eps_nan", "eps_str", "dim_high", "dim_low", "0d"],
)
def test_bad_input(call, match):
    with pytest.raises(ActregError, match=match):
        call()


def _signed(*shape):
    """Signed values with exact zeros, values at +-0.3 and a NaN-free mix of scales."""
    x = torch.randn(*shape) * torch.rand(*shape) * 3
    flat = x.view(-1)
    flat[::3] = 0.0
    flat[1::7] = 0.3
    flat[2::11] = -0.3
    return x


# (shape, dim): 1-D, 2-D, sequences, conv maps, unit axis first, more than 255 and
# 32767 rows before the unit axis (the uint8, int16 and int32 count paths).
STATS_CASES = {
    "vector": ((9,), 0),
    "linear": ((40, 13), 1),
    "linear_300_rows": ((300, 5), 1),
    "sequence": ((7, 6, 11), 2),
    "time_first_dim0": ((8, 5, 3), 0),
    "conv": ((6, 5, 4, 3), 1),
    "conv_dim2": ((4, 3, 5, 6), 2),
    "int16_rows": ((40000, 2), 1),
}


@pytest.mark.parametrize("block", [_sweep.BLOCK, 7, 64], ids=["one_block", "block7", "block64"])
@pytest.mark.parametrize("scratch", [False, True], ids=["fresh", "scratch"])
@pytest.mark.parametrize("eps", [0.0, 0.3], ids=["eps0", "eps0.3"])
@pytest.mark.parametrize("kind", list(STATS_CASES), ids=list(STATS_CASES))
def test_batch_stats_equal_the_plain_formulas(kind, eps, scratch, block, monkeypatch):
    """The Monitor's blocked sweep gives the values of _l1_sq, active_counts and max."""
    from actreg.functional import _l1_sq

    monkeypatch.setattr(_sweep, "BLOCK", block)
    shape, dim = STATS_CASES[kind]
    x = _signed(*shape)
    buffers = _sweep.Scratch(x.dtype, x.device) if scratch else None
    for _ in range(2):  # a second call reuses the buffers
        norms, counts, top = _sweep.batch_stats(x, dim, eps, buffers)
        l1n, sq = _l1_sq(x, dim)
        # bit for bit, except that a block along axis 1 may change the summation order
        tol = {"rtol": 1e-6, "atol": 1e-6} if dim == 0 and x.dim() > 1 else {"rtol": 0, "atol": 0}
        torch.testing.assert_close(norms[0], l1n, **tol)
        torch.testing.assert_close(norms[1], sq, **tol)
        want = (x.abs() > eps).sum([d for d in range(x.dim()) if d != dim])
        assert counts.dtype == torch.int32
        assert counts.tolist() == (want.tolist() if x.dim() > 1 else (x.abs() > eps).tolist())
        assert top.item() == x.max().item()


def test_batch_stats_non_contiguous_and_nan():
    x = _signed(5, 6, 4).transpose(0, 2)  # (4, 6, 5), not contiguous
    x[1, 2, 3] = float("nan")
    norms, counts, top = _sweep.batch_stats(x, 1, 0.3)
    assert torch.isnan(top)
    assert counts.tolist() == M.active_counts(x.contiguous(), 1, 0.3).tolist()
    assert counts[2] == ((x[:, 2].abs() > 0.3) | x[:, 2].isnan()).sum()
    assert torch.isnan(norms[0]).sum() == 1 and torch.isnan(norms[1]).sum() == 1


@pytest.mark.parametrize("eps", [0.0, 0.2, 0.1 + 1e-12], ids=["eps0", "eps0.2", "eps_between"])
def test_active_counts_round_eps_like_a_comparison(eps):
    """threshold (the fast path) rounds eps to x's dtype as ``x.abs() > eps`` does."""
    e = torch.tensor(eps, dtype=torch.float32)
    up, down = torch.nextafter(e, e + 1), torch.nextafter(e, e - 1)
    x = torch.stack([e, up, down, -e, -up, -down, torch.tensor(float("nan"))]).view(1, -1)
    want = (x.abs() > eps) | x.isnan()
    assert M.active_counts(x, 1, eps).tolist() == want.int().view(-1).tolist()
    assert _sweep.batch_stats(x, 1, eps)[1].tolist() == want.int().view(-1).tolist()


@pytest.mark.parametrize("squared", [False, True])
def test_inplace_ratio_and_hoyer_equal_out_of_place(squared):
    from actreg.functional import _ratio_from_norms

    l1n, sq = _sweep.batch_stats(_signed(50, 9), 1, 0.0)[0]
    l1n[:3] = 0.0
    sq[:3] = 0.0  # zero vectors
    want = _ratio_from_norms(l1n, sq, squared)
    got = _ratio_from_norms(l1n.clone(), sq.clone(), squared, inplace=True)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    want = M.hoyer_from_norms(l1n, sq, 9)
    torch.testing.assert_close(M.hoyer_from_norms(l1n.clone(), sq.clone(), 9, True), want)
