"""actreg.sparse.threshold: magnitude thresholds against torch.quantile, their hooks, bad input."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import actreg
from actreg import sparse
from actreg.sparse.threshold import _quantile


class Net(nn.Module):
    """Two blocks of Linear -> activation; the activations are ``blocks.0.1`` and ``blocks.1.1``."""

    def __init__(self, act: type[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(6 if i == 0 else 24, 24), act()) for i in range(2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


ACTS = {"gelu": nn.GELU, "silu": nn.SiLU, "relu": nn.ReLU, "tanh": nn.Tanh}


def _batches(n: int = 5, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(16, 3, 6, generator=gen) for _ in range(n)]


def _outputs(net: nn.Module, batches: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every value of each activation's output over ``batches``, as a 1-D tensor."""
    seen: dict[str, list[torch.Tensor]] = {"blocks.0.1": [], "blocks.1.1": []}
    handles = [
        net.get_submodule(name).register_forward_hook(
            lambda m, a, out, name=name: seen[name].append(out.detach().flatten())
        )
        for name in seen
    ]
    with torch.no_grad():
        for b in batches:
            net(b)
    for h in handles:
        h.remove()
    return {name: torch.cat(v) for name, v in seen.items()}


@pytest.mark.parametrize("act", list(ACTS), ids=list(ACTS))
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.9, 0.99], ids=["0", "0.3", "0.9", "0.99"])
def test_thresholds_are_the_quantiles_of_the_magnitudes(act: str, sparsity: float) -> None:
    torch.manual_seed(0)
    net = Net(ACTS[act])
    batches = _batches()
    got = sparse.magnitude_thresholds(net, "blocks.*.1", batches, sparsity)
    ref = _outputs(net, batches)
    assert list(got) == ["blocks.0.1", "blocks.1.1"]
    for name, values in ref.items():
        expected = float(torch.quantile(values.abs().double(), sparsity))
        assert got[name] == pytest.approx(expected, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("act", ["gelu", "silu"], ids=["gelu", "silu"])
@pytest.mark.parametrize("sparsity", [0.5, 0.9], ids=["0.5", "0.9"])
def test_applied_thresholds_give_the_zero_fraction(act: str, sparsity: float) -> None:
    torch.manual_seed(0)
    net = Net(ACTS[act])
    calib, fresh = _batches(n=40, seed=1), _batches(n=40, seed=2)
    thresholds = sparse.magnitude_thresholds(net, "blocks.*.1", calib, sparsity)
    with sparse.apply_thresholds(net, thresholds) as hooks:
        assert hooks.hooked and hooks.thresholds == thresholds
        on_calib = _outputs(net, calib)
        with actreg.Monitor(net, "blocks.*.1") as mon:  # registered later: sees the zeros
            with torch.no_grad():
                for b in fresh:
                    net(b)
            stats = mon.compute()
    # The first layer's input is unchanged, so its zero fraction on the calibration data is
    # exact (ceil(q (n - 1)) zeros); the second reads the first's zeros (thresholds are
    # calibrated on the unthresholded model), so it is close.
    first = on_calib["blocks.0.1"]
    assert abs(float((first == 0).double().mean()) - sparsity) <= 1.5 / first.numel()
    assert stats["blocks.0.1"]["zero_fraction"] == pytest.approx(sparsity, abs=0.02)  # fresh data
    for name, values in on_calib.items():
        assert float(values[values != 0].abs().min()) >= thresholds[name]
        assert float((values == 0).double().mean()) == pytest.approx(sparsity, abs=0.05)
        assert stats[name]["zero_fraction"] == pytest.approx(sparsity, abs=0.05)
    assert not hooks.hooked
    with torch.no_grad():
        assert not (net(fresh[0]) == 0).any()  # removed: GELU/SiLU give no exact zeros


def test_relu_already_sparser_gets_zero_and_stays_unchanged() -> None:
    torch.manual_seed(0)
    net = Net(nn.ReLU)
    batches = _batches()
    thresholds = sparse.magnitude_thresholds(net, "blocks.*.1", batches, 0.2)
    assert thresholds == {"blocks.0.1": 0.0, "blocks.1.1": 0.0}  # ReLU: ~half are zeros
    x = batches[0]
    with torch.no_grad():
        before = net(x)
        with sparse.apply_thresholds(net, thresholds):
            assert torch.equal(net(x), before)


def test_per_module_sparsity_mapping_and_default_forward() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 32), nn.GELU(), nn.Linear(32, 32), nn.SiLU())
    gen = torch.Generator().manual_seed(3)
    pairs = [(torch.randn(64, 4, generator=gen), torch.zeros(64)) for _ in range(3)]
    got = sparse.magnitude_thresholds(net, ["1", "3"], pairs, {"1": 0.25, "*": 0.75})
    values = {"1": [], "3": []}
    hooks = [
        net.get_submodule(k).register_forward_hook(
            lambda m, a, out, k=k: values[k].append(out.detach().flatten())
        )
        for k in values
    ]
    with torch.no_grad():
        for x, _ in pairs:
            net(x)
    for h in hooks:
        h.remove()
    for key, q in (("1", 0.25), ("3", 0.75)):
        ref = float(torch.quantile(torch.cat(values[key]).abs(), q))
        assert got[key] == pytest.approx(ref, rel=1e-6)


def test_training_mode_is_restored_and_grads_flow_through_the_kept_values() -> None:
    net = Net(nn.GELU).train()
    thresholds = sparse.magnitude_thresholds(net, "blocks.*.1", _batches(), 0.5)
    assert net.training
    x = torch.randn(4, 3, 6)
    with sparse.apply_thresholds(net, thresholds):
        net(x).sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_large_inputs_use_the_same_quantile_as_torch() -> None:
    gen = torch.Generator().manual_seed(0)
    values = torch.rand(100_001, generator=gen, dtype=torch.float64)
    for q in (0.0, 0.123, 0.5, 0.9999):
        assert _quantile(values, q) == pytest.approx(float(torch.quantile(values, q)), abs=1e-12)


def test_copied_model_loses_the_hooks() -> None:
    torch.manual_seed(0)
    net = Net(nn.GELU)
    with sparse.apply_thresholds(net, {"blocks.*.1": 100.0}):
        twin = copy.deepcopy(net)
        x = torch.randn(2, 6)
        with torch.no_grad():
            assert (net(x) == 0).all()
            assert not (twin(x) == 0).all()


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda n: sparse.magnitude_thresholds(n, "blocks.*.1", _batches(), 1.0), r"\[0, 1\)"),
        (lambda n: sparse.magnitude_thresholds(n, "blocks.*.1", _batches(), -0.1), r"\[0, 1\)"),
        (lambda n: sparse.magnitude_thresholds(n, "blocks.*.1", _batches(), True), r"\[0, 1\)"),
        (
            lambda n: sparse.magnitude_thresholds(n, "blocks.*.1", _batches(), {"*": 1.5}),
            r"sparsity\['\*'\].*\[0, 1\)",
        ),
        (lambda n: sparse.magnitude_thresholds(n, "layers.*.act", _batches(), 0.5), "matches no"),
        (lambda n: sparse.magnitude_thresholds(n, "blocks.0.9", _batches(), 0.5), "no module"),
        (lambda n: sparse.magnitude_thresholds(n, "blocks.*.1", [], 0.5), "no batches"),
        (lambda n: sparse.magnitude_thresholds(n, "blocks.*.1", iter(()), 0.5), "no batches"),
        (lambda n: sparse.magnitude_thresholds(n, [], _batches(), 0.5), "needs a module"),
        (
            lambda n: sparse.magnitude_thresholds(n, "blocks.*.1", _batches(), {"blocks.0.1": 0.5}),
            "no sparsity for module 'blocks.1.1'",
        ),
        (
            lambda n: sparse.magnitude_thresholds(
                n, "blocks.*.1", _batches(), 0.5, forward=lambda m, b: m.blocks[0](b)
            ),
            "'blocks.1.1' did not run",
        ),
        (lambda n: sparse.apply_thresholds(n, {}), "non-empty mapping"),
        (lambda n: sparse.apply_thresholds(n, {"blocks.*.1": -1.0}), "finite and >= 0"),
        (lambda n: sparse.apply_thresholds(n, {"blocks.*.1": float("nan")}), "finite and >= 0"),
        (lambda n: sparse.apply_thresholds(n, {"nothing.*": 0.1}), "matches no"),
    ],
    ids=[
        "sparsity-1",
        "sparsity-negative",
        "sparsity-bool",
        "mapping-out-of-range",
        "glob-matches-nothing",
        "unknown-name",
        "no-batches",
        "empty-iterator",
        "no-names",
        "mapping-misses-a-module",
        "module-not-run",
        "apply-empty",
        "apply-negative",
        "apply-nan",
        "apply-glob-matches-nothing",
    ],
)
def test_bad_input_is_refused(call, match: str) -> None:
    net = Net(nn.GELU)
    with pytest.raises(actreg.ActregError, match=match):
        call(net)
    assert not net.blocks[0][1]._forward_hooks and not net.blocks[1][1]._forward_hooks


def test_a_module_with_a_tuple_output_is_refused_when_applied() -> None:
    lstm = nn.Sequential(nn.LSTM(3, 4))
    with (
        sparse.apply_thresholds(lstm, {"0": 0.1}),
        pytest.raises(actreg.ActregError, match="threshold the activation module"),
    ):
        lstm(torch.randn(2, 1, 3))
