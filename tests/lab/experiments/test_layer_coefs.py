"""``layer_coefs``: one coefficient per penalized layer in ``cnn`` and ``sparse-rectifier``.

A grid comparison of target mode against fixed coefficients needs one coefficient per
layer (docs/TARGET.md, "The Fashion CNN against grid-searched coefficients"); before this
setting that took a scratch script.
"""

from __future__ import annotations

import json

import pytest
from tests.lab.conftest import COMMON, TINY

from actreg import ActregError
from actreg.lab.experiments import get
from actreg.lab.experiments._config import apply_overrides, from_dict, to_dict
from actreg.lab.search.config import SearchConfig

EXPERIMENTS = {"cnn": ["features.act1", "features.act2"], "sparse-rectifier": ["act1", "act2"]}
SMALL = {
    "cnn": [*TINY["cnn"], "compare=false"],
    "sparse-rectifier": ["hidden=16,16", "variants=relu-l1"],
}


def tiny(name, tmp_path, *extra):
    """A tiny config of experiment ``name`` writing under ``tmp_path``."""
    overrides = [*COMMON, *SMALL[name], *extra, f"out_dir={tmp_path}"]
    return apply_overrides(get(name).config(), overrides)


@pytest.mark.parametrize("name", list(EXPERIMENTS))
@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("1e-4", r"one coefficient per penalized layer \(2\).*got 1.*layer_coefs=1e-4,1e-4"),
        ("1e-4,1e-4,1e-4", r"one coefficient per penalized layer \(2\).*got 3"),
        ("1e-4,-1e-4", r"layer_coefs \(each item\) must not be negative"),
        ("1e-4,inf", r"layer_coefs \(each item\) must be a finite number"),
        ("1e-4,x", r"layer_coefs expects a number"),
    ],
    ids=["too-few", "too-many", "negative", "infinite", "not-a-number"],
)
def test_bad_layer_coefs_are_refused_with_the_fix(name, value, match, tmp_path):
    with pytest.raises(ActregError, match=match):
        tiny(name, tmp_path, f"layer_coefs={value}")


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_a_zero_start_is_refused_in_target_mode_only(name, tmp_path):
    with pytest.raises(ActregError, match=r"starting coefficients and must be > 0"):
        tiny(name, tmp_path, "layer_coefs=1e-4,0", "target_sparsity=0.9")
    assert tiny(name, tmp_path, "layer_coefs=1e-4,0").layer_coefs == (1e-4, 0.0)


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_layer_coefs_equal_to_coef_train_the_same_model(name, tmp_path):
    one = get(name).run(tiny(name, tmp_path, "coef=3e-3", "run_name=one"))
    per = get(name).run(tiny(name, tmp_path, "coef=1", "layer_coefs=3e-3,3e-3", "run_name=per"))
    (a,), (b,) = one["variants"].values(), per["variants"].values()

    def timeless(history):
        return [{k: v for k, v in row.items() if k != "seconds"} for row in history]

    assert timeless(a["history"]) == timeless(b["history"])
    assert (a["test_error"], a["test_loss"]) == (b["test_error"], b["test_loss"])


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_each_layer_gets_its_own_coefficient(name, tmp_path):
    """Each layer is sparser in the run that penalizes it than in the run that does not."""
    first, second = EXPERIMENTS[name]
    zeros = {}
    for label, coefs in (("first", "0.3,0"), ("second", "0,0.3")):
        out = get(name).run(tiny(name, tmp_path, f"layer_coefs={coefs}", f"run_name={label}"))
        (variant,) = out["variants"].values()
        stats = variant["maps" if name == "cnn" else "layers"]
        zeros[label] = {layer: stats[layer]["zero_fraction"] for layer in (first, second)}
    assert zeros["first"][first] > zeros["second"][first]
    assert zeros["second"][second] > zeros["first"][second]


def test_cnn_names_its_variant_by_the_layer_coefficients(tmp_path):
    out = get("cnn").run(tiny("cnn", tmp_path, "layer_coefs=2e-4,6e-4", "run_name=named"))
    assert list(out["variants"]) == ["l1 0.0002,0.0006"]


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_a_config_with_layer_coefs_round_trips(name, tmp_path):
    cfg = tiny(name, tmp_path, "layer_coefs=2e-4,6e-4")
    assert from_dict(type(cfg), json.loads(json.dumps(to_dict(cfg)))) == cfg


def test_a_coefficient_search_refuses_layer_coefs_a_target_search_takes_them(tmp_path):
    sets = ("layer_coefs=1e-4,2e-4",)
    with pytest.raises(ActregError, match="each point of the coefficient grid would run the same"):
        SearchConfig("cnn", coefs=(1e-3, 1e-4), out_dir=str(tmp_path), overrides=sets)
    cfg = SearchConfig("cnn", targets=(0.9,), out_dir=str(tmp_path), overrides=sets)
    assert cfg.experiment_config(0.9, "t").layer_coefs == (1e-4, 2e-4)
