"""The sparse-input kernels: pure PyTorch (bag, gather), the C++ ones, zero counts, crossover."""

from __future__ import annotations

import math

import pytest
import torch
from sparse_nets import close as _close
from torch import nn

from actreg._cpp import Backend
from actreg.sparse import _kernels as kernels
from actreg.sparse._backend import takes
from actreg.sparse._kernels import (
    bag_linear,
    gather_linear,
    nonzero_fraction,
    random_sparse,
    sparse_linear,
)
from actreg.sparse.calibrate import crossover

KERNELS = "sparse"  # see tests/conftest.py: cpp


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


def test_cpp_extension_matches_dense(cpp: Backend) -> None:
    ext = cpp.module
    for rows in (1, 5):
        x = random_sparse((rows, 64), 0.8).double()
        w, b = torch.randn(7, 64, dtype=torch.float64), torch.randn(7, dtype=torch.float64)
        wt, b0 = w.t().contiguous(), b.clone()
        want = nn.functional.linear(x, w, b)
        assert takes(ext, x, wt) and not takes(None, x, wt)
        assert _close(sparse_linear(x, wt, b, ext), want, torch.float64)
        assert _close(sparse_linear(x, wt, None, ext), want - b, torch.float64)
        assert torch.equal(b, b0)  # the bias is not written to
        assert nonzero_fraction(x, ext) == pytest.approx(float((x != 0).double().mean()))


@pytest.mark.parametrize("k", [1, 15, 16, 17, 33, 100], ids=lambda k: f"in{k}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("relu", [False, True], ids=["linear", "relu"])
def test_cpp_linear_auto_both_paths(k: int, dtype: torch.dtype, relu: bool, cpp: Backend) -> None:
    """Every width around the 16-lane vector step, NaN and -0.0 inputs, both decisions."""
    ext = cpp.module
    gen = torch.Generator().manual_seed(k)
    w = torch.randn(9, k, generator=gen, dtype=dtype)
    b = torch.randn(9, generator=gen, dtype=dtype)
    x = random_sparse((1, k), 0.6, generator=gen).to(dtype)
    x[0, 0] = -0.0
    want = nn.functional.linear(x, w, b)
    want = torch.relu(want) if relu else want
    for threshold in (0.0, math.inf):  # sparse kernel, then addmm
        got = ext.linear_auto(x, w, w.t().contiguous(), b, threshold, relu)
        assert _close(got, want, dtype)
    x[0, k - 1] = math.nan  # NaN is a non-zero input, as in the dense product
    got = ext.linear_auto(x, w, w.t().contiguous(), b, 0.0, False)
    assert torch.isnan(got).all()


def test_cpp_kernel_rejects_bad_shapes(cpp: Backend) -> None:
    x, w = torch.ones(2, 4), torch.ones(3, 5)
    with pytest.raises(RuntimeError, match="transposed weight"):
        cpp.module.linear_auto(x, w, w.t().contiguous(), None, 0.0, False)
    with pytest.raises(RuntimeError, match="bias"):
        w = torch.ones(3, 4)
        cpp.module.linear_auto(x, w, w.t().contiguous(), torch.ones(5), 0.0, False)
    with pytest.raises(RuntimeError, match="one weight, transposed weight"):
        cpp.module.Chain([w], [w.t().contiguous()], [None], [False], [])


@pytest.mark.parametrize("kernels", ["torch", "cpp"])
def test_calibrate_times_the_chosen_kernels(kernels: str, request) -> None:
    """Thresholds in [0, 1] or inf per batch size, cached per choice of kernels."""
    from actreg.sparse import backend, calibrate

    chosen = request.getfixturevalue("cpp") if kernels == "cpp" else backend("torch")
    got = calibrate(64, 32, batch_sizes=(1, 4), sparsities=(0.5, 0.9), repeats=1, kernels=chosen)
    assert set(got) == {1, 4}
    assert all(0.0 <= t <= 1.0 or t == math.inf for t in got.values())


@pytest.mark.parametrize("d", [1, 16, 33], ids=lambda d: f"d{d}")
@pytest.mark.parametrize("rows", [1, 5], ids=["batch1", "batch5"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_cpp_gated_rows_matches_formula(
    d: int, rows: int, dtype: torch.dtype, bias: bool, cpp: Backend
) -> None:
    k, o = 40, 7
    x = torch.randn(rows, d, dtype=dtype)
    g = torch.relu(torch.randn(rows, k, dtype=dtype) - 1.0)
    g[0] = 0.0  # a row with no active unit: the output is the bias
    wu, wd = torch.randn(k, d, dtype=dtype), torch.randn(o, k, dtype=dtype)
    bu = torch.randn(k, dtype=dtype) if bias else None
    bd = torch.randn(o, dtype=dtype) if bias else None
    got = cpp.module.gated_rows(x, g, wu, bu, wd.t().contiguous(), bd)
    want = torch.nn.functional.linear(g * torch.nn.functional.linear(x, wu, bu), wd, bd)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert torch.allclose(got, want, rtol=tol, atol=tol)


def test_cpp_gated_rows_rejects_bad_shapes(cpp: Backend) -> None:
    x, g = torch.randn(2, 4), torch.randn(2, 6)
    with pytest.raises(RuntimeError, match="gated kernel"):
        cpp.module.gated_rows(x, g, torch.randn(6, 5), None, torch.randn(6, 3), None)
