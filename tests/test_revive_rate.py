"""actreg.revive's ``rate=`` (revived units' firing share) and its optimizer-state rule."""

from collections import OrderedDict

import pytest
import torch
from torch import nn

import actreg
from _revive import DEAD, firing, kill
from actreg import ActregError


def _linear():
    return nn.Sequential(OrderedDict(fc=nn.Linear(6, 8), act=nn.ReLU(), out=nn.Linear(8, 3)))


def _conv():
    return nn.Sequential(OrderedDict(fc=nn.Conv2d(3, 8, 3), act=nn.ReLU()))


MODELS = {"linear": (_linear, (6,), -1), "conv2d": (_conv, (3, 7, 7), 1)}


@pytest.mark.parametrize("rate", [0.05, 0.3], ids=["rate-0.05", "rate-0.3"])
@pytest.mark.parametrize("kind", list(MODELS), ids=list(MODELS))
def test_revived_units_fire_on_the_share_asked(kind, rate):
    torch.manual_seed(0)
    build, shape, dim = MODELS[kind]
    model = build()
    kill(model)
    x = torch.randn(400, *shape)
    alive = [i for i in range(8) if i not in DEAD]
    before = model.fc.bias[alive].clone()
    assert actreg.revive(model, "act", x, init="fresh", rate=rate).tolist() == DEAD
    torch.testing.assert_close(
        firing(model, x, dim)[DEAD], torch.full((3,), rate), atol=0.01, rtol=0
    )
    assert torch.equal(model.fc.bias[alive], before)


def test_without_rate_revived_units_fire_on_about_half():
    torch.manual_seed(0)
    model = _linear()
    kill(model)
    x = torch.randn(400, 6)
    actreg.revive(model, "act", x, init="fresh")
    assert bool((firing(model, x, -1)[DEAD] - 0.5).abs().lt(0.15).all())


def test_revived_rows_take_the_live_rows_mean_second_moment():
    torch.manual_seed(0)
    model = _linear()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(64, 6)
    for _ in range(3):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    kill(model)
    alive = [i for i in range(8) if i not in DEAD]
    v = opt.state[model.fc.weight]["exp_avg_sq"]
    want = v[alive].mean(0).clone()
    want_bias = opt.state[model.fc.bias]["exp_avg_sq"][alive].mean()
    kept = v[alive].clone()
    actreg.revive(model, "act", x, optimizer=opt)
    torch.testing.assert_close(v[DEAD], want.expand(3, -1))
    torch.testing.assert_close(opt.state[model.fc.bias]["exp_avg_sq"][DEAD], want_bias.expand(3))
    assert torch.equal(v[alive], kept)
    assert opt.state[model.fc.weight]["exp_avg"][DEAD].eq(0).all()


@pytest.mark.parametrize("rate", [0.1, {"act": 0.1}], ids=["number", "per-layer"])
def test_reviver_passes_rate_on(rate):
    torch.manual_seed(0)
    model = _linear()
    x = torch.randn(400, 6)
    reviver = actreg.Reviver(model, ["act"], x, every=5, until=5, rate=rate)
    kill(model)
    assert reviver(5)["act"].tolist() == DEAD
    torch.testing.assert_close(firing(model, x, -1)[DEAD], torch.full((3,), 0.1), atol=0.01, rtol=0)
    assert "'act': 0.1" in repr(reviver)


@pytest.mark.parametrize(
    "rate", [{"fc": 0.1}, {"act": 0.1, "out": 0.2}, {}], ids=["other", "extra", "empty"]
)
def test_per_layer_rates_must_name_the_watched_layers(rate):
    with pytest.raises(ActregError, match="one rate per watched layer"):
        actreg.Reviver(_linear(), ["act"], torch.randn(4, 6), every=1, until=1, rate=rate)


@pytest.mark.parametrize(
    "rate", [0.0, 1.0, -0.1, "0.1", True], ids=["0", "1", "neg", "str", "bool"]
)
def test_rate_outside_zero_one_names_the_fix(rate):
    with pytest.raises(ActregError, match=r"rate must be a share in \(0, 1\)"):
        actreg.revive(_linear(), "act", torch.randn(4, 6), rate=rate)
    with pytest.raises(ActregError, match=r"rate must be a share in \(0, 1\)"):
        actreg.Reviver(_linear(), ["act"], torch.randn(4, 6), every=1, until=1, rate=rate)


def test_rate_needs_a_producer_bias():
    model = nn.Sequential(OrderedDict(fc=nn.Linear(6, 8, bias=False), act=nn.ReLU()))
    with pytest.raises(ActregError, match="has none; pass rate=None"):
        actreg.revive(model, "act", torch.randn(4, 6), rate=0.1)
