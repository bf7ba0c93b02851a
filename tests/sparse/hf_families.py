"""The transformer families of tests/sparse/test_transformer_families.py, each built from a
tiny config (nothing is downloaded), with the names of their FFNs. Skipped (also when
pytest collects it for doctests) where transformers is not installed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import pytest
import torch
from torch import nn

from actreg import sparse
from actreg.sparse import _recognize as rec

T = pytest.importorskip("transformers")

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


def neox(act: str) -> nn.Module:
    cfg = T.GPTNeoXConfig(**LM, intermediate_size=96, hidden_act=act, **IDS)
    return T.GPTNeoXForCausalLM(cfg)


def phi(act: str) -> nn.Module:
    return T.PhiForCausalLM(T.PhiConfig(**LM, intermediate_size=96, hidden_act=act, **IDS))


def gptj(act: str) -> nn.Module:
    cfg = T.GPTJConfig(
        n_embd=32, n_layer=2, n_head=4, rotary_dim=4, vocab_size=VOCAB, n_positions=64,
        activation_function=act, resid_pdrop=0.1, **IDS,
    )  # fmt: skip
    return T.GPTJForCausalLM(cfg)


def codegen(act: str) -> nn.Module:
    cfg = T.CodeGenConfig(
        n_embd=32, n_layer=2, n_head=4, rotary_dim=4, vocab_size=VOCAB, n_positions=64,
        n_ctx=64, activation_function=act, **IDS,
    )  # fmt: skip
    return T.CodeGenForCausalLM(cfg)


def falcon(act: str) -> nn.Module:
    return T.FalconForCausalLM(T.FalconConfig(**LM, activation=act, **IDS))


def t5(act: str) -> nn.Module:
    cfg = T.T5Config(
        d_model=32, d_ff=96, d_kv=8, num_layers=2, num_heads=4, vocab_size=VOCAB,
        dense_act_fn=act, decoder_start_token_id=0, eos_token_id=1, pad_token_id=0,
    )  # fmt: skip
    return T.T5ForConditionalGeneration(cfg)


def bert(act: str) -> nn.Module:
    return T.BertForMaskedLM(T.BertConfig(**BERT, hidden_act=act))


def roberta(act: str) -> nn.Module:
    return T.RobertaForMaskedLM(T.RobertaConfig(**BERT, hidden_act=act, pad_token_id=1))


def electra(act: str) -> nn.Module:
    return T.ElectraForMaskedLM(T.ElectraConfig(**BERT, embedding_size=32, hidden_act=act))


def gated(config: type, model: type) -> Callable[[str], nn.Module]:
    def make_gated(act: str) -> nn.Module:
        cfg = config(
            **LM, num_key_value_heads=2, head_dim=8, intermediate_size=96, hidden_act=act,
            max_position_embeddings=64, **IDS,
        )  # fmt: skip
        return model(cfg)

    return make_gated


LINEAR, SPLIT, GATED = sparse.SparseLinearMLP, sparse.SparseInputLinear, sparse.SparseGatedMLP
mistral = gated(T.MistralConfig, T.MistralForCausalLM)
qwen2 = gated(T.Qwen2Config, T.Qwen2ForCausalLM)
FAMILIES = {
    "gpt_neox": Family(neox, "gpt_neox.layers.{}.mlp", "linear", LINEAR, True),
    "phi": Family(phi, "model.layers.{}.mlp", "linear", LINEAR, True),
    "gptj": Family(gptj, "transformer.h.{}.mlp", "linear", LINEAR, True),
    "codegen": Family(codegen, "transformer.h.{}.mlp", "linear", LINEAR, True),
    "falcon": Family(falcon, "transformer.h.{}.mlp", "linear", LINEAR, True),
    "t5": Family(t5, "encoder.block.{}.layer.1.DenseReluDense", "linear", LINEAR, True),
    "bert": Family(bert, "bert.encoder.layer.{}.output.dense", "split", SPLIT, False),
    "roberta": Family(roberta, "roberta.encoder.layer.{}.output.dense", "split", SPLIT, False),
    "electra": Family(electra, "electra.encoder.layer.{}.output.dense", "split", SPLIT, False),
    "mistral": Family(mistral, "model.layers.{}.mlp", "gated", GATED, True),
    "qwen2": Family(qwen2, "model.layers.{}.mlp", "gated", GATED, True),
}
NAMES = list(FAMILIES)
T5_DECODER = "decoder.block.{}.layer.2.DenseReluDense"


def expected(fam: str) -> list[str]:
    names = [FAMILIES[fam].ffn.format(i) for i in range(2)]
    return names + [T5_DECODER.format(i) for i in range(2)] if fam == "t5" else names


def first_layer(model: nn.Module, name: str) -> nn.Module:
    """The layer before the activation of the FFN that ``ffns`` lists as ``name``."""
    parts = rec.ffn_parts(model.get_submodule(name))
    if parts is None:  # a split FFN's output.dense: its layer is two names up
        layer = model.get_submodule(name.rsplit(".", 2)[0])
        parts = rec.ffn_parts(layer)
        assert parts is not None
        return layer.get_submodule(parts.roles["in"])
    return model.get_submodule(name).get_submodule(parts.roles.get("in", "gate_proj"))


def make(fam: str, act: str = "relu", shift: float = 0.1) -> nn.Module:
    model = FAMILIES[fam].build(act)
    with torch.no_grad():  # most units off, as after L1 training
        for name in rec.ffns(model):
            b = first_layer(model, name).bias
            if b is not None:
                b.normal_(-shift, 0.02)
    return model.eval()


def tokens(batch: int, seq: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(2, VOCAB, (batch, seq), generator=gen)


def logits(model: nn.Module, ids: torch.Tensor, **kw: Any) -> torch.Tensor:
    if isinstance(model, T.T5ForConditionalGeneration):
        kw["decoder_input_ids"] = ids
    return model(input_ids=ids, **kw).logits


def opt() -> nn.Module:
    cfg = T.OPTConfig(
        **LM, ffn_dim=96, word_embed_proj_dim=32, max_position_embeddings=64, **IDS
    )  # activation_function="relu" is OPT's default
    return T.OPTForCausalLM(cfg).eval()
