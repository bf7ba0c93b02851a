"""attach(): hooking, recording rules, output selection, removal, bad input."""

from __future__ import annotations

import copy
import gc
import io
import sys
import tracemalloc
import weakref

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import actreg


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU())
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.encoder(x))


def test_quickstart_as_written():
    model = MLP()
    reg = actreg.attach(model, {"encoder.1": actreg.L1(1e-3), "encoder.3": actreg.L2(1e-4)})
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        x, y = torch.randn(5, 6), torch.randint(0, 3, (5,))
        loss = nn.functional.cross_entropy(model(x), y) + reg.penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert set(reg.last) == {"encoder.1", "encoder.3"}
    reg.remove()


def test_penalty_equals_hand_written():
    model = MLP()
    reg = actreg.attach(model, {"encoder.1": actreg.L1(1e-2)})
    x = torch.randn(4, 6)
    model(x)
    got = reg.penalty()
    expected = 1e-2 * model.encoder[1](model.encoder[0](x)).abs().sum() / 4
    assert torch.allclose(got, expected)
    assert reg.last["encoder.1"] == pytest.approx(float(expected.detach()))


def test_gradient_equals_hand_written():
    torch.manual_seed(1)
    a, b = MLP(), MLP()
    b.load_state_dict(a.state_dict())
    x = torch.randn(4, 6)
    reg = actreg.attach(a, {"encoder.3": actreg.L1(0.1)})
    (a(x).sum() + reg.penalty()).backward()
    h = b.encoder(x)
    (b.head(h).sum() + 0.1 * h.abs().sum() / 4).backward()
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.allclose(pa.grad, pb.grad)


def test_penalty_clears_and_zero_when_nothing_recorded():
    model = MLP()
    reg = actreg.attach(model, {"encoder.1": actreg.L1(1.0)})
    model(torch.randn(2, 6))
    assert float(reg.penalty().detach()) > 0
    empty = reg.penalty()
    assert empty.dim() == 0 and float(empty) == 0.0
    assert reg.last == {}


@pytest.mark.parametrize(
    "mode", ["eval", "no_grad", "inference_mode"], ids=["eval", "no_grad", "inference_mode"]
)
def test_evaluation_records_nothing(mode):
    model = MLP()
    reg = actreg.attach(model, {"encoder.*": actreg.L1(1.0)})
    x = torch.randn(2, 6)
    if mode == "eval":
        model.eval()
        model(x)
    elif mode == "no_grad":
        with torch.no_grad():
            model(x)
    else:
        with torch.inference_mode():
            model(x)
    assert reg.pending == 0


def test_when_always_records_in_eval():
    model = MLP().eval()
    reg = actreg.attach(model, {"encoder.1": actreg.L1(1.0)}, when="always")
    with torch.no_grad():
        model(torch.randn(2, 6))
    assert reg.pending == 1


def test_glob_pattern_matches_several():
    model = MLP()
    reg = actreg.attach(model, {"encoder.[13]": actreg.L1(1.0)})
    assert [n for n, _ in reg.entries] == ["encoder.1", "encoder.3"]


def test_remove_restores_hooks_and_is_idempotent():
    model = MLP()
    own = model.encoder[1].register_forward_hook(lambda m, i, o: None)
    before = {n: dict(m._forward_hooks) for n, m in model.named_modules()}
    reg = actreg.attach(model, {"encoder.1": actreg.L1(1.0), "head": actreg.L2(1.0)})
    assert len(model.encoder[1]._forward_hooks) == 2
    reg.remove()
    reg.remove()
    after = {n: dict(m._forward_hooks) for n, m in model.named_modules()}
    assert before == after
    model(torch.randn(2, 6))
    assert reg.pending == 0
    own.remove()


def test_context_manager_removes():
    model = MLP()
    with actreg.attach(model, {"head": actreg.L1(1.0)}) as reg:
        model(torch.randn(2, 6))
        assert reg.pending == 1
    assert not model.head._forward_hooks


def test_state_dict_unchanged_deepcopy_and_save():
    model = MLP()
    keys = list(model.state_dict())
    reg = actreg.attach(model, {"encoder.1": actreg.L1(1.0)})
    model(torch.randn(2, 6))  # a pending graph must not break copying
    assert list(model.state_dict()) == keys
    clone = copy.deepcopy(model)
    clone(torch.randn(2, 6))  # the copy is not regularized
    assert reg.pending == 1
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    loaded(torch.randn(2, 6))
    assert reg.pending == 1


def test_lstm_output_sequence_is_penalized():
    lstm = nn.LSTM(4, 5, batch_first=True)
    reg = actreg.attach(lstm, {"": actreg.AR(2.0) + actreg.TAR(1.0)})
    x = torch.randn(3, 7, 4)
    out, _ = lstm(x)
    got = reg.penalty()
    expected = 2.0 * out.pow(2).mean() + (out[:, 1:] - out[:, :-1]).pow(2).mean()
    assert torch.allclose(got, expected)


def test_select_callable_and_mapping():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(4, 5)

        def forward(self, x):
            return self.lstm(x)

    net = Net()
    pick_h = lambda out: out[1][0]
    reg = actreg.attach(net, {"lstm": actreg.L2(1.0, "sum")}, select={"lstm": pick_h})
    _, (h, _) = net(torch.randn(6, 2, 4))
    assert torch.allclose(reg.penalty(), h.pow(2).sum())
    reg2 = actreg.attach(net, {"lstm": actreg.L2(1.0, "sum")}, select=pick_h)
    net(torch.randn(6, 2, 4))
    assert reg2.pending == 1


def test_shared_layer_counted_per_call():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.act = nn.ReLU()

        def forward(self, x):
            return self.act(self.act(x) - 1)

    net = Shared()
    reg = actreg.attach(net, {"act": actreg.L1(1.0, "sum")})
    x = torch.randn(3, 4)
    net(x)
    first = x.relu()
    expected = first.sum() + (first - 1).relu().sum()
    assert reg.pending == 2
    assert torch.allclose(reg.penalty(), expected)


def test_same_module_under_two_keys_sums():
    model = MLP()
    reg = actreg.attach(model, {"head": actreg.L1(1.0), "h*": actreg.L2(1.0)})
    out = model(torch.randn(2, 6))
    expected = out.abs().sum() / 2 + out.pow(2).sum() / 2
    assert torch.allclose(reg.penalty(), expected)


def test_activity_regularization_layers_collected():
    net = nn.Sequential(
        nn.Linear(4, 5), nn.ReLU(), actreg.ActivityRegularization(l1=0.1), nn.Linear(5, 2)
    )
    reg = actreg.attach(net)
    x = torch.randn(3, 4)
    out = net[1](net[0](x))
    net(x)
    assert torch.allclose(reg.penalty(), 0.1 * out.abs().sum() / 3)
    both = actreg.attach(net, {"3": actreg.L2(1.0)})
    assert [n for n, _ in both.entries] == ["3", "2"]


def test_gradient_checkpointing_counts_once():
    model = MLP()
    reg = actreg.attach(model, {"encoder.1": actreg.L1(1.0)})
    x = torch.randn(3, 6, requires_grad=True)
    out = checkpoint(model.encoder, x, use_reentrant=False)
    assert reg.pending == 1
    total = model.head(out).sum() + reg.penalty()
    total.backward()
    assert reg.pending == 0  # nothing recorded again during recomputation


def test_reentrant_checkpointing_warns_that_the_penalty_is_lost():
    # The reentrant forward runs without grad, so there is nothing to record; say so.
    model = MLP()
    reg = actreg.attach(model, {"encoder.1": actreg.L1(1.0)})
    x = torch.randn(3, 6, requires_grad=True)
    with pytest.warns(UserWarning, match="encoder.1"):
        out = checkpoint(model.encoder, x, use_reentrant=True)
        total = model.head(out).sum() + reg.penalty()
        total.backward()
    assert reg.pending == 0


def test_state_dict_round_trip_keeps_adapted_coefficients():
    model = MLP()
    spec = {"encoder.1": actreg.TargetSparsity(actreg.L1(1e-3), target=0.9) + actreg.L2(1.0)}
    reg = actreg.attach(model, spec)
    for _ in range(5):
        model(torch.randn(8, 6))
        reg.penalty()
    state = reg.state_dict()
    assert state["steps"] == 5
    fresh = MLP()
    spec2 = {"encoder.1": actreg.TargetSparsity(actreg.L1(1e-3), target=0.9) + actreg.L2(1.0)}
    reg2 = actreg.attach(fresh, spec2)
    reg2.load_state_dict(state)
    assert spec2["encoder.1"].terms[0].coef == pytest.approx(spec["encoder.1"].terms[0].coef)
    assert spec["encoder.1"].terms[0].coef != pytest.approx(1e-3)
    other = actreg.attach(MLP(), {"head": actreg.L1(1.0)})
    with pytest.raises(actreg.ActregError, match="attach the same spec"):
        other.load_state_dict(state)
    with pytest.raises(actreg.ActregError, match="keeps no state"):
        actreg.L1(1.0).load_state_dict({"x": 1})


def test_no_graph_kept_after_penalty():
    model = MLP()
    reg = actreg.attach(model, {"encoder.1": actreg.L1(1.0)})
    x = torch.randn(2, 6)
    hidden = []
    model.encoder[1].register_forward_hook(lambda m, i, o: hidden.append(weakref.ref(o)))
    (model(x).sum() + reg.penalty()).backward()
    gc.collect()
    assert hidden[0]() is None


@pytest.mark.slow
def test_memory_flat_over_2000_steps():
    model = MLP()
    reg = actreg.attach(model, {"encoder.*": actreg.L1(1e-3) + actreg.L2(1e-4)})
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))

    def step():
        loss = nn.functional.cross_entropy(model(x), y) + reg.penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()
        reg.last  # noqa: B018 - logging path too

    for _ in range(200):
        step()
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for _ in range(2000):
        step()
    gc.collect()
    grown = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    assert grown < 64 * 1024, f"memory grew by {grown} bytes over 2000 steps"


def test_unconsumed_penalties_warn(monkeypatch):
    model = MLP()
    reg = actreg.attach(model, {"head": actreg.L1(1.0)})
    monkeypatch.setattr(sys.modules["actreg.regularizer"], "_PENDING_WARN", 3)
    with pytest.warns(UserWarning, match=r"call reg.penalty\(\) every training step"):
        for _ in range(5):
            model(torch.randn(1, 6))
    reg.clear()
    assert reg.pending == 0


# ---- bad input ------------------------------------------------------------------------


def test_unknown_name_suggests_close_ones():
    with pytest.raises(actreg.ActregError, match=r"no module named 'encoder.4'.*'encoder.3'"):
        actreg.attach(MLP(), {"encoder.4": actreg.L1(1.0)})


def test_pattern_matching_nothing():
    with pytest.raises(actreg.ActregError, match="matches no module"):
        actreg.attach(MLP(), {"decoder.*": actreg.L1(1.0)})


def test_failed_attach_leaves_no_hooks():
    model = MLP()
    with pytest.raises(actreg.ActregError):
        actreg.attach(model, {"head": actreg.L1(1.0), "nope": actreg.L1(1.0)})
    assert all(not m._forward_hooks for m in model.modules())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"spec": {"head": 0.1}}, "must be an actreg penalty"),
        ({"spec": [("head", None)]}, "spec must be a mapping"),
        ({"spec": {"head": actreg.L1(1.0)}, "when": "eval"}, "unknown when='eval'"),
        ({"spec": {"head": actreg.L1(1.0)}, "select": 3}, "select must be a callable"),
        ({"spec": {"head": actreg.L1(1.0)}, "select": {"nope": id}}, "no module named 'nope'"),
        ({}, "nothing to regularize"),
    ],
    ids=["not-penalty", "not-mapping", "bad-when", "bad-select", "bad-select-key", "empty"],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(actreg.ActregError, match=match):
        actreg.attach(MLP(), **kwargs)


def test_not_a_module():
    with pytest.raises(actreg.ActregError, match="expected a torch.nn.Module"):
        actreg.attach(object(), {"x": actreg.L1(1.0)})


def test_data_parallel_refused():
    with pytest.raises(actreg.ActregError, match="DistributedDataParallel"):
        actreg.attach(nn.DataParallel(MLP()), {"module.head": actreg.L1(1.0)})


def test_unreadable_output_names_module_and_type():
    class DictOut(nn.Module):
        def forward(self, x):
            return {"y": x}

    net = nn.Sequential(DictOut())
    reg = actreg.attach(net, {"0": actreg.L1(1.0)})
    with pytest.raises(actreg.ActregError, match=r"module '0': got dict.*select="):
        net(torch.randn(2, 3, requires_grad=True))
    reg.remove()


def test_a_pattern_matching_a_norm_warns_but_a_name_does_not(recwarn):
    net = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.ReLU())
    with pytest.warns(
        UserWarning, match=r"pattern '\*' matches 3 modules, 1 of whose .*1 \(LayerNorm\)"
    ):
        actreg.attach(net, {"*": actreg.L1(1e-3)}).remove()
    recwarn.clear()
    actreg.attach(net, {"1": actreg.L1(1e-3)}).remove()  # a name is deliberate
    assert not [w for w in recwarn if "not activations" in str(w.message)]


def test_penalty_after_remove_is_an_error_naming_the_fix():
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    reg = actreg.attach(net, {"1": actreg.L1(1e-3)})
    reg.remove()
    with pytest.raises(actreg.ActregError, match=r"was removed .* attach again"):
        reg.penalty()


def test_two_keys_on_one_module_warn_naming_both():
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    with pytest.warns(UserWarning, match=r"module '1' is matched by 2 keys \('1', '\*'\)"):
        reg = actreg.attach(net, {"1": actreg.L1(1e-3), "*": actreg.L2(1e-3)})
    net(torch.randn(2, 3))
    assert set(reg.last) == set() and float(reg.penalty()) > 0  # both still recorded
    reg.remove()


def test_a_second_live_regularizer_on_a_module_warns(recwarn):
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    first = actreg.attach(net, {"1": actreg.L1(1e-3)})
    with pytest.warns(UserWarning, match="already carries a penalty from another Regularizer"):
        second = actreg.attach(net, {"1": actreg.L1(1e-3)})
    second.remove()
    first.remove()
    recwarn.clear()
    actreg.attach(net, {"1": actreg.L1(1e-3)}).remove()  # the old ones are gone: quiet
    assert not [w for w in recwarn if "already carries" in str(w.message)]
