"""actreg.sparse.convert on Hugging Face transformer FFNs: GPT-2 Conv1D MLPs and gated
(Llama) MLPs built from small configs: outputs, state_dict, generate, weight changes,
shared blocks, refusals."""

from __future__ import annotations

import copy
import math
import pickle
from typing import Any

import pytest
import torch
from sparse_nets import close
from torch import nn

from actreg import ActregError, sparse
from actreg.sparse import _recognize as rec
from actreg.sparse import transformer as tr

transformers = pytest.importorskip(
    "transformers", reason="transformers is not installed (pip install 'actreg[transformers]')"
)

KERNELS = "sparse"  # see tests/conftest.py: cpp
VOCAB = 64


def _gpt2(act: str = "relu", shift: float = 0.1, dropout: float = 0.1) -> nn.Module:
    cfg = transformers.GPT2Config(
        n_embd=32, n_layer=2, n_head=4, n_positions=64, vocab_size=VOCAB,
        activation_function=act, bos_token_id=0, eos_token_id=1, pad_token_id=1,
        resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
    )  # fmt: skip
    model = transformers.GPT2LMHeadModel(cfg)
    with torch.no_grad():  # most units off, as after L1 training; biases not zero
        for block in model.transformer.h:
            block.mlp.c_fc.bias.normal_(-shift, 0.02)
            block.mlp.c_proj.bias.normal_(0.0, 0.02)
    return model.eval()


def _llama(act: str = "relu", shift: float = 0.1) -> nn.Module:
    cfg = transformers.LlamaConfig(
        hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=VOCAB, hidden_act=act, mlp_bias=True,
        max_position_embeddings=64, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(cfg)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.gate_proj.bias.normal_(-shift, 0.02)
            layer.mlp.up_proj.bias.normal_(0.0, 0.02)
            layer.mlp.down_proj.bias.normal_(0.0, 0.02)
    return model.eval()


MODELS = {"gpt2": _gpt2, "llama": _llama}
MLP = {"gpt2": "transformer.h.{}.mlp", "llama": "model.layers.{}.mlp"}
WRAPPER = {"gpt2": sparse.SparseConv1DMLP, "llama": sparse.SparseGatedMLP}


@pytest.fixture(params=["torch", "cpp"])
def kernels(request: pytest.FixtureRequest) -> Any:
    """Both kernel choices: pure PyTorch, and the C++ kernels (skipped where they do not
    build)."""
    if request.param == "cpp":
        return request.getfixturevalue("cpp")
    return "torch"


def _tokens(batch: int, seq: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(2, VOCAB, (batch, seq), generator=gen)


def _mlp_of(model: nn.Module, kind: str, i: int = 0) -> nn.Module:
    return model.get_submodule(MLP[kind].format(i))


# ------------------------------------------------------------------ recognition and eligibility


@pytest.mark.parametrize("kind", list(MODELS), ids=list(MODELS))
def test_ffns_found_and_eligible(kind: str) -> None:
    model = MODELS[kind]()
    names = [MLP[kind].format(i) for i in range(2)]
    assert rec.ffns(model) == dict.fromkeys(names, "conv1d" if kind == "gpt2" else "gated")
    assert sparse.eligible(model) == names


def test_lookalike_with_another_forward_is_not_an_ffn() -> None:
    mlp = _mlp_of(_gpt2(), "gpt2")

    class ActLast(type(mlp)):  # type: ignore[misc]
        def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
            return self.act(self.c_proj(self.act(self.c_fc(hidden_states))))

    odd = copy.deepcopy(mlp)
    odd.__class__ = ActLast
    assert rec.ffn_kind(mlp) == "conv1d" and rec.ffn_kind(odd) is None


def test_gelu_and_silu_eligible_lists_none() -> None:
    assert sparse.eligible(_gpt2("gelu_new")) == [] and sparse.eligible(_llama("silu")) == []


# ------------------------------------------------------------------------------- outputs


@pytest.mark.parametrize("kind", list(MODELS), ids=list(MODELS))
@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (3, 7)], ids=["decode", "b1s9", "b3s7"])
def test_block_outputs_match_on_3d_inputs(
    kind: str, shape: tuple[int, int], kernels: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = MODELS[kind]()
    fast = sparse.convert(model, threshold=0.0, kernels=kernels)
    mlp, new = _mlp_of(model, kind), _mlp_of(fast, kind)
    assert type(new) is WRAPPER[kind]
    ran: list[str] = []
    if kernels == "torch":
        real = tr.gated_sparse if kind == "llama" else tr.sparse_linear
        name = "gated_sparse" if kind == "llama" else "sparse_linear"
        monkeypatch.setattr(tr, name, lambda *a: ran.append(name) or real(*a))
    else:  # count the C++ calls that take the sparse path (threshold 0; the screen up to its
        # row limit, else the dense first layer and gated_rows or linear_auto)
        ext = kernels.load()
        names = (
            ("gated_rows", "screened_gated") if kind == "llama" else ("linear_auto", "screened_mlp")
        )

        class Counting:
            def __getattr__(self, attr: str) -> Any:
                fn = getattr(ext, attr)
                if attr in names:
                    return lambda *a: ran.append(attr) or fn(*a)
                return fn

        monkeypatch.setattr(kernels, "load", Counting)
    x = torch.randn(*shape, 32)
    with torch.no_grad():
        out = new(x)
        assert out.shape == x.shape and close(out, mlp(x))
    assert ran, "the sparse path did not run"


@pytest.mark.parametrize("kind", list(MODELS), ids=list(MODELS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_model_logits_match(kind: str, dtype: torch.dtype, kernels: Any) -> None:
    model = MODELS[kind]().to(dtype)
    fast = sparse.convert(model, threshold=0.0, kernels=kernels)
    ids = _tokens(2, 11)
    with torch.no_grad():
        assert close(fast(ids).logits, model(ids).logits, dtype)


def test_bf16_runs_the_original_computation() -> None:
    model = _gpt2().to(torch.bfloat16)
    fast = sparse.convert(model, threshold=0.0, kernels="torch")
    ids = _tokens(1, 5)
    with torch.no_grad():
        assert torch.equal(fast(ids).logits, model(ids).logits)


@pytest.mark.parametrize("kind", list(MODELS), ids=list(MODELS))
def test_state_dict_keys_and_values_unchanged(kind: str) -> None:
    model = MODELS[kind]()
    fast = sparse.convert(model, threshold=0.0, kernels="torch")
    a, b = model.state_dict(), fast.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    fresh = MODELS[kind]()
    fresh.load_state_dict(b)
    ids = _tokens(1, 6)
    with torch.no_grad():
        assert torch.equal(fresh(ids).logits, model(ids).logits)


# ------------------------------------------------------------------------------ generate


@pytest.mark.parametrize("kind", list(MODELS), ids=list(MODELS))
@pytest.mark.parametrize("batch", [1, 3], ids=["b1", "b3"])
def test_greedy_generate_identical_with_kv_cache(kind: str, batch: int, kernels: Any) -> None:
    model = MODELS[kind]()
    fast = sparse.convert(model, threshold=0.0, kernels=kernels)
    ids = _tokens(batch, 5)
    kw: dict[str, Any] = {"max_new_tokens": 24, "do_sample": False, "use_cache": True}
    want = model.generate(ids, **kw)
    got = fast.generate(ids, **kw)
    assert want.shape[1] > ids.shape[1] + 4 and torch.equal(got, want)


@pytest.mark.parametrize("kind", list(MODELS), ids=list(MODELS))
def test_sampling_with_a_fixed_seed_identical(kind: str, kernels: Any) -> None:
    model = MODELS[kind]()
    fast = sparse.convert(model, threshold=0.0, kernels=kernels)
    ids = _tokens(2, 4)
    kw: dict[str, Any] = {"max_new_tokens": 24, "do_sample": True, "top_k": 0, "top_p": 1.0}
    torch.manual_seed(7)
    want = model.generate(ids, **kw)
    torch.manual_seed(7)
    got = fast.generate(ids, **kw)
    torch.manual_seed(8)
    other = model.generate(ids, **kw)
    assert torch.equal(got, want) and not torch.equal(other, want)


# ------------------------------------------------------------------------ weight changes


def _reference(kind: str, fast: nn.Module) -> nn.Module:
    """A dense model with the converted model's current weights."""
    ref = MODELS[kind]()
    ref.load_state_dict(fast.state_dict())
    return ref


def _optimizer_step(fast: nn.Module) -> None:
    fast.train()
    opt = torch.optim.SGD(fast.parameters(), lr=0.5)
    fast(_tokens(2, 6), labels=_tokens(2, 6)).loss.backward()
    opt.step()
    fast.eval()


def _load_state_dict(fast: nn.Module) -> None:
    other = {k: v + 0.01 * torch.randn_like(v) for k, v in fast.state_dict().items()}
    fast.load_state_dict(other)


def _data_swap(fast: nn.Module) -> None:
    for p in fast.parameters():
        p.data = p.data * 1.5


def _new_parameters(fast: nn.Module) -> None:
    for m in fast.modules():
        for name, p in list(m._parameters.items()):
            if p is not None:
                setattr(m, name, nn.Parameter(p.detach() * -0.7))


def _new_child(fast: nn.Module) -> None:
    for m in list(fast.modules()):
        if isinstance(m, sparse.SparseConv1DMLP):
            m.c_proj = copy.deepcopy(m.c_proj)
            nn.init.normal_(m.c_proj.weight)
        if isinstance(m, sparse.SparseGatedMLP):
            m.down_proj = nn.Linear(m.down_proj.in_features, m.down_proj.out_features)


CHANGES = {
    "optimizer_step": _optimizer_step,
    "load_state_dict": _load_state_dict,
    "data_swap": _data_swap,
    "new_parameters": _new_parameters,
    "new_child": _new_child,
}


@pytest.mark.parametrize("kind", list(MODELS), ids=list(MODELS))
@pytest.mark.parametrize("change", list(CHANGES), ids=list(CHANGES))
def test_weight_changes_after_conversion_are_seen(kind: str, change: str, kernels: Any) -> None:
    model = MODELS[kind](dropout=0.0) if kind == "gpt2" else MODELS[kind]()
    fast = sparse.convert(model, threshold=0.0, kernels=kernels)
    ids = _tokens(1, 7)
    with torch.no_grad():
        before = fast(ids).logits  # fills every cache
    CHANGES[change](fast)
    with torch.no_grad():
        after = fast(ids).logits
        assert not torch.allclose(after, before)
        assert close(after, _reference(kind, fast)(ids).logits)


# ------------------------------------------------------------------------- shared blocks


@pytest.mark.parametrize("kind", list(MODELS), ids=list(MODELS))
def test_block_shared_between_layers_stays_shared(kind: str, kernels: Any) -> None:
    model = MODELS[kind]()
    layers = model.transformer.h if kind == "gpt2" else model.model.layers
    layers[1].mlp = layers[0].mlp
    assert len(rec.ffns(model)) == 2
    fast = sparse.convert(model, threshold=0.0, kernels=kernels)
    new = fast.transformer.h if kind == "gpt2" else fast.model.layers
    assert new[0].mlp is new[1].mlp and type(new[0].mlp) is WRAPPER[kind]
    assert list(fast.state_dict()) == list(model.state_dict())
    ids = _tokens(2, 6)
    with torch.no_grad():
        assert close(fast(ids).logits, model(ids).logits)


# ------------------------------------------------------- activations without exact zeros


@pytest.mark.parametrize(
    ("kind", "act"), [("gpt2", "gelu_new"), ("gpt2", "gelu"), ("llama", "silu")],
    ids=["gpt2-gelu_new", "gpt2-gelu", "llama-silu"],
)  # fmt: skip
def test_non_relu_refused_naming_the_fix(kind: str, act: str) -> None:
    with pytest.raises(ActregError, match=r"no exact zeros.*ReLU.*cutoff="):
        sparse.convert(MODELS[kind](act), threshold=0.0)


@pytest.mark.parametrize("kind", list(MODELS), ids=list(MODELS))
def test_cutoff_zeroes_small_activations_as_asked(kind: str, kernels: Any) -> None:
    act = "gelu_new" if kind == "gpt2" else "silu"
    model = MODELS[kind](act, shift=0.0)
    cut = 0.02
    fast = sparse.convert(model, threshold=0.0, kernels=kernels, cutoff={MLP[kind][:-6] + "*": cut})
    assert _mlp_of(fast, kind).cutoff == cut

    def zero_small(module: nn.Module, args: Any, out: torch.Tensor) -> torch.Tensor:
        return out.masked_fill(out.abs() <= cut, 0.0)

    for i in range(2):
        mlp = _mlp_of(model, kind, i)
        (mlp.act if kind == "gpt2" else mlp.act_fn).register_forward_hook(zero_small)
    ids = _tokens(2, 6)
    with torch.no_grad():
        assert close(fast(ids).logits, model(ids).logits)


def test_bad_cutoff_and_unknown_cutoff_name() -> None:
    with pytest.raises(ActregError, match="cutoff must be"):
        sparse.convert(_gpt2("gelu"), threshold=0.0, cutoff=-1.0)
    with pytest.raises(ActregError, match="no module named"):
        sparse.convert(_gpt2("gelu"), threshold=0.0, cutoff={"transformer.h.9.mlp": 0.1})


# --------------------------------------------------------------- names, modes, hooks, copies


def test_names_choose_blocks() -> None:
    fast = sparse.convert(_gpt2(), "transformer.h.1.mlp", threshold=0.0)
    kinds = [type(b.mlp) for b in fast.transformer.h]
    assert kinds == [transformers.models.gpt2.modeling_gpt2.GPT2MLP, sparse.SparseConv1DMLP]
    with pytest.raises(ActregError, match="no nn.Linear and no transformer FFN"):
        sparse.convert(_gpt2(), "transformer.h.0.attn", threshold=0.0)


def test_training_with_grad_runs_the_original_computation() -> None:
    model = _gpt2(dropout=0.0)
    fast = sparse.convert(model, threshold=0.0, kernels="torch")
    ids = _tokens(2, 5)
    for m in (model, fast):
        m.train()
        m(ids, labels=ids).loss.backward()
    grads = dict(model.named_parameters())
    assert all(torch.equal(p.grad, grads[n].grad) for n, p in fast.named_parameters())


def test_hooks_on_children_see_the_activations(kernels: Any) -> None:
    model = _gpt2()
    fast = sparse.convert(model, threshold=0.0, kernels=kernels)
    seen: list[torch.Tensor] = []
    want: list[torch.Tensor] = []
    fast.transformer.h[0].mlp.act.register_forward_hook(lambda m, a, o: seen.append(o))
    model.transformer.h[0].mlp.act.register_forward_hook(lambda m, a, o: want.append(o))
    ids = _tokens(1, 4)
    with torch.no_grad():
        fast(ids)
        model(ids)
    assert len(seen) == 1 and torch.equal(seen[0], want[0])


@pytest.mark.parametrize("how", ["deepcopy", "pickle"], ids=["deepcopy", "pickle"])
@pytest.mark.parametrize("kind", list(MODELS), ids=list(MODELS))
def test_copies_compute_the_same(kind: str, how: str) -> None:
    model = MODELS[kind]()
    fast = sparse.convert(model, threshold=0.0, kernels="torch")
    ids = _tokens(1, 5)
    with torch.no_grad():
        fast(ids)  # fills the caches that copies must not carry stale
    again = copy.deepcopy(fast) if how == "deepcopy" else pickle.loads(pickle.dumps(fast))
    with torch.no_grad():
        assert close(again(ids).logits, model(ids).logits)


def test_auto_threshold_is_calibrated_per_shape() -> None:
    fast = sparse.convert(_gpt2())
    t = fast.transformer.h[0].mlp.threshold
    assert set(t) == {1, 8, 32} and all(0.0 <= v <= 1.0 or v == float("inf") for v in t.values())


def test_a_block_converted_alone_is_returned_wrapped() -> None:
    mlp = _mlp_of(_gpt2(), "gpt2")
    fast = sparse.convert(mlp, threshold=0.0)
    x = torch.randn(2, 3, 32)
    with torch.no_grad():
        assert type(fast) is sparse.SparseConv1DMLP and close(fast(x), mlp(x))


@pytest.mark.parametrize("kind", list(MODELS), ids=list(MODELS))
def test_threshold_inf_never_takes_the_sparse_path(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast = sparse.convert(MODELS[kind](), threshold=math.inf, kernels="torch")
    name = "gated_sparse" if kind == "llama" else "sparse_linear"
    monkeypatch.setattr(tr, name, lambda *a: pytest.fail("the sparse path ran"))
    with torch.no_grad():
        fast(_tokens(1, 4))
