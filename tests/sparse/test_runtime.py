"""SparseSequential: fused Linear/ReLU runs give nn.Sequential's outputs and follow every change."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from sparse_nets import close as _close
from sparse_nets import mlp as _mlp
from torch import nn

import actreg
from actreg import sparse
from actreg._cpp import Backend
from actreg.sparse import SparseInputLinear
from actreg.sparse._kernels import random_sparse

KERNELS = "sparse"  # see tests/conftest.py: cpp


def _fused(
    net: nn.Module, threshold: float = 0.0, first: bool = True, *, kernels: str | Backend
) -> nn.Module:
    names = ["fc1", "fc2", "fc3"][0 if first else 1 :]
    return sparse.convert(net, names, threshold=threshold, kernels=kernels)


def _fused_ran(model: nn.Module) -> bool:
    """Whether a SparseSequential took its fused path (it keeps a plan only then)."""
    return "_actreg_plan" in model.__dict__


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("shape", [(1, 20), (7, 20), (20,), (2, 3, 20), (0, 20)])
@pytest.mark.parametrize("threshold", [0.0, 0.5, math.inf], ids=["sparse", "auto-ish", "dense"])
@pytest.mark.parametrize("first", [True, False], ids=["all", "plain-first"])
def test_fused_same_outputs(
    dtype: torch.dtype, shape: tuple[int, ...], threshold: float, first: bool, cpp: object,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    net = _mlp(dtype)
    fast = _fused(net, threshold, first, kernels=cpp)
    assert type(fast) is sparse.SparseSequential
    x = (random_sparse(shape, 0.5) - 0.3).to(dtype)
    with torch.inference_mode():
        want, got = net(x), fast(x)
    assert _fused_ran(fast), "the fused path was not taken"
    assert got.shape == want.shape and got.dtype == want.dtype
    assert _close(got, want, dtype)
    if threshold == math.inf:  # all dense: the same addmm calls as the layers themselves
        assert torch.equal(got, want)


def test_fused_without_extension_is_plain_sequential() -> None:
    net = _mlp()
    fast = _fused(net, kernels="torch")
    x = random_sparse((3, 20), 0.5)
    with torch.no_grad():
        assert _close(fast(x), net(x))
    assert not _fused_ran(fast)


@pytest.mark.parametrize(
    "case", ["train-grad", "eval-requires-grad", "input-requires-grad", "global-hook"]
)
def test_fused_path_not_taken_when_grad_or_hooks(
    case: str, cpp: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    net = _mlp()
    fast = _fused(net, kernels=cpp)
    x = random_sparse((3, 20), 0.5)
    handle = None
    if case == "train-grad":
        fast.train()
        net.train()
        torch.manual_seed(1)
        want = net(x)
        torch.manual_seed(1)
        got = fast(x)
    else:
        if case == "input-requires-grad":
            x.requires_grad_()
        if case == "global-hook":
            handle = nn.modules.module.register_module_forward_hook(lambda *a: None)
        want, got = net(x), fast(x)
    if handle is not None:
        handle.remove()
    assert not _fused_ran(fast)
    assert torch.equal(got, want)


def test_fused_respects_child_hooks_and_rebuilds(
    cpp: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    net = _mlp()
    fast = _fused(net, kernels=cpp)
    seen: list[tuple[int, ...]] = []
    x = random_sparse((2, 20), 0.5)
    with torch.no_grad():
        fast(x)
        handle = fast.act1.register_forward_hook(lambda m, a, out: seen.append(out.shape))
        fast(x)  # ReLU with a hook runs as a module, the rest fused around it
        assert len(fast.__dict__["_actreg_plan"].steps) == 3  # chain, hooked ReLU, chain
        handle.remove()
        fast(x)
        assert len(fast.__dict__["_actreg_plan"].steps) == 1  # all fused again
        got = fast(x)
    assert seen == [torch.Size([2, 48])]
    assert _close(got, net(x).detach())


def test_fused_monitor_still_sees_layers(cpp: object) -> None:
    net = _mlp()
    fast = _fused(net, kernels=cpp)
    mon = actreg.Monitor(fast, ["act1", "act2"])
    with torch.no_grad():
        fast(random_sparse((4, 20), 0.5))
    stats = mon.compute()
    assert stats["act1"]["l0"] > 0 or stats["act1"]["zero_fraction"] == 1.0
    mon.remove()


@pytest.mark.parametrize(
    "change", ["in-place", "load_state_dict", "new-parameter", "new-bias", "replace-layer",
               "delete-layer", "threshold", "dropout-train", "to-double"],
)  # fmt: skip
def test_fused_plan_follows_changes(
    change: str, cpp: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    net = _mlp()
    fast = _fused(net, kernels=cpp)
    x = random_sparse((3, 20), 0.5)
    with torch.no_grad():
        fast(x)  # build and cache the plan
        if change == "in-place":
            fast.fc2.weight.mul_(-2.0)
        elif change == "load_state_dict":
            other = _mlp(seed=1)
            fast.load_state_dict(other.state_dict())
            net = other
        elif change == "new-parameter":
            fast.fc1.weight = nn.Parameter(torch.randn(48, 20))
        elif change == "new-bias":
            fast.fc2.bias = nn.Parameter(torch.randn(48))
        elif change == "replace-layer":
            fast.fc3 = nn.Linear(48, 5)
        elif change == "delete-layer":
            del fast.ident
            del net.ident
        elif change == "threshold":  # the fused call must ask the layers again
            for name in ("fc1", "fc2", "fc3"):
                fast.get_submodule(name).threshold = math.inf
            asked: list[int] = []
            real = SparseInputLinear.threshold_for
            monkeypatch.setattr(
                SparseInputLinear, "threshold_for", lambda s, b: asked.append(b) or real(s, b)
            )
        elif change == "dropout-train":
            fast.drop.train()
            net.drop.train()
        elif change == "to-double":
            fast.double()
            x = x.double()
            net = net.double()
        if change in ("new-parameter", "new-bias", "replace-layer"):
            net = copy.deepcopy(fast).float()
            net.backend = "torch"  # the reference: plain modules, one by one
            for m in net.modules():
                if isinstance(m, SparseInputLinear):
                    m.threshold = math.inf
            want = net(x)
        else:
            torch.manual_seed(3)
            want = net(x)
        torch.manual_seed(3)
        got = fast(x)
    assert _close(got, want, x.dtype)
    if change == "threshold":
        assert asked == [3, 3, 3]


def test_fused_inference_mode_model_and_pickle(cpp: object) -> None:
    net = _mlp()
    x = random_sparse((2, 20), 0.5)
    with torch.inference_mode():  # a model converted inside inference mode: inference tensors
        fast = sparse.convert(net, ["fc1", "fc2", "fc3"], threshold=0.0, kernels=cpp)
        assert _close(fast(x), net(x))
    with torch.no_grad():
        fast = _fused(net, kernels=cpp)
        want = fast(x)
        buf = io.BytesIO()
        torch.save(fast, buf)
        buf.seek(0)
        loaded = torch.load(buf, weights_only=False)
        assert "_actreg_plan" not in loaded.__dict__
        assert _close(loaded(x), want) and _close(copy.deepcopy(fast)(x), want)


def test_fused_errors_are_pytorchs(cpp: object) -> None:
    fast = _fused(_mlp(), kernels=cpp)
    with torch.no_grad(), pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        fast(torch.ones(2, 21))
    with torch.no_grad(), pytest.raises(RuntimeError, match="dtype"):
        fast(torch.ones(2, 20, dtype=torch.float64))


def test_no_process_wide_hooks(cpp: Backend) -> None:
    """Converting and running a fused model registers nothing outside the model, and a
    replaced weight is still noticed."""
    g = nn.modules.module
    names = [k for k in dir(g) if k.startswith("_global_") and isinstance(getattr(g, k), dict)]
    before = {k: len(getattr(g, k)) for k in names}
    fast = _fused(_mlp(), kernels=cpp)
    x = random_sparse((2, 20), 0.5)
    with torch.no_grad():
        fast(x)
        fast.fc2.weight = nn.Parameter(torch.randn(48, 48))
        got = fast(x)
        ref = copy.deepcopy(fast)
        ref.backend = "torch"
        want = ref(x)
    assert _fused_ran(fast) and not _fused_ran(ref)
    assert _close(got, want)
    assert {k: len(getattr(g, k)) for k in names} == before
