"""Hugging Face transformers: attach/Monitor/TargetSparsity on real model classes, the Trainer.

Models are built from small configs (nothing is downloaded): GPT-2, Llama, BERT, and the
families actreg.sparse.convert also handles (GPT-NeoX, Phi, GPT-J, Falcon, T5, RoBERTa, and
OPT, whose FFN sits in the decoder layer). FFN activations are found by glob, as a user
would write them.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import actreg

transformers = pytest.importorskip("transformers")

from actreg.integrations.transformers import ActregCallback  # noqa: E402

VOCAB = 50


def gpt2() -> nn.Module:
    cfg = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=2, n_head=2,
        activation_function="relu", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(cfg)


def llama() -> nn.Module:
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
        hidden_act="relu",
    )  # fmt: skip
    return transformers.LlamaForCausalLM(cfg)


def bert() -> nn.Module:
    cfg = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=32, hidden_act="relu",
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    return transformers.BertForMaskedLM(cfg)


SMALL = {"vocab_size": VOCAB, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}


def gpt_neox() -> nn.Module:
    cfg = transformers.GPTNeoXConfig(**SMALL, intermediate_size=64, hidden_act="relu")
    return transformers.GPTNeoXForCausalLM(cfg)


def phi() -> nn.Module:
    cfg = transformers.PhiConfig(**SMALL, intermediate_size=64, hidden_act="relu")
    return transformers.PhiForCausalLM(cfg)


def gptj() -> nn.Module:
    cfg = transformers.GPTJConfig(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, rotary_dim=4, n_positions=32,
        activation_function="relu",
    )  # fmt: skip
    return transformers.GPTJForCausalLM(cfg)


def falcon() -> nn.Module:
    return transformers.FalconForCausalLM(transformers.FalconConfig(**SMALL, activation="relu"))


def t5() -> nn.Module:
    cfg = transformers.T5Config(
        vocab_size=VOCAB, d_model=32, d_ff=64, d_kv=16, num_layers=2, num_heads=2,
        dense_act_fn="relu", decoder_start_token_id=0,
    )  # fmt: skip
    return transformers.T5ForConditionalGeneration(cfg)


def roberta() -> nn.Module:
    cfg = transformers.RobertaConfig(
        **SMALL, intermediate_size=64, max_position_embeddings=40, hidden_act="relu"
    )
    return transformers.RobertaForMaskedLM(cfg)


def opt() -> nn.Module:
    cfg = transformers.OPTConfig(**SMALL, ffn_dim=64, word_embed_proj_dim=32)  # ReLU by default
    return transformers.OPTForCausalLM(cfg)


# (builder, glob of the FFN activations, number of layers it matches)
ARCHS = {
    "gpt2": (gpt2, "transformer.h.*.mlp.act"),
    "llama": (llama, "model.layers.*.mlp.act_fn"),
    "bert": (bert, "bert.encoder.layer.*.intermediate.intermediate_act_fn"),
    "gpt_neox": (gpt_neox, "gpt_neox.layers.*.mlp.act"),
    "phi": (phi, "model.layers.*.mlp.activation_fn"),
    "gptj": (gptj, "transformer.h.*.mlp.act"),
    "falcon": (falcon, "transformer.h.*.mlp.act"),
    "t5": (t5, "encoder.block.*.layer.1.DenseReluDense.act"),
    "roberta": (roberta, "roberta.encoder.layer.*.intermediate.intermediate_act_fn"),
    "opt": (opt, "model.decoder.layers.*.activation_fn"),
}


def tokens(batch: int = 3, length: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, length), generator=g)


@pytest.fixture(params=list(ARCHS), ids=list(ARCHS))
def arch(request):
    torch.manual_seed(0)
    build, glob = ARCHS[request.param]
    return build(), glob


def test_attach_by_glob_penalizes_each_ffn_activation(arch):
    model, glob = arch
    seen: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        if name.startswith(glob.split("*")[0]) and name.endswith(glob.split("*")[1]):
            module.register_forward_hook(lambda m, i, o, n=name: seen.__setitem__(n, o))
    reg = actreg.attach(model, {glob: actreg.L1(1e-3)})
    model.train()
    x = tokens()
    model(input_ids=x, labels=x)
    penalty = reg.penalty()
    assert len(seen) == 2, f"the glob should match both FFN activations, saw {sorted(seen)}"
    expected = sum(1e-3 * o.abs().sum() / o.shape[0] for o in seen.values())
    torch.testing.assert_close(penalty, expected)
    assert penalty.requires_grad
    reg.remove()


def test_eval_records_nothing(arch):
    model, glob = arch
    reg = actreg.attach(model, {glob: actreg.L1(1e-3)})
    model.eval()
    x = tokens()
    model(input_ids=x, labels=x)
    penalty = reg.penalty()
    assert float(penalty) == 0.0 and not penalty.requires_grad
    reg.remove()


def test_monitor_sees_relu_zeros(arch):
    model, glob = arch
    model.eval()
    with actreg.Monitor(model, glob) as mon, torch.no_grad():
        x = tokens()
        model(input_ids=x, labels=x)  # labels: T5 makes its decoder inputs from them
        stats = mon.compute()
    assert len(stats) == 2
    for values in stats.values():
        assert 0.2 < values["zero_fraction"] < 0.8  # ReLU of a fresh layer: about half


def test_target_sparsity_drives_the_coefficient(arch):
    model, glob = arch
    ctl = [actreg.TargetSparsity(actreg.L1(1e-4), target=0.9) for _ in range(2)]
    names = [n for n, _ in model.named_modules() if _matches(n, glob)]
    reg = actreg.attach(model, dict(zip(names, ctl, strict=True)))
    model.train()
    x = tokens()
    model(input_ids=x, labels=x)
    reg.penalty()
    for c in ctl:  # about half the ReLU outputs are zero, far from 90%: coefficient up
        assert c.steps == 1 and c.coef > 1e-4
    reg.remove()


def _matches(name: str, glob: str) -> bool:
    import fnmatch

    return fnmatch.fnmatchcase(name, glob)


@pytest.mark.slow
def test_gpt2_compiled_under_bf16_autocast_matches_eager():
    torch.manual_seed(0)
    model = gpt2().train()
    reg = actreg.attach(model, {"transformer.h.*.mlp.act": actreg.L1(1e-3)})
    x = tokens()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(input_ids=x, labels=x)
        eager = reg.penalty().detach()
        compiled = torch.compile(model)
        compiled(input_ids=x, labels=x)
        got = reg.penalty()
    assert got.dtype == torch.float32 and got.requires_grad
    torch.testing.assert_close(got.detach(), eager, rtol=2e-2, atol=0.0)
    reg.remove()


# ---- the Trainer -----------------------------------------------------------------------


class Same(torch.utils.data.Dataset):
    """Identical examples: every micro-batch has the same loss and the same penalty."""

    def __init__(self, n: int = 8) -> None:
        self.x = tokens(1)[0]
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.x, "labels": self.x}


def train_one_step(tmp_path, accumulation: int, coef: float | None, monitor: bool = False):
    torch.manual_seed(0)
    model = gpt2()
    callbacks = []
    reg = None
    if coef is not None:
        reg = actreg.attach(model, {"transformer.h.*.mlp.act": actreg.L1(coef)})
        mon = actreg.Monitor(model, "transformer.h.*.mlp.act") if monitor else None
        callbacks.append(ActregCallback(reg, monitor=mon))
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=1, learning_rate=0.0, report_to="none",
        per_device_train_batch_size=2, gradient_accumulation_steps=accumulation,
        logging_steps=1, save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0,
    )  # fmt: skip
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=Same(), eval_dataset=Same(4), callbacks=callbacks
    )
    trainer.train()
    return trainer, reg


def penalty_of_one_micro_batch(coef: float) -> float:
    torch.manual_seed(0)
    model = gpt2().train()
    reg = actreg.attach(model, {"transformer.h.*.mlp.act": actreg.L1(coef)})
    x = Same().x.expand(2, -1)
    model(input_ids=x, labels=x)
    return float(reg.penalty().detach())


@pytest.mark.parametrize("accumulation", [1, 2], ids=["no-accumulation", "accumulate-2"])
def test_trainer_adds_the_mean_penalty_per_optimizer_step(tmp_path, accumulation):
    coef = 0.05
    plain, _ = train_one_step(tmp_path / "plain", accumulation, None)
    regular, reg = train_one_step(tmp_path / "reg", accumulation, coef)
    added = regular.state.log_history[0]["loss"] - plain.state.log_history[0]["loss"]
    expected = penalty_of_one_micro_batch(coef)
    assert expected > 0.01
    assert added == pytest.approx(expected, rel=1e-3)  # the mean, not the sum, over micro-batches
    logged = {k for k in regular.state.log_history[0] if k.startswith("actreg/")}
    assert logged == {"actreg/transformer.h.0.mlp.act", "actreg/transformer.h.1.mlp.act"}
    assert not regular.model._forward_hooks_with_kwargs  # the loss hook is gone after training
    assert reg is not None
    x = Same().x.expand(2, -1)
    regular.model.train()(input_ids=x, labels=x)
    assert float(reg.penalty()) > 0  # the penalty hooks stay


def test_trainer_evaluation_reports_monitor_sparsity(tmp_path):
    trainer, _ = train_one_step(tmp_path, 1, 1e-3, monitor=True)
    metrics = trainer.evaluate()
    for layer in ("transformer.h.0.mlp.act", "transformer.h.1.mlp.act"):
        assert 0.0 < metrics[f"eval_actreg/{layer}/zero_fraction"] < 1.0
        assert f"eval_actreg/{layer}/dead_fraction" in metrics


# ---- bad input -------------------------------------------------------------------------


def test_callback_refuses_what_is_not_a_regularizer():
    with pytest.raises(actreg.ActregError, match="Regularizer that actreg.attach returns"):
        ActregCallback(object())


def test_training_forward_without_a_loss_names_the_fix(tmp_path):
    model = gpt2()
    reg = actreg.attach(model, {"transformer.h.*.mlp.act": actreg.L1(1e-3)})
    callback = ActregCallback(reg)
    args = transformers.TrainingArguments(output_dir=str(tmp_path), report_to="none")
    callback.on_train_begin(args, None, None, model=model)
    model.train()
    with pytest.raises(actreg.ActregError, match="pass labels"):
        model(input_ids=tokens())
    callback.on_train_end(args, None, None, model=model)
    model(input_ids=tokens())  # hook removed: no error
    reg.remove()


@pytest.mark.parametrize(
    ("builder", "pattern", "named"),
    [
        (llama, "model.layers.0.*", "model.layers.0.self_attn (LlamaAttention)"),
        (gpt2, "transformer.h.*.*", "transformer.h.0.ln_1 (LayerNorm)"),
    ],
    ids=["llama", "gpt2"],
)
def test_a_pattern_on_norms_or_attention_warns_and_names_them(builder, pattern, named):
    model = builder()
    with pytest.warns(UserWarning, match="are not activations") as record:
        reg = actreg.attach(model, {pattern: actreg.L1(1e-3)})
    assert named in str(record[0].message)
    reg.remove()


def test_ffn_patterns_do_not_warn(arch, recwarn):
    model, glob = arch
    actreg.attach(model, {glob: actreg.L1(1e-3)}).remove()
    assert not [w for w in recwarn if "not activations" in str(w.message)]
