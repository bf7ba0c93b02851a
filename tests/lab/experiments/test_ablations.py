"""The ablation experiment: every question end to end on tiny settings, the statistics, errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from actreg import ActregError
from actreg.lab.experiments import get, load_results
from actreg.lab.experiments._config import apply_overrides
from actreg.lab.experiments.ablations import QUESTIONS, AblationConfig, summary_rows
from actreg.lab.experiments.ablations._binary import code_bits
from actreg.lab.experiments.ablations._questions import choose
from actreg.lab.experiments.ablations._stats import (
    aggregate,
    compare,
    exceeds_spread,
    mean_std,
    pooled_std,
    welch_p,
)

TINY = [
    "data=digits",
    "limit=200",
    "epochs=1",
    "seeds=2",
    "code=16",
    "hidden=16",
    "probe_size=100",
    "batch_size=50",
    "progress=false",
    "norms=l1,kl",
    "grid=0.01",
    "widths=8,32",
    "activations=relu,sigmoid",
    "scalings=none,standard",
    "binary_coefs=0,0.1",
    "binary_hidden=16",
    "ref_width=8",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("abl")
    exp = get("ablation")
    done = {}
    for q in QUESTIONS:
        cfg = apply_overrides(
            exp.config(), [*TINY, f"question={q}", f"out_dir={out}", f"run_name={q}"]
        )
        done[q] = exp.run(cfg)
    return done


@pytest.mark.parametrize("question", QUESTIONS, ids=QUESTIONS)
def test_question_writes_valid_results(runs, question):
    results = runs[question]
    doc = load_results(results["run_dir"])
    assert doc["experiment"] == "ablation" and doc["question"] == question
    assert doc["config"]["seeds"] == 2 and doc["seeds"] == [0, 1]
    assert doc["data"]["name"] == "digits"
    names = [v["name"] for v in doc["variants"]]
    assert len(names) >= 2 and set(doc["aggregate"]) == set(names)
    for name in names:
        assert len(doc["per_seed"][name]) == 2
        for metric in doc["metrics"]:
            cell = doc["aggregate"][name][metric]
            assert cell["n"] == 2 and math.isfinite(cell["mean"])
    assert doc["comparisons"] and {"a", "b", "metric", "exceeds"} <= set(doc["comparisons"][0])
    for path in doc["pictures"].values():
        with open(Path(doc["_path"]).parent / path, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    rows = summary_rows(doc)
    assert [r["variant"] for r in rows] == names and "±" in rows[0][doc["metrics"][0]]


def test_which_norm_grid_and_choice(runs):
    doc = runs["which-norm"]
    assert {r["penalty"] for r in doc["grid"]} == {"l1", "kl"}
    assert doc["chosen"] == {"l1": 0.01, "kl": 0.01}
    kl = next(v for v in doc["variants"] if v["name"] == "kl 0.01")
    assert kl["changes"]["act"] == "sigmoid"


def test_binary_code_is_four_bits_for_ten_classes(runs):
    doc = runs["binary-code"]
    assert code_bits(10) == 4
    for name, rows in doc["per_seed"].items():
        assert all(r["width"] == (8 if name.startswith("width") else 4) for r in rows)
        assert all(1 <= r["distinct_codes"] <= 2 ** r["width"] for r in rows)


def test_rerun_reuses_progress(runs, tmp_path):
    run_dir = runs["activation"]["run_dir"]
    lines = open(f"{run_dir}/progress.jsonl").read().splitlines()
    assert json.loads(lines[0])["config"]["question"] == "activation"
    assert len(lines) == 1 + 3 * 2  # header, (relu l1, sigmoid l1, sigmoid kl) x 2 seeds
    cfg = apply_overrides(
        AblationConfig(),
        [*TINY, "question=activation", f"out_dir={run_dir}/../..", "run_name=activation"],
    )
    again = get("ablation").run(cfg)
    assert again["per_seed"] == json.loads(json.dumps(runs["activation"]["per_seed"]))
    assert len(open(f"{run_dir}/progress.jsonl").read().splitlines()) == len(lines)


def test_overwrite_retrains_instead_of_reusing_progress(runs):
    run_dir = runs["activation"]["run_dir"]
    log = f"{run_dir}/progress.jsonl"
    lines = open(log).read().splitlines()
    fake = json.loads(lines[1])
    fake["metrics"] = {**fake["metrics"], "probe_acc": -1.0}  # a record no training gives
    with open(log, "w") as f:
        f.write("\n".join([lines[0], json.dumps(fake), *lines[2:]]) + "\n")
    args = [*TINY, "question=activation", f"out_dir={run_dir}/../..", "run_name=activation"]
    reused = get("ablation").run(apply_overrides(AblationConfig(), args))
    assert "-1.0" in json.dumps(reused["per_seed"])  # without overwrite: the record reused
    fresh = get("ablation").run(apply_overrides(AblationConfig(), [*args, "overwrite=true"]))
    assert "-1.0" not in json.dumps(fresh["per_seed"])
    assert fresh["per_seed"].keys() == runs["activation"]["per_seed"].keys()


def test_width_pairs_penalty_against_none_per_width(runs):
    pairs = {(c["a"], c["b"]) for c in runs["width"]["comparisons"]}
    assert pairs == {("none w=8", "l1 w=8"), ("none w=32", "l1 w=32")}


def test_mean_std_and_pooled():
    assert mean_std([2.0, 4.0, 6.0]) == (4.0, 2.0)
    assert mean_std([5.0]) == (5.0, 0.0)
    assert pooled_std(0.0, 2.0) == pytest.approx(math.sqrt(2.0))
    with pytest.raises(ActregError):
        mean_std([])


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ([1.0, 2.0, 3.0], [5.0, 6.0, 7.0], True),  # diff 4 > 2 * 1
        ([1.0, 2.0, 3.0], [2.5, 3.5, 4.5], False),  # diff 1.5 < 2
        ([1.0, 2.0, 3.0], [3.0, 4.0, 5.0], False),  # diff 2 = 2 * 1: not strictly more
        ([1.0, 1.0], [1.0, 1.0], False),
        ([1.0, 1.0], [1.5, 1.5], True),
    ],
    ids=["clear", "within", "boundary", "same-constant", "different-constants"],
)
def test_spread_rule(a, b, expected):
    assert exceeds_spread(a, b) is expected


def test_aggregate_and_compare_on_hand_made_numbers():
    per_seed = {
        "a": [{"acc": 0.90, "mse": 0.1}, {"acc": 0.92, "mse": None}, {"acc": 0.94, "mse": 0.3}],
        "b": [{"acc": 0.80, "mse": 0.2}, {"acc": 0.81, "mse": 0.2}, {"acc": 0.82, "mse": 0.2}],
    }
    agg = aggregate(per_seed, ["acc", "mse"])
    assert agg["a"]["acc"]["mean"] == pytest.approx(0.92)
    assert agg["a"]["acc"]["std"] == pytest.approx(0.02)
    assert agg["a"]["mse"]["n"] == 2 and agg["a"]["mse"]["mean"] == pytest.approx(0.2)
    rows = {r["metric"]: r for r in compare(agg, [("a", "b")], ["acc", "mse"])}
    assert rows["acc"]["diff"] == pytest.approx(-0.11)
    assert rows["acc"]["pooled_std"] == pytest.approx(math.sqrt((0.02**2 + 0.01**2) / 2))
    assert rows["acc"]["exceeds"] is True
    assert 0 < rows["acc"]["welch_p"] < 0.05
    assert rows["mse"]["exceeds"] is False


def test_welch_p_needs_spread():
    assert welch_p([1.0], [2.0, 3.0]) is None
    assert welch_p([1.0, 1.0], [2.0, 2.0]) is None


def test_choose_skips_collapsed_and_breaks_ties_by_smaller_coef():
    collapsed = {"coef": 1.0, "near_zero": 1.0, "probe_acc": 0.1, "dead_fraction": 0.99}
    rows = [{"coef": 0.1, "near_zero": 0.5, "probe_acc": 0.9, "dead_fraction": 0.1}, collapsed]
    assert choose(rows, 0.8, 0.9)["coef"] == 0.1
    assert choose([collapsed], 0.8, 0.9)["coef"] == 1.0
    tie = [
        {"coef": 1.0, "near_zero": 0.9, "probe_acc": 0.9, "dead_fraction": 0.0},
        {"coef": 0.1, "near_zero": 0.85, "probe_acc": 0.9, "dead_fraction": 0.0},
    ]
    assert choose(tie, 0.8, 0.9)["coef"] == 0.1


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("question=which", "unknown question"),
        ("seeds=1", "seeds must be >= 2"),
        ("grid=0,0.1", "grid coefficients"),
        ("binary_coefs=-1", "binary_coefs"),
        ("max_dead=1.5", "max_dead"),
        ("penalty=l3", "unknown penalty"),
        ("scalings=none,zscore", "unknown scaling or activation"),
        ("activations=relu,gelu", "unknown scaling or activation"),
        ("probe_scaling=pca", "unknown probe_scaling"),
    ],
    ids=[
        "question",
        "seeds",
        "grid",
        "binary",
        "max-dead",
        "penalty",
        "scaling",
        "activation",
        "probe-scaling",
    ],
)
def test_bad_config_errors(override, match):
    question = {"scalings": "scaling", "activati": "activation"}.get(override[:8], "which-norm")
    with pytest.raises(ActregError, match=match):
        apply_overrides(AblationConfig(data="digits"), [f"question={question}", override])


# Target mode: every ReLU penalty asks for one sparsity; codes without zeros keep a coefficient.

TARGET_QUESTIONS = ("which-norm", "where", "width", "activation", "scaling", "weight-decay")
PENALIZED_LAYERS = {"code": ["encoder.code"], "encoder": ["encoder.act1", "encoder.code"]}
PENALIZED_LAYERS["all"] = [*PENALIZED_LAYERS["encoder"], "decoder.act1"]
FIXED_IN_TARGET_MODE = {  # question -> variants that keep their coefficient
    "which-norm": {"kl 0.003"},
    "activation": {"sigmoid l1 0.003", "sigmoid kl 0.003"},
}


@pytest.fixture(scope="module")
def target_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("abl-target")
    exp = get("ablation")
    done = {}

    def run(question, *extra):
        key = (question, *extra)
        if key not in done:
            name = "-".join(key).replace("=", "")
            sets = [*TINY, f"question={question}", "target_sparsity=0.9", *extra]
            cfg = apply_overrides(exp.config(), [*sets, f"out_dir={out}", f"run_name={name}"])
            done[key] = exp.run(cfg)
        return done[key]

    return run


@pytest.mark.parametrize("question", TARGET_QUESTIONS, ids=TARGET_QUESTIONS)
def test_target_mode_steers_relu_penalties_and_fixes_the_others(target_runs, question):
    doc = target_runs(question)
    assert doc["target"] == "target 0.9"
    fixed = FIXED_IN_TARGET_MODE.get(question, set())
    penalized = [v for v in doc["variants"] if v["penalized"]]
    assert {v["name"] for v in penalized} >= fixed and len(penalized) > len(fixed)
    for v in penalized:
        rows = doc["per_seed"][v["name"]]
        if v["name"] in fixed:  # out of target mode: no controller, no revival
            assert v["changes"]["target_sparsity"] is None
            assert all(r["revived_units"] == {} for r in rows)
        else:
            assert "target 0.9" in v["name"] and "target_sparsity" not in v["changes"]
            layers = PENALIZED_LAYERS[v["changes"].get("where", "code")]
            assert all(sorted(r["revived_units"]) == sorted(layers) for r in rows)
            assert all(r["resampled_units"] == [] for r in rows)
    for v in doc["variants"]:
        if not v["penalized"]:
            assert all(r["revived_units"] == {} for r in doc["per_seed"][v["name"]])


def test_target_mode_which_norm_runs_no_grid(target_runs):
    doc = target_runs("which-norm")
    assert "grid" not in doc and "grid" not in doc["pictures"]
    assert doc["chosen"] == {"l1": 0.003, "kl": 0.003}  # starting values: coef, kl_coef


@pytest.mark.parametrize(
    ("extra", "revived", "resampled"),
    [
        ((), True, False),
        (("revive_rounds=0",), False, False),
        (("resample_dead=0.5", "epochs=2"), False, True),
    ],
    ids=["default-revives", "revive-rounds-0", "resampling-takes-precedence"],
)
def test_target_mode_revival_setting(target_runs, extra, revived, resampled):
    doc = target_runs("weight-decay", *extra)
    rows = doc["per_seed"]["l1 target 0.9"]
    assert all(bool(r["revived_units"]) is revived for r in rows)
    assert all((r["resampled_units"] != []) is resampled for r in rows)


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("weight-decay", ["none", "weight decay 0.001", "l1 0.003", "both"]),
        ("activation", ["relu l1", "tanh l1", "sigmoid l1", "sigmoid kl"]),
        ("where", ["none", "l1 on code", "l1 on encoder", "l1 on all"]),
    ],
    ids=["weight-decay", "activation", "where"],
)
def test_fixed_mode_keeps_the_documented_variants(question, expected):
    from actreg.lab.experiments.ablations._questions import plan

    variants = plan(AblationConfig(data="digits", question=question))
    assert [v.name for v in variants] == expected
    assert all("target_sparsity" not in v.change_dict() for v in variants)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["question=binary-code", "target_sparsity=0.9"], "Binary penalty acts on a sigmoid"),
        (["question=where", "penalty=kl", "target_sparsity=0.9"], "penalty=kl needs a sigmoid"),
        (["question=width", "target_sparsity=1.5"], "strictly between 0 and 1"),
        (["question=width", "target_sparsity=0.9", "target_l0=10"], "not both"),
        (["question=width", "widths=8,64", "target_l0=20"], "not sparse in a code of 8"),
        (["question=where", "target_sparsity=0.9", "revive_rounds=-1"], "revive_rounds"),
    ],
    ids=["binary-code", "kl-penalty", "range", "both-targets", "l0-wider-than-code", "rounds"],
)
def test_bad_target_settings(overrides, match):
    with pytest.raises(ActregError, match=match):
        apply_overrides(AblationConfig(data="digits"), overrides)
