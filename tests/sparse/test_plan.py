"""The planned screened call of SparseConv1DMLP and SparseGatedMLP (actreg.sparse._screen's
plan and run_plan; the design in its module docstring): after each change that could make
the plan wrong (weights changed in place or replaced, a child replaced, hooks, train mode,
grad, dtype) the block's output still equals the original block's; the plan runs without
the full checks."""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable
from typing import Any

import pytest
import torch
from sparse_nets import close
from torch import nn

from actreg import sparse
from actreg.sparse import transformer as tr

transformers = pytest.importorskip(
    "transformers", reason="transformers is not installed (pip install 'actreg[transformers]')"
)

KERNELS = "sparse"  # see tests/conftest.py: cpp
D, K = 32, 128
# first layer, last layer, activation of each kind
NAMES = {"gpt2": ("c_fc", "c_proj", "act"), "llama": ("gate_proj", "down_proj", "act_fn")}
WRAPPER = {"gpt2": sparse.SparseConv1DMLP, "llama": sparse.SparseGatedMLP}  # (children shared)


def _block(kind: str) -> nn.Module:
    """A GPT-2 MLP (dropout 0.1) or a Llama MLP (ReLU, biases), most units off."""
    torch.manual_seed(0)
    if kind == "gpt2":
        cfg = transformers.GPT2Config(
            n_embd=D, n_inner=K, n_head=1, activation_function="relu", resid_pdrop=0.1
        )
        mlp = transformers.models.gpt2.modeling_gpt2.GPT2MLP(K, cfg)
        first, w = mlp.c_fc, mlp.c_fc.weight
    else:
        cfg = transformers.LlamaConfig(
            hidden_size=D, intermediate_size=K, hidden_act="relu", mlp_bias=True,
            num_attention_heads=1, num_key_value_heads=1, head_dim=2,
        )  # fmt: skip
        mlp = transformers.models.llama.modeling_llama.LlamaMLP(cfg)
        first, w = mlp.gate_proj, mlp.gate_proj.weight.t()
    with torch.no_grad():
        first.bias.copy_(-torch.quantile(torch.randn(512, D) @ w, 0.9, dim=0))
    return mlp.eval()


Change = Callable[[nn.Module, nn.Module, list[str]], Any]


def _in_place(which: int) -> Change:
    def change(fast: nn.Module, mlp: nn.Module, names: list[str]) -> None:
        with torch.no_grad():
            getattr(fast, names[which]).weight.mul_(-1.0)

    return change


def _new_parameter(fast: nn.Module, mlp: nn.Module, names: list[str]) -> None:
    layer = getattr(fast, names[0])  # (a child both blocks share)
    layer.weight = nn.Parameter(layer.weight.detach() * -1.0)


def _new_bias(fast: nn.Module, mlp: nn.Module, names: list[str]) -> None:
    layer = getattr(fast, names[1])
    layer.bias = nn.Parameter(layer.bias.detach() + 1.0)


def _data_swap(fast: nn.Module, mlp: nn.Module, names: list[str]) -> None:
    layer = getattr(fast, names[0])
    layer.weight.data = layer.weight.data * -1.0


def _data_round_trip(fast: nn.Module, mlp: nn.Module, names: list[str]) -> None:
    # .half() then .float() frees the planned storage before the same-size allocation that
    # would reuse its address: the caches hold an alias, so the address is never reused
    layer = getattr(fast, names[0])
    layer.weight.data = layer.weight.data.half()
    layer.weight.data = layer.weight.data.float() * -1.0


def _new_child(fast: nn.Module, mlp: nn.Module, names: list[str]) -> None:
    child = copy.deepcopy(getattr(fast, names[1]))
    with torch.no_grad():
        child.weight.mul_(-2.0)
    setattr(fast, names[1], child)
    setattr(mlp, names[1], child)


def _new_child_direct(fast: nn.Module, mlp: nn.Module, names: list[str]) -> None:
    child = copy.deepcopy(getattr(fast, names[1]))
    with torch.no_grad():
        child.weight.mul_(-2.0)
    fast._modules[names[1]] = child  # (not through setattr)
    mlp._modules[names[1]] = child


def _forward_hook(fast: nn.Module, mlp: nn.Module, names: list[str]) -> None:
    getattr(fast, names[2]).register_forward_hook(lambda m, a, out: out * 2.0)


def _pre_hook(fast: nn.Module, mlp: nn.Module, names: list[str]) -> None:
    getattr(fast, names[1]).register_forward_pre_hook(lambda m, a: (a[0] * -1.0,))


def _global_hook(fast: nn.Module, mlp: nn.Module, names: list[str]) -> Any:
    def double(m: nn.Module, args: Any, out: Any) -> Any:
        return out * 2.0 if isinstance(m, nn.ReLU) else None

    return nn.modules.module.register_module_forward_hook(double)


def _train(fast: nn.Module, mlp: nn.Module, names: list[str]) -> None:
    fast.train()
    mlp.train()  # (GPT-2's dropout is active: the same seed must give the same mask)


def _children_train(fast: nn.Module, mlp: nn.Module, names: list[str]) -> None:
    for child in fast.children():  # (the block itself stays in eval mode)
        child.train()


# name: (change, whether the output changes)
CHANGES: dict[str, tuple[Change, bool]] = {
    "in-place-first": (_in_place(0), True),
    "in-place-last": (_in_place(1), True),
    "new-parameter": (_new_parameter, True),
    "new-bias": (_new_bias, True),
    "data-swap": (_data_swap, True),
    "data-round-trip": (_data_round_trip, True),
    "new-child": (_new_child, True),
    "new-child-direct": (_new_child_direct, True),
    "forward-hook": (_forward_hook, True),
    "pre-hook": (_pre_hook, True),
    "global-hook": (_global_hook, True),
    "train": (_train, False),
    "children-train": (_children_train, False),
}


@pytest.mark.parametrize("change", list(CHANGES), ids=list(CHANGES))
@pytest.mark.parametrize("kind", list(NAMES), ids=list(NAMES))
def test_output_equals_the_original_after_each_change(kind: str, change: str, cpp: Any) -> None:
    mlp = _block(kind)
    fast = WRAPPER[kind](mlp, threshold=0.0, kernels=cpp)
    x = torch.randn(1, 1, D)
    with torch.no_grad():
        before = fast(x)
        assert "_plan" in fast.__dict__ and close(before, mlp(x))  # planned
        fn, alters = CHANGES[change]
        handle = fn(fast, mlp, list(NAMES[kind]))
        try:
            torch.manual_seed(1)
            got = fast(x)
            torch.manual_seed(1)
            want = mlp(x)
        finally:
            if handle is not None:
                handle.remove()
    assert close(got, want)
    if alters or (kind == "gpt2" and "train" in change):  # (GPT-2's dropout)
        assert not torch.allclose(got, before)


@pytest.mark.parametrize("kind", list(NAMES), ids=list(NAMES))
def test_grad_and_dtype_after_planning(kind: str, cpp: Any) -> None:
    mlp = _block(kind)
    fast = WRAPPER[kind](mlp, threshold=0.0, kernels=cpp)
    x = torch.randn(1, 1, D)
    with torch.no_grad():
        fast(x)
    got = fast(x.clone().requires_grad_())  # grad enabled, parameters require grad
    assert got.requires_grad and close(got, mlp(x))
    fast.double()  # the shared children's parameters become float64 (same objects)
    with torch.no_grad():
        assert close(fast(x.double()), mlp(x.double()), torch.float64)


@pytest.mark.parametrize("kind", list(NAMES), ids=list(NAMES))
def test_the_plan_runs_without_the_full_checks(
    kind: str, cpp: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    mlp = _block(kind)
    fast = WRAPPER[kind](mlp, threshold=0.0, kernels=cpp)
    xs = [torch.randn(1, 1, D), torch.randn(1, 3, D)]
    with torch.no_grad():
        want = [mlp(x) for x in xs]
        for x in xs:
            fast(x)  # plans, and learns the threshold for 1 and 3 rows
        monkeypatch.setattr(tr._SparseFFN, "_fast", lambda self, x: pytest.fail("not planned"))
        assert all(close(fast(x), w) for x, w in zip(xs, want, strict=True))


@pytest.mark.parametrize(
    "how", ["deepcopy", "pickle", "threshold", "screen-off"],
    ids=["deepcopy", "pickle", "threshold", "screen-off"],
)  # fmt: skip
def test_copies_and_settings_drop_the_plan(how: str, cpp: Any) -> None:
    mlp = _block("gpt2")
    fast = sparse.SparseConv1DMLP(mlp, threshold=0.0, kernels=cpp)
    x = torch.randn(1, 1, D)
    with torch.no_grad():
        fast(x)
        if how == "deepcopy":
            fast = copy.deepcopy(fast)
        elif how == "pickle":
            fast = pickle.loads(pickle.dumps(fast))
        elif how == "threshold":
            fast.threshold = float("inf")
        else:
            fast.screen = False
        assert "_plan" not in fast.__dict__
        assert close(fast(x), mlp(x))
    if how in ("threshold", "screen-off"):
        assert "_plan" not in fast.__dict__  # the screen did not run again
