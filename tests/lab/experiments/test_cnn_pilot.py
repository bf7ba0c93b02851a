"""cnn's pilot: in target mode the run's first epoch, run once, starts the controllers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import actreg
from actreg import ActregError
from actreg.lab.experiments import get
from actreg.lab.experiments._config import apply_overrides

TINY = ["data=digits", "limit=200", "epochs=2", "batch_size=20", "channels=4,8", "hidden=16",
        "compare=false", "threads=1", "progress=false"]  # fmt: skip


def run_with_starts(tmp_path, monkeypatch, *sets):
    """Run the tiny cnn and record each controller's starting coefficient, in build order."""
    starts: list[float] = []
    init = actreg.TargetSparsity.__init__

    def spy(self, penalty, *args, **kwargs):
        starts.append(penalty.coef)
        init(self, penalty, *args, **kwargs)

    monkeypatch.setattr(actreg.TargetSparsity, "__init__", spy)
    cfg = apply_overrides(get("cnn").config(), [*TINY, f"out_dir={tmp_path}", *sets])
    return get("cnn").run(cfg), starts


@pytest.mark.filterwarnings("ignore:layer .* ends at:UserWarning")  # 20 steps: off target
def test_pilot_coefficients_start_the_run(tmp_path, monkeypatch):
    out, starts = run_with_starts(tmp_path, monkeypatch, "target_sparsity=0.9", "run_name=p")
    pilot = out["pilot_coefs"]
    assert starts[:2] == [1e-4, 1e-4]  # the pilot starts at coef
    assert starts[2:] == pytest.approx(list(pilot.values()))  # the run at the pilot's end
    assert list(pilot.values()) != pytest.approx([1e-4, 1e-4])  # which moved
    results = json.loads((Path(out["run_dir"]) / "results.json").read_text())
    assert results["pilot_coefs"] == pytest.approx(pilot)
    assert (Path(out["run_dir"]) / "pilot").is_dir()


@pytest.mark.filterwarnings("ignore:layer .* ends at:UserWarning")
@pytest.mark.parametrize(
    "sets", [["target_sparsity=0.9", "pilot_epochs=0"], ["coef=1e-4"]], ids=["off", "fixed"]
)
def test_no_pilot_without_target_mode_or_with_zero_epochs(tmp_path, monkeypatch, sets):
    out, starts = run_with_starts(tmp_path, monkeypatch, *sets)
    assert "pilot_coefs" not in out
    assert starts == ([1e-4, 1e-4] if "pilot_epochs=0" in sets else [])


def test_pilot_does_not_warn_off_target(tmp_path, monkeypatch, recwarn):
    """After one epoch a map is expected off target: only the real run may warn (its
    warnings name its own step count, not the pilot's half)."""
    out, _ = run_with_starts(tmp_path, monkeypatch, "target_sparsity=0.9")
    steps = next(iter(out["variants"].values()))["steps"]
    missed = [str(w.message) for w in recwarn if "ends at" in str(w.message)]
    assert missed  # 20 steps: off target, so the real run warns
    assert all(f"after {steps} training steps" in m for m in missed), missed


@pytest.mark.filterwarnings("ignore:layer .* ends at:UserWarning")
def test_pilot_ends_where_the_runs_first_epoch_ends(tmp_path, monkeypatch):
    """The pilot is the run's first epoch: a run without a pilot has its controllers at
    the pilot's coefficients after one epoch's steps (same schedule, timing, revivals)."""
    coefs: dict[int, list[float]] = {}
    update = actreg.TargetSparsity._update

    def spy(self, rates, wanted):
        update(self, rates, wanted)
        coefs.setdefault(id(self), []).append(self.coef)

    monkeypatch.setattr(actreg.TargetSparsity, "_update", spy)
    plain = get("cnn").run(
        apply_overrides(get("cnn").config(), [*TINY, f"out_dir={tmp_path}", "run_name=a",
                                              "target_sparsity=0.9", "pilot_epochs=0"])
    )  # fmt: skip
    per_epoch = next(iter(plain["variants"].values()))["steps"] // 2
    first_epoch = [trace[per_epoch - 1] for trace in coefs.values()]
    coefs.clear()
    piloted = get("cnn").run(
        apply_overrides(get("cnn").config(), [*TINY, f"out_dir={tmp_path}", "run_name=b",
                                              "target_sparsity=0.9"])
    )  # fmt: skip
    assert list(piloted["pilot_coefs"].values()) == pytest.approx(first_epoch, rel=1e-6)


@pytest.mark.parametrize(
    ("sets", "match"),
    [
        (["target_sparsity=0.9", "epochs=1"], "pilot_epochs=1 needs more epochs"),
        (["ahead=0"], "ahead must be > 0"),
        (["pilot_epochs=-1"], "pilot_epochs must not be negative"),
    ],
    ids=["pilot-too-long", "ahead-zero", "pilot-negative"],
)
def test_bad_pilot_settings_are_refused(sets, match):
    with pytest.raises(ActregError, match=match):
        apply_overrides(get("cnn").config(), sets)
