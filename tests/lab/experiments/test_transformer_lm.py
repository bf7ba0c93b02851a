"""transformer-lm: a tiny GPT-2 on a tiny corpus, every variant, the results file, bad input;
its saved weights and `actreg speedup` on the run (decoding dense against converted)."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
import torch

import actreg
from actreg import ActregError
from actreg.lab import cli
from actreg.lab.data.text import load_corpus
from actreg.lab.experiments import get, load_results
from actreg.lab.experiments._config import apply_overrides
from actreg.lab.experiments.speedup import SpeedupConfig, speedup
from actreg.lab.experiments.transformer_lm import (
    FFN,
    TransformerLMConfig,
    build_model,
    evaluate_lm,
    windows,
)
from actreg.lab.report import write_report

pytest.importorskip("transformers")

TINY = [
    "layers=2", "width=16", "heads=2", "context=8", "batch_size=8", "eval_batch_size=8",
    "vocab_size=20", "epochs=3", "dropout=0", "lr=3e-3", "log_every=5", "progress=false",
]  # fmt: skip


@pytest.fixture(scope="module")
def corpus_dir(tiny_corpus):
    return tiny_corpus(train=300, valid=40, test=40)


@pytest.fixture(scope="module")
def results(corpus_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    cfg = apply_overrides(
        TransformerLMConfig(), [*TINY, f"data={corpus_dir}", f"out_dir={out}", "run_name=t"]
    )
    return get("transformer-lm").run(cfg)


TRAINED = ("gelu", "relu", "relu-l1", "relu-target")
EVALUATED = (*TRAINED, "gelu+threshold", "relu+threshold")


def test_every_variant_runs_and_the_results_file_has_the_fields(results, tmp_path):
    doc = load_results(results["run_dir"])
    json.dumps(doc)
    assert doc["experiment"] == "transformer-lm" and doc["config"]["width"] == 16
    assert list(doc["variants"]) == list(EVALUATED)
    layers = {"transformer.h.0.mlp.act", "transformer.h.1.mlp.act"}
    for name, out in doc["variants"].items():
        assert 1.0 < out["val_ppl"] < 25.0 and 1.0 < out["test_ppl"] < 25.0, name
        assert set(out["layers"]) == layers
        for stats in out["layers"].values():
            assert {"zero_fraction", "dead_fraction", "l0"} <= set(stats)
            assert "firing_rate" not in stats  # kept out of the file
        assert 0.0 <= out["zero_fraction"] <= 1.0 and 0.0 <= out["dead_fraction"] <= 1.0
    for name in TRAINED:
        out = doc["variants"][name]
        assert len(out["history"]) == 3 and out["trace"] and out["steps"] > 0
    assert set(doc["variants"]["relu-l1"]["coefs"]) == layers
    assert doc["variants"]["gelu"]["zero_fraction"] == 0.0  # GELU: no exact zeros
    assert set(doc["goals"]) == {"relu-l1", "relu-target"}
    assert {"zeros_met", "ppl_met", "beats_gelu+threshold"} <= set(doc["goals"]["relu-target"])
    with open(f"{results['run_dir']}/{doc['pictures']['sparsity_perplexity']}", "rb") as fh:
        assert fh.read(4) == b"\x89PNG"
    rows = get("transformer-lm").summary(doc)
    assert [r["variant"] for r in rows] == list(EVALUATED)
    report = write_report([results["run_dir"]], tmp_path / "report.md")
    assert "relu+threshold" in report.read_text()


def test_penalties_make_the_ffn_sparser_and_target_mode_moves_toward_the_target(results):
    v = results["variants"]
    assert v["relu-l1"]["zero_fraction"] > v["relu"]["zero_fraction"] + 0.05
    relu, target = v["relu"]["zero_fraction"], v["relu-target"]["zero_fraction"]
    assert relu < 0.8 and abs(target - 0.9) < abs(relu - 0.9) and target > 0.8
    assert (
        v["relu-target"]["history"][-1]["val_zero_fraction"]
        > v["relu"]["history"][-1]["val_zero_fraction"]
    )


@pytest.mark.parametrize("base", ["gelu", "relu"], ids=["gelu", "relu"])
def test_threshold_variant_hits_the_zero_fraction_of_relu_target(results, base):
    v = results["variants"]
    out = v[f"{base}+threshold"]
    for name, stats in out["layers"].items():
        wanted = v["relu-target"]["layers"][name]["zero_fraction"]
        assert out["calibrated_to"][name] == pytest.approx(wanted)
        assert stats["zero_fraction"] == pytest.approx(wanted, abs=0.05), name
    assert all(t >= 0 for t in out["thresholds"].values())


def test_eval_records_nothing_and_the_model_is_gpt2(corpus_dir):
    corpus = load_corpus(corpus_dir, vocab_size=20)
    cfg = apply_overrides(TransformerLMConfig(), TINY)
    model = build_model(cfg, len(corpus.vocab), "relu")
    assert type(model).__name__ == "GPT2LMHeadModel"
    assert type(model.transformer.h[0].mlp.c_fc).__name__ == "Conv1D"
    reg = actreg.attach(model, {FFN: actreg.L1(0.1, reduction="mean")})
    out = evaluate_lm(model, windows(corpus.valid, 8), 8)
    assert reg.pending == 0 and out["ppl"] > 1.0
    model.train()
    model(input_ids=windows(corpus.train, 8)[:4, :-1])
    assert reg.pending == 2  # one per FFN layer in training
    reg.remove()


def test_windows_cover_the_stream():
    w = windows(torch.arange(20), 4, offset=2)
    assert w[:, 0].tolist() == [2, 6, 10, 14] and torch.equal(w[1:, 0], w[:-1, -1])
    with pytest.raises(ActregError, match="no window of context=30"):
        windows(torch.arange(20), 30)


def test_missing_transformers_names_the_extra(monkeypatch, corpus_dir):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers fails
    cfg = TransformerLMConfig(data=str(corpus_dir), vocab_size=20)
    with pytest.raises(ActregError, match=r'pip install "actreg\[transformers\]"'):
        build_model(cfg, 20, "relu")


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["variants=relu,swish"], "unknown variants"),
        (["width=30", "heads=4"], "multiple of heads"),
        (["l1_ramp=0"], "l1_ramp"),
        (["target_sparsity=1.0"], "strictly between 0 and 1"),
        (["target_sparsity=none", "variants=relu-target"], "relu-target needs"),
        (["variants=relu-l1,threshold"], "thresholds gelu or relu"),
        (["threshold_sparsity=1"], r"threshold_sparsity.*\[0, 1\)"),
        (["context=1"], "context must be"),
        (["max_steps=0"], "max_steps"),
    ],
    ids=[
        "variant",
        "heads",
        "ramp",
        "target",
        "no-target",
        "threshold-base",
        "threshold",
        "ctx",
        "steps",
    ],
)
def test_bad_settings_are_refused(overrides, match):
    with pytest.raises(ActregError, match=match):
        apply_overrides(TransformerLMConfig(), overrides)


# ----------------------------------------------------------------- weights and speedup

QUICK = {"prompts": 2, "repeats": 2, "extension": False}  # seconds; the timings are not asserted


@pytest.mark.parametrize("variant", TRAINED, ids=TRAINED)
def test_trained_weights_load_with_weights_only_and_give_the_same_model(results, variant):
    from actreg.lab.experiments._lm_speedup import load_lm

    saved = torch.load(f"{results['run_dir']}/{variant}/model.pt", weights_only=True)
    assert saved["activation"] == ("gelu" if variant == "gelu" else "relu")
    doc = load_results(results["run_dir"])
    if variant == "gelu":
        return  # refused by load_lm (see below); the weights are there all the same
    model, corpus = load_lm(doc, variant)
    assert saved["vocab"] == corpus.vocab and not model.training
    out = evaluate_lm(model, windows(corpus.test, 8), 8)
    assert out["ppl"] == pytest.approx(doc["variants"][variant]["test_ppl"], rel=1e-6)


def test_speedup_decodes_identical_tokens_and_reports_the_amdahl_limit(results):
    row = speedup(SpeedupConfig(run_dir=results["run_dir"], **QUICK))
    assert row["variant"] == "relu-target"  # the default on a transformer-lm run
    dec = row["decode"]
    assert dec["identical_tokens"] and dec["identical_generate"]
    assert (dec["prompt_tokens"], dec["new_tokens"]) == (4, 4)  # clamped to context=8
    assert 0 <= dec["ffn_share"] < 1 and dec["ffn_speedup"] > 0
    assert dec["amdahl_limit"] == pytest.approx(
        1 / ((1 - dec["ffn_share"]) + dec["ffn_share"] / dec["ffn_speedup"])
    )
    assert dec["limit_ffn_free"] == pytest.approx(1 / (1 - dec["ffn_share"]))
    assert dec["of_amdahl"] == pytest.approx(dec["speedup"] / dec["amdahl_limit"])
    assert dec["ffn_zero_fraction"] > 0.3  # relu-target's zeros are there to skip
    assert [(r["workload"], r["batch"]) for r in row["rows"]] == [
        ("decode", 1), ("decode", 4), ("decode", 16), ("prefill", 1)
    ]  # fmt: skip
    for r in row["rows"]:
        assert r["identical"] and 0 < r["active_units"] <= 1
        assert r["speedup_q1"] <= r["speedup"] <= r["speedup_q3"]
        assert r["dense_tok_s"] > 0 and r["converted_tok_s"] > 0


def test_speedup_command_prints_the_decode_tables(results, capsys):
    argv = ["speedup", results["run_dir"], "--variant", "relu", "--new-tokens", "2"]
    assert cli.main([*argv, "--repeats", "2", "--no-extension"]) == 0
    out = capsys.readouterr().out
    for field in ("identical_tokens", "ffn_share", "amdahl_limit", "of_amdahl", "prefill"):
        assert field in out
    assert "| relu | 1 | PyTorch | 4 | 4 | 2 | True | True |" in out


@pytest.mark.parametrize(
    "variant", ["gelu", "gelu+threshold", "relu+threshold"], ids=["gelu", "gelu-thr", "relu-thr"]
)
def test_speedup_refuses_what_it_cannot_convert_exactly(results, variant):
    with pytest.raises(ActregError, match=r"choose a ReLU variant with --variant \(relu, "):
        speedup(SpeedupConfig(run_dir=results["run_dir"], variant=variant, **QUICK))


def test_speedup_refuses_weights_that_are_not_plain_data(results, tmp_path):
    run = shutil.copytree(results["run_dir"], tmp_path / "run")
    weights = torch.load(run / "relu" / "model.pt", weights_only=True)
    weights["model"] = torch.nn.Linear(2, 2)  # a pickled module: could run code on loading
    torch.save(weights, run / "relu" / "model.pt")
    with pytest.raises(ActregError, match="refusing to load"):
        speedup(SpeedupConfig(run_dir=str(run), variant="relu", **QUICK))


def test_speedup_refuses_a_corpus_with_another_vocabulary(results, corpus_dir, tmp_path):
    data = shutil.copytree(corpus_dir, tmp_path / "data")
    (data / "train.txt").write_text("zebra zebra yak\n" * 50 + (data / "train.txt").read_text())
    run = shutil.copytree(results["run_dir"], tmp_path / "run")
    doc = json.loads((run / "results.json").read_text())
    doc["config"]["data"] = str(data)
    (run / "results.json").write_text(json.dumps(doc))
    with pytest.raises(ActregError, match="another vocabulary"):
        speedup(SpeedupConfig(run_dir=str(run), variant="relu", **QUICK))
