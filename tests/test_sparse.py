"""Tests for actreg.sparse: SparseInputLinear, convert, flop_limit (no timing assertions)."""

from __future__ import annotations

import copy
import io
import math
from collections import OrderedDict
from typing import Any

import pytest
import torch
from torch import nn

import actreg
from actreg import sparse
from actreg.sparse import SparseInputLinear
from actreg.sparse import _kernels as kernels
from actreg.sparse._kernels import (
    bag_linear,
    crossover,
    gather_linear,
    nonzero_fraction,
    random_sparse,
)

TOL = {torch.float32: 1e-5, torch.float64: 1e-12}


KERNELS = kernels  # see tests/conftest.py: _torch_kernels, cpp


@pytest.fixture(params=["torch", "cpp"])
def kernel(request: pytest.FixtureRequest) -> str:
    """Run a test on both kernel sets."""
    if request.param == "cpp":
        request.getfixturevalue("cpp")
    return str(request.param)


def _pair(
    i: int = 32, o: int = 16, bias: bool = True, dtype: torch.dtype = torch.float32
) -> tuple[nn.Linear, SparseInputLinear]:
    dense = nn.Linear(i, o, bias=bias, dtype=dtype)
    return dense, SparseInputLinear.from_linear(copy.deepcopy(dense), threshold=0.0)


def _close(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype = torch.float32) -> bool:
    return torch.allclose(a, b, rtol=TOL[dtype], atol=TOL[dtype])


SHAPES = [(1, 32), (5, 32), (32,), (2, 3, 32), (0, 32)]


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.99, 1.0], ids=lambda s: f"zeros{s:g}")
@pytest.mark.parametrize("shape", SHAPES, ids=["batch1", "batch5", "1d", "NTH", "empty"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_same_outputs(
    sparsity: float, shape: tuple[int, ...], dtype: torch.dtype, bias: bool, kernel: str
) -> None:
    dense, fast = _pair(bias=bias, dtype=dtype)
    x = (random_sparse(shape, sparsity) - 0.6).to(dtype)  # signed values
    x = x * (random_sparse(shape, sparsity) != 0)
    with torch.no_grad():
        want = dense(x)
        assert fast.uses_sparse(x) == (x.numel() > 0)
        got = fast(x)
    assert got.shape == want.shape and got.dtype == want.dtype
    assert _close(got, want, dtype)


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode", "eval_frozen"])
def test_sparse_path_in_inference(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    dense, fast = _pair()
    calls = []
    real = sparse.sparse_linear
    monkeypatch.setattr(sparse, "sparse_linear", lambda *a: calls.append(1) or real(*a))
    x = random_sparse((4, 32), 0.9)
    if mode == "eval_frozen":
        fast.eval().requires_grad_(False)
        got = fast(x)
    else:
        with torch.no_grad() if mode == "no_grad" else torch.inference_mode():
            got = fast(x)
    assert calls == [1]
    assert _close(got, dense(x).detach())


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_grad_uses_dense_path(training: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    dense, fast = _pair()
    fast.train(training)
    monkeypatch.setattr(sparse, "sparse_linear", lambda *a: pytest.fail("sparse path with grad"))
    x = random_sparse((4, 32), 0.9).requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    fast(x).square().sum().backward()
    dense(x2).square().sum().backward()
    assert torch.equal(fast.weight.grad, dense.weight.grad)
    assert torch.equal(fast.bias.grad, dense.bias.grad)
    assert torch.equal(x.grad, x2.grad)


@pytest.mark.parametrize(
    "change", ["in-place", "new-weight", "new-bias", "threshold", "to-double", "to-half"]
)
def test_weight_update_refreshes_transposed_copy(change: str, kernel: str) -> None:
    _, fast = _pair()
    x = random_sparse((3, 32), 0.8)
    with torch.no_grad():
        fast(x)
        if change in ("to-double", "to-half"):
            dtype = torch.float64 if change == "to-double" else torch.bfloat16
            fast.to(dtype)
            x = x.to(dtype)
            got = fast(x)
            assert got.dtype == dtype
            want = nn.functional.linear(x, fast.weight, fast.bias)
            assert torch.allclose(got.double(), want.double(), atol=0.05)
            return
        if change == "in-place":
            fast.weight.mul_(2.0)
        elif change == "new-weight":
            fast.weight = nn.Parameter(torch.randn(16, 32))
        elif change == "new-bias":
            fast.bias = nn.Parameter(torch.randn(16))
        else:
            fast.threshold = math.inf
        got = fast(x)
        want = nn.functional.linear(x, fast.weight, fast.bias)
    assert _close(got, want)
    if change == "threshold":  # dense now: F.linear's own addmm
        assert torch.equal(got, want)


@pytest.mark.parametrize(
    ("threshold", "batch", "zeros", "sparse_path"),
    [
        (0.9, 1, 0.95, True),
        (0.9, 1, 0.9, True),
        (0.9, 1, 0.5, False),
        ({1: 0.5, 32: 0.95}, 1, 0.75, True),
        ({1: 0.5, 32: 0.95}, 32, 0.75, False),
        ({1: 0.5, 32: 0.95}, 4, 0.75, True),  # log-nearest is 1
        ({1: 0.5, 32: 0.95}, 8, 0.75, False),  # log-nearest is 32
        ({1: math.inf}, 1, 1.0, False),
        (1.0, 1, 1.0, True),
        (0.0, 1, 0.0, True),
    ],
    ids=[
        "above",
        "equal",
        "below",
        "map-b1",
        "map-b32",
        "map-b4",
        "map-b8",
        "never",
        "all-0",
        "t0",
    ],
)
def test_threshold_logic(
    threshold: object, batch: int, zeros: float, sparse_path: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast = SparseInputLinear(100, 4, threshold=threshold)  # type: ignore[arg-type]
    x = random_sparse((batch, 100), zeros)
    assert fast.uses_sparse(x) is sparse_path
    calls = []
    real = sparse.sparse_linear
    monkeypatch.setattr(sparse, "sparse_linear", lambda *a: calls.append(1) or real(*a))
    with torch.no_grad():
        out = fast(x)
    assert bool(calls) is sparse_path
    assert _close(out, nn.functional.linear(x, fast.weight, fast.bias).detach())


def test_dtype_mismatch_falls_back_to_dense_error(kernel: str) -> None:
    _, fast = _pair()
    with torch.no_grad(), pytest.raises(RuntimeError):
        fast(torch.zeros(2, 32, dtype=torch.float64))


@pytest.mark.parametrize("direction", ["dense->sparse", "sparse->dense"])
def test_state_dict_round_trip(direction: str) -> None:
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    fast = sparse.convert(net, threshold=0.5)
    assert list(fast.state_dict()) == list(net.state_dict())
    src, dst = (net, fast) if direction == "dense->sparse" else (fast, net)
    fresh = copy.deepcopy(dst)
    for p in fresh.parameters():
        nn.init.zeros_(p)
    fresh.load_state_dict(src.state_dict())
    x = random_sparse((3, 8), 0.0) - 0.5
    with torch.no_grad():
        assert _close(fresh(x), src(x))


@pytest.mark.parametrize("numpy_path", [True, False], ids=["numpy", "torch"])
@pytest.mark.parametrize("rows", [1, 6], ids=["batch1", "batch6"])
def test_kernels_agree(numpy_path: bool, rows: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernels, "_on_numpy", lambda x: numpy_path and x.device.type == "cpu")
    x = random_sparse((rows, 40), 0.7)
    x[0] = 0.0  # an empty bag
    w, b = torch.randn(5, 40), torch.randn(5)
    want = nn.functional.linear(x, w, b)
    wt = w.t().contiguous()
    assert _close(bag_linear(x, wt, b), want)
    assert _close(gather_linear(x, wt, b), want)
    assert _close(bag_linear(x, wt, None), want - b)


@pytest.mark.parametrize("numel", [100, 64 * 1024], ids=["exact", "sampled"])
def test_nonzero_fraction(numel: int) -> None:
    x = random_sparse((numel // 100, 100), 0.8)
    assert nonzero_fraction(x) == pytest.approx(0.2, abs=0.0 if numel == 100 else 0.03)
    assert nonzero_fraction(torch.zeros(0)) == 0.0


def test_threshold_setter_validates_and_resets() -> None:
    layer = SparseInputLinear(10, 2, threshold=0.9)
    assert layer.threshold_for(4) == 0.9
    layer.threshold = {1: 0.2, 8: 0.3}
    assert layer.threshold_for(4) == 0.3 and layer.threshold_for(2) == 0.2
    with pytest.raises(actreg.ActregError):
        layer.threshold = -0.1


def test_random_sparse_exact_zeros_per_row() -> None:
    x = random_sparse((7, 50), 0.9)
    assert ((x == 0).sum(1) == 45).all()


@pytest.mark.parametrize(
    ("ratios", "want"),
    [
        ([2.0, 1.2, 0.8, 0.5], 0.8),
        ([0.5, 0.5, 0.5, 0.5], 0.5),
        ([2, 2, 2, 2], math.inf),
        ([2.0, 0.5, 1.5, 0.5], 0.925),
    ],
    ids=["between", "always", "never", "noisy"],
)
def test_crossover(ratios: list[float], want: float) -> None:
    assert crossover([0.5, 0.7, 0.9, 0.95], ratios, win=1.0) == pytest.approx(want, abs=0.01)


def _net() -> nn.Module:
    return nn.Sequential(
        nn.Linear(8, 16),  # 0: raw input -> stays
        nn.ReLU(),
        nn.Linear(16, 16),  # 2: after ReLU -> converted
        nn.ReLU6(),
        nn.Dropout(0.1),
        nn.Linear(16, 16),  # 5: after ReLU6 through Dropout -> converted
        nn.Tanh(),
        nn.Linear(16, 16),  # 7: after Tanh -> stays
        actreg.TopK(4),
        actreg.ActivityRegularization(l1=1e-3),
        nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)),  # 10.0 stays? see test
    )


def test_convert_picks_layers_after_relu_like() -> None:
    net = _net()
    fast = sparse.convert(net, threshold=0.5)
    kinds = {n: type(m).__name__ for n, m in fast.named_modules() if isinstance(m, nn.Linear)}
    assert kinds == {
        "0": "Linear",
        "2": "SparseInputLinear",
        "5": "SparseInputLinear",
        "7": "Linear",
        "10.0": "Linear",  # first in its own Sequential: its producer is not visible there
        "10.2": "SparseInputLinear",
    }
    assert type(fast[1]) is nn.ReLU and type(fast[6]) is nn.Tanh
    x = torch.randn(5, 8)
    with torch.no_grad():
        assert _close(fast.eval()(x), net.eval()(x))


def test_inplace_false_leaves_original() -> None:
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    fast = sparse.convert(net, threshold=0.5)
    assert fast is not net
    assert not any(isinstance(m, SparseInputLinear) for m in net.modules())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert fast[2].weight is not net[2].weight


def test_inplace_true_shares_parameters() -> None:
    net = _net()
    w = net[2].weight
    out = sparse.convert(net, threshold=0.5, inplace=True)
    assert out is net and isinstance(net[2], SparseInputLinear) and net[2].weight is w


@pytest.mark.parametrize("names", ["0", ["0", "7"], "10.*"], ids=["one", "list", "glob"])
def test_convert_named(names: str | list[str]) -> None:
    fast = sparse.convert(_net(), names, threshold=0.5)
    got = {n for n, m in fast.named_modules() if isinstance(m, SparseInputLinear)}
    want = {"one": {"0"}, "list": {"0", "7"}, "glob": {"10.0", "10.2"}}
    assert got == want["one" if names == "0" else "list" if isinstance(names, list) else "glob"]


def test_threshold_map_and_repr() -> None:
    fast = sparse.convert(_net(), "2", threshold={1: 0.4, 32: 0.8})
    assert fast[2].threshold == {1: 0.4, 32: 0.8}
    assert "threshold={1: 0.4, 32: 0.8}" in repr(fast[2])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"names": "lin2"}, "no module named 'lin2'"),
        ({"names": "1"}, "names no nn.Linear"),
        ({"names": "nothing.*"}, "matches no module"),
        ({"threshold": "fast"}, "threshold must be"),
        ({"threshold": 1.5}, "zero fraction in"),
        ({"threshold": {0: 0.5}}, "batch size"),
        ({"threshold": True}, "threshold must be"),
        ({"threshold": {}}, "threshold must be"),
    ],
    ids=["unknown", "not-linear", "glob-none", "bad-str", "above-1", "batch0", "bool", "empty"],
)
def test_bad_input(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(actreg.ActregError, match=match):
        sparse.convert(_net(), **kwargs)  # type: ignore[arg-type]


def test_unknown_name_suggests() -> None:
    net = nn.Sequential(OrderedDict(fc1=nn.Linear(2, 2), act=nn.ReLU(), fc2=nn.Linear(2, 2)))
    with pytest.raises(actreg.ActregError, match="closest names: 'fc2', 'fc1'"):
        sparse.convert(net, "fc3")


def test_not_a_module() -> None:
    with pytest.raises(actreg.ActregError, match="expected a torch.nn.Module"):
        sparse.convert("model")  # type: ignore[arg-type]


def test_nothing_eligible_warns() -> None:
    with pytest.warns(UserWarning, match="names="):
        sparse.convert(nn.Sequential(nn.Linear(2, 2)), threshold=0.5)


def test_flop_limit_counts_zeros() -> None:
    net = nn.Sequential(nn.Linear(4, 10), nn.ReLU(), nn.Linear(10, 2))
    fast = sparse.convert(net, threshold=0.0)
    x = torch.randn(6, 4)
    limit, zeros = sparse.flop_limit(fast, [x])
    with torch.no_grad():
        h = torch.relu(net[0](x))
    frac = float((h == 0).float().mean())
    assert zeros == {"2": pytest.approx(frac)}
    dense = 6 * (4 * 10 + 10 * 2)
    left = 6 * 4 * 10 + int((h != 0).sum()) * 2
    assert limit == pytest.approx(dense / left)


def test_measure_report_fields() -> None:
    net = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 3))
    fast = sparse.convert(net, threshold=0.0)
    rep = sparse.measure(net, fast, torch.randn(4, 4), batch_size=2, repeats=1)
    assert rep.identical and rep.max_abs_diff < 1e-5
    assert rep.dense_s > 0 and rep.sparse_s > 0 and rep.limit >= 1.0
    assert set(rep.zero_fractions) == {"2"} and net.training and fast.training


@pytest.mark.parametrize("bad", [torch.zeros(0, 4), "x"], ids=["empty", "not-tensor"])
def test_measure_bad_inputs(bad: object) -> None:
    net = nn.Sequential(nn.ReLU(), nn.Linear(4, 3))
    with pytest.raises(actreg.ActregError, match="non-empty tensor"):
        sparse.measure(net, net, bad)  # type: ignore[arg-type]


def test_deepcopy_and_pickle(kernel: str) -> None:
    _, fast = _pair()
    x = random_sparse((2, 32), 0.9)
    with torch.no_grad():
        want = fast(x)
        buf = io.BytesIO()
        torch.save(fast, buf)
        buf.seek(0)
        loaded = torch.load(buf, weights_only=False)
        assert _close(loaded(x), want) and _close(copy.deepcopy(fast)(x), want)


def test_cpp_extension_matches_dense(cpp: object) -> None:
    for rows in (1, 5):
        x = random_sparse((rows, 64), 0.8).double()
        w, b = torch.randn(7, 64, dtype=torch.float64), torch.randn(7, dtype=torch.float64)
        wt, b0 = w.t().contiguous(), b.clone()
        want = nn.functional.linear(x, w, b)
        assert kernels._use_ext(x, wt)
        assert _close(kernels.sparse_linear(x, wt, b), want, torch.float64)
        assert _close(kernels.sparse_linear(x, wt, None), want - b, torch.float64)
        assert torch.equal(b, b0)  # the bias is not written to
        assert nonzero_fraction(x) == pytest.approx(float((x != 0).double().mean()))


@pytest.mark.parametrize("k", [1, 15, 16, 17, 33, 100], ids=lambda k: f"in{k}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("relu", [False, True], ids=["linear", "relu"])
def test_cpp_linear_auto_both_paths(k: int, dtype: torch.dtype, relu: bool, cpp: Any) -> None:
    """Every width around the 16-lane vector step, NaN and -0.0 inputs, both decisions."""
    gen = torch.Generator().manual_seed(k)
    w = torch.randn(9, k, generator=gen, dtype=dtype)
    b = torch.randn(9, generator=gen, dtype=dtype)
    x = random_sparse((1, k), 0.6, generator=gen).to(dtype)
    x[0, 0] = -0.0
    want = nn.functional.linear(x, w, b)
    want = torch.relu(want) if relu else want
    for threshold in (0.0, math.inf):  # sparse kernel, then addmm
        got = cpp.linear_auto(x, w, w.t().contiguous(), b, threshold, relu)
        assert _close(got, want, dtype)
    x[0, k - 1] = math.nan  # NaN is a non-zero input, as in the dense product
    got = cpp.linear_auto(x, w, w.t().contiguous(), b, 0.0, False)
    assert torch.isnan(got).all()


def test_cpp_kernel_rejects_bad_shapes(cpp: Any) -> None:
    x, w = torch.ones(2, 4), torch.ones(3, 5)
    with pytest.raises(RuntimeError, match="transposed weight"):
        cpp.linear_auto(x, w, w.t().contiguous(), None, 0.0, False)
    with pytest.raises(RuntimeError, match="bias"):
        w = torch.ones(3, 4)
        cpp.linear_auto(x, w, w.t().contiguous(), torch.ones(5), 0.0, False)


# ------------------------------------------------------------ SparseSequential (fused runs)


def _mlp(dtype: torch.dtype = torch.float32, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(
        OrderedDict(
            fc1=nn.Linear(20, 48),
            act1=nn.ReLU(),
            drop=nn.Dropout(0.5),
            fc2=nn.Linear(48, 48),
            act2=nn.ReLU(),
            ident=nn.Identity(),
            fc3=nn.Linear(48, 5),
        )
    ).to(dtype)
    with torch.no_grad():  # negative biases: most hidden units off, as after L1 training
        net.fc1.bias.sub_(0.5)
        net.fc2.bias.sub_(0.3)
    return net.eval()


def _fused(net: nn.Module, threshold: float = 0.0, first: bool = True) -> nn.Module:
    return sparse.convert(net, ["fc1", "fc2", "fc3"][0 if first else 1 :], threshold=threshold)


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
    fast = _fused(net, threshold, first)
    assert type(fast) is sparse.SparseSequential
    x = (random_sparse(shape, 0.5) - 0.3).to(dtype)
    with torch.inference_mode():
        want, got = net(x), fast(x)
    assert _fused_ran(fast), "the fused path was not taken"
    assert got.shape == want.shape and got.dtype == want.dtype
    assert _close(got, want, dtype)
    if threshold == math.inf:  # all dense: the same addmm calls as the layers themselves
        assert torch.equal(got, want)


def test_fused_without_extension_is_plain_sequential(monkeypatch: pytest.MonkeyPatch) -> None:
    net = _mlp()
    fast = _fused(net)
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
    fast = _fused(net)
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
    fast = _fused(net)
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
    fast = _fused(net)
    mon = actreg.Monitor(fast, ["act1", "act2"])
    with torch.no_grad():
        fast(random_sparse((4, 20), 0.5))
    stats = mon.compute()
    assert stats["act1"]["l0"] > 0 or stats["act1"]["zero_fraction"] == 1.0
    mon.remove()


@pytest.mark.parametrize(
    "change", ["in-place", "load_state_dict", "new-parameter", "replace-layer", "delete-layer",
               "threshold", "dropout-train", "to-double"],
)  # fmt: skip
def test_fused_plan_follows_changes(
    change: str, cpp: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    net = _mlp()
    fast = _fused(net)
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
        if change in ("new-parameter", "replace-layer"):
            net = copy.deepcopy(fast).float()
            for m in net.modules():  # the reference: plain modules, one by one
                if isinstance(m, SparseInputLinear):
                    m.threshold = math.inf
            monkeypatch.setattr(kernels, "_EXT", False)
            want = net(x)
            monkeypatch.setattr(kernels, "_EXT", cpp)
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
        fast = sparse.convert(net, ["fc1", "fc2", "fc3"], threshold=0.0)
        assert _close(fast(x), net(x))
    with torch.no_grad():
        fast = _fused(net)
        want = fast(x)
        buf = io.BytesIO()
        torch.save(fast, buf)
        buf.seek(0)
        loaded = torch.load(buf, weights_only=False)
        assert "_actreg_plan" not in loaded.__dict__
        assert _close(loaded(x), want) and _close(copy.deepcopy(fast)(x), want)


def test_fused_errors_are_pytorchs(cpp: object) -> None:
    fast = _fused(_mlp())
    with torch.no_grad(), pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        fast(torch.ones(2, 21))
    with torch.no_grad(), pytest.raises(RuntimeError, match="dtype"):
        fast(torch.ones(2, 20, dtype=torch.float64))


def test_convert_fuse_false_and_subclass_kept() -> None:
    net = _mlp()
    assert type(sparse.convert(net, threshold=0.5, fuse=False)) is nn.Sequential

    class MySeq(nn.Sequential):
        pass

    mine = MySeq(nn.ReLU(), nn.Linear(4, 2))
    assert type(sparse.convert(mine, threshold=0.5)) is MySeq


def test_convert_inplace_changes_class_of_model() -> None:
    net = _mlp()
    out = sparse.convert(net, threshold=0.5, inplace=True)
    assert out is net and type(net) is sparse.SparseSequential


# ------------------------------------------------------------ fold_input_scaling, eligible


@pytest.mark.parametrize("kind", ["scalar", "vector", "identity"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_fold_input_scaling(kind: str, bias: bool) -> None:
    torch.manual_seed(0)
    lin = nn.Linear(6, 3, bias=bias).double()
    shift: float | torch.Tensor
    scale: float | torch.Tensor
    if kind == "scalar":
        shift, scale = 0.13, 0.31
    elif kind == "vector":
        shift, scale = torch.rand(6), torch.rand(6) + 0.5
    else:
        shift, scale = 0.0, 1.0
    folded = sparse.fold_input_scaling(lin, shift, scale)
    x = random_sparse((4, 6), 0.7).double()
    with torch.no_grad():
        want = lin((x - torch.as_tensor(shift, dtype=torch.float64))
                   / torch.as_tensor(scale, dtype=torch.float64))  # fmt: skip
        assert torch.allclose(folded(x), want, atol=1e-12)
    assert folded.weight.dtype == torch.float64 and folded is not lin
    assert folded.bias is not None  # a shift needs a bias even when the layer had none


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"shift": torch.zeros(5)}, "one per input feature"),
        ({"scale": 0.0}, "non-zero"),
        ({"scale": math.nan}, "finite"),
    ],
)
def test_fold_input_scaling_bad(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(actreg.ActregError, match=match):
        sparse.fold_input_scaling(nn.Linear(6, 3), **kwargs)
    with pytest.raises(actreg.ActregError, match="nn.Linear"):
        sparse.fold_input_scaling(nn.ReLU())  # type: ignore[arg-type]


def test_eligible_lists_default_choice() -> None:
    assert sparse.eligible(_mlp()) == ["fc2", "fc3"]


def test_measure_with_converted_inputs() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    raw = random_sparse((8, 6), 0.7)
    shift, scale = 0.2, 0.4
    fast = copy.deepcopy(net)
    fast[0] = sparse.fold_input_scaling(net[0], shift, scale)
    fast = sparse.convert(fast, ["0", "2"], threshold=0.0)
    rep = sparse.measure(
        net, fast, (raw - shift) / scale, converted_inputs=raw, batch_size=1, repeats=1
    )
    assert rep.identical and rep.max_abs_diff < 1e-5
    assert rep.zero_fractions["0"] == pytest.approx(float((raw == 0).float().mean()))
    with pytest.raises(actreg.ActregError, match="same examples"):
        sparse.measure(net, fast, raw, converted_inputs=raw[:3])
