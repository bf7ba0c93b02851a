"""actreg.revive's ``floor=``: rare units (active on less than a share of the inputs) are
revived with the dead ones."""

from collections import OrderedDict

import pytest
import torch
from torch import nn

import actreg
from _revive import DEAD, firing, kill
from actreg import ActregError

RARE = 6  # the unit made rare (besides the dead ones)


def _linear():
    return nn.Sequential(OrderedDict(fc=nn.Linear(6, 8), act=nn.ReLU(), out=nn.Linear(8, 3)))


def _conv():
    return nn.Sequential(OrderedDict(fc=nn.Conv2d(3, 8, 3), act=nn.ReLU()))


MODELS = {"linear": (_linear, (6,), -1), "conv2d": (_conv, (3, 7, 7), 1)}


def _rare(model, x, dim, share=0.02):
    """Unit RARE fires on about ``share`` of the positions of ``x``; the others on more."""
    with torch.no_grad():
        model.fc.bias.fill_(0.5)
        model.fc.bias[RARE] = 0.0
        pre = firing(model, x, dim)  # all biases known: read unit RARE's pre-activations
        seen = []
        h = model.fc.register_forward_hook(lambda m, a, out: seen.append(out))
        model(x)
        h.remove()
        out = seen[0].movedim(dim, -1).reshape(-1, 8)[:, RARE]
        model.fc.bias[RARE] = -float(out.quantile(1 - share))
    assert 0 < firing(model, x, dim)[RARE] < 2 * share, pre


@pytest.mark.parametrize("kind", list(MODELS), ids=list(MODELS))
def test_units_under_the_floor_are_revived_with_the_dead(kind):
    torch.manual_seed(0)
    build, shape, dim = MODELS[kind]
    model = build()
    x = torch.randn(500, *shape)
    _rare(model, x, dim)
    kill(model)
    others = [i for i in range(8) if i not in [*DEAD, RARE]]
    kept = model.fc.weight[others].clone()
    assert actreg.revive(model, "act", x, init="fresh").tolist() == DEAD  # floor 0: rare lives
    kill(model)
    before = model.fc.weight[RARE].clone()
    revived = actreg.revive(model, "act", x, init="fresh", floor=0.05, rate=0.2)
    assert revived.tolist() == sorted([*DEAD, RARE])
    assert not torch.equal(model.fc.weight[RARE], before)
    assert torch.equal(model.fc.weight[others], kept)  # units above the floor untouched
    torch.testing.assert_close(
        firing(model, x, dim)[revived], torch.full((4,), 0.2), atol=0.02, rtol=0
    )


@pytest.mark.parametrize("floor", [0.01, {"act": 0.05}], ids=["below-rare", "per-layer"])
def test_reviver_passes_the_floor_on(floor):
    torch.manual_seed(0)
    model = _linear()
    x = torch.randn(500, 6)
    _rare(model, x, -1)
    kill(model)
    reviver = actreg.Reviver(model, ["act"], x, every=1, until=1, floor=floor)
    want = DEAD if floor == 0.01 else sorted([*DEAD, RARE])
    assert reviver(1)["act"].tolist() == want
    assert "floors={'act':" in repr(reviver)


@pytest.mark.parametrize(
    "floor", [-0.1, 1.0, "0.1", True, float("nan")], ids=["neg", "1", "str", "bool", "nan"]
)
def test_floor_outside_zero_one_names_the_fix(floor):
    with pytest.raises(ActregError, match=r"floor must be a share in \[0, 1\)"):
        actreg.revive(_linear(), "act", torch.randn(4, 6), floor=floor)
    with pytest.raises(ActregError, match=r"floor must be a share in \[0, 1\)"):
        actreg.Reviver(_linear(), ["act"], torch.randn(4, 6), every=1, until=1, floor=floor)


def test_a_floor_at_or_above_the_rate_is_refused():
    with pytest.raises(ActregError, match=r"floor=0.1 is not below rate=0.1.*rate / 10"):
        actreg.revive(_linear(), "act", torch.randn(4, 6), rate=0.1, floor=0.1)
    with pytest.raises(ActregError, match="one floor per watched layer"):
        actreg.Reviver(_linear(), ["act"], torch.randn(4, 6), every=1, until=1, floor={"fc": 0.01})
    with pytest.raises(ActregError, match=r"floor=0.2 is not below rate=0.1"):
        actreg.Reviver(
            _linear(),
            ["act"],
            torch.randn(4, 6),
            every=1,
            until=1,
            rate={"act": 0.1},
            floor={"act": 0.2},
        )
