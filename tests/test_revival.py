"""actreg.revive on Linear and Conv producers, and the FiringFloor penalty."""

from collections import OrderedDict

import pytest
import torch
from torch import nn

import actreg
from _revive import DEAD, firing, kill
from actreg import ActregError


def _mlp():
    return nn.Sequential(
        OrderedDict(fc=nn.Linear(6, 8), norm=nn.LayerNorm(8), act=nn.ReLU(), out=nn.Linear(8, 3))
    )


def _plain():
    return nn.Sequential(OrderedDict(fc=nn.Linear(6, 8), act=nn.ReLU(), out=nn.Linear(8, 3)))


def _conv():
    return nn.Sequential(
        OrderedDict(
            fc=nn.Conv2d(3, 8, 3),
            act=nn.ReLU(),
            out=nn.Conv2d(8, 4, 1),
        )
    )


def _conv1d():
    return nn.Sequential(OrderedDict(fc=nn.Conv1d(3, 8, 3), act=nn.ReLU()))


def _autoencoder():
    return nn.Sequential(OrderedDict(fc=nn.Linear(6, 8), act=nn.ReLU(), out=nn.Linear(8, 6)))


MODELS = {
    "linear": (_plain, (6,), -1),
    "linear-norm-act": (_mlp, (6,), -1),
    "sequence": (_plain, (5, 6), -1),
    "conv2d": (_conv, (3, 7, 7), 1),
    "conv1d": (_conv1d, (3, 9), 1),
    "autoencoder": (_autoencoder, (6,), -1),
}


@pytest.mark.parametrize("init", ["resample", "fresh"], ids=["resample", "fresh"])
@pytest.mark.parametrize("kind", list(MODELS), ids=list(MODELS))
def test_revive_brings_dead_units_back(kind, init):
    build, shape, dim = MODELS[kind]
    model = build()
    kill(model)
    x = torch.randn(256, *shape)
    assert firing(model, x, dim)[DEAD].eq(0).all()
    alive = [i for i in range(8) if i not in DEAD]
    before = model.fc.weight[alive].clone()
    revived = actreg.revive(model, "act", x, init=init, scale=1.0)
    assert revived.tolist() == DEAD
    assert firing(model, x, dim)[DEAD].gt(0).all()
    assert torch.equal(model.fc.weight[alive], before)
    assert model.fc.bias[DEAD].eq(0).all()


def test_revive_scales_new_rows_to_the_live_rows_norm():
    model = _plain()
    kill(model)
    alive = [i for i in range(8) if i not in DEAD]
    norm = float(model.fc.weight[alive].detach().norm(dim=1).mean())
    actreg.revive(model, "act", torch.randn(64, 6), scale=0.2)
    norms = model.fc.weight[DEAD].norm(dim=1)
    torch.testing.assert_close(norms, torch.full((3,), 0.2 * norm))


def test_revive_sets_the_decoder_column_of_an_autoencoder():
    model = _autoencoder()
    kill(model)
    x = torch.randn(128, 6)
    old = model.out.weight.clone()
    actreg.revive(model, "act", x)
    cols = model.out.weight[:, DEAD]
    torch.testing.assert_close(cols.norm(dim=0), torch.ones(3))
    # The column points where the encoder row points (both the chosen centered input).
    rows = model.fc.weight[DEAD]
    cos = (rows * cols.T).sum(1) / rows.norm(dim=1)
    torch.testing.assert_close(cos, torch.ones(3))
    alive = [i for i in range(8) if i not in DEAD]
    assert torch.equal(model.out.weight[:, alive], old[:, alive])


def test_revive_resets_the_optimizer_state_of_revived_weights():
    model = _autoencoder()
    kill(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(64, 6)
    (model(x) - x).square().mean().backward()
    with torch.no_grad():  # make every moment non-zero, as after a long run
        for p in model.parameters():
            p.grad.add_(0.1)
    opt.step()
    alive = [i for i in range(8) if i not in DEAD]
    kept = opt.state[model.fc.weight]["exp_avg"][alive].clone()
    actreg.revive(model, "act", x, optimizer=opt)
    state = opt.state[model.fc.weight]
    assert state["exp_avg"][DEAD].eq(0).all()
    # The second moment takes the live rows' mean (tests/test_revive_rate.py checks the value).
    assert bool(state["exp_avg_sq"][DEAD].gt(0).all())
    assert opt.state[model.fc.bias]["exp_avg"][DEAD].eq(0).all()
    assert opt.state[model.out.weight]["exp_avg"][:, DEAD].eq(0).all()
    assert torch.equal(state["exp_avg"][alive], kept)
    assert bool(state["exp_avg"][alive].ne(0).all())


def test_revive_weighs_examples_by_their_loss():
    # Every revived row must point at the one example with a loss (the others have 0).
    model = _plain()
    kill(model)
    x = torch.randn(32, 6)
    target = torch.zeros(32)
    target[7] = 1.0

    def loss_fn(out, t):
        return t

    actreg.revive(model, "act", x, targets=target, loss_fn=loss_fn, scale=1.0)
    direction = x[7] - x.mean(0)
    rows = model.fc.weight[DEAD]
    cos = rows @ direction / (rows.norm(dim=1) * direction.norm())
    torch.testing.assert_close(cos, torch.ones(3))


def test_revive_nothing_dead_changes_nothing():
    model = _plain()
    with torch.no_grad():
        model.fc.bias.fill_(10.0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert actreg.revive(model, "act", torch.randn(16, 6)).numel() == 0
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key])


def test_revive_keeps_the_training_mode():
    model = _plain().train()
    actreg.revive(model, "act", torch.randn(8, 6))
    assert model.training


def test_revive_explicit_producer_for_a_shared_activation():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 8)
            self.fc2 = nn.Linear(8, 8)
            self.act = nn.ReLU()

        def forward(self, x):
            return self.act(self.fc2(self.act(self.fc(x))))

    model = Shared()
    kill(model)
    x = torch.randn(64, 6)
    with pytest.raises(ActregError, match="runs 2 times.*producer="):
        actreg.revive(model, "act", x)
    with pytest.raises(ActregError, match="once per forward"):
        actreg.revive(model, "act", x, producer="fc")


class Stateful(nn.Module):
    """A model called with a state besides its input (as a recurrent language model)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 8)
        self.act = nn.ReLU()
        self.out = nn.Linear(8, 3)

    def forward(self, x, state):
        return self.out(self.act(self.fc(x + state))), state


def _stateful_forward(calls):
    def forward(model, batch):
        calls.append(len(batch))
        return model(batch, torch.zeros(batch.shape[-1]))

    return forward


@pytest.mark.parametrize("init", ["resample", "fresh"], ids=["resample", "fresh"])
def test_revive_runs_the_model_through_forward(init):
    model = Stateful()
    kill(model)
    x = torch.randn(100, 5, 6)  # 100 sequences of 5 positions
    with pytest.raises(TypeError):  # model(batch) alone does not run this model
        actreg.revive(model, "act", x)
    calls = []
    revived = actreg.revive(
        model, "act", x, init=init, batch_size=30, forward=_stateful_forward(calls)
    )
    assert revived.tolist() == DEAD
    assert max(calls) <= 30 and sum(calls[1:5]) == 100  # the trace, then chunks of 30
    out = []
    model.act.register_forward_hook(lambda m, a, o: out.append(o))
    model(x, torch.zeros(6))
    assert bool((out[0].reshape(-1, 8)[:, DEAD] > 0).any(0).all())


def test_revive_forward_output_goes_to_the_loss():
    # Every revived row points at the one example whose loss, computed from the output
    # that forward returns (a tuple), is not 0.
    model = Stateful()
    kill(model)
    x = torch.randn(32, 6)
    target = torch.zeros(32)
    target[7] = 1.0

    def loss_fn(out, t):
        assert isinstance(out, tuple)
        return t

    actreg.revive(
        model, "act", x, targets=target, loss_fn=loss_fn, scale=1.0,
        forward=_stateful_forward([]),
    )  # fmt: skip
    direction = x[7] - x.mean(0)
    rows = model.fc.weight[DEAD]
    cos = rows @ direction / (rows.norm(dim=1) * direction.norm())
    torch.testing.assert_close(cos, torch.ones(3))


def test_reviver_passes_forward_and_batch_size_on():
    model = Stateful()
    calls = []
    reviver = actreg.Reviver(
        model, ["act"], torch.randn(50, 6), every=5, until=5,
        forward=_stateful_forward(calls), batch_size=20,
    )  # fmt: skip
    kill(model)
    assert reviver(5)["act"].tolist() == DEAD
    assert calls[1:] == [20, 20, 10]
    assert "Reviver(layers=['act']" in repr(reviver)


BAD = {
    "no-producer": (
        lambda: nn.Sequential(OrderedDict(act=nn.ReLU())),
        {},
        "no producer weights.*producer=",
    ),
    "not-a-producer": (
        lambda: nn.Sequential(OrderedDict(norm=nn.LayerNorm(6), act=nn.ReLU())),
        {"producer": "norm"},
        "not an nn.Linear.*producer=",
    ),
    "width-mismatch": (
        lambda: nn.Sequential(OrderedDict(fc=nn.Linear(6, 8), act=nn.ReLU(), out=nn.Linear(8, 6))),
        {"producer": "out"},
        "does not have the 6 units",
    ),
    "unknown-layer": (_plain, {"layer": "actt"}, "no module named 'actt'"),
    "bad-init": (_plain, {"init": "zeros"}, "unknown init"),
    "bad-forward": (_plain, {"forward": "model"}, "forward must be a callable"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_revive_bad_input_names_the_fix(case):
    build, kwargs, match = BAD[case]
    kwargs = dict(kwargs)
    layer = kwargs.pop("layer", "act")
    with pytest.raises(ActregError, match=match):
        actreg.revive(build(), layer, torch.randn(4, 6), **kwargs)


# --- FiringFloor ----------------------------------------------------------------------------


def test_firing_floor_value_is_the_hinge_on_the_rate():
    z = torch.tensor([[1.0, -1.0, -2.0], [2.0, 1.0, -1.0], [3.0, -2.0, -1.0], [1.0, -1.0, -3.0]])
    floor = actreg.FiringFloor(2.0, floor=0.5)
    # rates 1, 0.25, 0: hinge 0, 0.25, 0.5, averaged over the 3 units
    assert float(floor(z)) == pytest.approx(2.0 * 0.75 / 3)


def test_firing_floor_gradient_only_for_units_under_the_floor():
    z = torch.randn(32, 4, requires_grad=True)
    with torch.no_grad():
        z[:, 0] -= 50  # never fires
        z[:, 1] += 50  # always fires
    floor = actreg.FiringFloor(1.0, floor=0.1)
    floor(z).backward()
    assert bool((z.grad[:, 0] < 0).all())  # descent raises it
    assert not bool(z.grad[:, 1].any())


@pytest.mark.parametrize(
    ("producer", "shape", "dim"),
    [(lambda: nn.Linear(6, 8), (6,), -1), (lambda: nn.Conv2d(3, 8, 3), (3, 6, 6), 1)],
    ids=["linear", "conv2d"],
)
def test_firing_floor_revives_a_dead_unit_in_training(producer, shape, dim):
    model = nn.Sequential(OrderedDict(fc=producer(), act=nn.ReLU()))
    kill(model)
    x = torch.randn(64, *shape)
    assert firing(model, x, dim)[DEAD].eq(0).all()
    floor = actreg.FiringFloor(1.0, floor=0.05, dim=dim)
    reg = actreg.attach(model, {"fc": floor})
    opt = torch.optim.Adam(model.parameters(), lr=0.5)
    for _ in range(300):
        model(x)
        loss = reg.penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if bool(firing(model, x, dim)[DEAD].gt(0).all()):
            break
    reg.remove()
    assert firing(model, x, dim)[DEAD].gt(0).all()
    assert floor.steps > 0 and floor.rate is not None


def test_firing_floor_state_dict_round_trip_through_the_regularizer():
    model = nn.Sequential(nn.Linear(4, 5))
    reg = actreg.attach(model, {"0": actreg.FiringFloor(floor=0.2)})
    model(torch.randn(8, 4))
    reg.penalty()
    other = nn.Sequential(nn.Linear(4, 5))
    floor = actreg.FiringFloor(floor=0.2)
    reg2 = actreg.attach(other, {"0": floor})
    reg2.load_state_dict(reg.state_dict())
    torch.testing.assert_close(floor.rate, reg.entries[0][1].rate)
    assert floor.steps == 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"floor": 0.0}, "floor"), ({"floor": 1.5}, "floor"), ({"momentum": 0.0}, "momentum")],
    ids=["floor-zero", "floor-above-one", "momentum"],
)
def test_firing_floor_rejects(kwargs, match):
    with pytest.raises(ActregError, match=match):
        actreg.FiringFloor(**kwargs)


def test_reviver_revives_at_its_steps_only_and_counts():
    torch.manual_seed(0)
    model = _plain()
    x = torch.randn(256, 6)
    opt = torch.optim.Adam(model.parameters())
    reviver = actreg.Reviver(model, ["act"], x, every=10, until=25, optimizer=opt)
    kill(model)
    assert reviver(9) == {}  # not a revival step
    assert reviver(10)["act"].tolist() == DEAD
    assert reviver.revived == {"act": len(DEAD)}
    kill(model)
    assert reviver(30) == {}  # after until
    assert reviver(20)["act"].tolist() == DEAD
    assert reviver.revived == {"act": 2 * len(DEAD)}
    assert bool((firing(model, x, -1)[DEAD] > 0).all())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"every": 0, "until": 5}, "every must be a whole number"),
        ({"every": 2.5, "until": 5}, "every must be a whole number"),
        ({"every": 2, "until": 0}, "until must be a whole number"),
        ({"every": 2, "until": 5, "layers": "act"}, "non-empty list"),
        ({"every": 2, "until": 5, "inputs": torch.zeros(0, 6)}, "non-empty tensor"),
        ({"every": 2, "until": 5, "batch_size": 0}, "batch_size must be a whole number"),
        ({"every": 2, "until": 5, "forward": 3}, "forward must be a callable"),
    ],
    ids=[
        "every-zero",
        "every-float",
        "until-zero",
        "layers-str",
        "no-inputs",
        "batch-zero",
        "forward-not-callable",
    ],
)
def test_reviver_rejects(kwargs, match):
    args = {"layers": ["act"], "inputs": torch.randn(4, 6), **kwargs}
    with pytest.raises(ActregError, match=match):
        actreg.Reviver(_plain(), args.pop("layers"), args.pop("inputs"), **args)
