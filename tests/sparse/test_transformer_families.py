"""actreg.sparse.convert on the transformer families beyond GPT-2 and Llama, each built from a
tiny config: two-Linear MLPs (GPT-NeoX, Phi, GPT-J, CodeGen, Falcon, T5), BERT-style split
FFNs (BERT, RoBERTa, ELECTRA), gated copies (Mistral, Qwen2, Gemma), OPT's inline FFN;
look-alikes, shared blocks, activations without exact zeros."""

from __future__ import annotations

import copy
import pickle
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import pytest
import torch
from sparse_nets import close
from torch import nn

from actreg import ActregError, sparse
from actreg.sparse import _recognize as rec
from actreg.sparse import linear as lin
from actreg.sparse import linear_mlp
from actreg.sparse import transformer as tr

transformers = pytest.importorskip(
    "transformers", reason="transformers is not installed (pip install 'actreg[transformers]')"
)
T = transformers

KERNELS = "sparse"  # see tests/conftest.py: cpp
VOCAB = 64
IDS = {"bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1}
LM = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": VOCAB}
BERT = {**LM, "intermediate_size": 96, "max_position_embeddings": 64}


class Family(NamedTuple):
    build: Callable[[str], nn.Module]  # activation name -> model
    ffn: str  # the FFN names, {} the layer index
    kind: str
    wrapper: type[nn.Module]
    generates: bool  # a decoder LM (or seq2seq) whose greedy tokens are compared


def _neox(act: str) -> nn.Module:
    cfg = T.GPTNeoXConfig(**LM, intermediate_size=96, hidden_act=act, **IDS)
    return T.GPTNeoXForCausalLM(cfg)


def _phi(act: str) -> nn.Module:
    return T.PhiForCausalLM(T.PhiConfig(**LM, intermediate_size=96, hidden_act=act, **IDS))


def _gptj(act: str) -> nn.Module:
    cfg = T.GPTJConfig(
        n_embd=32, n_layer=2, n_head=4, rotary_dim=4, vocab_size=VOCAB, n_positions=64,
        activation_function=act, resid_pdrop=0.1, **IDS,
    )  # fmt: skip
    return T.GPTJForCausalLM(cfg)


def _codegen(act: str) -> nn.Module:
    cfg = T.CodeGenConfig(
        n_embd=32, n_layer=2, n_head=4, rotary_dim=4, vocab_size=VOCAB, n_positions=64,
        n_ctx=64, activation_function=act, **IDS,
    )  # fmt: skip
    return T.CodeGenForCausalLM(cfg)


def _falcon(act: str) -> nn.Module:
    return T.FalconForCausalLM(T.FalconConfig(**LM, activation=act, **IDS))


def _t5(act: str) -> nn.Module:
    cfg = T.T5Config(
        d_model=32, d_ff=96, d_kv=8, num_layers=2, num_heads=4, vocab_size=VOCAB,
        dense_act_fn=act, decoder_start_token_id=0, eos_token_id=1, pad_token_id=0,
    )  # fmt: skip
    return T.T5ForConditionalGeneration(cfg)


def _bert(act: str) -> nn.Module:
    return T.BertForMaskedLM(T.BertConfig(**BERT, hidden_act=act))


def _roberta(act: str) -> nn.Module:
    return T.RobertaForMaskedLM(T.RobertaConfig(**BERT, hidden_act=act, pad_token_id=1))


def _electra(act: str) -> nn.Module:
    return T.ElectraForMaskedLM(T.ElectraConfig(**BERT, embedding_size=32, hidden_act=act))


def _gated(config: type, model: type) -> Callable[[str], nn.Module]:
    def build(act: str) -> nn.Module:
        cfg = config(
            **LM, num_key_value_heads=2, head_dim=8, intermediate_size=96, hidden_act=act,
            max_position_embeddings=64, **IDS,
        )  # fmt: skip
        return model(cfg)

    return build


LINEAR, SPLIT, GATED = sparse.SparseLinearMLP, sparse.SparseInputLinear, sparse.SparseGatedMLP
_mistral = _gated(T.MistralConfig, T.MistralForCausalLM)
_qwen2 = _gated(T.Qwen2Config, T.Qwen2ForCausalLM)
FAMILIES = {
    "gpt_neox": Family(_neox, "gpt_neox.layers.{}.mlp", "linear", LINEAR, True),
    "phi": Family(_phi, "model.layers.{}.mlp", "linear", LINEAR, True),
    "gptj": Family(_gptj, "transformer.h.{}.mlp", "linear", LINEAR, True),
    "codegen": Family(_codegen, "transformer.h.{}.mlp", "linear", LINEAR, True),
    "falcon": Family(_falcon, "transformer.h.{}.mlp", "linear", LINEAR, True),
    "t5": Family(_t5, "encoder.block.{}.layer.1.DenseReluDense", "linear", LINEAR, True),
    "bert": Family(_bert, "bert.encoder.layer.{}.output.dense", "split", SPLIT, False),
    "roberta": Family(_roberta, "roberta.encoder.layer.{}.output.dense", "split", SPLIT, False),
    "electra": Family(_electra, "electra.encoder.layer.{}.output.dense", "split", SPLIT, False),
    "mistral": Family(_mistral, "model.layers.{}.mlp", "gated", GATED, True),
    "qwen2": Family(_qwen2, "model.layers.{}.mlp", "gated", GATED, True),
}
NAMES = list(FAMILIES)
T5_DECODER = "decoder.block.{}.layer.2.DenseReluDense"


def _expected(fam: str) -> list[str]:
    names = [FAMILIES[fam].ffn.format(i) for i in range(2)]
    return names + [T5_DECODER.format(i) for i in range(2)] if fam == "t5" else names


def _first_layer(model: nn.Module, name: str) -> nn.Module:
    """The layer before the activation of the FFN that ``ffns`` lists as ``name``."""
    parts = rec.ffn_parts(model.get_submodule(name))
    if parts is None:  # a split FFN's output.dense: its layer is two names up
        layer = model.get_submodule(name.rsplit(".", 2)[0])
        parts = rec.ffn_parts(layer)
        assert parts is not None
        return layer.get_submodule(parts.roles["in"])
    return model.get_submodule(name).get_submodule(parts.roles.get("in", "gate_proj"))


def _model(fam: str, act: str = "relu", shift: float = 0.1) -> nn.Module:
    model = FAMILIES[fam].build(act)
    with torch.no_grad():  # most units off, as after L1 training
        for name in rec.ffns(model):
            b = _first_layer(model, name).bias
            if b is not None:
                b.normal_(-shift, 0.02)
    return model.eval()


def _tokens(batch: int, seq: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(2, VOCAB, (batch, seq), generator=gen)


def _logits(model: nn.Module, ids: torch.Tensor, **kw: Any) -> torch.Tensor:
    if isinstance(model, T.T5ForConditionalGeneration):
        kw["decoder_input_ids"] = ids
    return model(input_ids=ids, **kw).logits


@pytest.fixture(params=["torch", "cpp"])
def kernels(request: pytest.FixtureRequest) -> Any:
    """Pure PyTorch, and the C++ kernels (skipped where they do not build)."""
    return request.getfixturevalue("cpp") if request.param == "cpp" else "torch"


def _count_sparse(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record each call of the pure-PyTorch sparse kernels of the converted layers."""
    ran: list[str] = []
    for module, name in (
        (linear_mlp, "sparse_linear"),
        (lin, "sparse_linear"),
        (tr, "gated_sparse"),
    ):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, r=real: ran.append("") or r(*a))
    return ran


# ------------------------------------------------------------------ recognition and eligibility


@pytest.mark.parametrize("fam", NAMES, ids=NAMES)
def test_ffns_found_and_eligible(fam: str) -> None:
    model = _model(fam)
    names = _expected(fam)
    assert rec.ffns(model) == dict.fromkeys(names, FAMILIES[fam].kind)
    assert sparse.eligible(model) == names


@pytest.mark.parametrize("fam", NAMES, ids=NAMES)
def test_lookalike_with_another_forward_is_not_an_ffn(fam: str) -> None:
    model = _model(fam)
    name = _expected(fam)[0]
    owner = name.rsplit(".", 2)[0] if FAMILIES[fam].kind == "split" else name
    block = model.get_submodule(owner)
    parts = rec.ffn_parts(block)
    assert parts is not None
    act, out = block.get_submodule(parts.roles["act"]), block.get_submodule(parts.roles["out"])
    first = _first_layer(model, name)

    class ActLast(type(block)):  # type: ignore[misc]
        def forward(self, x: torch.Tensor, *rest: Any) -> torch.Tensor:
            return act(out(first(x)))

        def feed_forward_chunk(self, x: torch.Tensor) -> torch.Tensor:
            return act(out(first(x)))

    block.__class__ = ActLast
    assert rec.ffn_kind(block) is None and name not in rec.ffns(model)
    assert name not in sparse.eligible(model)


def test_a_dropout_in_the_activation_place_is_not_an_ffn() -> None:
    mlp = _model("gpt_neox").gpt_neox.layers[0].mlp
    mlp.act = nn.Dropout(0.1)
    assert rec.ffn_kind(mlp) is None


def test_sparse_linear_mlp_refuses_what_it_does_not_know() -> None:
    with pytest.raises(ActregError, match="not a two-nn.Linear MLP.*names="):
        sparse.SparseLinearMLP(nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 2)))


# ------------------------------------------------------------------------------- outputs


@pytest.mark.parametrize("fam", NAMES, ids=NAMES)
def test_logits_match_and_the_sparse_path_runs(
    fam: str, kernels: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _model(fam)
    fast = sparse.convert(model, threshold=0.0, kernels=kernels)
    assert all(type(fast.get_submodule(n)) is FAMILIES[fam].wrapper for n in _expected(fam))
    ran = _count_sparse(monkeypatch)
    ids = _tokens(2, 7)
    with torch.no_grad():
        assert close(_logits(fast, ids), _logits(model, ids))
    if kernels == "torch":
        assert len(ran) >= 2, "the sparse path did not run"


@pytest.mark.parametrize("fam", NAMES, ids=NAMES)
def test_state_dict_keys_and_values_unchanged(fam: str) -> None:
    model = _model(fam)
    fast = sparse.convert(model, threshold=0.0, kernels="torch")
    a, b = model.state_dict(), fast.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    changed = {k: v + 0.01 * torch.randn_like(v) for k, v in b.items()}
    fast.load_state_dict(changed)
    model.load_state_dict(changed)
    ids = _tokens(1, 6)
    with torch.no_grad():
        assert close(_logits(fast, ids), _logits(model, ids))


GENERATES = [f for f in NAMES if FAMILIES[f].generates]


@pytest.mark.parametrize("fam", GENERATES, ids=GENERATES)
def test_greedy_generate_identical(fam: str, kernels: Any) -> None:
    model = _model(fam)
    fast = sparse.convert(model, threshold=0.0, kernels=kernels)
    ids = _tokens(2, 5)
    kw: dict[str, Any] = {"max_new_tokens": 16, "do_sample": False, "min_new_tokens": 16}
    want = model.generate(ids, **kw)
    assert want.shape[1] >= 16 and torch.equal(fast.generate(ids, **kw), want)


@pytest.mark.parametrize("fam", NAMES, ids=NAMES)
def test_training_runs_the_original_computation(fam: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model(fam).train()
    fast = sparse.convert(model, threshold=0.0, kernels="torch").train()
    ran = _count_sparse(monkeypatch)
    ids = _tokens(2, 5)
    losses = []
    for m in (model, fast):
        torch.manual_seed(3)  # the same dropout masks
        loss = _logits(m, ids).square().mean()
        loss.backward()
        losses.append(loss)
    assert not ran and torch.equal(losses[0], losses[1])
    grads = dict(model.named_parameters())
    assert all(torch.equal(p.grad, grads[n].grad) for n, p in fast.named_parameters())


@pytest.mark.parametrize("how", ["deepcopy", "pickle"], ids=["deepcopy", "pickle"])
def test_copies_of_a_linear_mlp_compute_the_same(how: str) -> None:
    model = _model("gpt_neox")
    fast = sparse.convert(model, threshold=0.0, kernels="torch")
    ids = _tokens(1, 5)
    with torch.no_grad():
        _logits(fast, ids)  # fills the transposed-weight cache that copies must not carry
    again = copy.deepcopy(fast) if how == "deepcopy" else pickle.loads(pickle.dumps(fast))
    with torch.no_grad():
        assert close(_logits(again, ids), _logits(model, ids))


# ------------------------------------------------------------------------- shared blocks


@pytest.mark.parametrize("fam", NAMES, ids=NAMES)
def test_block_shared_between_layers_stays_shared(fam: str, kernels: Any) -> None:
    model = _model(fam)
    first, second = _expected(fam)[:2]
    parent, child = second.rsplit(".", 1)
    setattr(model.get_submodule(parent), child, model.get_submodule(first))
    assert first in rec.ffns(model) and second in rec.ffns(model)
    fast = sparse.convert(model, threshold=0.0, kernels=kernels)
    assert fast.get_submodule(first) is fast.get_submodule(second)
    assert type(fast.get_submodule(first)) is FAMILIES[fam].wrapper
    assert list(fast.state_dict()) == list(model.state_dict())
    ids = _tokens(2, 6)
    with torch.no_grad():
        assert close(_logits(fast, ids), _logits(model, ids))


# ------------------------------------------------------- activations without exact zeros

GELU = ["gpt_neox", "phi", "t5", "bert", "mistral"]


@pytest.mark.parametrize("fam", GELU, ids=GELU)
def test_gelu_is_not_eligible_and_convert_explains(fam: str) -> None:
    model = _model(fam, "gelu")
    assert len(rec.ffns(model)) >= 2 and sparse.eligible(model) == []
    with pytest.raises(ActregError, match=r"no exact zeros.*relu.*cutoff="):
        sparse.convert(model, threshold=0.0)


def test_gemma_gelu_tanh_converts_only_with_a_cutoff() -> None:
    model = _gated(T.GemmaConfig, T.GemmaForCausalLM)("gelu_pytorch_tanh").eval()
    assert set(rec.ffns(model).values()) == {"gated"} and sparse.eligible(model) == []
    with pytest.raises(ActregError, match="GELUTanh, which gives no exact zeros"):
        sparse.convert(model, threshold=0.0)
    fast = sparse.convert(model, threshold=0.0, cutoff=0.01, kernels="torch")
    assert type(fast.model.layers[0].mlp) is sparse.SparseGatedMLP


@pytest.mark.parametrize("fam", ["gpt_neox", "t5"], ids=["gpt_neox", "t5"])
def test_cutoff_zeroes_small_activations_as_asked(fam: str, kernels: Any) -> None:
    model = _model(fam, "gelu", shift=0.0)
    cut = 0.02
    fast = sparse.convert(model, threshold=0.0, kernels=kernels, cutoff=cut)
    assert all(fast.get_submodule(n).cutoff == cut for n in _expected(fam))

    def zero_small(module: nn.Module, args: Any, out: torch.Tensor) -> torch.Tensor:
        return out.masked_fill(out.abs() <= cut, 0.0)

    for name in _expected(fam):
        rec.activation(model, name).register_forward_hook(zero_small)
    ids = _tokens(2, 6)
    with torch.no_grad():
        assert close(_logits(fast, ids), _logits(model, ids))


def test_cutoff_on_a_split_ffn_names_the_alternative() -> None:
    model = _model("bert", "gelu")
    with pytest.raises(ActregError, match="does not apply.*apply_thresholds"):
        sparse.convert(model, threshold=0.0, cutoff=0.05)
    thresholds = {f"bert.encoder.layer.{i}.intermediate.intermediate_act_fn": 0.05 for i in (0, 1)}
    fast = sparse.convert(model, "bert.encoder.layer.*.output.dense", threshold=0.0)
    ids = _tokens(2, 6)
    with torch.no_grad(), sparse.apply_thresholds(model, thresholds):
        want = _logits(model, ids)
    with torch.no_grad(), sparse.apply_thresholds(fast, thresholds):
        assert close(_logits(fast, ids), want)


# --------------------------------------------------------------- OPT: the FFN in the layer


def _opt() -> nn.Module:
    cfg = T.OPTConfig(
        **LM, ffn_dim=96, word_embed_proj_dim=32, max_position_embeddings=64, **IDS
    )  # activation_function="relu" is OPT's default
    return T.OPTForCausalLM(cfg).eval()


def test_opt_is_not_recognised_and_the_warning_names_fc2() -> None:
    model = _opt()
    assert rec.ffns(model) == {} and sparse.eligible(model) == []
    with pytest.warns(UserWarning, match=r"names=\['model.decoder.layers.0.fc2'"):
        sparse.convert(model, threshold=0.0)


def test_opt_fc2_named_is_exact(kernels: Any) -> None:
    model = _opt()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # found what was named: no warning
        fast = sparse.convert(model, "model.decoder.layers.*.fc2", threshold=0.0, kernels=kernels)
    assert type(fast.model.decoder.layers[1].fc2) is sparse.SparseInputLinear
    ids = _tokens(2, 5)
    kw: dict[str, Any] = {"max_new_tokens": 12, "do_sample": False, "min_new_tokens": 12}
    with torch.no_grad():
        assert close(_logits(fast, ids), _logits(model, ids))
    assert torch.equal(fast.generate(ids, **kw), model.generate(ids, **kw))
