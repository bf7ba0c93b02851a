"""BatchTopK, JumpReLU, tie_init and AuxK: reference formulas, attach/Monitor/TargetSparsity."""

import copy
import math
import pickle

import pytest
import torch
from torch import nn

import actreg
from actreg import ActregError

# --- reference formulas (written out here, independent of actreg) ---------------------------


def ref_batch_topk(x, k, dim):
    width = x.shape[dim]
    count = round(k * x.numel() / width)
    flat = x.flatten()
    order = sorted(range(flat.numel()), key=lambda i: -float(flat[i]))[:count]
    out = torch.zeros_like(flat)
    for i in order:
        out[i] = max(float(flat[i]), 0.0)
    return out.view_as(x)


def rect(u):
    return ((u > -0.5) & (u < 0.5)).double()


def unit_view(t, x, dim):
    shape = [1] * x.dim()
    shape[dim] = -1
    return t.view(shape)


# --- BatchTopK ------------------------------------------------------------------------------

BATCH_CASES = [
    ((4, 6), 2, -1),
    ((5, 7), 1.5, -1),
    ((3, 4, 5), 2, -1),
    ((2, 3, 4, 4), 1, 1),
]
BATCH_IDS = ["linear", "fractional-k", "sequence", "conv"]


@pytest.mark.parametrize(("shape", "k", "dim"), BATCH_CASES, ids=BATCH_IDS)
def test_batch_topk_matches_reference(shape, k, dim):
    x = torch.randn(shape)
    out = actreg.BatchTopK(k, dim=dim)(x)
    torch.testing.assert_close(out, ref_batch_topk(x, k, dim))


def test_batch_topk_keeps_k_per_example_on_average_not_per_example():
    x = torch.tensor([[5.0, 4.0, 3.0], [0.1, 0.2, 0.3]])
    out = actreg.BatchTopK(1)(x)
    assert (out != 0).sum(1).tolist() == [2, 0]


def test_batch_topk_gradient_reaches_kept_values_only():
    x = torch.tensor([[3.0, -1.0, 2.0], [0.5, 1.0, -2.0]], requires_grad=True)
    actreg.BatchTopK(1)(x).sum().backward()
    assert x.grad.tolist() == [[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]


def test_batch_topk_threshold_is_running_mean_of_smallest_kept():
    code = actreg.BatchTopK(1, momentum=0.25)
    code(torch.tensor([[4.0, 3.0], [1.0, 0.0]]))  # keeps 4, 3: smallest 3
    assert float(code.threshold) == 3.0
    code(torch.tensor([[2.0, 1.0], [9.0, 0.0]]))  # keeps 9, 2: smallest 2
    assert float(code.threshold) == pytest.approx(0.75 * 3.0 + 0.25 * 2.0)


def test_batch_topk_eval_uses_the_threshold_one_example_at_a_time():
    code = actreg.BatchTopK(2)
    for _ in range(20):
        code(torch.randn(32, 16))
    code.eval()
    theta = float(code.threshold)
    assert 0 < theta
    x = torch.randn(8, 16)
    out = code(x)
    torch.testing.assert_close(out, x * (x > theta))
    torch.testing.assert_close(code(x[:1]), out[:1])  # inference is per example


def test_batch_topk_eval_before_training_raises():
    with pytest.raises(ActregError, match="no inference threshold"):
        actreg.BatchTopK(2).eval()(torch.randn(2, 4))


@pytest.mark.parametrize("code", [actreg.TopK(9), actreg.BatchTopK(9)], ids=["TopK", "BatchTopK"])
def test_k_larger_than_the_layer_names_the_width(code):
    with pytest.raises(ActregError, match=r"k=9 is larger than .*8"):
        code(torch.randn(2, 8))


@pytest.mark.parametrize("k", [0, -1, True, "2"], ids=["zero", "negative", "bool", "str"])
def test_batch_topk_rejects_bad_k(k):
    with pytest.raises(ActregError, match="k > 0"):
        actreg.BatchTopK(k)


def test_batch_topk_state_dict_round_trip():
    code = actreg.BatchTopK(2)
    code(torch.randn(16, 8))
    other = actreg.BatchTopK(2)
    other.load_state_dict(code.state_dict())
    assert float(other.threshold) == float(code.threshold)
    x = torch.randn(4, 8)
    torch.testing.assert_close(other.eval()(x), code.eval()(x))


# --- JumpReLU -------------------------------------------------------------------------------

JUMP_CASES = [((6, 5), -1), ((2, 3, 5), -1), ((2, 5, 3, 3), 1)]
JUMP_IDS = ["linear", "sequence", "conv"]


@pytest.mark.parametrize(("shape", "dim"), JUMP_CASES, ids=JUMP_IDS)
def test_jumprelu_forward_and_gradients_match_the_paper(shape, dim):
    eps = 0.3
    act = actreg.JumpReLU(5, dim=dim, threshold=torch.linspace(0.1, 0.5, 5), bandwidth=eps)
    act.double()
    z = torch.randn(shape, dtype=torch.double, requires_grad=True)
    g = torch.randn(shape, dtype=torch.double)
    out = act(z)
    theta = unit_view(act.threshold.detach(), z, dim)
    torch.testing.assert_close(out, z * (z > theta))
    (out * g).sum().backward()
    torch.testing.assert_close(z.grad, g * (z > theta))
    # d/dtheta_j = sum over positions of g * -(theta_j / eps) * K((z - theta_j) / eps),
    # times dtheta/dlog_theta = theta.
    pseudo = g * -(theta / eps) * rect((z.detach() - theta) / eps)
    other = [d for d in range(z.dim()) if d != dim % z.dim()]
    expected = pseudo.sum(other) * act.threshold.detach()
    torch.testing.assert_close(act.log_threshold.grad, expected)


@pytest.mark.parametrize(("shape", "dim"), JUMP_CASES, ids=JUMP_IDS)
def test_jumprelu_l0_matches_the_paper(shape, dim):
    eps = 0.5
    act = actreg.JumpReLU(5, dim=dim, threshold=0.2, bandwidth=eps).double()
    z = torch.randn(shape, dtype=torch.double, requires_grad=True)
    act(z)
    l0 = act.l0()
    theta = unit_view(act.threshold.detach(), z, dim)
    positions = z.numel() // 5
    assert float(l0.detach()) == pytest.approx(float((z > theta).sum()) / positions)
    l0.backward()
    other = [d for d in range(z.dim()) if d != dim % z.dim()]
    pseudo = (-(1 / eps) * rect((z.detach() - theta) / eps)).sum(other) / positions
    torch.testing.assert_close(act.log_threshold.grad, pseudo * act.threshold.detach())
    assert z.grad is None or not bool(z.grad.any())  # no gradient to z through the step


@pytest.mark.parametrize(
    ("threshold", "match"),
    [(-0.1, "> 0"), (0.0, "> 0"), (math.nan, "finite"), ([0.1, 0.2], "one per unit")],
    ids=["negative", "zero", "nan", "wrong-length"],
)
def test_jumprelu_rejects_bad_thresholds(threshold, match):
    with pytest.raises(ActregError, match=match):
        actreg.JumpReLU(3, threshold=threshold)


def test_jumprelu_wrong_width_and_l0_before_forward():
    act = actreg.JumpReLU(4)
    with pytest.raises(ActregError, match="units=3"):
        act(torch.randn(2, 3))
    with pytest.raises(ActregError, match="forward with grad"):
        act.l0()


def test_jumprelu_threshold_moves_to_reduce_l0_on_a_toy_problem():
    # Reconstruct x through the JumpReLU with an L0 cost: only the thresholds learn.
    x = torch.randn(512, 8).abs()
    act = actreg.JumpReLU(8, threshold=0.05, bandwidth=0.3)
    opt = torch.optim.Adam(act.parameters(), lr=0.02)
    with torch.no_grad():
        act(x)
        before = float(act.l0(x))
    for _ in range(150):
        loss = (act(x) - x).square().mean() + 0.05 * act.l0()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = float(act.l0(x))
    assert bool((act.threshold > 0.05).all())
    assert after < 0.8 * before


def test_jumprelu_state_dict_round_trip():
    act = actreg.JumpReLU(4, threshold=torch.tensor([0.1, 0.2, 0.3, 0.4]))
    other = actreg.JumpReLU(4)
    other.load_state_dict(act.state_dict())
    torch.testing.assert_close(other.threshold, act.threshold)


def test_jumprelu_copies_and_pickles_after_a_training_forward():
    model = nn.Sequential(nn.Linear(3, 4), actreg.JumpReLU(4))
    model(torch.randn(2, 3))
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        torch.testing.assert_close(clone[1].threshold, model[1].threshold)
        assert clone[1]._last is None


def test_jumprelu_with_attach_monitor_and_target_sparsity():
    torch.manual_seed(1)
    act = actreg.JumpReLU(32, threshold=0.01, bandwidth=0.5)
    model = nn.Sequential(nn.Linear(8, 32), act)
    ctl = actreg.TargetSparsity(act.penalty(1e-2), target=0.9)
    reg = actreg.attach(model, {"1": ctl})
    monitor = actreg.Monitor(model, "1")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.randn(64, 8)
    start = float(act.threshold.detach().mean())
    for _ in range(40):
        model(x)
        loss = reg.penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert ctl.steps == 40 and ctl.coef > 1e-2  # far fewer than 90% zeros: coefficient up
    assert float(act.threshold.detach().mean()) > start  # the L0 term raised the thresholds
    monitor.reset()
    with torch.no_grad():
        out = model(x)
    stats = monitor.compute()["1"]
    assert stats["l0"] == pytest.approx(float((out != 0).sum()) / 64)
    reg.remove()
    monitor.remove()


def test_jumprelu_penalty_without_gradient_counts_the_output():
    act = actreg.JumpReLU(3, threshold=0.5)
    pen = act.penalty(2.0)
    out = torch.tensor([[0.0, 0.7, 0.9], [0.0, 0.0, 0.6]])
    assert float(pen(out)) == pytest.approx(2.0 * 3 / 2)


def test_batch_topk_with_attach_and_monitor():
    model = nn.Sequential(nn.Linear(8, 16), actreg.BatchTopK(3))
    reg = actreg.attach(model, {"1": actreg.L1(1e-3)})
    monitor = actreg.Monitor(model, "1")
    out = model(torch.randn(10, 8))
    assert reg.penalty().requires_grad
    assert monitor.compute()["1"]["l0"] == pytest.approx(float((out != 0).sum()) / 10)
    assert float((out != 0).sum()) <= 30
    reg.remove()
    monitor.remove()


# --- tie_init -------------------------------------------------------------------------------


def test_tie_init_copies_the_transpose():
    enc, dec = nn.Linear(5, 12), nn.Linear(12, 5)
    actreg.tie_init(enc, dec)
    assert torch.equal(enc.weight, dec.weight.T)


@pytest.mark.parametrize(
    ("enc", "dec"),
    [(nn.Linear(5, 12), nn.Linear(12, 6)), (nn.Conv1d(5, 12, 1), nn.Linear(12, 5))],
    ids=["shapes", "not-linear"],
)
def test_tie_init_rejects(enc, dec):
    with pytest.raises(ActregError, match="transpose|nn.Linear"):
        actreg.tie_init(enc, dec)


# --- AuxK -----------------------------------------------------------------------------------


def _topk_ae(dead_units=()):
    enc, dec = nn.Linear(6, 12), nn.Linear(12, 6)
    with torch.no_grad():
        enc.bias[list(dead_units)] = -100.0
    return enc, dec


def test_auxk_is_zero_when_no_latent_is_dead():
    enc, dec = _topk_ae()
    aux = actreg.AuxK(dec, k_aux=3, dead_after=10**6)
    x = torch.randn(16, 6)
    pre = enc(x)
    code = actreg.TopK(2)(pre.relu())
    loss = aux(pre, code, x - dec(code))
    assert float(loss.detach()) == 0.0


def test_auxk_gradients_reach_dead_latents_only():
    enc, dec = _topk_ae(dead_units=(0, 1, 2))
    aux = actreg.AuxK(dec, k_aux=2, dead_after=20, coef=1.0)
    x = torch.randn(16, 6)
    for _ in range(2):  # 32 positions without firing: units 0-2 are dead
        pre = enc(x)
        code = actreg.TopK(3)(pre.relu())
        x_hat = dec(code)
        loss = aux(pre, code, x - x_hat)
    assert aux.dead[:3].all() and int(aux.dead.sum()) >= 3
    # A reference: the top-2 dead pre-activations through the decoder's weight.
    masked = pre.detach().masked_fill(~aux.dead, -math.inf)
    vals, idx = masked.topk(2, dim=-1)
    z = torch.zeros_like(pre).scatter(-1, idx, vals.clamp_min(0))
    ref = ((x - x_hat).detach() - z @ dec.weight.detach().T).square().mean()
    assert float(loss.detach()) == pytest.approx(float(ref))
    enc.zero_grad()
    dec.zero_grad()
    loss.backward()
    alive = ~aux.dead
    assert not bool(dec.weight.grad[:, alive].any())
    assert not bool(enc.weight.grad[alive].any())


def test_auxk_gradients_reach_dead_latents_with_positive_preactivations():
    enc, dec = _topk_ae()
    aux = actreg.AuxK(dec, k_aux=4, dead_after=1, coef=1.0)
    x = torch.randn(16, 6)
    aux.since_fired[:6] = 100  # latents 0-5 silent for long (as if seen before)
    pre = enc(x)
    code = torch.zeros_like(pre)  # the code keeps none of them this step either
    code[:, 6:] = pre[:, 6:].relu()
    loss = aux(pre, code, x - dec(code))
    loss.backward()
    assert float(loss.detach()) > 0
    assert bool(enc.weight.grad[:6].abs().sum(1).gt(0).any())
    assert not bool(enc.weight.grad[6:].any())


@pytest.mark.parametrize("k_aux", [0, -2, 1.5, True], ids=["zero", "negative", "float", "bool"])
def test_auxk_rejects_bad_k_aux(k_aux):
    with pytest.raises(ActregError, match="k_aux > 0"):
        actreg.AuxK(nn.Linear(12, 6), k_aux=k_aux)


def test_auxk_state_dict_round_trip():
    enc, dec = _topk_ae(dead_units=(0,))
    aux = actreg.AuxK(dec, k_aux=2, dead_after=5)
    pre = enc(torch.randn(8, 6))
    aux(pre, actreg.TopK(2)(pre.relu()), torch.zeros(8, 6))
    other = actreg.AuxK(dec, k_aux=2, dead_after=5)
    other.load_state_dict(aux.state_dict())
    assert torch.equal(other.since_fired, aux.since_fired)
    assert list(aux.state_dict()) == ["since_fired"]


def test_target_sparsity_reads_a_batch_topk_code():
    model = nn.Sequential(nn.Linear(8, 16), actreg.BatchTopK(3))
    ctl = actreg.TargetSparsity(actreg.L1(1e-3), target=3.0, measure="l0")
    reg = actreg.attach(model, {"1": ctl})
    model(torch.randn(40, 8))
    reg.penalty()
    assert ctl.steps == 1
    assert ctl.measured <= 3.0 + 1e-5  # at most k per example on average (non-positive values drop)
    # the wanted sparsity ramps down from the first batch's: the first step leaves the scale
    assert ctl.coef == pytest.approx(1e-3)
    reg.remove()
