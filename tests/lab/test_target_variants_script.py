"""scripts/target_variants.py: the diagnostic controller rules of docs/TARGET.md."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

import actreg
from actreg.lab.experiments import get
from actreg.lab.experiments._config import apply_overrides

SCRIPT = Path(__file__).parents[2] / "scripts" / "target_variants.py"
TINY = ["data=digits", "limit=200", "epochs=2", "batch_size=20", "channels=4,8", "hidden=16"]


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("target_variants", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def layer_ahead_of_the_ramp(cls):
    """A controller whose first batch is 50% active, then a batch 20% active: sparser than
    the ramp still wants (~50%), denser than the 0.9 target (10%)."""
    ctl = cls(actreg.L1(1e-3), target=0.9, ramp=1e-3, warmup=0)
    half = torch.tensor([[1.0, 0.0]]).repeat(50, 1).requires_grad_()
    ctl(half)
    start = ctl.coef
    fifth = (torch.arange(100.0) % 5 == 0).float().view(50, 2).requires_grad_()
    ctl(fifth)
    return start, ctl.coef


@pytest.mark.parametrize(("rule", "moves"), [("library", True), ("deadline", False)])
def test_deadline_rule_keeps_the_coefficient_of_a_layer_ahead_of_the_ramp(script, rule, moves):
    start, after = layer_ahead_of_the_ramp(script.controller_class(rule, {}, []))
    assert (after < start) is moves


def test_deadline_rule_lowers_the_coefficient_past_the_target(script):
    ctl = script.controller_class("deadline", {}, [])(actreg.L1(1e-3), target=0.5, warmup=0)
    sparse = torch.zeros(50, 10)
    sparse[:, 0] = 1.0  # 10% active: past a 50% zeros target
    for _ in range(3):
        ctl(sparse.clone().requires_grad_())
    assert ctl.coef < 1e-3


@pytest.mark.filterwarnings("ignore:layer .* ends at:UserWarning")  # 20 steps: off target
def test_library_rule_reproduces_the_lab_run_and_writes_a_trace(script, tmp_path, capsys):
    common = [*TINY, f"out_dir={tmp_path}"]
    sets = [arg for s in [*common, "run_name=a"] for arg in ("--set", s)]
    summary = script.main(["cnn", "--seed", "0", *sets])
    cfg = apply_overrides(
        get("cnn").config(),
        ["compare=false", "threads=1", "progress=false", *common, "run_name=b",
         "target_sparsity=0.9", "seed=0"],
    )  # fmt: skip
    (lab,) = get("cnn").run(cfg)["variants"].values()
    assert (summary["test_error"], summary["test_loss"]) == (lab["test_error"], lab["test_loss"])
    traces = json.loads((Path(summary["run_dir"]) / "trace.json").read_text())
    assert len(traces) == 2  # one per feature map
    assert [step for step, _, _ in traces[0]] == [10, 20]  # 20 training steps
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rule"] == "library"
    assert actreg.TargetSparsity.__name__ == "TargetSparsity"  # restored after the run
