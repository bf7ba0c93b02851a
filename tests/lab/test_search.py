"""Coefficient search: grids, bad input, URL masking, resume after SIGKILL, concurrent
workers, reports, and that the search names no experiment (a toy experiment registered
here runs through it end to end).

PostgreSQL tests run when ACTREG_TEST_POSTGRES holds a URL (``.ci/run`` starts a server).
"""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import TypedDict
from urllib.parse import urlsplit

import pytest

pytest.importorskip("optuna")

from actreg import ActregError
from actreg.lab.cli import main
from actreg.lab.experiments import EXPERIMENTS, Experiment, SearchSpec, get
from actreg.lab.search import (
    SearchConfig,
    coarse_grid,
    refine_grid,
    run_search,
    search_rows,
)
from actreg.lab.search import worker as search_worker
from actreg.lab.search._db import safe_url, scrub

POSTGRES = os.environ.get("ACTREG_TEST_POSTGRES")
TESTS = Path(__file__).parent


@dataclasses.dataclass
class FakeConfig:
    """A cheap stand-in experiment: objective minimal near coef 10**-2.4."""

    coef: float = 1e-3
    out_dir: str = "runs"
    run_name: str | None = None
    sleep: float = 0.0
    log: str = ""


def fake_run(cfg: FakeConfig) -> dict:
    run_dir = Path(cfg.out_dir) / "fake" / str(cfg.run_name)
    run_dir.mkdir(parents=True, exist_ok=True)
    time.sleep(cfg.sleep)
    if cfg.log:
        with open(cfg.log, "a") as f:
            f.write(f"{cfg.coef}\n")
    loss = (math.log10(cfg.coef) + 2.4) ** 2
    return {"val_loss": loss, "zero_fraction": min(1.0, cfg.coef * 10), "run_dir": str(run_dir)}


def fake_metrics(results: dict) -> dict[str, float]:
    return {"val_loss": results["val_loss"], "zero_fraction": results["zero_fraction"]}


FAKE = Experiment(
    "fake",
    FakeConfig,
    fake_run,
    lambda r: [],
    "test stand-in",
    SearchSpec(objectives=("val_loss",), metrics=fake_metrics),
)


def register() -> None:
    EXPERIMENTS["fake"] = FAKE


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setitem(EXPERIMENTS, "fake", FAKE)


BACKENDS = [
    "sqlite",
    pytest.param(
        "postgres", marks=pytest.mark.skipif(not POSTGRES, reason="ACTREG_TEST_POSTGRES unset")
    ),
]


def _url(backend: str, tmp_path: Path) -> str:
    return str(POSTGRES) if backend == "postgres" else f"sqlite:///{tmp_path}/search.db"


def _worker(cfg: dict, log: Path) -> subprocess.Popen:
    """A real worker process running ``work(SearchConfig(**cfg))`` on the fake experiment."""
    code = (
        "import sys, json; sys.path.insert(0, sys.argv[1]); import test_search as t; "
        "t.register(); from actreg.lab.search import SearchConfig; "
        "from actreg.lab.search.worker import work; work(SearchConfig(**json.loads(sys.argv[2])))"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, str(TESTS), json.dumps(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=open(log.with_suffix(".err"), "a"),
    )


def _lines(path: Path) -> list[float]:
    return [float(x) for x in path.read_text().split()] if path.exists() else []


@pytest.mark.parametrize(
    ("given", "grid"),
    [
        ("1e-1,1e-2,1e-3,1e-4", (0.1, 0.01, 0.001, 0.0001)),
        ([0.01, 0.01, 1e-3], (0.01, 0.001)),
        (" 2e-3 , 5e-3 ", (0.002, 0.005)),
    ],
    ids=["decades", "duplicates", "spaces"],
)
def test_coarse_grid(given, grid):
    assert coarse_grid(given) == grid


@pytest.mark.parametrize("bad", ["", "0.1,0", "-1e-3", "nan", "abc"], ids=str)
def test_coarse_grid_rejects(bad):
    with pytest.raises(ActregError):
        coarse_grid(bad)


@pytest.mark.parametrize(
    ("values", "refine", "expected"),
    [
        ([0.5, 0.2, 0.3], (1, 2, 5), [0.002, 0.005]),  # best 0.01, lower neighbour better
        ([0.5, 0.2, 0.6], (2, 5), [0.02, 0.05]),  # upper neighbour better
        ([0.1, 0.2, 0.3], 2, [0.0215443, 0.0464159]),  # best at the top edge
        ([None, 0.2, 0.3], 1, [0.00316228]),  # a failed point is ignored
        ([0.5, 0.2, 0.3], 0, []),
    ],
    ids=["125-below", "25-above", "count-edge", "failed", "none"],
)
def test_refine_grid(values, refine, expected):
    assert refine_grid((0.1, 0.01, 0.001), values, refine) == expected


def test_refine_single_point_uses_decade_above():
    assert refine_grid((1e-3,), [0.1], (2, 5)) == [0.002, 0.005]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"objective": "accuracy"}, "unknown objective"),
        ({"storage": "postgresql//u:hunter2@h/db"}, "malformed"),
        ({"storage": "oracle://u:hunter2@h/db"}, "unsupported"),
        ({"storage": "sqlite://"}, "in-memory"),
        ({"coefs": ()}, "empty"),
        ({"refine": -1}, "refine"),
        ({"overrides": ("coef=1",)}, "sets coef"),
        ({"overrides": ("epoch=3",)}, "did you mean"),
        ({"overrides": ("run_name=x",)}, "sets coef, out_dir, run_name"),
        ({"experiment": "lstm-lm"}, "lstm-lm declares no search contract.*searchable: sparse-ae"),
        ({"experiment": "sparse_ae"}, "did you mean sparse-ae"),
    ],
    ids=[
        "objective",
        "malformed",
        "backend",
        "memory",
        "empty",
        "refine",
        "reserved",
        "key",
        "run-name",
        "not-searchable",
        "unknown",
    ],
)
def test_bad_input_before_any_trial(tmp_path, kwargs, match):
    kwargs = {"experiment": "sparse-rectifier", **kwargs}
    with pytest.raises(ActregError, match=match) as err:
        SearchConfig(out_dir=str(tmp_path), **kwargs)
    assert "hunter2" not in str(err.value)
    assert not (tmp_path / "search").exists()


def test_unreachable_storage_is_masked(fake, tmp_path):
    url = "postgresql://actreg:hunter2@127.0.0.1:1/actreg"
    cfg = SearchConfig("fake", storage=url, objective="val_loss", out_dir=str(tmp_path))
    with pytest.raises(ActregError, match="cannot reach storage") as err:
        run_search(cfg)
    assert "hunter2" not in str(err.value) and "actreg:***@" in str(err.value)


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


@pytest.mark.parametrize("backend", BACKENDS)
def test_search_end_to_end_and_report(fake, tmp_path, backend, caplog):
    url = _url(backend, tmp_path)
    cfg = SearchConfig(
        "fake",
        refine=(1, 2, 5),
        storage=url,
        study=f"e2e-{uuid.uuid4().hex[:8]}",
        out_dir=str(tmp_path),
    )
    with caplog.at_level("INFO", logger="actreg.lab.search"):
        rows = run_search(cfg)
    assert [r["coef"] for r in rows] == [1e-4, 1e-3, 2e-3, 5e-3, 1e-2, 1e-1]
    assert all(r["state"] == "complete" and r["attempts"] == 1 for r in rows)
    assert {r["stage"] for r in rows if r["coef"] in (2e-3, 5e-3)} == {"refine"}
    assert all(Path(r["run_dir"]).is_dir() and "zero_fraction" in r for r in rows)
    for name in ("search.md", "search.json", "tradeoff.png"):
        assert (cfg.search_dir / name).exists()
    text = (cfg.search_dir / "search.md").read_text() + (cfg.search_dir / "search.json").read_text()
    text += caplog.text
    if backend == "postgres":
        assert ":***@" in text
    assert "actreg:actreg@" not in text
    assert run_search(cfg) == rows  # finished: running it again runs nothing


def test_same_study_other_settings_is_refused(fake, tmp_path):
    cfg = SearchConfig("fake", coefs=(1e-2,), study="s", out_dir=str(tmp_path))
    run_search(cfg)
    with pytest.raises(ActregError, match="different search"):
        run_search(dataclasses.replace(cfg, coefs=(1e-3,)))


def test_resume_after_sigkill(fake, tmp_path):
    log = tmp_path / "runs.log"
    spec = {
        "experiment": "fake",
        "coefs": [1e-1, 1e-2, 1e-3, 1e-4, 1e-5],
        "objective": "val_loss",
        "study": "killed",
        "out_dir": str(tmp_path),
        "overrides": ["sleep=0.5", f"log={log}"],
        "heartbeat": 1,
        "grace": 2,
    }
    proc = _worker(spec, log)
    deadline = time.time() + 60
    while len(_lines(log)) < 2 and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.25)  # the third trial is now running
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = _lines(log)
    assert 2 <= len(before) < 5
    cfg = SearchConfig(
        **{**spec, "coefs": tuple(spec["coefs"]), "overrides": tuple(spec["overrides"])}
    )
    rows = run_search(cfg)
    runs = _lines(log)
    assert sorted(runs) == sorted(spec["coefs"])  # each point ran once to the end
    assert runs[: len(before)] == before  # finished ones were not run again
    assert all(r["state"] == "complete" for r in rows)
    assert sum(r["attempts"] for r in rows) == 6  # the killed trial: once failed, once retried


def test_stale_running_trial_is_retried(fake, tmp_path):
    cfg = SearchConfig("fake", coefs=(1e-2, 1e-3), out_dir=str(tmp_path), heartbeat=1, grace=2)
    store, study = search_worker._open(cfg)
    with store.lock():
        search_worker._plan(cfg, study, retry_failed=True)
        abandoned = search_worker._claim(store, study)  # claimed, never finished
    store.close()
    rows = run_search(cfg)
    states = {t.number: t.state.name for t in _optuna_trials(cfg)}
    assert states[abandoned.number] == "FAIL"
    assert [r["attempts"] for r in rows] == [1, 2][:: -1 if rows[0]["coef"] == 1e-2 else 1]
    assert all(r["state"] == "complete" for r in rows)


def _optuna_trials(cfg: SearchConfig) -> list:
    import optuna

    return optuna.load_study(study_name=cfg.study, storage=cfg.storage).get_trials()


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_workers_no_duplicates(fake, tmp_path, backend):
    log = tmp_path / "runs.log"
    spec = {
        "experiment": "fake",
        "coefs": [10 ** (-k / 2) for k in range(6)],
        "refine": 2,
        "objective": "val_loss",
        "storage": _url(backend, tmp_path),
        "study": f"pair-{uuid.uuid4().hex[:8]}",
        "out_dir": str(tmp_path),
        "overrides": ["sleep=0.02", f"log={log}"],
    }
    procs = [_worker(spec, log) for _ in range(2)]
    codes = [p.wait(timeout=120) for p in procs]
    err = log.with_suffix(".err").read_text() if log.with_suffix(".err").exists() else ""
    assert codes == [0, 0], err
    assert "database is locked" not in err
    runs = _lines(log)
    assert len(runs) == len(set(runs)) == 8
    cfg = SearchConfig(**{**spec, "coefs": tuple(spec["coefs"]), "refine": 2, "overrides": ()})
    cfg.overrides = tuple(spec["overrides"])
    assert len(search_rows(cfg)) == 8


@pytest.mark.slow
def test_tiny_real_search_sparse_rectifier(tmp_path):
    sets = ("data=digits", "limit=300", "epochs=1", "hidden=16", "batch_size=64")
    cfg = SearchConfig(
        "sparse-rectifier", coefs=(1e-2, 1e-4), refine=1, overrides=sets, out_dir=str(tmp_path)
    )
    rows = run_search(cfg)
    assert len(rows) == 3
    assert all(0 <= r["val_error"] <= 1 and 0 <= r["zero_fraction"] <= 1 for r in rows)
    results = json.loads((Path(rows[0]["run_dir"]) / "results.json").read_text())
    assert list(results["variants"]) == ["relu-l1"]  # only the penalized model is trained
    assert (cfg.search_dir / "tradeoff.png").stat().st_size > 0


def test_cli_search(fake, tmp_path, capsys):
    argv = ["search", "fake", "--coef", "1e-1,1e-3", "--refine", "1", "--objective", "val_loss"]
    assert main([*argv, "--out", str(tmp_path), "--set", "sleep=0"]) == 0
    out = capsys.readouterr().out
    assert "| coef |" in out and "report:" in out
    assert main(["search", "fake", "--coef", "0", "--out", str(tmp_path)]) == 2
    assert "positive" in capsys.readouterr().err


# URL masking: one masker, in the lab (moved here from tests/test_io.py, where the library
# had a second one).


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://user:secret@host/db", "postgresql://user:***@host/db"),
        ("postgresql+psycopg2://u:p%40ss@h:5432/d?x=1", "postgresql+psycopg2://u:***@h:5432/d?x=1"),
        ("mysql://user:pw@host:3306/db", "mysql://user:***@host:3306/db"),
        ("redis://:pw@localhost:6379/0", "redis://:***@localhost:6379/0"),
        ("postgresql://user:s:e@c@host/db", "postgresql://user:***@host/db"),
        ("postgresql://user@host/db", "postgresql://user@host/db"),
        ("sqlite:///runs/search.db", "sqlite:///runs/search.db"),
        ("sqlite:////tmp/a:b@c/search.db", "sqlite:////tmp/a:b@c/search.db"),
        ("https://h/db?user=a&password=b&x=1", "https://h/db?user=a&password=***&x=1"),
        ("runs/search.db", "runs/search.db"),
        ("postgresql://u:p@ss@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgresql://u:pa/ss@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u:a/b@c:d@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u:100%@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u:p[ss@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u:ab?cd@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u:ab#cd@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u:pw@h/db?opt=a@b", "postgresql://u:***@h/db?opt=a@b"),
        (
            "postgresql://h/db?sslmode=require&password=p@ss&token=t0k",
            "postgresql://h/db?sslmode=require&password=***&token=***",
        ),
        ("postgresql://u:pw@h:port/db", "postgresql://***"),
        ("postgresql//actreg:hunter2@db/runs", "postgresql//actreg:***@db/runs"),
        ("u:hunter2@h/db", "u:***@h/db"),
    ],
    ids=[
        "pg",
        "pg-driver-port",
        "mysql",
        "no-user",
        "colon-at",
        "no-pw",
        "sqlite",
        "sqlite-at-in-path",
        "query",
        "path",
        "pw-at",
        "pw-slash",
        "pw-slash-colon-at",
        "pw-percent",
        "pw-bracket",
        "pw-question",
        "pw-hash",
        "at-in-query",
        "query-secrets",
        "bad-port",
        "no-colon",
        "no-scheme",
    ],
)
def test_safe_url(url, masked):
    out = safe_url(url)
    assert out == masked
    parts = urlsplit(out)  # always parsable, port included
    assert parts.port is None or isinstance(parts.port, int)
    for secret in ("secret", "hunter2", "p@ss", "pa/ss", "a/b@c:d", "100%", "p[ss", "ab?cd", "t0k"):
        assert secret not in out


@pytest.mark.parametrize(
    "url",
    ["postgresql://u:p@ss@h:5432/db", "postgresql://u:p%40ss@h/db", "mysql://u:a:b@h/db"],
    ids=["at", "escaped", "colon"],
)
def test_safe_url_parses_as_a_storage_url(url):
    import sqlalchemy

    parsed = sqlalchemy.engine.make_url(safe_url(url))
    assert parsed.password == "***" and parsed.host == "h"


def test_safe_url_needs_a_string():
    with pytest.raises(ActregError, match="needs a string"):
        safe_url(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("url", "secret"),
    [("postgresql://u:p@ss@h/db", "p@ss"), ("postgresql://u:p%40ss@h/db", "p@ss")],
    ids=["raw", "escaped"],
)
def test_scrub_hides_the_password_in_messages(url, secret):
    text = f'connecting to {url}: password "{secret}" rejected for user u ({url})'
    out = scrub(text, url)
    assert secret not in out and "p%40ss" not in out
    assert "postgresql://u:***@h/db" in out


# The search names no experiment: what it knows comes from the registry entry.


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
