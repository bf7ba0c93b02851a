"""sparse-ae's default: a target of 95% zeros when no coefficient is given (``resolve``)."""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import pytest

from actreg import ActregError
from actreg.lab.experiments import sparse_ae
from actreg.lab.experiments._config import apply_overrides, describe
from actreg.lab.experiments.sparse_ae import (
    EPOCHS,
    START_COEF,
    TARGET_SPARSITY,
    SparseAEConfig,
    resolve,
)
from actreg.lab.search.config import SearchConfig

#: A run of seconds: 200 digits at batch 50 (4 steps an epoch), a 16-unit code; epochs unset.
TINY = ("data=digits", "limit=200", "batch_size=50", "code=16", "probe_size=100",
        "compare=false", "progress=false", "run_name=r")  # fmt: skip


def config(*overrides: str) -> SparseAEConfig:
    return apply_overrides(SparseAEConfig(), list(overrides))


@pytest.mark.parametrize(
    ("overrides", "target", "coef"),
    [
        ((), TARGET_SPARSITY, START_COEF),  # the default code: target mode
        (("coef=0.01",), None, 0.01),  # a coefficient given: fixed
        (("coef=0.002",), None, START_COEF),  # the documented fixed MNIST run
        (("target_sparsity=0.9",), 0.9, START_COEF),  # a target of one's own
        (("target_sparsity=0.9", "coef=0.01"), 0.9, 0.01),  # coef is the controller's start
        (("target_l0=30",), None, START_COEF),  # an L0 target, not the default zeros
        (("l0=40",), None, START_COEF),  # l0 sets the code's target
        (("act=tanh",), None, START_COEF),  # no exact zeros to ask for
        (("act=softplus",), None, START_COEF),
        (("penalty=kl",), None, START_COEF),  # KL keeps its own target rate
        (("code_type=jumprelu",), None, START_COEF),
        (("code_type=topk", "l0=40"), None, START_COEF),
        (("variants=relu",), None, START_COEF),  # relu at coef, as variants= documents
        (("where=encoder", "hidden=64"), TARGET_SPARSITY, START_COEF),  # per layer
    ],
)
def test_resolve_asks_for_a_target_only_for_the_default_code(overrides, target, coef):
    cfg = config(*overrides)
    out = resolve(cfg)
    assert out.target_sparsity == target
    assert out.coef == coef
    assert resolve(out) == out  # resolved once and for all


def test_replace_coef_on_a_default_config_is_a_fixed_run():
    """What ``actreg search --coef`` and scripts do: a coefficient replaced into the default
    config must not keep the default target around it."""
    cfg = dataclasses.replace(SparseAEConfig(), coef=1e-3)
    assert resolve(cfg).target_sparsity is None


@pytest.mark.parametrize(
    ("search", "target", "coef"),
    [({"coefs": (1e-2, 1e-3)}, None, 1e-3), ({"targets": (0.8, 0.9)}, 0.9, START_COEF)],
)
def test_search_trials_resolve_to_what_the_search_asks(tmp_path, search, target, coef):
    cfg = SearchConfig("sparse-ae", out_dir=str(tmp_path), **search)
    value = (search.get("targets") or search["coefs"])[1]
    trial = resolve(cfg.experiment_config(value, "trial0001"))
    assert (trial.target_sparsity, trial.coef) == (target, coef)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (("l0=40", "target_sparsity=0.9"), "l0 sets the code's target"),
        (("coef=-1",), "coef"),
        (("target_sparsity=1.5",), "strictly between 0 and 1"),
        (("code=64", "target_l0=64"), "not sparse in a code of 64"),
    ],
)
def test_bad_settings_are_refused_with_coef_unset(overrides, match):
    with pytest.raises(ActregError, match=match):
        config(*overrides)


def test_results_record_the_resolved_settings(runs):
    """The tiny default run (tests/lab/conftest.py, no coef given) ran in target mode and
    its results.json says so: a rerun from the recorded config trains the same."""
    out = runs["sparse-ae"]
    assert list(out["variants"]) == [f"l1 target {TARGET_SPARSITY:g}", "none"]
    saved = json.loads((Path(out["run_dir"]) / "results.json").read_text())["config"]
    assert (saved["coef"], saved["target_sparsity"]) == (START_COEF, TARGET_SPARSITY)


@pytest.mark.parametrize(
    ("overrides", "n_train", "epochs"),
    [
        ((), None, EPOCHS),  # no data size known: the default
        ((), 50000, EPOCHS),  # MNIST's split: 391 steps an epoch, 14 epochs are plenty
        ((), 1078, 112),  # digits: 9 steps an epoch, 112 epochs for 1,000 steps
        (("batch_size=32",), 1078, 30),  # 34 steps an epoch
        (("epochs=3",), 1078, 3),  # an epochs set by the user is kept
    ],
)
def test_epochs_unset_give_small_data_enough_steps(overrides, n_train, epochs):
    out = resolve(config(*overrides), n_train)
    assert out.epochs == epochs


def test_a_run_trains_and_records_the_resolved_epochs(tmp_path, monkeypatch):
    """200 digits at batch 50 are 4 steps an epoch: with MIN_STEPS at 100 (1,000 is slow
    for a test), epochs unset become 25, and the history and results.json show 25."""
    monkeypatch.setattr(sparse_ae, "MIN_STEPS", 100)
    out = sparse_ae.run(config(*TINY, f"out_dir={tmp_path}"))
    variant = next(iter(out["variants"].values()))
    assert len(variant["history"]) == 25
    saved = json.loads((Path(out["run_dir"]) / "results.json").read_text())["config"]
    assert saved["epochs"] == 25


@pytest.mark.parametrize(
    ("overrides", "missed"),
    [(("epochs=2",), ["encoder.code"]), (("epochs=2", "coef=0.002"), [])],
)
def test_a_run_that_misses_its_target_says_so(tmp_path, overrides, missed):
    """8 steps cannot bring a code to 95% zeros: the run warns and names the fix; a fixed
    coefficient has no target to miss."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = sparse_ae.run(config(*TINY, f"out_dir={tmp_path}", *overrides))
    said = [str(w.message) for w in caught if "ends at" in str(w.message)]
    assert next(iter(out["variants"].values()))["target_missed"] == missed
    assert len(said) == len(missed)
    if missed:
        assert "target_sparsity=0.95" in said[0] and "raise epochs=" in said[0]


@pytest.mark.parametrize(
    ("key", "words"), [("epochs", "unset: 14, more for 1,000 steps"), ("coef", "see resolve")]
)
def test_help_explains_the_unset_settings(key, words):
    """`actreg run sparse-ae --help` reads each field's comment; a type checker's
    ``# type: ignore[...]`` before it is not part of the meaning."""
    meaning = {d["key"]: d["meaning"] for d in describe(SparseAEConfig)}[key]
    assert words in meaning
    assert "type: ignore" not in meaning
