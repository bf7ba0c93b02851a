"""The C++ Monitor kernel (actreg._monitor_kernels, csrc/monitor.cpp): same results as the
PyTorch path of _sweep.batch_stats, and a Monitor using it gives the same statistics."""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch
from torch import nn

import actreg
from actreg import ActregError, _sweep
from actreg import _monitor_kernels as kernels
from actreg._cpp import Backend

TOL = {torch.float32: 1e-5, torch.float64: 1e-12}


KERNELS = "monitor"  # see tests/conftest.py: cpp
OFF = Backend("actreg_monitor", "monitor.cpp", "the C++ Monitor kernel", mode="off")


# (shape, dim): 1-D, 2-D both axes, (N, T, H) sequences, NCHW conv maps, odd sizes (unit
# counts not a multiple of 4, rows not a multiple of 16), size-1 axes.
CASES = [
    ((1,), 0),
    ((7,), 0),
    ((33,), 0),
    ((5, 16), 1),
    ((5, 16), 0),
    ((3, 37), 1),
    ((1, 1), 1),
    ((1, 1), 0),
    ((12, 5, 8), 2),
    ((12, 5, 8), 1),
    ((12, 5, 8), 0),
    ((4, 6, 5, 5), 1),
    ((2, 7, 3, 3), 1),
    ((2, 3, 4, 5), 3),
    ((2, 3, 4, 5), 2),
    ((3, 1, 4, 4), 1),
    ((64, 32, 28, 28), 1),
]


def _ids(case: tuple[tuple[int, ...], int]) -> str:
    shape, dim = case
    return "x".join(map(str, shape)) + f"-d{dim}"


def _sample(shape: tuple[int, ...], dtype: torch.dtype, kind: str, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    if kind == "relu":
        x = x.relu()
    elif kind == "zeros":
        x = torch.zeros(shape, dtype=torch.float64)
    elif kind == "nan":
        x = x.relu()
        x.view(-1)[x.numel() // 2] = math.nan
    elif kind == "inf":
        x.view(-1)[0] = math.inf
        x.view(-1)[-1] = -math.inf
    elif kind == "negative":
        x = -x.abs() - 1.0  # the max is negative: the running max must not start at 0
    return x.to(dtype)


def _check(ext: object, x: torch.Tensor, dim: int, eps: float) -> None:
    want = _sweep.batch_stats(x, dim, eps)
    want = tuple(t.clone() for t in want)
    got = kernels.batch_stats(ext, x, dim, eps)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype
    tol = TOL[x.dtype] * (10 if x.numel() > 10**5 else 1)
    torch.testing.assert_close(got[0], want[0], rtol=tol, atol=tol, equal_nan=True)
    assert torch.equal(got[1], want[1])  # counts: exact
    torch.testing.assert_close(got[2], want[2], rtol=0, atol=0, equal_nan=True)  # max: exact


@pytest.mark.parametrize("eps", [0.0, 0.3], ids=["eps0", "eps0.3"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("kind", ["signed", "relu", "zeros", "nan", "inf", "negative"])
@pytest.mark.parametrize("case", CASES, ids=[_ids(c) for c in CASES])
def test_kernel_equals_pytorch_path(cpp, case, kind, dtype, eps):
    shape, dim = case
    _check(cpp.module, _sample(shape, dtype, kind), dim, eps)


def test_eps_is_rounded_to_the_dtype(cpp):
    """A value equal to eps rounded to float32 is not active, as with the PyTorch path."""
    eps = 0.1
    x = torch.tensor([[0.1, 0.1000001, -0.1, 0.0]], dtype=torch.float32)
    _check(cpp.module, x, 1, eps)
    _check(cpp.module, x, 0, eps)


def test_norms_into_a_buffer(cpp):
    x = _sample((4, 3, 5), torch.float32, "signed")
    buf = torch.full((100,), 7.0)
    norms, _, _ = kernels.batch_stats(cpp.module, x, 1, 0.0, buf)
    assert norms.data_ptr() == buf.data_ptr() and norms.shape == (2, 20)
    torch.testing.assert_close(norms, _sweep.batch_stats(x, 1, 0.0)[0])


def test_usable_only_for_contiguous_cpu_float():
    x = torch.randn(4, 6)
    assert kernels.usable(x)
    assert not kernels.usable(x.t())
    assert not kernels.usable(x.half())
    assert not kernels.usable(torch.empty(0, 6))


def test_monitor_default_kernels_and_off(monkeypatch):
    """A Monitor asks the process's shared backend (no opt-in call); an "off" backend keeps
    it on the PyTorch path."""
    net = nn.Sequential(OrderedDict(act=nn.ReLU()))
    mon = actreg.Monitor(net, "act")
    assert mon.kernels is kernels.backend()
    monkeypatch.setattr(kernels, "batch_stats", lambda *a: pytest.fail("C++ kernel used"))
    mon.kernels = OFF
    net(torch.randn(4, 6))
    assert mon.compute()["act"]["zero_fraction"] > 0
    mon.remove()


def test_kernel_rejects_bad_input(cpp):
    with pytest.raises(RuntimeError, match="contiguous CPU"):
        cpp.module.batch_stats(torch.randn(4, 6).t(), 0, 0.0, None)
    with pytest.raises(RuntimeError, match="dim out of range"):
        cpp.module.batch_stats(torch.randn(4, 6), 2, 0.0, None)
    with pytest.raises(RuntimeError, match="empty"):
        cpp.module.batch_stats(torch.empty(0, 6), 1, 0.0, None)
    with pytest.raises(RuntimeError, match="out buffer"):
        cpp.module.batch_stats(torch.randn(4, 6), 1, 0.0, torch.empty(3))


def _net() -> nn.Module:
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(2, 6, 3, padding=1),
            cact=nn.ReLU(),
            flat=nn.Flatten(),
            fc=nn.Linear(6 * 5 * 5, 9),
            act=nn.Tanh(),
        )
    )


def _monitor_stats(
    net: nn.Module, eps: float, batches: list[torch.Tensor], backend: Backend
) -> dict:
    with actreg.Monitor(net, ["cact", "act", "fc"], eps=eps, dim={"cact": 1}) as mon:
        mon.kernels = backend
        for x in batches:
            net(x)
        return mon.compute()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("eps", [0.0, 0.05], ids=["eps0", "eps0.05"])
def test_monitor_same_with_and_without_the_kernel(cpp, monkeypatch, eps, dtype):
    torch.manual_seed(0)
    net = _net().to(dtype)
    batches = [torch.randn(n, 2, 5, 5, dtype=dtype) for n in (3, 1, 8)]
    with_cpp = _monitor_stats(net, eps, batches, cpp)
    without = _monitor_stats(net, eps, batches, OFF)
    assert set(with_cpp) == set(without) == {"cact", "act", "fc"}
    for layer, stats in without.items():
        for key, value in stats.items():
            got = with_cpp[layer][key]
            if isinstance(value, torch.Tensor):
                assert torch.equal(got, value), (layer, key)  # counts: exact
            elif key == "max" or key in ("zero_fraction", "l0", "dead_fraction"):
                assert got == value, (layer, key)
            else:
                assert got == pytest.approx(value, rel=1e-5, abs=1e-7), (layer, key)


def test_monitor_uses_the_kernel_and_falls_back(cpp, monkeypatch):
    calls = []
    real = kernels.batch_stats

    def counting(*args, **kwargs):
        calls.append(args[1].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(kernels, "batch_stats", counting)
    net = nn.Sequential(OrderedDict(act=nn.Identity()))
    with actreg.Monitor(net, "act") as mon:
        mon.kernels = cpp
        net(torch.randn(4, 6))  # C++
        net(torch.randn(6, 4).t())  # not contiguous: PyTorch path
        net(torch.randn(4, 6).half())  # upcast to float32 by the check: C++
        stats = mon.compute()["act"]
    assert len(calls) == 2
    assert stats["l0"] == pytest.approx(6.0)


@pytest.mark.parametrize(
    ("dim", "x", "match"),
    [
        (3, torch.ones(2, 3), r"layer 'act'.*dim=3 is out of range .* \(2, 3\)"),
        (-1, torch.ones(2, 3, dtype=torch.long), "floating-point tensor, got dtype torch.int64"),
        (-1, torch.tensor(1.0), "0-dim"),
    ],
    ids=["axis", "integer", "scalar"],
)
def test_bad_batches_same_errors_with_the_kernel(cpp, dim, x, match):
    model = nn.Sequential(OrderedDict(act=nn.Identity()))
    with actreg.Monitor(model, "act", dim=dim) as mon, pytest.raises(ActregError, match=match):
        mon.kernels = cpp
        model(x)


def test_unit_count_change_is_an_error_with_the_kernel(cpp):
    model = nn.Sequential(OrderedDict(act=nn.Identity()))
    with actreg.Monitor(model, "act") as mon:
        mon.kernels = cpp
        model(torch.ones(2, 3))
        with pytest.raises(ActregError, match="earlier batches had 3"):
            model(torch.ones(2, 4))
