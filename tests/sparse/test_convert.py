"""actreg.sparse.convert: which layers, in place or not, names, thresholds, kernels;
fold_input_scaling and eligible."""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from typing import Any

import pytest
import torch
from sparse_nets import close as _close
from sparse_nets import mlp as _mlp
from torch import nn

import actreg
from actreg import sparse
from actreg.sparse import SparseInputLinear
from actreg.sparse._kernels import random_sparse

KERNELS = "sparse"  # see tests/conftest.py: cpp


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
        ({"kernels": "fast"}, 'kernels must be "auto", "torch", "cpp"'),
    ],
    ids=[
        "unknown",
        "not-linear",
        "glob-none",
        "bad-str",
        "above-1",
        "batch0",
        "bool",
        "empty",
        "kernels",
    ],
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


@pytest.mark.parametrize("kernels", ["torch", "cpp", "auto"])
def test_convert_kernels_choice(kernels: str, request: pytest.FixtureRequest) -> None:
    """Every converted layer and fused Sequential holds the chosen backend; "auto" is the
    process's shared default, which (without ACTREG_EXTENSION=0) loads the C++ kernels with
    no opt-in call where they build."""
    if kernels != "torch":
        request.getfixturevalue("cpp")  # skipped where they do not build
    fast = sparse.convert(_mlp(), ["fc1", "fc2", "fc3"], threshold=0.5, kernels=kernels)
    want = sparse.backend(kernels)  # type: ignore[arg-type]
    assert type(fast) is sparse.SparseSequential and fast.backend is want
    assert all(m.backend is want for m in fast.modules() if isinstance(m, SparseInputLinear))
    x = random_sparse((2, 20), 0.5)
    with torch.no_grad():
        assert _close(fast(x), _mlp()(x))
    assert (want.module is None) is (kernels == "torch")
    assert ("_actreg_plan" in fast.__dict__) is (kernels != "torch")  # the fused C++ path


def test_convert_takes_a_backend_object(cpp) -> None:
    fast = sparse.convert(_mlp(), threshold=0.5, kernels=cpp)
    assert fast.fc2.backend is cpp and fast.backend is cpp
