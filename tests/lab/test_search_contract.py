"""The experiments' search contract: each registered experiment's trial metrics, objective
names, and a search that names no experiment (a toy registered here runs through it end to
end; the search's sources hold no experiment's name)."""

from __future__ import annotations

import ast
import dataclasses
import math
from pathlib import Path
from typing import TypedDict

import pytest

pytest.importorskip("optuna")

from actreg import ActregError
from actreg.lab.cli import main
from actreg.lab.experiments import EXPERIMENTS, Experiment, SearchSpec, get
from actreg.lab.search import SearchConfig, run_search

HISTORY = {"history": [{"val_loss": 0.5, "val_error": 0.2}, {"val_loss": 0.4, "val_error": 0.1}]}
LAYERS = {"act1": {"zero_fraction": 0.8, "l0": 3.0}, "act2": {"zero_fraction": 0.6}}
CLASSIFIER = {
    "val_loss": 0.4,
    "val_error": 0.1,
    "test_error": 0.15,
    "zero_fraction": 0.7,
    "l0": 3.0,
}
AE_OUT = {
    "history": [{"val_mse": 0.03, "seconds": 1.0}, {"val_mse": 0.02, "seconds": 2.0}],
    "best_epoch": 2,
    "test_mse": 0.025,
    "probe": {"clean": 0.75, "noisy": 0.5},
    "code": {"zero_fraction": 0.9, "l0": 12.0, "dead_fraction": 0.1, "firing_rate": [0.1]},
}


@pytest.mark.parametrize(
    ("name", "results", "expected"),
    [
        (
            "sparse-rectifier",
            {
                "variants": {
                    "relu": {},
                    "relu-l1": {**HISTORY, "best_epoch": 2, "test_error": 0.15, "layers": LAYERS},
                }
            },
            CLASSIFIER,
        ),
        (
            "cnn",
            {
                "variants": {
                    "l1 0.0001": {**HISTORY, "best_epoch": 2, "test_error": 0.15, "maps": LAYERS}
                }
            },
            CLASSIFIER,
        ),
        (
            "sparse-ae",
            {"variants": {"l1 0.01": AE_OUT, "none": {}}},
            {
                "val_mse": 0.02,
                "test_mse": 0.025,
                "probe_error": 0.25,
                "noisy_probe_error": 0.5,
                "zero_fraction": 0.9,
                "l0": 12.0,
                "dead_fraction": 0.1,
            },
        ),
    ],
    ids=["sparse-rectifier", "cnn", "sparse-ae"],
)
def test_search_metrics_of_the_registered_experiments(name, results, expected):
    spec = get(name).search
    metrics = spec.metrics(results)
    assert metrics == pytest.approx(expected)
    assert all(type(v) is float for v in metrics.values())
    assert spec.objective(None) in metrics  # the default objective is recorded


@pytest.mark.parametrize(
    ("objective", "metric"),
    [(None, "val_mse"), ("val_loss", "val_mse"), ("probe_error", "probe_error")],
    ids=["default", "alias", "other"],
)
def test_objective_names(tmp_path, objective, metric):
    cfg = SearchConfig("sparse-ae", objective=objective, out_dir=str(tmp_path))
    assert cfg.metric == metric


class ToyResults(TypedDict):
    loss: float
    nonzero: float
    run_dir: str


@dataclasses.dataclass
class ToyConfig:
    """A toy whose coefficient is called ``strength`` and that has no ``coef`` at all."""

    strength: float = 1.0
    offset: float = 0.0
    out_dir: str = "runs"
    run_name: str | None = None


def toy_run(cfg: ToyConfig) -> ToyResults:
    run_dir = Path(cfg.out_dir) / "toy" / str(cfg.run_name)
    run_dir.mkdir(parents=True, exist_ok=True)
    loss = (math.log10(cfg.strength) + 2) ** 2 + cfg.offset
    return {"loss": loss, "nonzero": 1 - cfg.strength, "run_dir": str(run_dir)}


def toy_metrics(results: ToyResults) -> dict[str, float]:
    return {"score": results["loss"], "nonzero": results["nonzero"], "worst": 2 * results["loss"]}


TOY = Experiment(
    "toy",
    ToyConfig,
    toy_run,
    lambda r: [],
    "a stand-in searched through its contract alone",
    SearchSpec(
        objectives=("score", "worst"),
        metrics=toy_metrics,
        settings=("offset=1",),
        coef_field="strength",
        aliases={"val_loss": "score"},
    ),
)


@pytest.mark.parametrize(
    "objective", [None, "val_loss", "worst"], ids=["default", "alias", "other"]
)
def test_toy_experiment_runs_through_search_unchanged(monkeypatch, tmp_path, objective):
    monkeypatch.setitem(EXPERIMENTS, "toy", TOY)
    cfg = SearchConfig(
        "toy", coefs=(1e-1, 1e-2, 1e-3), refine=(2, 5), objective=objective, out_dir=str(tmp_path)
    )
    rows = run_search(cfg)
    name = objective or "score"
    assert [r["coef"] for r in rows] == [1e-3, 1e-2, 2e-2, 5e-2, 1e-1]
    by_coef = {r["coef"]: r for r in rows}
    assert by_coef[1e-2][name] == pytest.approx(2 if name == "worst" else 1)  # offset=1 applied
    assert by_coef[1e-1]["nonzero"] == pytest.approx(0.9)  # strength set from the grid
    assert list(rows[0])[:6] == ["coef", "stage", "state", "trial", name, "nonzero"]
    others = [o for o in ("score", "worst") if o != name]  # other objectives follow
    assert list(rows[0])[6:] == [*others, "attempts", "seconds", "run_dir"]
    assert all(Path(r["run_dir"]).parent.name == "toy" for r in rows)
    text = (cfg.search_dir / "search.md").read_text()
    assert "# Coefficient search: toy" in text and f"objective `{name}`" in text


def test_toy_reserved_field_is_its_coefficient(monkeypatch, tmp_path):
    monkeypatch.setitem(EXPERIMENTS, "toy", TOY)
    with pytest.raises(ActregError, match="sets strength, out_dir, run_name"):
        SearchConfig("toy", overrides=("strength=3",), out_dir=str(tmp_path))


def test_config_without_the_coefficient_field_is_refused(monkeypatch, tmp_path):
    spec = dataclasses.replace(TOY.search, coef_field="coef")
    monkeypatch.setitem(EXPERIMENTS, "toy", dataclasses.replace(TOY, search=spec))
    with pytest.raises(ActregError, match="ToyConfig has no field coef"):
        SearchConfig("toy", out_dir=str(tmp_path))


SEARCH_SRC = Path(__import__("actreg.lab.search").lab.search.__file__).parent


def _code_strings(path: Path) -> list[str]:
    """String constants of a module that are not docstrings."""
    tree = ast.parse(path.read_text())
    docs = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        n.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs
    ]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    return out | {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}


@pytest.mark.parametrize("module", sorted(p.name for p in SEARCH_SRC.glob("*.py")), ids=str)
def test_search_names_no_experiment(module):
    path = SEARCH_SRC / module
    named = [(s, e) for s in _code_strings(path) for e in EXPERIMENTS if e in s]
    assert not named, f"{module} names experiments: {named}"
    experiment_modules = {m for m in _imports(path) if m.startswith("actreg.lab.experiments.")}
    assert experiment_modules <= {"actreg.lab.experiments._config"}
    assert "relu-l1" not in path.read_text() and "variants" not in path.read_text()


def test_cli_search_help_lists_the_searchable(capsys):
    with pytest.raises(SystemExit) as info:
        main(["search", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "sparse-ae          objectives: val_mse, test_mse" in out
    assert "lstm-lm" not in out  # declares no search contract
