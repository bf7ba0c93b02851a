"""Each experiment end to end on tiny settings, the CLI through its functions (reports:
tests/lab/test_report.py)."""

from __future__ import annotations

import json

import pytest

from actreg import ActregError
from actreg.lab.cli import main
from actreg.lab.experiments import EXPERIMENTS, get, load_results
from actreg.lab.experiments._config import apply_overrides, from_dict, to_dict

TINY = {
    "sparse-ae": ["code=32", "probe_size=200"],
    "sparse-rectifier": ["hidden=32,32,32"],
    "cnn": ["channels=4,8", "hidden=16"],
}
COMMON = ["data=digits", "limit=200", "epochs=2", "batch_size=50", "progress=false"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    done = {}
    for name, extra in TINY.items():
        exp = get(name)
        cfg = apply_overrides(exp.config(), [*COMMON, *extra, f"out_dir={out}", "run_name=t"])
        done[name] = exp.run(cfg)
    return done


@pytest.mark.parametrize("name", list(TINY), ids=list(TINY))
def test_experiment_writes_valid_results(runs, name):
    results = runs[name]
    doc = load_results(results["run_dir"])
    assert doc["experiment"] == name
    assert doc["version"]
    assert doc["config"]["epochs"] == 2 and doc["config"]["limit"] == 200
    assert doc["data"]["name"] == "digits"
    for out in doc["variants"].values():
        assert len(out["history"]) == 2
        assert {"train_task_loss", "train_penalty", "seconds"} <= set(out["history"][0])
    rows = get(name).summary(doc)
    assert rows and all("variant" in r for r in rows)


def test_penalized_variant_has_penalty_and_plain_has_none(runs):
    variants = runs["sparse-rectifier"]["variants"]
    assert variants["relu-l1"]["history"][0]["train_penalty"] > 0
    assert variants["relu"]["history"][0]["train_penalty"] == 0


def test_sparse_ae_pictures_exist(runs):
    for path in runs["sparse-ae"]["pictures"].values():
        with open(path, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


def test_cnn_measures_feature_maps(runs):
    maps = runs["cnn"]["variants"]["none"]["maps"]
    assert set(maps) == {"features.act1", "features.act2"}
    assert len(maps["features.act1"]["firing_rate"]) == 4  # one rate per channel


def test_config_round_trip():
    for exp in EXPERIMENTS.values():
        cfg = exp.config()
        assert from_dict(exp.config, json.loads(json.dumps(to_dict(cfg)))) == cfg


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["epoch=3"], r"unknown key 'epoch'.*did you mean epochs"),
        (["epochs"], "expected key=value"),
        (["epochs=three"], "epochs expects int"),
        (["progress=maybe"], "expects true or false"),
        (["optimizer=rmsprop"], "unknown optimizer"),
        (["where=everywhere"], "unknown where"),
        (["penalty=l3"], "unknown penalty 'l3'"),
    ],
    ids=["typo", "no-equals", "not-int", "not-bool", "optimizer", "where", "penalty"],
)
def test_bad_overrides(overrides, match):
    with pytest.raises(ActregError, match=match):
        apply_overrides(get("sparse-ae").config(), overrides)


def test_unknown_experiment_lists_valid():
    with pytest.raises(ActregError, match=r"did you mean sparse-ae.*valid: sparse-ae"):
        get("sparse_ae")


def test_cli_run_and_report(tmp_path, capsys):
    args = ["run", "sparse-rectifier", *[f"--set={s}" for s in COMMON]]
    args += ["--set=hidden=16", "--set=variants=relu-l1", f"--set=out_dir={tmp_path}"]
    args += ["--set=run_name=cli"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| relu-l1 |" in printed
    run_dir = tmp_path / "sparse-rectifier" / "cli"
    assert main(["report", str(run_dir), "--out", str(tmp_path / "r.md")]) == 0
    assert (tmp_path / "r.md").exists()


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["run", "nope"], "unknown experiment 'nope'"),
        (["run", "cnn", "--set", "chanels=3"], "unknown key 'chanels'"),
        (["report", "/nonexistent/run"], "no results.json"),
        (["data", "fetch", "cifar"], "cifar"),
    ],
    ids=["experiment", "key", "report", "dataset"],
)
def test_cli_errors_are_clear(argv, match, capsys):
    assert main(argv) == 2
    assert match in capsys.readouterr().err


@pytest.mark.parametrize("argv", [[], ["run"], ["data"], ["demo", "--epochs"]])
def test_cli_usage_errors_exit_2(argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2


@pytest.mark.parametrize("command", ["demo", "run", "data", "report"])
def test_cli_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert "usage: actreg" in capsys.readouterr().out


def test_cli_data_list(capsys, tmp_path):
    assert main(["data", "list", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "mnist" in out and "digits" in out


def test_demo_quick(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "| l1 0.01 |" in out and "| none |" in out and "| raw inputs |" in out
    (folder,) = (tmp_path / "sparse-ae").iterdir()
    assert str(folder) in out and (folder / "results.json").exists()
    assert main(["demo", "--out", str(tmp_path), "--epochs", "1"]) == 0
    assert len(list((tmp_path / "sparse-ae").iterdir())) == 2  # a second demo never overwrites


@pytest.mark.parametrize("flags", [[], ["--no-extension", "--no-fold"]], ids=["cpp", "torch"])
@pytest.mark.parametrize("name", ["sparse-rectifier", "sparse-ae"])
def test_speedup_converts_a_trained_run(runs, name, flags, capsys):
    assert main(["speedup", runs[name]["run_dir"], "--examples", "20", *flags]) == 0
    out = capsys.readouterr().out
    header, _, row = out.splitlines()[:3]
    cells = dict(zip(header.split("|"), row.split("|"), strict=True))
    assert cells[" identical "].strip() == "True"
    folded = name == "sparse-rectifier" and not flags
    assert cells[" input_folded "].strip() == str(folded)
    assert "input zero fraction per converted layer" in out
    if folded:  # the first layer reads the raw pixels, most of them zero
        assert "fc1 0." in out


def test_speedup_refuses_other_runs(runs, capsys):
    assert main(["speedup", runs["cnn"]["run_dir"]]) == 2
    assert "sparse-rectifier and sparse-ae" in capsys.readouterr().err
    assert main(["speedup", runs["sparse-ae"]["run_dir"], "--variant", "nope"]) == 2


def test_after_epoch_changes_are_never_kept_unvalidated():
    # A callback that wrecks the model (as dead-unit resampling disturbs it) after each epoch:
    # validation must see the trained weights, never the freshly wrecked ones, and the
    # weights fit() restores must be a validated, trained state.
    import torch

    from actreg.lab.data import load_vision
    from actreg.lab.experiments._common import classification_loss, classification_metrics
    from actreg.lab.models import mlp
    from actreg.lab.train import TrainConfig, evaluate, fit

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
