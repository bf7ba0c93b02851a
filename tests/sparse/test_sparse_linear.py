"""SparseInputLinear: same outputs as nn.Linear on both kernel sets, its sparse/dense decision,
its caches (no timing assertions)."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from sparse_nets import close as _close
from torch import nn

import actreg
from actreg import sparse
from actreg._cpp import Backend
from actreg.sparse import SparseInputLinear
from actreg.sparse import linear as linear_module
from actreg.sparse._kernels import random_sparse

KERNELS = "sparse"  # see tests/conftest.py: cpp


@pytest.fixture(params=["torch", "cpp"])
def kernel(request: pytest.FixtureRequest) -> Backend:
    """Run a test on both kernel sets: the backend to convert with."""
    if request.param == "cpp":
        return request.getfixturevalue("cpp")
    return sparse.backend("torch")


def _pair(
    i: int = 32,
    o: int = 16,
    bias: bool = True,
    dtype: torch.dtype = torch.float32,
    kernels: str | Backend = "torch",
) -> tuple[nn.Linear, SparseInputLinear]:
    dense = nn.Linear(i, o, bias=bias, dtype=dtype)
    return dense, SparseInputLinear.from_linear(
        copy.deepcopy(dense), threshold=0.0, kernels=kernels
    )


SHAPES = [(1, 32), (5, 32), (32,), (2, 3, 32), (0, 32)]


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.99, 1.0], ids=lambda s: f"zeros{s:g}")
@pytest.mark.parametrize("shape", SHAPES, ids=["batch1", "batch5", "1d", "NTH", "empty"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_same_outputs(
    sparsity: float, shape: tuple[int, ...], dtype: torch.dtype, bias: bool, kernel: Backend
) -> None:
    dense, fast = _pair(bias=bias, dtype=dtype, kernels=kernel)
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
    real = linear_module.sparse_linear
    monkeypatch.setattr(linear_module, "sparse_linear", lambda *a: calls.append(1) or real(*a))
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
def test_grad_uses_dense_path(
    training: bool, kernel: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    dense, fast = _pair(kernels=kernel)
    fast.train(training)
    fail = lambda *a: pytest.fail("sparse path with grad")
    monkeypatch.setattr(linear_module, "sparse_linear", fail)
    monkeypatch.setattr(SparseInputLinear, "_cpp", fail)
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
def test_weight_update_refreshes_transposed_copy(change: str, kernel: Backend) -> None:
    _, fast = _pair(kernels=kernel)
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
    fast = SparseInputLinear(100, 4, threshold=threshold, kernels="torch")  # type: ignore[arg-type]
    x = random_sparse((batch, 100), zeros)
    assert fast.uses_sparse(x) is sparse_path
    calls = []
    real = linear_module.sparse_linear
    monkeypatch.setattr(linear_module, "sparse_linear", lambda *a: calls.append(1) or real(*a))
    with torch.no_grad():
        out = fast(x)
    assert bool(calls) is sparse_path
    assert _close(out, nn.functional.linear(x, fast.weight, fast.bias).detach())


def test_dtype_mismatch_falls_back_to_dense_error(kernel: Backend) -> None:
    _, fast = _pair(kernels=kernel)
    with torch.no_grad(), pytest.raises(RuntimeError):
        fast(torch.zeros(2, 32, dtype=torch.float64))


def test_threshold_setter_validates_and_resets() -> None:
    layer = SparseInputLinear(10, 2, threshold=0.9)
    assert layer.threshold_for(4) == 0.9
    layer.threshold = {1: 0.2, 8: 0.3}
    assert layer.threshold_for(4) == 0.3 and layer.threshold_for(2) == 0.2
    with pytest.raises(actreg.ActregError):
        layer.threshold = -0.1


def test_deepcopy_and_pickle(kernel: Backend) -> None:
    _, fast = _pair(kernels=kernel)
    x = random_sparse((2, 32), 0.9)
    with torch.no_grad():
        want = fast(x)
        buf = io.BytesIO()
        torch.save(fast, buf)
        buf.seek(0)
        loaded = torch.load(buf, weights_only=False)
        assert _close(loaded(x), want) and _close(copy.deepcopy(fast)(x), want)
        for copied in (loaded, copy.deepcopy(fast)):
            assert copied.backend.mode == kernel.mode  # the same choice of kernels


@pytest.mark.parametrize("kernels", ["torch", "cpp"])
def test_cpp_path_runs_one_call(kernels: str, monkeypatch: pytest.MonkeyPatch, request) -> None:
    """With the C++ kernels the layer decides and runs in C++ (no Python sparse_linear);
    with kernels="torch" it never asks for them."""
    backend = request.getfixturevalue("cpp") if kernels == "cpp" else sparse.backend("torch")
    dense, fast = _pair(kernels=backend)
    calls: list[int] = []
    real = linear_module.sparse_linear
    monkeypatch.setattr(linear_module, "sparse_linear", lambda *a: calls.append(1) or real(*a))
    x = random_sparse((2, 32), 0.9)
    with torch.no_grad():
        assert _close(fast(x), dense(x))
    assert (fast._cpp() is not None) is (kernels == "cpp")
    assert calls == ([] if kernels == "cpp" else [1])


def test_bad_kernels_choice() -> None:
    with pytest.raises(actreg.ActregError, match='"auto", "torch", "cpp"'):
        SparseInputLinear(4, 2, kernels="fast")  # type: ignore[arg-type]
