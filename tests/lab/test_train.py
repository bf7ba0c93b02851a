"""actreg.lab.train: the training loop's warm-up, checkpoints, resume and callbacks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import actreg
from actreg import ActregError
from actreg.lab.train import TrainConfig, evaluate, fit, regularize


def _data(n: int = 60, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=gen)
    return x, (x[:, 0] > 0).long()


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 2))


def _loss(model, x, y):
    return nn.functional.cross_entropy(model(x), y)


def _metrics(model, x, y):
    logits = model(x)
    return {
        "loss": float(nn.functional.cross_entropy(logits, y)),
        "error": float((logits.argmax(1) != y).float().mean()),
    }


def _fit(model, cfg, **kwargs):
    return fit(
        model,
        _data(),
        _data(30, seed=1),
        loss_fn=_loss,
        metrics_fn=_metrics,
        objective="loss",
        cfg=cfg,
        **kwargs,
    )


def _cfg(**kwargs) -> TrainConfig:
    settings = {"epochs": 4, "batch_size": 16, "lr": 1e-2, "progress": False, **kwargs}
    return TrainConfig(**settings)


def _rows(history):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


class Spy(actreg.Penalty):
    """L1 that remembers each raw value it returned in training."""

    def __init__(self) -> None:
        self.inner = actreg.L1(0.1)
        self.raw: list[torch.Tensor] = []

    def forward(self, x):
        value = self.inner.forward(x)
        if torch.is_grad_enabled():
            self.raw.append(value.detach().clone())
        return value


# Warm-up: one mechanism, actreg.Scheduled, with the loop's former ramp values.


@pytest.mark.parametrize("warmup", [1, 3, 7], ids=["w1", "w3", "w7"])
def test_warmup_ramps_the_penalty_step_by_step(warmup, monkeypatch):
    spy, totals = Spy(), []
    penalty = actreg.Regularizer.penalty

    def record(reg):
        totals.append(penalty(reg).detach().clone())
        return totals[-1]

    monkeypatch.setattr(actreg.Regularizer, "penalty", record)
    out = _fit(_model(), _cfg(epochs=2, penalty_warmup_steps=warmup), spec={"1": spy})
    assert out["steps"] == len(totals) == len(spy.raw) == 8
    for step, (total, raw) in enumerate(zip(totals, spy.raw, strict=True)):
        # the ramp train.py applied in its loop before it used actreg.Scheduled
        assert torch.equal(total, raw * min(1.0, (step + 1) / warmup)), step


def test_warmup_wraps_each_spec_entry_in_scheduled():
    model = _model()
    reg = regularize(model, {"1": actreg.L1(0.1)}, _cfg(penalty_warmup_steps=5))
    assert reg is not None
    [(name, penalty)] = reg.entries
    assert name == "1" and isinstance(penalty, actreg.Scheduled) and penalty.warmup == 5
    reg.remove()
    plain = regularize(model, {"1": actreg.L1(0.1)}, _cfg())
    assert plain is not None and isinstance(plain.entries[0][1], actreg.L1)
    plain.remove()
    assert regularize(model, None, _cfg()) is None


def test_warmup_refuses_a_key_hooking_several_modules():
    model = _model()
    with pytest.raises(ActregError, match="2 modules.*own key"):
        regularize(model, {"[01]": actreg.L1(0.1)}, _cfg(penalty_warmup_steps=5))
    assert all(not m._forward_hooks for m in model.modules())


def test_fit_removes_its_hooks():
    model = _model()
    _fit(model, _cfg(epochs=1), spec={"1": actreg.L1(0.1)})
    assert all(not m._forward_hooks for m in model.modules())


@pytest.mark.parametrize(
    ("field", "value"), [("penalty_warmup_steps", -1), ("warmup_steps", -2)], ids=["pen", "lr"]
)
def test_negative_warmup_is_refused(field, value):
    with pytest.raises(ActregError, match=f"{field} must not be negative, got {value}"):
        _cfg(**{field: value})


# Checkpoints and resume.


def _controlled() -> dict[str, actreg.Penalty]:
    return {"1": actreg.TargetSparsity(actreg.L1(1e-2), target=0.8, rate=0.2)}


def _plain() -> dict[str, actreg.Penalty]:
    return {"1": actreg.L1(1e-2)}


class Interrupt(Exception):
    pass


def _interrupt_at(step: int):
    calls = []

    def after_step():
        calls.append(1)
        if len(calls) == step:
            raise Interrupt

    return after_step


@pytest.mark.parametrize(
    ("make_spec", "settings", "stop_at"),
    [
        (_controlled, {}, 9),  # in epoch 3 of 4: resumes after epoch 2
        (_plain, {"penalty_warmup_steps": 10}, 5),  # in epoch 2, during the warm-up
        (_controlled, {"patience": 2, "epochs": 8, "lr": 0.1}, 21),  # stale count kept
        (_controlled, {"penalty_warmup_steps": 10}, 5),  # the controller inside a warm-up
    ],
    ids=["target-sparsity", "warmup", "patience", "warmup-target-sparsity"],
)
def test_resumed_run_equals_uninterrupted(tmp_path, make_spec, settings, stop_at):
    cfg = _cfg(**settings)
    whole_spec = make_spec()
    whole = _fit(_model(), cfg, spec=whole_spec, run_dir=tmp_path / "whole")

    with pytest.raises(Interrupt):
        _fit(_model(), cfg, spec=make_spec(), run_dir=tmp_path / "cut",
             after_step=_interrupt_at(stop_at))  # fmt: skip
    torch.manual_seed(1)  # other initial weights and random state: all come from the checkpoint
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 2))
    spec = make_spec()  # a fresh penalty: its state comes from the checkpoint
    resumed = _fit(model, cfg, spec=spec, run_dir=tmp_path / "cut", resume=True)

    if cfg.patience:
        assert len(whole["history"]) < cfg.epochs, "early stopping did not happen"
    assert _rows(resumed["history"]) == _rows(whole["history"])
    assert (resumed["best_epoch"], resumed["steps"]) == (whole["best_epoch"], whole["steps"])
    _assert_same_state(spec["1"].state_dict(), whole_spec["1"].state_dict())
    assert getattr(spec["1"], "coef", None) == getattr(whole_spec["1"], "coef", None)  # bit for bit
    best = actreg.load_checkpoint(tmp_path / "whole" / "checkpoint.pt")["model"]
    for key, value in model.state_dict().items():
        assert torch.equal(value, best[key]), key


def test_checkpoint_carries_the_regularizer_state(tmp_path):
    spec = _controlled()
    _fit(_model(), _cfg(epochs=2), spec=spec, run_dir=tmp_path)
    ckpt = actreg.load_checkpoint(tmp_path / "checkpoint.pt")  # plain data only
    saved = ckpt["resume"]["regularizer"]
    assert saved["steps"] == 8
    [[name, state]] = saved["penalties"]
    assert name == "1" and state["steps"] == 8
    assert float(state["log_scale"]) == float(spec["1"].state_dict()["log_scale"]) != 0.0
    assert set(ckpt) >= {"model", "epoch", "train_config", "version"}


def test_resuming_a_finished_run_trains_no_more(tmp_path):
    cfg = _cfg(epochs=2)
    first = _fit(_model(), cfg, spec=_controlled(), run_dir=tmp_path)
    again = _fit(_model(), cfg, spec=_controlled(), run_dir=tmp_path, resume=True)
    assert _rows(again["history"]) == _rows(first["history"])
    assert again["steps"] == first["steps"]


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"cfg": _cfg(epochs=1, lr=0.5)}, r"config differs.*\(lr: 0.01 -> 0.5\)"),
        ({"spec": None}, "saved with penalties"),
        ({"spec": {"3": actreg.L1(0.1)}}, "attach the same spec"),
        ({"run_dir": None}, "needs the run_dir"),
        ({"run_dir": "elsewhere"}, "no checkpoint file"),
    ],
    ids=["config", "no-spec", "other-spec", "no-run-dir", "no-checkpoint"],
)
def test_resume_refuses_what_does_not_match(tmp_path, change, match):
    _fit(_model(), _cfg(epochs=1), spec=_controlled(), run_dir=tmp_path)
    kwargs = {"cfg": _cfg(epochs=1), "spec": _controlled(), "run_dir": tmp_path, **change}
    if kwargs["run_dir"] == "elsewhere":
        kwargs["run_dir"] = tmp_path / "elsewhere"
    cfg = kwargs.pop("cfg")
    with pytest.raises(ActregError, match=match):
        _fit(_model(), cfg, resume=True, **kwargs)


# Moved from tests/lab/experiments/test_experiments.py.


def test_after_epoch_changes_are_never_kept_unvalidated():
    # A callback that wrecks the model (as dead-unit resampling disturbs it) after each epoch:
    # validation must see the trained weights, never the freshly wrecked ones, and the
    # weights fit() restores must be a validated, trained state.
    from actreg.lab.data import load_vision
    from actreg.lab.experiments._common import classification_loss, classification_metrics
    from actreg.lab.models import mlp

    data = load_vision("digits")
    model = mlp(64, [16], 10)
    calls = []

    def wreck(epoch):
        calls.append(epoch)
        with torch.no_grad():
            for p in model.parameters():
                p.zero_()

    out = fit(
        model,
        (data.x_train, data.y_train),
        (data.x_val, data.y_val),
        loss_fn=classification_loss,
        metrics_fn=classification_metrics,
        objective="error",
        cfg=TrainConfig(epochs=3, batch_size=50, lr=1e-2, progress=False),
        after_epoch=wreck,
    )
    assert calls == [1, 2]  # not after the last epoch
    # a zeroed model predicts one class (error about 0.9); trained weights do far better
    assert out["history"][0]["val_error"] < 0.6
    best = out["history"][out["best_epoch"] - 1]["val_error"]
    assert evaluate(model, data.x_val, data.y_val, classification_metrics)["error"] == best


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(("threads", "want"), [(0, 1), (2, 2)], ids=["chosen-small-model", "given"])
def test_fit_sets_the_thread_count(restore_threads, threads, want):
    torch.set_num_threads(2)
    _fit(_model(), _cfg(epochs=1, threads=threads))
    assert torch.get_num_threads() == want  # a tiny model: one thread (no spinning pool)


def test_checkpoint_survives_a_failed_write(tmp_path, monkeypatch):
    _fit(_model(), _cfg(epochs=1), run_dir=tmp_path)
    before = (tmp_path / "checkpoint.pt").read_bytes()

    def full(obj, path, *args, **kwargs):
        open(path, "wb").write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(actreg.ActregError, match="previous checkpoint is intact"):
        _fit(_model(), _cfg(epochs=1), run_dir=tmp_path)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def _assert_same_state(a, b):
    """Nested state dicts equal, tensors bit for bit."""
    assert set(a) == set(b)
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


def test_stop_after_is_the_full_runs_first_epochs():
    """stop_after=2 of 4 epochs: the same two epochs, learning rates included, as the
    first two of the full run (the schedule spans all 4); then it stops."""
    runs = {}
    for stop in (0, 2):
        runs[stop] = _fit(_model(), _cfg(stop_after=stop))["history"]
    assert len(runs[2]) == 2 and len(runs[0]) == 4
    assert _rows(runs[2]) == _rows(runs[0][:2])


def test_stop_after_beyond_epochs_is_refused():
    with pytest.raises(ActregError, match="stop_after=5 is more than epochs=4"):
        _cfg(stop_after=5)


def test_a_checkpoint_from_before_a_new_setting_resumes(tmp_path):
    """A checkpoint written before ``stop_after`` existed has no such key: it reads as the
    default (0), so the run resumes; a changed setting is still refused."""
    _fit(_model(), _cfg(epochs=1), spec=_controlled(), run_dir=tmp_path)
    path = tmp_path / "checkpoint.pt"
    ckpt = actreg.load_checkpoint(path)
    del ckpt["train_config"]["stop_after"]
    torch.save(ckpt, path)
    again = _fit(_model(), _cfg(epochs=1), spec=_controlled(), run_dir=tmp_path, resume=True)
    assert len(again["history"]) == 1
    with pytest.raises(ActregError, match=r"stop_after: 0 -> 1"):
        _fit(_model(), _cfg(epochs=1, stop_after=1), spec=_controlled(), run_dir=tmp_path,
             resume=True)  # fmt: skip
