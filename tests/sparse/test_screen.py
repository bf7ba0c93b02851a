"""The exact int8 screen of c_fc in SparseConv1DMLP and of the gate in SparseGatedMLP
(actreg.sparse._screen and the C++ screened_mlp / screened_gated / screen_mask): every unit
it drops is zero in the dense computation, outputs equal the dense block's, widths that
would overflow an int32 sum, weight changes, pickling, the fallbacks, and greedy generate."""

from __future__ import annotations

import copy
import pickle
from typing import Any

import pytest
import torch
from sparse_nets import close
from torch import nn

from actreg import sparse
from actreg.sparse import _screen

transformers = pytest.importorskip(
    "transformers", reason="transformers is not installed (pip install 'actreg[transformers]')"
)

KERNELS = "sparse"  # see tests/conftest.py: cpp


def _mlp(d: int, k: int, zeros: float, seed: int = 0) -> nn.Module:
    """A GPT-2 MLP of width d and FFN k whose units are off on a ``zeros`` fraction of
    normal inputs (each c_fc bias shifted to that quantile)."""
    cfg = transformers.GPT2Config(
        n_embd=d, n_inner=k, n_layer=1, n_head=1, activation_function="relu", resid_pdrop=0.0
    )
    torch.manual_seed(seed)
    mlp = transformers.models.gpt2.modeling_gpt2.GPT2MLP(k, cfg).eval()
    with torch.no_grad():
        pre = torch.randn(512, d) @ mlp.c_fc.weight
        mlp.c_fc.bias.copy_(-torch.quantile(pre, zeros, dim=0))
    return mlp


def _inputs(d: int, how: str, rows: int = 1, seed: int = 1) -> torch.Tensor:
    """Rows of width d: normal, scaled far down or up, or with a few large outliers (as in
    the layer norm outputs of large models)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, d, generator=gen)
    if how == "tiny":
        x *= 1e-20
    elif how == "huge":
        x *= 1e15
    elif how == "outliers":
        x[:, torch.randint(0, d, (3,), generator=gen)] *= 300.0
    elif how == "sparse":
        x[torch.rand(rows, d, generator=gen) < 0.9] = 0.0
    return x


WIDTHS = [(32, 128), (37, 70), (384, 1536), (1030, 333)]
WIDTH_IDS = ["32x128", "37x70-odd", "384x1536-gpt2", "1030x333-two-chunks"]
HOWS = ["normal", "tiny", "huge", "outliers", "sparse"]


def _mask(ext: Any, mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
    p = _screen.pack(mlp.c_fc.weight)
    assert p is not None
    return ext.screen_mask(x, p.qpack, p.unit, mlp.c_fc.bias)


# ------------------------------------------------------------------------------- packing


@pytest.mark.parametrize(("d", "k"), WIDTHS, ids=WIDTH_IDS)
def test_pack_reconstructs_the_weight(d: int, k: int) -> None:
    w = torch.randn(d, k)
    w[:, 0] = 0.0  # a unit with no weights
    p = _screen.pack(w)
    assert p is not None and p.qpack.dtype is torch.int8 and torch.equal(p.wt, w.t())
    q = p.qpack.permute(0, 2, 1, 3).reshape(-1, p.qpack.shape[1] * 2)[:k, :d].double()
    s, err = p.unit[0, :k], p.unit[2, :k]
    resid = (w.t().double() - s[:, None] * q).norm(dim=1)
    assert torch.allclose(resid, err, rtol=1e-9, atol=1e-12)
    assert float(q.abs().max()) == 127 and float(q[0].abs().sum()) == 0
    assert bool((resid <= s * (d**0.5) / 2 * (1 + 1e-9)).all())  # rounding: half a step


@pytest.mark.parametrize(
    "w",
    [torch.randn(4, 8).double(), torch.full((4, 8), float("nan")), torch.randn(4, 8).t()[:, 0]],
    ids=["float64", "nan", "1-d"],
)
def test_pack_refuses_what_the_bound_does_not_cover(w: torch.Tensor) -> None:
    assert _screen.pack(w) is None


# ------------------------------------------------------------------------------ soundness


@pytest.mark.parametrize(("d", "k"), WIDTHS, ids=WIDTH_IDS)
@pytest.mark.parametrize("how", HOWS, ids=HOWS)
@pytest.mark.parametrize("zeros", [0.5, 0.9, 0.99], ids=["z50", "z90", "z99"])
def test_every_unit_dropped_is_zero_in_the_dense_layer(
    d: int, k: int, how: str, zeros: float, cpp: Any
) -> None:
    ext = cpp.load()
    mlp = _mlp(d, k, zeros)
    x = _inputs(d, how, rows=64)
    keep = _mask(ext, mlp, x)
    w, b = mlp.c_fc.weight, mlp.c_fc.bias
    pre32 = torch.addmm(b, x, w)
    pre64 = x.double() @ w.double() + b.double()
    assert not bool((pre32 > 0)[~keep].any())  # float32, as the dense layer computes it
    assert not bool((pre64 > 0)[~keep].any())  # and in exact(er) arithmetic
    if how == "normal":  # the screen does prove most zeros zero
        assert float((~keep).float().mean()) > 0.5 * zeros


@pytest.mark.parametrize("seed", range(20), ids=[f"seed{s}" for s in range(20)])
def test_bound_never_violated_on_random_layers(seed: int, cpp: Any) -> None:
    """Random widths, weight scales per unit over 12 orders of magnitude, biases next to the
    pre-activations (the units that are barely off), inputs of random scales."""
    ext = cpp.load()
    gen = torch.Generator().manual_seed(seed)
    d, k = (int(v) for v in torch.randint(1, 700, (2,), generator=gen))
    w = torch.randn(d, k, generator=gen) * 10 ** (torch.rand(k, generator=gen) * 12 - 6)
    x = torch.randn(256, d, generator=gen) * 10 ** (torch.rand(256, 1, generator=gen) * 8 - 4)
    pre = x[:1] @ w
    b = (-pre[0] + torch.randn(k, generator=gen) * pre[0].abs() * 1e-6).contiguous()
    p = _screen.pack(w)
    assert p is not None
    keep = ext.screen_mask(x, p.qpack, p.unit, b)
    assert not bool((torch.addmm(b, x, w) > 0)[~keep].any())
    assert not bool((x.double() @ w.double() + b.double() > 0)[~keep].any())


@pytest.mark.parametrize("d", [600, 1100, 20_000], ids=["d600", "d1100", "d20000"])
def test_no_int32_overflow_at_full_scale(d: int, cpp: Any) -> None:
    """Every input and weight at the largest quantized magnitude: one int32 sum over all
    inputs would wrap (600 * 127 * 32,767 > 2^31, to a negative number) and drop the unit
    that is on."""
    ext = cpp.load()
    w = torch.ones(d, 8)
    b = torch.full((8,), -d + 0.5)  # pre-activation +0.5: on
    b[1::2] = -2 * d  # -d: off, far beyond the rounding margin
    x = torch.ones(1, d)
    p = _screen.pack(w)
    assert p is not None
    keep = ext.screen_mask(x, p.qpack, p.unit, b)
    assert keep[0, ::2].all() and not keep[0, 1::2].any()


def test_non_finite_rows_are_not_screened(cpp: Any) -> None:
    ext = cpp.load()
    mlp = _mlp(32, 128, 0.99)
    x = torch.randn(3, 32)
    x[0, 3] = float("nan")
    x[1, 5] = float("inf")
    keep = _mask(ext, mlp, x)
    assert keep[:2].all() and not keep[2].all()
    fast = sparse.SparseConv1DMLP(mlp, threshold=0.0, kernels=cpp)
    with torch.no_grad():
        got, want = fast(x), mlp(x)
    assert torch.equal(got.isnan(), want.isnan()) and close(got[2], want[2])


# ---------------------------------------------------------------------------- the block


def _screened(mlp: nn.Module, backend: Any, **kw: Any) -> tuple[nn.Module, list[int]]:
    """The converted block, and a list that grows by one per C++ screen call."""
    fast = sparse.SparseConv1DMLP(mlp, threshold=0.0, kernels=backend, **kw)
    ext, calls = backend.load(), []

    class Counting:
        def __getattr__(self, attr: str) -> Any:
            fn = getattr(ext, attr)
            if attr == "screened_mlp":
                return lambda *a: calls.append(1) or fn(*a)
            return fn

    fast.backend = copy.copy(backend)
    fast.backend.load = Counting  # type: ignore[method-assign]
    return fast, calls


@pytest.mark.parametrize(("d", "k"), WIDTHS, ids=WIDTH_IDS)
@pytest.mark.parametrize("how", HOWS, ids=HOWS)
@pytest.mark.parametrize("zeros", [0.0, 0.9, 0.99], ids=["z0", "z90", "z99"])
@pytest.mark.parametrize("shape", [(1, 1), (2, 2)], ids=["decode", "b2s2"])
def test_block_output_equals_dense(
    d: int, k: int, how: str, zeros: float, shape: tuple[int, int], cpp: Any
) -> None:
    mlp = _mlp(d, k, zeros)
    fast, calls = _screened(mlp, cpp)
    x = _inputs(d, how, rows=shape[0] * shape[1]).view(*shape, d)
    with torch.no_grad():
        got, want = fast(x), mlp(x)
    scale = float(want.abs().max()) or 1.0
    assert calls and got.shape == want.shape
    assert close(got / scale, want / scale)  # relative to the output's magnitude


@pytest.mark.parametrize("threshold", [0.0, 0.999], ids=["sparse-cproj", "dense-cproj"])
def test_c_proj_dense_rows_where_too_few_zeros(threshold: float, cpp: Any) -> None:
    mlp = _mlp(64, 256, 0.5)
    fast = sparse.SparseConv1DMLP(mlp, threshold=threshold, kernels=cpp)
    x = torch.randn(1, 64)
    with torch.no_grad():
        assert close(fast(x), mlp(x))


def test_fallbacks_compute_the_same(cpp: Any) -> None:
    """Screen off, more rows than SCREEN_ROWS, float64, a cutoff, pure PyTorch, a threshold
    that never goes sparse: the screen does not run, and the outputs still match."""
    mlp = _mlp(48, 192, 0.9)
    x = torch.randn(1, 1, 48)
    many = torch.randn(1, _screen.SCREEN_ROWS + 1, 48)
    cases = {
        "screen off": (_screened(mlp, cpp, screen=False), x),
        "rows": (_screened(mlp, cpp), many),
        "cutoff": (_screened(mlp, cpp, cutoff=1e-30), x),
    }
    with torch.no_grad():
        for name, ((fast, calls), inp) in cases.items():
            assert close(fast(inp), mlp(inp)), name
            assert not calls, name
        m64 = copy.deepcopy(mlp).double()
        f64, calls = _screened(m64, cpp)
        assert close(f64(x.double()), m64(x.double()), torch.float64) and not calls
        torch_only = sparse.SparseConv1DMLP(mlp, threshold=0.0, kernels="torch")
        assert close(torch_only(x), mlp(x))
        never, calls = _screened(mlp, cpp)
        never.threshold = float("inf")
        assert close(never(x), mlp(x)) and not calls


CHANGES = ["in-place", "new-parameter", "load-state-dict"]


@pytest.mark.parametrize("change", CHANGES, ids=CHANGES)
def test_weight_change_after_conversion_is_seen(change: str, cpp: Any) -> None:
    mlp = _mlp(32, 128, 0.9)
    fast, calls = _screened(mlp, cpp)
    x = torch.randn(1, 32)
    with torch.no_grad():
        before = fast(x)  # fills the cache
        other = torch.randn_like(mlp.c_fc.weight)
        if change == "in-place":
            mlp.c_fc.weight.copy_(other)
        elif change == "new-parameter":
            fast.c_fc.weight = nn.Parameter(other)
        else:
            fast.load_state_dict({**fast.state_dict(), "c_fc.weight": other})
        after = fast(x)
        assert len(calls) == 2 and not torch.allclose(after, before)
        assert close(after, mlp(x))  # the children are shared: mlp has the new weight


def test_state_dict_unchanged_and_pickles(cpp: Any) -> None:
    mlp = _mlp(32, 128, 0.9)
    fast = sparse.SparseConv1DMLP(mlp, threshold=0.0, kernels=cpp)
    x = torch.randn(1, 1, 32)
    with torch.no_grad():
        want = fast(x)
    assert "_packed" in fast.__dict__  # the screen ran and cached its weights
    sd, ref = fast.state_dict(), mlp.state_dict()
    assert list(sd) == list(ref) and all(torch.equal(sd[n], ref[n]) for n in ref)
    blob = pickle.dumps(fast)
    assert len(blob) < 1.2 * len(pickle.dumps(mlp)) + 4096  # the cache is not pickled
    back = pickle.loads(blob)
    assert back.screen and "_packed" not in back.__dict__
    with torch.no_grad():
        assert torch.equal(back(x), want)


@pytest.mark.parametrize("batch", [1, 2], ids=["b1", "b2"])
def test_greedy_generate_identical(batch: int, cpp: Any) -> None:
    cfg = transformers.GPT2Config(
        n_embd=64, n_layer=2, n_head=4, n_positions=64, vocab_size=97,
        activation_function="relu", bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )  # fmt: skip
    torch.manual_seed(3)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for block in model.transformer.h:
            block.mlp.c_fc.bias.normal_(-0.3, 0.05)
    fast = sparse.convert(model, threshold=0.0, kernels=cpp)
    ids = torch.randint(2, 97, (batch, 5), generator=torch.Generator().manual_seed(0))
    kw: dict[str, Any] = {"max_new_tokens": 24, "do_sample": False, "use_cache": True}
    want = model.generate(ids, **kw)
    got = fast.generate(ids, **kw)
    assert torch.equal(got, want)
    assert all("_packed" in b.mlp.__dict__ for b in fast.transformer.h)  # screened


# ------------------------------------------------------------------------ gated MLPs (Llama)


def _gated(d: int, k: int, zeros: float, bias: bool, seed: int = 0) -> nn.Module:
    """A Llama MLP (ReLU gate) whose gate units are off on a ``zeros`` fraction of normal
    inputs: through the gate's bias, or without one, through a shift of its input."""
    cfg = transformers.LlamaConfig(
        hidden_size=d, intermediate_size=k, hidden_act="relu", mlp_bias=bias, num_attention_heads=1,
        num_key_value_heads=1, head_dim=2,  # (attention is not used: no odd RoPE)
    )  # fmt: skip
    torch.manual_seed(seed)
    mlp = transformers.models.llama.modeling_llama.LlamaMLP(cfg).eval()
    if bias:
        with torch.no_grad():
            pre = torch.randn(512, d) @ mlp.gate_proj.weight.t()
            mlp.gate_proj.bias.copy_(-torch.quantile(pre, zeros, dim=0))
            mlp.up_proj.bias.normal_(0.0, 0.02)
            mlp.down_proj.bias.normal_(0.0, 0.02)
    return mlp


def _gated_screened(mlp: nn.Module, backend: Any, **kw: Any) -> tuple[nn.Module, list[int]]:
    fast = sparse.SparseGatedMLP(mlp, threshold=0.0, kernels=backend, **kw)
    ext, calls = backend.load(), []

    class Counting:
        def __getattr__(self, attr: str) -> Any:
            fn = getattr(ext, attr)
            if attr == "screened_gated":
                return lambda *a: calls.append(1) or fn(*a)
            return fn

    fast.backend = copy.copy(backend)
    fast.backend.load = Counting  # type: ignore[method-assign]
    return fast, calls


@pytest.mark.parametrize(
    ("d", "k"), [(32, 128), (37, 70), (256, 1024)], ids=["32", "37-odd", "256"]
)
# (not "tiny": without biases the gated products of 1e-20 inputs are float32 subnormals)
@pytest.mark.parametrize("how", HOWS[:1] + HOWS[2:], ids=HOWS[:1] + HOWS[2:])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("threshold", [0.0, 0.999], ids=["sparse-down", "dense-down"])
def test_gated_output_equals_dense(
    d: int, k: int, how: str, bias: bool, threshold: float, cpp: Any
) -> None:
    mlp = _gated(d, k, 0.9, bias)
    fast, calls = _gated_screened(mlp, cpp)
    fast.threshold = threshold
    x = _inputs(d, how, rows=3).view(1, 3, d)
    with torch.no_grad():
        got, want = fast(x), mlp(x)
    scale = float(want.abs().max()) or 1.0
    assert calls and got.shape == want.shape and close(got / scale, want / scale)


def test_gated_fallbacks_and_weight_change(cpp: Any) -> None:
    mlp = _gated(32, 128, 0.9, True)
    x = torch.randn(1, 1, 32)
    with torch.no_grad():
        off, calls = _gated_screened(mlp, cpp, screen=False)
        assert close(off(x), mlp(x)) and not calls
        fast, calls = _gated_screened(mlp, cpp)
        many = torch.randn(1, _screen.SCREEN_ROWS + 1, 32)
        assert close(fast(many), mlp(many)) and not calls
        before = fast(x)
        mlp.gate_proj.weight.mul_(-1.0)  # in place: the cache must notice
        after = fast(x)
        assert len(calls) == 2 and not torch.allclose(after, before) and close(after, mlp(x))
        back = pickle.loads(pickle.dumps(fast))
        assert "_packed" not in back.__dict__ and close(back(x), mlp(x))


def test_gated_greedy_generate_identical(cpp: Any) -> None:
    cfg = transformers.LlamaConfig(
        hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=97, hidden_act="relu", mlp_bias=True,
        max_position_embeddings=64, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )  # fmt: skip
    torch.manual_seed(3)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.gate_proj.bias.normal_(-0.3, 0.05)
    fast = sparse.convert(model, threshold=0.0, kernels=cpp)
    ids = torch.randint(2, 97, (2, 5), generator=torch.Generator().manual_seed(0))
    kw: dict[str, Any] = {"max_new_tokens": 24, "do_sample": False, "use_cache": True}
    assert torch.equal(fast.generate(ids, **kw), model.generate(ids, **kw))
    assert all("_packed" in layer.mlp.__dict__ for layer in fast.model.layers)
