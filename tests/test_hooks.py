"""The hook base (actreg._hooks) through both of its users, attach and Monitor.

Each contract runs for both: a copied or pickled model carries no live hook, remove() takes
every hook off and is idempotent, glob patterns resolve the same way, and tuple outputs are
read through the same selection.
"""

from __future__ import annotations

import copy
import io
import pickle
import warnings
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import actreg
from actreg import ActregError
from actreg._hooks import Hook, HookSet, NoOp, in_backward


class Pair(nn.Module):
    """Returns ``(x, 2 * x)``: a tuple output, as nn.LSTM and attention layers have."""

    def forward(self, x):
        return x, 2 * x


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            OrderedDict(
                (f"b{i}", nn.Sequential(OrderedDict(fc=nn.Linear(4, 4), act=nn.ReLU())))
                for i in range(3)
            )
        )
        self.pair = Pair()

    def forward(self, x):
        return self.pair(self.blocks(x))[1]


class Attached:
    """attach() seen through the hook contract: what did one forward record, per layer?"""

    def __init__(self, model: nn.Module, keys: list[str], select: Any = None) -> None:
        # L1 with reduction="sum" over one example is the sum of |x|: a value to compare.
        spec = {k: actreg.L1(1.0, reduction="sum") for k in keys}
        self.owner = actreg.attach(model, spec, select=select, when="always")

    def names(self) -> list[str]:
        return [name for name, _ in self.owner.entries]

    def seen(self) -> dict[str, float]:
        if not self.owner.hooked:  # removed: penalty() refuses; nothing may be pending
            assert self.owner.pending == 0
            return {}
        with warnings.catch_warnings():  # "found nothing recorded": expected here
            warnings.filterwarnings("ignore", "actreg: reg.penalty.. found nothing")
            self.owner.penalty()
        return self.owner.last


class Monitored:
    """Monitor seen through the same contract (mean |x| times the elements of one example)."""

    def __init__(self, model: nn.Module, keys: list[str], select: Any = None) -> None:
        self.owner = actreg.Monitor(model, keys, select=select)

    def names(self) -> list[str]:
        return self.owner.layers

    def seen(self) -> dict[str, float]:
        try:
            stats = self.owner.compute()
        except actreg.ActregError as err:  # nothing recorded: compute() refuses
            assert "no batch seen" in str(err)
            return {}
        self.owner.reset()
        return {name: s["mean_abs"] * len(s["firing_rate"]) for name, s in stats.items()}


OWNERS: dict[str, Callable[..., Attached | Monitored]] = {
    "attach": Attached,
    "monitor": Monitored,
}
owners = pytest.mark.parametrize("make", list(OWNERS.values()), ids=list(OWNERS))


def actreg_hooks(model: nn.Module) -> list[Any]:
    return [h for m in model.modules() for h in m._forward_hooks.values() if isinstance(h, Hook)]


X = torch.full((1, 4), 0.5)


@owners
def test_hooks_are_the_base_class(make):
    model = Net()
    owner = make(model, ["blocks.b0.act", "pair"]).owner
    assert isinstance(owner, HookSet)
    hooks = actreg_hooks(model)
    assert [h.name for h in hooks] == ["blocks.b0.act", "pair"]
    assert owner.hooked


@owners
def test_deepcopy_of_the_model_carries_no_live_hook(make):
    model = Net()
    probe = make(model, ["blocks.b0.act"])
    clone = copy.deepcopy(model)
    copied = clone.blocks.b0.act._forward_hooks.values()
    assert [type(h) for h in copied] == [NoOp]
    clone(X)
    assert probe.seen() == {}  # the copy feeds nothing to the original's owner
    model(X)
    assert set(probe.seen()) == {"blocks.b0.act"}  # the original still does


@owners
@pytest.mark.parametrize(
    "round_trip",
    [
        lambda m: pickle.loads(pickle.dumps(m)),
        lambda m: _torch_round_trip(m),
    ],
    ids=["pickle", "torch.save"],
)
def test_pickled_model_carries_no_live_hook(make, round_trip):
    model = Net()
    probe = make(model, ["blocks.*.act"])
    model(X)  # something recorded and pending must not travel either
    loaded = round_trip(model)
    assert all(type(h) is NoOp for m in loaded.modules() for h in m._forward_hooks.values()), (
        "an unpickled model must hold only no-op hooks"
    )
    probe.seen()
    loaded(X)
    assert probe.seen() == {}
    torch.testing.assert_close(loaded(X), model(X))


def _torch_round_trip(model: nn.Module) -> nn.Module:
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


@owners
def test_remove_takes_every_hook_off_and_is_idempotent(make):
    model = Net()
    own = model.pair.register_forward_hook(lambda m, i, o: None)
    before = {n: list(m._forward_hooks) for n, m in model.named_modules()}
    probe = make(model, ["blocks.*.act", "pair"])
    assert len(actreg_hooks(model)) == 4
    probe.owner.remove()
    probe.owner.remove()
    assert not probe.owner.hooked
    assert {n: list(m._forward_hooks) for n, m in model.named_modules()} == before
    assert "removed" in repr(probe.owner)
    model(X)
    assert probe.seen() == {}
    own.remove()


@owners
def test_context_manager_removes(make):
    model = Net()
    with make(model, ["pair"]).owner as owner:
        assert owner.hooked
    assert not owner.hooked
    assert actreg_hooks(model) == []


@owners
@pytest.mark.parametrize(
    ("keys", "names"),
    [
        (["blocks.*.act"], ["blocks.b0.act", "blocks.b1.act", "blocks.b2.act"]),
        (["blocks.b[02].fc"], ["blocks.b0.fc", "blocks.b2.fc"]),
        (["blocks.b1.act", "blocks.b?.act"], ["blocks.b1.act", "blocks.b0.act", "blocks.b2.act"]),
    ],
    ids=["star", "brackets", "name-then-pattern"],
)
def test_glob_patterns_resolve_in_order(make, keys, names):
    model = Net()
    probe = make(model, keys)
    assert list(dict.fromkeys(probe.names())) == names
    model(X)
    assert set(probe.seen()) == set(names)


@owners
@pytest.mark.parametrize(
    ("key", "match"),
    [("blocks.*.nope", "pattern 'blocks.\\*.nope' matches no module"), ("pare", "'pair'")],
    ids=["pattern", "typo"],
)
def test_unknown_names_raise_and_leave_no_hook(make, key, match):
    model = Net()
    with pytest.raises(ActregError, match=match):
        make(model, ["pair", key])
    assert actreg_hooks(model) == []


@owners
@pytest.mark.parametrize(
    ("select", "factor"),
    [(None, 1.0), (lambda out: out[1], 2.0), ({"pa*": lambda out: out[1]}, 2.0)],
    ids=["default-first", "callable", "mapping"],
)
def test_tuple_outputs_are_read_through_select(make, select, factor):
    model = Net()
    probe = make(model, ["pair"], select=select)
    x = torch.tensor([[1.0, -2.0, 3.0, 0.0]])
    with torch.no_grad():
        inner = model.blocks(x)
    model(x)
    assert probe.seen()["pair"] == pytest.approx(factor * float(inner.abs().sum()))


@owners
def test_unreadable_output_names_the_module(make):
    class Odd(nn.Module):
        def forward(self, x):
            return {"y": x}

    model = nn.Sequential(OrderedDict(odd=Odd()))
    make(model, ["odd"])
    with pytest.raises(ActregError, match="module 'odd'.*got dict.*select="):
        model(X)


def test_in_backward_true_only_inside_a_backward_pass():
    seen = []
    x = torch.ones(2, requires_grad=True)
    y = x * 3
    y.register_hook(lambda g: seen.append(in_backward()))
    assert not in_backward()
    y.sum().backward()
    assert seen == [True]
    assert not in_backward()


@pytest.mark.parametrize(
    "copier", [copy.deepcopy, lambda h: pickle.loads(pickle.dumps(h))], ids=["deepcopy", "pickle"]
)
def test_a_hook_copies_to_a_no_op(copier):
    class Counting(Hook):
        calls = 0

        def __call__(self, module, args, output):
            Counting.calls += 1

    hook = Counting("layer", lambda out: out)
    twin = copier(hook)
    assert isinstance(twin, NoOp)
    assert twin(nn.Identity(), (X,), X) is None
    assert Counting.calls == 0
