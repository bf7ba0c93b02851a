"""scripts/target_variants.py: the diagnostic controller rules of docs/TARGET.md."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import actreg
from actreg.lab.experiments import get
from actreg.lab.experiments._config import apply_overrides

TINY = ["data=digits", "limit=200", "epochs=2", "batch_size=20", "channels=4,8", "hidden=16",
        "pilot_epochs=0"]  # fmt: skip


@pytest.fixture(scope="module")
def script(load_script):
    return load_script("target_variants")


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


def test_past_the_target_the_deadline_lowers_by_the_target_not_the_ramp(script):
    """While the ramp is still above the target, a layer past the target is lowered by
    log(a / w) under the deadline rule, by the larger log(a / w_t) under the library's."""
    coefs = {}
    for rule in ("library", "deadline"):
        ctl = script.controller_class(rule, {}, [])(
            actreg.L1(1e-3), target=0.5, ramp=1e-4, warmup=0
        )
        dense = torch.ones(50, 10)  # the first batch: all active, the ramp starts at 1
        ctl(dense.requires_grad_())
        sparse = torch.zeros(50, 10)
        sparse[:, :4] = 1.0  # 40% active: past the 50% target, far below the ramp's ~100%
        ctl(sparse.requires_grad_())
        coefs[rule] = ctl.coef
    rate = 0.05  # the library's default step
    assert coefs["deadline"] == pytest.approx(1e-3 * math.exp(rate * math.log(0.4 / 0.5)))
    assert coefs["library"] < coefs["deadline"] < 1e-3


@pytest.mark.filterwarnings("ignore:layer .* ends at:UserWarning")  # 20 steps: off target
def test_layer_coefs_start_the_lab_controllers(script, tmp_path, capsys):
    """Through the lab's cnn: with a negligible rate the controllers keep the per-map
    starting coefficients ``layer_coefs`` gives them."""
    sets = [*TINY, f"out_dir={tmp_path}", "run_name=start", "layer_coefs=2e-4,6e-4"]
    summary = script.main(
        ["cnn", "--controller", '{"rate": 1e-12}', *[a for s in sets for a in ("--set", s)]]
    )
    traces = json.loads((Path(summary["run_dir"]) / "trace.json").read_text())
    assert [trace[-1][1] for trace in traces] == pytest.approx([2e-4, 6e-4])


@pytest.mark.parametrize(("rule", "raised"), [("library", True), ("patient", False)])
def test_patient_rule_waits_while_the_layer_answers(script, rule, raised):
    """A layer denser than its target but sparser than its running mean (answering a
    raise) keeps its coefficient under the patient rule; the library's rule raises it."""
    ctl = script.controller_class(rule, {}, [])(actreg.L1(1e-3), target=0.9, ramp=0.0, warmup=0)
    half = torch.zeros(50, 10)
    half[:, :5] = 1.0  # 50% active: the running mean starts at 0.5 zeros
    ctl(half.requires_grad_())
    start = ctl.coef
    answering = torch.zeros(50, 10)
    answering[:, :4] = 1.0  # 40% active: still far above the 10% wanted, but sparser
    ctl(answering.requires_grad_())
    assert (ctl.coef > start) is raised
    stalled = torch.ones(50, 10)  # all active: denser than its running mean
    before = ctl.coef
    ctl(stalled.requires_grad_())
    assert ctl.coef > before  # a stalled layer is raised under either rule


def test_patient_rule_lowers_a_layer_past_the_target_as_the_library_does(script):
    coefs = {}
    for rule in ("library", "patient"):
        ctl = script.controller_class(rule, {}, [])(actreg.L1(1e-3), target=0.9, ramp=0.0, warmup=0)
        half = torch.zeros(50, 20)
        half[:, :10] = 1.0
        ctl(half.requires_grad_())
        raised = ctl.coef
        past = torch.zeros(50, 20)
        past[:, 0] = 1.0  # 5% active: sparser than its running mean and past the target
        ctl(past.requires_grad_())
        coefs[rule] = ctl.coef
        assert ctl.coef < raised
    assert coefs["patient"] == pytest.approx(coefs["library"])


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


def test_patient_rule_holds_a_slowly_drifting_layer_that_lead_raises(script):
    """14% -> 13% active, target 10%: the layer is answering (sparser than its running
    mean), so the patient rule holds the coefficient (what left Fashion-MNIST's second map
    short of its target); the library's lead raises it, by less than its rule without a
    lead (the step is not clamped here, so the lead's term shows)."""
    coefs = {}
    for name, rule, settings in (
        ("patient", "patient", {}),
        ("lead", "library", {"lead": 1.0}),
        ("library", "library", {}),
    ):
        ctl = script.controller_class(rule, settings, [])(
            actreg.L1(1e-3), target=0.9, ramp=0.0, warmup=0
        )
        steps = []
        for active in (14, 13):  # of 100 units
            x = torch.zeros(50, 100)
            x[:, :active] = 1.0
            ctl(x.requires_grad_())
            steps.append(ctl.coef)
        coefs[name] = steps[1] / steps[0]
    assert coefs["patient"] == pytest.approx(1.0)
    assert 1.0 < coefs["lead"] < coefs["library"]


def test_freeze_after_stops_the_coefficient(script):
    ctl = script.controller_class("library", {}, [], freeze_after=2)(
        actreg.L1(1e-3), target=0.9, ramp=0.0, warmup=0
    )
    coefs = []
    for _ in range(5):
        ctl(torch.ones(50, 20).requires_grad_())  # all active: the library raises each step
        coefs.append(ctl.coef)
    assert coefs[1] > coefs[0]
    assert coefs[4] == pytest.approx(coefs[1], rel=1e-9)


def test_then_coefs_set_each_controller_at_the_freeze(script):
    cls = script.controller_class("library", {}, [], freeze_after=2, then_coefs=(2e-4, 6e-4))
    ctls = [cls(actreg.L1(1e-3), target=0.9, ramp=0.0, warmup=0) for _ in range(2)]
    for _ in range(5):
        for ctl in ctls:
            ctl(torch.ones(50, 20).requires_grad_())
    assert [ctl.coef for ctl in ctls] == pytest.approx([2e-4, 6e-4], rel=1e-6)  # float32 scale


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"freeze_after": -1}, "steps >= 0"), ({"then_coefs": (1e-4,)}, "add --freeze-after")],
    ids=["negative", "coefs-without-freeze"],
)
def test_bad_freeze_settings_are_refused(script, kwargs, match):
    with pytest.raises(SystemExit, match=match):
        script.controller_class("library", {}, [], **kwargs)


@pytest.mark.parametrize("measure", ["zero_fraction", "l0"])
@pytest.mark.parametrize("ahead", [0.25, 0.5])
def test_wait_rule_raises_a_stalled_layer_by_ahead_not_the_clamp(script, ahead, measure):
    """A layer stuck at 50% active under a ramp already at its 10% target: the library
    raises its coefficient by the clamped step, ``rate``; the waiting ramp asks for at
    most ``ahead`` nats beyond the layer's running mean, so it raises by ``rate * ahead``
    (an L0 target of 1 of 10 units alike)."""
    target = 0.9 if measure == "zero_fraction" else 1.0
    coefs = {}
    for rule in ("library", "wait"):
        ctl = script.controller_class(rule, {}, [], ahead=ahead)(
            actreg.L1(1e-3), target=target, measure=measure, ramp=0.0, warmup=0
        )
        half = torch.zeros(50, 10)
        half[:, :5] = 1.0
        ctl(half.requires_grad_())
        before = ctl.coef
        ctl(half.clone().requires_grad_())
        coefs[rule] = ctl.coef / before
    rate = 0.05
    assert coefs["library"] == pytest.approx(math.exp(rate), rel=1e-5)
    assert coefs["wait"] == pytest.approx(math.exp(rate * ahead), rel=1e-5)


def test_wait_rule_holds_a_layer_that_closes_ahead_nats(script):
    """A layer whose batch is ``ahead`` nats sparser than its running mean has answered:
    under the waiting ramp its error is 0 however far the target is; near the target the
    rule is the library's."""
    ctl = script.controller_class("wait", {}, [], ahead=0.5)(
        actreg.L1(1e-3), target=0.9, ramp=0.0, warmup=0, smoothing=0.0
    )
    dense = torch.zeros(100, 100)
    dense[:, :50] = 1.0  # 50% active: the running mean (smoothing 0: this batch)
    ctl(dense.requires_grad_())
    before = ctl.coef
    answered = torch.zeros(100, 100)
    answered[:, : round(50 * math.exp(-0.5))] = 1.0  # 30% active: 0.51 nats closed
    ctl(answered.requires_grad_())
    assert ctl.coef == pytest.approx(before, rel=2e-3)
    near = torch.zeros(100, 100)
    near[:, :12] = 1.0  # 12% active against 10% wanted, once the running mean is there too
    ctl(near.clone().requires_grad_())
    before = ctl.coef
    ctl(near.clone().requires_grad_())
    assert ctl.coef / before == pytest.approx(math.exp(0.05 * math.log(0.12 / 0.1)), rel=1e-4)


def test_bad_ahead_is_refused(script):
    with pytest.raises(SystemExit, match="nats > 0"):
        script.controller_class("wait", {}, [], ahead=0.0)


@pytest.mark.filterwarnings("ignore:layer .* ends at:UserWarning")  # 20 steps: off target
def test_pilot_starts_the_run_at_its_final_coefficients(script, tmp_path, capsys):
    """--pilot-epochs: a first run of that many epochs; the real run's controllers start
    at the pilot's final coefficients (its config records them as layer_coefs)."""
    sets = [*TINY, f"out_dir={tmp_path}", "run_name=p"]
    summary = script.main(["cnn", "--pilot-epochs", "1", *[a for s in sets for a in ("--set", s)]])
    pilot = summary["pilot_coefs"]
    assert len(pilot) == 2 and pilot != pytest.approx([1e-4, 1e-4])  # the pilot moved them
    config = json.loads((Path(summary["run_dir"]) / "run_config.json").read_text())
    assert config["layer_coefs"] == pytest.approx(pilot)
    traces = json.loads((Path(summary["run_dir"]) / "trace.json").read_text())
    assert len(traces) == 2 and (tmp_path / "cnn" / "p-pilot").is_dir()


def test_negative_pilot_is_refused(script):
    with pytest.raises(SystemExit, match="epochs >= 0"):
        script.main(["cnn", "--pilot-epochs", "-1"])


@pytest.mark.filterwarnings("ignore:layer .* ends at:UserWarning")  # 20 steps: off target
def test_pilot_is_the_real_runs_first_epochs(script, tmp_path, capsys):
    """The pilot's first epoch is the first epoch of a plain run of the full length: the
    same learning rates and controller timing give the same coefficients at its end."""
    sets = [*TINY, f"out_dir={tmp_path}"]
    flags = [a for s in sets for a in ("--set", s)]
    full = script.main(["cnn", *flags, "--set", "run_name=full"])
    script.main(["cnn", "--pilot-epochs", "1", *flags, "--set", "run_name=p"])
    full_trace = json.loads((Path(full["run_dir"]) / "trace.json").read_text())
    pilot_trace = json.loads((tmp_path / "cnn" / "p-pilot" / "trace.json").read_text())
    assert pilot_trace == [trace[: len(pilot_trace[0])] for trace in full_trace]
    assert len(pilot_trace[0]) == 1  # 10 steps an epoch: one trace row
    assert actreg.TargetSparsity.__name__ == "TargetSparsity"


def test_wait_rule_is_the_library_ahead(script):
    """The script's wait rule (the runs of docs/TARGET.md's "The ramp waits for the
    layer") is ``TargetSparsity(ahead=)``: the same coefficients, bit for bit, with and
    without a lead from ``--controller``, over random maps moving through the ramp. (The
    rule was written out in the script when those runs were made; it now passes
    ``ahead`` to the library.)"""
    gen = torch.Generator().manual_seed(0)
    for lead in (0.0, 1.0):
        rule = script.controller_class("wait", {"lead": lead}, [], ahead=0.5)(
            actreg.L1(1e-3), target=0.9, dim=1
        )
        lib = actreg.TargetSparsity(actreg.L1(1e-3), target=0.9, dim=1, lead=lead, ahead=0.5)
        plain = actreg.TargetSparsity(actreg.L1(1e-3), target=0.9, dim=1, lead=lead)
        differs = False
        for step in range(300):
            shift = 1.5 * min(step, 200) / 200  # the maps get sparser over 200 steps
            x = (torch.randn(8, 6, 5, 5, generator=gen) - shift).relu().requires_grad_()
            for ctl in (rule, lib, plain):
                ctl(x.detach().clone().requires_grad_())
            assert rule.coef == lib.coef
            differs |= abs(math.log(lib.coef / plain.coef)) > 0.5
        assert differs  # the wait mattered on this path


@pytest.mark.filterwarnings("ignore:layer .* ends at:UserWarning")
def test_then_coefs_and_wait_work_with_the_labs_defaults(script, tmp_path, capsys):
    """Without TINY's pilot_epochs=0: --then-coefs counts the real run's controllers (the
    lab's pilot is off under --freeze-after), and --rule wait is not capped by the lab's
    own ahead (it is off under the rule)."""
    sets = [s for s in TINY if s != "pilot_epochs=0"] + [f"out_dir={tmp_path}"]
    flags = [a for s in sets for a in ("--set", s)]
    summary = script.main(
        ["cnn", "--freeze-after", "5", "--then-coefs", "2e-4,6e-4", *flags, "--set", "run_name=f"]
    )
    traces = json.loads((Path(summary["run_dir"]) / "trace.json").read_text())
    assert len(traces) == 2 and [t[-1][1] for t in traces] == pytest.approx([2e-4, 6e-4])
    cfg = apply_overrides(get("cnn").config(), ["target_sparsity=0.9"])
    assert cfg.ahead == 0.5  # the lab's default, which main() turns off under the rule
    summary = script.main(
        ["cnn", "--rule", "wait", "--ahead", "1.0", *flags, "--set", "run_name=w"]
    )
    config = json.loads((Path(summary["run_dir"]) / "run_config.json").read_text())
    assert config["ahead"] is None and config["pilot_epochs"] == 1
