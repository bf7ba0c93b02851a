"""The sequence experiments: tiny end-to-end runs, AR/TAR against the reference, bad configs."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import actreg
from actreg import ActregError
from actreg.lab.data.text import batchify, bptt_batches, load_corpus
from actreg.lab.experiments import get, load_results, lstm_lm
from actreg.lab.experiments._config import apply_overrides
from actreg.lab.experiments._seq import ReLUFFN
from actreg.lab.experiments._targets import target_miss
from actreg.lab.experiments.lstm_lm import LSTMLM, LSTMLMConfig, attach_ar_tar, detach
from actreg.lab.experiments.seq2seq import Seq2SeqConfig
from actreg.lab.report import write_report
from actreg.lab.train import choose_threads


@pytest.fixture(scope="module")
def corpus_dir(tiny_corpus):
    return tiny_corpus(train=60, valid=12, test=12)


COMMON = ["epochs=2", "batch_size=4", "progress=false", "threads=0", "vocab_size=12"]
TINY = {
    "lstm-lm": ["emb_size=8", "hidden=12", "layers=2", "bptt=5", "log_every=3"],
    "seq2seq": ["emb_size=8", "hidden=12", "code=16", "max_len=8", "log_every=3"],
}


@pytest.fixture(scope="module")
def runs(corpus_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    done = {}
    for name, extra in TINY.items():
        exp = get(name)
        sets = [*COMMON, *extra, f"data={corpus_dir}", f"out_dir={out}", "run_name=t"]
        done[name] = exp.run(apply_overrides(exp.config(), sets))
    return done


@pytest.mark.parametrize("name", list(TINY), ids=list(TINY))
def test_tiny_run_writes_valid_results(runs, name, tmp_path):
    doc = load_results(runs[name]["run_dir"])
    assert doc["experiment"] == name and doc["version"]
    assert doc["config"]["epochs"] == 2 and doc["config"]["vocab_size"] == 12
    json.dumps(doc)  # JSON-ready throughout
    assert len(doc["variants"]) == 2
    for out in doc["variants"].values():
        assert 1 <= len(out["history"]) <= 2
    rows = get(name).summary(doc)
    assert len(rows) == 2 and all("variant" in r for r in rows)
    report = write_report([runs[name]["run_dir"]], tmp_path / "report.md")
    assert name in report.read_text()


def test_lstm_lm_results(runs):
    variants = runs["lstm-lm"]["variants"]
    for out in variants.values():
        assert 1.0 < out["val_ppl"] < 13.0 and 1.0 < out["test_ppl"] < 13.0
        assert out["trace"] and out["trace"][0]["ar"] > 0 and out["trace"][0]["tar"] > 0
        assert all(row["ar"] > 0 and row["tar"] > 0 for row in out["history"])
    assert variants["ar_tar"]["penalized"] and not variants["none"]["penalized"]
    assert "val_ppl_gain" in runs["lstm-lm"]


def test_seq2seq_results(runs):
    variants = runs["seq2seq"]["variants"]
    assert set(variants) == {"l1", "none"}
    for out in variants.values():
        assert 0.0 <= out["test"]["token_accuracy"] <= 1.0
        assert 0.0 <= out["test"]["code"]["zero_fraction"] <= 1.0
    assert variants["l1"]["history"][0]["train_penalty"] > 0
    assert variants["none"]["history"][0]["train_penalty"] == 0


@pytest.mark.parametrize("layers", [1, 2, 3], ids=["1-layer", "2-layers", "3-layers"])
@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_ar_tar_through_attach_equal_the_reference(layers, tie):
    """awd-lstm-lm: alpha * dropped.pow(2).mean() + beta * (raw[1:] - raw[:-1]).pow(2).mean()."""
    model = LSTMLM(30, emb_size=6, hidden=10, layers=layers, dropout=0.5, tie_weights=tie).train()
    reg = attach_ar_tar(model, alpha=2.0, beta=1.0)
    seen = {}
    model.rnns[-1].register_forward_hook(lambda m, a, out: seen.__setitem__("raw", out[0]))
    model.drop_out.register_forward_hook(lambda m, a, out: seen.__setitem__("dropped", out))
    x = torch.randint(0, 30, (7, 3))
    model(x, model.init_hidden(3))
    raw, dropped = seen["raw"], seen["dropped"]
    assert raw.shape == (7, 3, model.rnns[-1].hidden_size)  # time-first, before dropout
    assert bool((dropped == 0).any()) and not bool((raw == 0).any())  # after / before dropout
    ar = 2.0 * dropped.pow(2).mean()
    tar = 1.0 * (raw[1:] - raw[:-1]).pow(2).mean()
    total = reg.penalty()
    torch.testing.assert_close(total, ar + tar)
    last = reg.last
    assert last == pytest.approx(
        {"drop_out": ar.detach().item(), model.last_rnn: tar.detach().item()}, rel=1e-6
    )
    total.backward()  # the penalty is differentiable through the model
    assert model.encoder.weight.grad is not None


def test_penalty_not_recorded_in_evaluation():
    model = LSTMLM(20, emb_size=4, hidden=4, layers=1)
    reg = attach_ar_tar(model)
    model.eval()
    with torch.no_grad():
        model(torch.zeros(4, 2, dtype=torch.long), model.init_hidden(2))
    assert reg.pending == 0


def test_hidden_state_carried_and_detached_between_chunks():
    torch.manual_seed(0)
    model = LSTMLM(20, emb_size=4, hidden=6, layers=2, dropout=0.0, dropout_h=0.0, dropout_i=0.0)
    data = batchify(torch.randint(0, 20, (60,)), 3)
    chunks = list(bptt_batches(data, 5))
    hidden = model.init_hidden(3)
    _, hidden = model(chunks[0][0], hidden)
    assert all(h.grad_fn is not None for h, _ in hidden)
    carried = detach(hidden)
    assert all(h.grad_fn is None and not h.requires_grad for h, c in carried for h in (h, c))
    torch.testing.assert_close(carried[0][0], hidden[0][0])  # same values, history cut
    logits, _ = model(chunks[1][0], carried)
    loss = nn.functional.cross_entropy(logits.flatten(0, 1), chunks[1][1].flatten())
    loss.backward()  # would fail ("backward through the graph a second time") if not cut
    fresh, _ = model(chunks[1][0], model.init_hidden(3))
    assert not torch.allclose(fresh, logits)  # the state is carried, not reset


@pytest.mark.parametrize(
    ("cls", "override", "match"),
    [
        (LSTMLMConfig, "bptt=1", "bptt must be >= 2"),
        (LSTMLMConfig, "layers=4", "layers must be 1, 2 or 3"),
        (LSTMLMConfig, "dropout=1.0", r"dropout must lie in \[0, 1\)"),
        (LSTMLMConfig, "vocab_size=2", "vocab_size must be >= 3"),
        (LSTMLMConfig, "optimizer=rmsprop", "unknown optimizer"),
        (LSTMLMConfig, "limit_tokens=5", "limit_tokens=5 is too small"),
        (LSTMLMConfig, "lr_decay=0.5", "lr_decay must be >= 1"),
        (LSTMLMConfig, "alpha=-1", "alpha must not be negative"),
        (LSTMLMConfig, "bptt_typo=3", "unknown key 'bptt_typo'"),
        (LSTMLMConfig, "penalty=l1", "ffn=0 leaves out: set ffn=N"),
        (LSTMLMConfig, "penalty=hoyer", "unknown penalty 'hoyer'"),
        (LSTMLMConfig, "ffn=-1", "ffn must not be negative"),
        (LSTMLMConfig, "target_sparsity=0.9", "set ffn=N and penalty=l1"),
        (LSTMLMConfig, "target_l0=-2", "target_l0 must not be negative"),
        (LSTMLMConfig, "revive_rounds=3", "revive_rounds revives the ReLU block"),
        (LSTMLMConfig, "revive_rounds=-1", "revive_rounds must not be negative"),
        (Seq2SeqConfig, "max_len=1", "max_len must be >= 2"),
        (Seq2SeqConfig, "coef=-0.1", "coef must not be negative"),
        (Seq2SeqConfig, "code=0", "code must be >= 1"),
    ],
    ids=lambda v: v if isinstance(v, str) else v.__name__,
)
def test_bad_config_is_a_clear_error(cls, override, match):
    with pytest.raises(ActregError, match=match):
        apply_overrides(cls(), [override])


def test_missing_split_is_a_clear_error(corpus_dir, tmp_path):
    for name in ("train.txt", "valid.txt"):
        (tmp_path / name).write_text((corpus_dir / name).read_text())
    cfg = LSTMLMConfig(data=str(tmp_path), progress=False, threads=0)
    with pytest.raises(ActregError, match="has no test.txt"):
        get("lstm-lm").run(cfg)


def test_too_few_training_tokens_is_a_clear_error(corpus_dir, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    for name in ("train.txt", "valid.txt", "test.txt"):
        (small / name).write_text("a b\n")
    cfg = LSTMLMConfig(data=str(small), batch_size=4, out_dir=str(tmp_path), threads=0)
    with pytest.raises(ActregError, match="too few"):
        get("lstm-lm").run(cfg)


def test_vocab_of_tiny_corpus(corpus_dir):
    corpus = load_corpus(corpus_dir, vocab_size=12)
    assert corpus.vocab[:2] == ["<unk>", "<eos>"] and len(corpus.vocab) == 12


RELU = [
    "layers=1", "emb_size=8", "bptt=5", "ffn=32", "penalty=l1", "epochs=15", "lr_decay=1",
    "patience=0",
]  # fmt: skip


def test_relu_block_is_residual_and_hooked_where_the_penalty_goes():
    block = ReLUFFN(6, 16)
    for p in block.down.parameters():
        nn.init.zeros_(p)
    x = torch.randn(5, 3, 6)
    torch.testing.assert_close(block(x), x)  # a block that adds nothing leaves x
    model = LSTMLM(20, emb_size=6, hidden=6, layers=1, ffn=16)
    seen = {}
    model.get_submodule("ffn.act").register_forward_hook(lambda m, a, out: seen.update(o=out))
    model(torch.zeros(7, 3, dtype=torch.long), model.init_hidden(3))
    assert seen["o"].shape == (7, 3, 16) and bool((seen["o"] == 0).any())  # (T, B, units)
    assert LSTMLM(20, emb_size=6, hidden=6, layers=1).ffn is None  # AR/TAR model unchanged


@pytest.mark.parametrize(
    ("cfg", "stats", "gap"),
    [
        ({"target_sparsity": 0.9, "target_l0": None}, {"zero_fraction": 0.8}, 0.08),
        ({"target_sparsity": 0.9, "target_l0": None}, {"zero_fraction": 0.915}, 0.0),
        ({"target_sparsity": None, "target_l0": 10}, {"l0": 30}, 1.9),
        ({"target_sparsity": None, "target_l0": None}, {"l0": 30}, 0.0),
    ],
    ids=["below", "within", "l0-above", "no-target"],
)
def test_target_miss(cfg, stats, gap):
    assert target_miss(type("C", (), cfg), stats) == pytest.approx(gap)


def test_lstm_lm_relu_variant_reaches_the_target(corpus_dir, tmp_path):
    exp = get("lstm-lm")
    sets = [*COMMON, *RELU, f"data={corpus_dir}", f"out_dir={tmp_path}", "target_sparsity=0.9"]
    results = exp.run(apply_overrides(exp.config(), sets))
    target, plain = (results["variants"][v] for v in ("l1 target 0.9", "none"))
    assert abs(target["ffn"]["zero_fraction"] - 0.9) < 0.05  # test split
    assert plain["ffn"]["zero_fraction"] < 0.7
    assert target["history"][-1]["ffn_coef"] > 0 and "ffn_coef" not in plain["history"][-1]
    assert target["trace"][0]["ar"] > 0  # AR/TAR still measured
    assert target["revived_units"]["ffn.act"] > 0 and "revived_units" not in plain
    rows = exp.summary(results)
    assert rows[0]["ffn_zero_fraction"] == target["ffn"]["zero_fraction"]


@pytest.mark.parametrize(
    ("target", "check", "revived"),
    [
        ("target_l0=4", lambda s: s["l0"] < 8, True),
        ("coef=1", lambda s: s["zero_fraction"] > 0.7, False),
    ],
    ids=["target-l0", "coefficient"],
)
def test_lstm_lm_relu_variant_other_modes(corpus_dir, tmp_path, target, check, revived):
    exp = get("lstm-lm")
    sets = [*COMMON, *RELU, f"data={corpus_dir}", f"out_dir={tmp_path}", target, "compare=false"]
    out = next(iter(exp.run(apply_overrides(exp.config(), sets))["variants"].values()))
    assert check(out["ffn"]), out["ffn"]  # about 15 active units and 55% zeros unpenalized
    assert ("revived_units" in out) == revived  # revival comes with a target only


DEAD = [0, 3, 7]


def _relu_lm():
    model = LSTMLM(12, emb_size=8, hidden=8, layers=1, ffn=16)
    with torch.no_grad():  # units DEAD of the ReLU block never fire, the others always
        model.ffn.up.bias.fill_(10.0)
        model.ffn.up.weight[DEAD] *= 0.01
        model.ffn.up.bias[DEAD] = -100.0
    return model


@pytest.mark.parametrize(
    ("sets", "every", "until"),
    [
        (["target_sparsity=0.9"], 14, 70),  # 100 steps: 5 revivals at 14, 28, ..., 70
        (["target_l0=4", "revive_rounds=2"], 35, 70),
        (["target_sparsity=0.9", "revive_rounds=0"], None, None),
        (["coef=0.1"], None, None),  # no target: no revival unless asked
        (["coef=0.1", "revive_rounds=7"], 10, 70),
    ],
    ids=["target-default", "two-rounds", "rounds-zero", "coefficient", "coefficient-asked"],
)
def test_lstm_lm_reviver_schedule_and_sample(sets, every, until):
    model = _relu_lm()
    cfg = apply_overrides(LSTMLMConfig(), [*RELU, "bptt=5", *sets])
    spec = {"ffn.act": None}
    ids = torch.randint(0, 12, (1003,))  # 200 windows of 5 tokens (the tail of 3 is cut)
    reviver = lstm_lm._reviver(cfg, model, ids, spec, 100, None)
    if every is None:
        assert reviver is None
        return
    assert (reviver.every, reviver.until) == (every, until)
    assert reviver.inputs.shape == (min(200, lstm_lm.REVIVE_TOKENS // 5), 5)
    assert reviver.batch_size == 2000 // 5


def test_lstm_lm_reviver_brings_the_relu_blocks_dead_units_back():
    model = _relu_lm()
    cfg = apply_overrides(LSTMLMConfig(), [*RELU, "bptt=5", "target_sparsity=0.9"])
    opt = torch.optim.Adam(model.parameters())
    ids = torch.randint(0, 12, (500,))
    reviver = lstm_lm._reviver(cfg, model, ids, {"ffn.act": None}, 100, opt)
    assert reviver.optimizer is opt
    assert reviver(reviver.every)["ffn.act"].tolist() == DEAD
    seen = []
    model.ffn.act.register_forward_hook(lambda m, a, out: seen.append(out))
    with torch.no_grad():
        model(ids.view(-1, 5)[:20].T, model.init_hidden(20))
    assert bool((seen[0].reshape(-1, 16)[:, DEAD] > 0).any(0).all())


@pytest.mark.parametrize(
    ("cls", "tokens", "big"),
    [(LSTMLMConfig, 10, False), (LSTMLMConfig, 10**7, True), (Seq2SeqConfig, 10, False)],
    ids=["lstm-small", "lstm-large", "seq2seq-small"],
)
def test_threads_zero_is_the_fit_loops_choice(cls, tokens, big):
    # threads=0: choose_threads of ~6 x parameters x tokens FLOPs, as fit() chooses from its
    # first step (one thread for small steps, every core for large ones).
    model = nn.Linear(64, 64)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        chosen = cls(threads=0).set_threads(model, tokens)
        assert chosen == (choose_threads(1e18) if big else 1) == torch.get_num_threads()
        torch.set_num_threads(3)
        assert cls(threads=2).set_threads(model, tokens) == 3  # not 0: load() set it, left as is
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("sets", "key"),
    [
        (["target_sparsity=0.9"], "zero_fraction"),
        (["target_l0=4"], "l0"),
        (["target_sparsity=0.9", "calibrate=false"], None),
    ],
    ids=["zero-fraction", "l0", "off"],
)
def test_lstm_lm_calibrates_the_target_by_each_validation(
    corpus_dir, tmp_path, monkeypatch, sets, key
):
    calls = []
    calibrate = actreg.TargetSparsity.calibrate
    monkeypatch.setattr(
        actreg.TargetSparsity, "calibrate", lambda self, m: calls.append(m) or calibrate(self, m)
    )
    exp = get("lstm-lm")
    sets = [*COMMON, *RELU, f"data={corpus_dir}", f"out_dir={tmp_path}", "compare=false", *sets]
    out = next(iter(exp.run(apply_overrides(exp.config(), sets))["variants"].values()))
    history = out["history"]
    assert calls == ([row[f"val_ffn_{key}"] for row in history] if key else [])
    assert all(0 <= row["ffn_train_measured"] for row in history)
    if key is None:
        assert all(row["ffn_shift"] == 0.0 for row in history)
