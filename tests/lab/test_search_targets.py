"""A search over sparsity targets (``--target``) instead of coefficients: each trial runs the
experiment in target mode; the rows and the plot show the zero fraction each reached."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

pytest.importorskip("optuna")

from actreg import ActregError
from actreg.lab.cli import main
from actreg.lab.experiments import EXPERIMENTS, Experiment, SearchSpec
from actreg.lab.search import SearchConfig, run_search
from actreg.lab.search.grid import target_grid


@dataclasses.dataclass
class TargetConfig:
    """A stand-in experiment with a target mode: it reaches its target minus 0.01."""

    coef: float = 1e-3
    target_sparsity: float | None = None
    target_l0: float | None = None
    out_dir: str = "runs"
    run_name: str | None = None


def target_run(cfg: TargetConfig) -> dict:
    run_dir = Path(cfg.out_dir) / "fake" / str(cfg.run_name)
    run_dir.mkdir(parents=True, exist_ok=True)
    assert cfg.target_sparsity is not None and cfg.coef == 1e-3  # the coefficient is kept
    zeros = cfg.target_sparsity - 0.01
    (run_dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg)))
    return {"val_error": zeros**4, "zero_fraction": zeros, "run_dir": str(run_dir)}


def target_metrics(results: dict) -> dict[str, float]:
    return {"val_error": results["val_error"], "zero_fraction": results["zero_fraction"]}


@dataclasses.dataclass
class NoTargetConfig:
    coef: float = 1e-3
    out_dir: str = "runs"
    run_name: str | None = None


def spec() -> SearchSpec:
    return SearchSpec(objectives=("val_error",), metrics=target_metrics)


@pytest.fixture
def fake(monkeypatch):
    exp = Experiment("fake-target", TargetConfig, target_run, lambda r: [], "stand-in", spec())
    monkeypatch.setitem(EXPERIMENTS, "fake-target", exp)
    plain = Experiment("fake-coef", NoTargetConfig, target_run, lambda r: [], "stand-in", spec())
    monkeypatch.setitem(EXPERIMENTS, "fake-coef", plain)


@pytest.mark.parametrize(
    ("given", "grid"),
    [("0.95,0.8,0.9", (0.8, 0.9, 0.95)), ([0.9, 0.9], (0.9,)), (" 0.5 ", (0.5,))],
    ids=["sorted", "duplicates", "spaces"],
)
def test_target_grid(given, grid):
    assert target_grid(given) == grid


@pytest.mark.parametrize(
    ("given", "match"),
    [("", "empty"), ("0.9,1", "strictly between 0 and 1"), ("0", "strictly"), ("x", "number")],
    ids=["empty", "one", "zero", "text"],
)
def test_target_grid_rejects(given, match):
    with pytest.raises(ActregError, match=match):
        target_grid(given)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"refine": 2}, "a target search runs the targets it is given"),
        ({"overrides": ("target_sparsity=0.5",)}, "sets target_sparsity, target_l0"),
        ({"overrides": ("target_l0=5",)}, "sets target_sparsity, target_l0"),
        ({"experiment": "fake-coef"}, "fake-coef has no target mode"),
    ],
    ids=["refine", "target-override", "l0-override", "no-target-mode"],
)
def test_bad_target_search_before_any_trial(fake, tmp_path, kwargs, match):
    kwargs = {"experiment": "fake-target", "targets": (0.9,), **kwargs}
    with pytest.raises(ActregError, match=match):
        SearchConfig(out_dir=str(tmp_path), **kwargs)
    assert not (tmp_path / "search").exists()


def test_target_search_end_to_end(fake, tmp_path):
    cfg = SearchConfig("fake-target", targets=(0.95, 0.8, 0.9), out_dir=str(tmp_path))
    assert cfg.grid_key == "target" and cfg.coefs == (0.8, 0.9, 0.95)
    coef = SearchConfig("fake-target", coefs=(0.8, 0.9, 0.95), out_dir=str(tmp_path))
    assert coef.study != cfg.study  # a coefficient grid of the same numbers is another study
    rows = run_search(cfg)
    assert [r["target"] for r in rows] == [0.8, 0.9, 0.95] and "coef" not in rows[0]
    assert [r["zero_fraction"] for r in rows] == pytest.approx([0.79, 0.89, 0.94])
    for row in rows:
        sent = json.loads((Path(row["run_dir"]) / "config.json").read_text())
        assert sent["target_sparsity"] == row["target"] and sent["coef"] == 1e-3
    report = (cfg.search_dir / "search.md").read_text()
    assert report.startswith("# Target search: fake-target") and "| target |" in report
    assert (cfg.search_dir / "tradeoff.png").stat().st_size > 0
    saved = json.loads((cfg.search_dir / "search.json").read_text())
    assert saved["search"]["targets"] == [0.8, 0.9, 0.95]
    assert run_search(cfg) == rows  # finished: running it again runs nothing


def test_cli_target_search(fake, tmp_path, capsys):
    assert main(["search", "fake-target", "--target", "0.8,0.9", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| target |" in out and "report:" in out
    both = ["search", "fake-target", "--target", "0.9", "--coef", "1e-3"]
    assert main([*both, "--out", str(tmp_path)]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["search", "fake-target", "--target", "1.5", "--out", str(tmp_path)]) == 2
    assert "strictly between 0 and 1" in capsys.readouterr().err


@pytest.mark.slow
def test_tiny_real_target_search_sparse_rectifier(tmp_path):
    sets = ("data=digits", "epochs=8", "lr=3e-3", "hidden=32", "batch_size=32")
    cfg = SearchConfig(
        "sparse-rectifier", targets=(0.8, 0.95), overrides=sets, out_dir=str(tmp_path)
    )
    rows = run_search(cfg)
    assert [r["target"] for r in rows] == [0.8, 0.95]
    assert rows[0]["zero_fraction"] < rows[1]["zero_fraction"]
    results = json.loads((Path(rows[0]["run_dir"]) / "results.json").read_text())
    assert results["config"]["target_sparsity"] == 0.8
