"""Each experiment end to end on tiny settings, and their configs.

The CLI is tested in tests/lab/test_cli.py, the training loop in tests/lab/test_train.py,
reports in tests/lab/test_report.py.
"""

from __future__ import annotations

import json
import os

import pytest

from actreg import ActregError
from actreg.lab.experiments import EXPERIMENTS, get, load_results
from actreg.lab.experiments._config import apply_overrides, from_dict, to_dict


@pytest.mark.parametrize("name", ["sparse-ae", "sparse-rectifier", "cnn"])  # the runs fixture
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


def test_sparse_ae_pictures_exist_relative_to_the_run_folder(runs):
    for path in runs["sparse-ae"]["pictures"].values():
        assert not os.path.isabs(path) and os.sep not in path  # the folder may move
        with open(os.path.join(runs["sparse-ae"]["run_dir"], path), "rb") as fh:
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
        (["epochs=three"], "epochs expects a whole number"),
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
