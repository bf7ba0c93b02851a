"""Coefficient search: grids, bad input, resume after SIGKILL, concurrent workers, reports
(URL masking: test_search_db.py; the experiments' search contract: test_search_contract.py).

PostgreSQL tests run when ACTREG_TEST_POSTGRES holds a URL (``.ci/run`` starts a server).
"""

from __future__ import annotations

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

import pytest

pytest.importorskip("optuna")

from actreg import ActregError
from actreg.lab.cli import main
from actreg.lab.experiments import EXPERIMENTS, Experiment, SearchSpec
from actreg.lab.search import (
    SearchConfig,
    coarse_grid,
    refine_grid,
    run_search,
    search_rows,
)
from actreg.lab.search import worker as search_worker

POSTGRES = os.environ.get("ACTREG_TEST_POSTGRES")
TESTS = Path(__file__).parent


@dataclasses.dataclass
class FakeConfig:
    """A cheap stand-in experiment: objective minimal near coef 10**-2.4."""

    coef: float = 1e-3
    out_dir: str = "runs"
    run_name: str | None = None
    sleep: float = 0.0
    log: str = ""  # each finished run appends its coefficient; each start, to LOG.start
    crash: str = ""  # "raise:N" or "kill:N": the first N runs raise, or SIGKILL their process


def fake_run(cfg: FakeConfig) -> dict:
    run_dir = Path(cfg.out_dir) / "fake" / str(cfg.run_name)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.log:
        with open(f"{cfg.log}.start", "a") as f:
            f.write(f"{cfg.coef}\n")
    if cfg.crash:
        kind, _, times = cfg.crash.partition(":")
        crashes = Path(f"{cfg.log}.crashes")
        done = len(crashes.read_text().split()) if crashes.exists() else 0
        if done < int(times):
            with open(crashes, "a") as f:
                f.write(f"{cfg.coef}\n")
            if kind == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"toy failure {done + 1}")
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
        ({"storage": "mysql://u:hunter2@h/db"}, "unsupported storage 'mysql'.*sqlite.*postgresql"),
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
        "mysql",
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
    assert "hunter2" not in str(err.value) and "actreg[search]" not in str(err.value)
    assert not (tmp_path / "search").exists()


def test_unreachable_storage_is_masked(fake, tmp_path):
    url = "postgresql://actreg:hunter2@127.0.0.1:1/actreg"
    cfg = SearchConfig("fake", storage=url, objective="val_loss", out_dir=str(tmp_path))
    with pytest.raises(ActregError, match="cannot reach storage") as err:
        run_search(cfg)
    assert "hunter2" not in str(err.value) and "actreg:***@" in str(err.value)


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
    assert states[abandoned.trial.number] == "FAIL"
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


def test_only_trials_that_raise_count_toward_the_cap(fake, tmp_path, capsys):
    log = tmp_path / "runs.log"
    argv = ["search", "fake", "--coef", "1e-2", "--objective", "val_loss", "--out", str(tmp_path)]
    argv += ["--set", f"log={log}", "--set", "crash=raise:3"]
    for attempt in (1, 2):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"coef 0.01 failed {attempt} of 3 allowed times" in err, err
        assert "RuntimeError: toy failure" in err and "run the same command again" in err
    for _ in range(2):  # the third raise gives the point up; a rerun runs nothing, says so
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "coef 0.01 was given up: its trial raised 3 times" in err, err
        assert "--retry-failed" in err and "search.md" in err
    assert len((tmp_path / "runs.log.crashes").read_text().split()) == 3
    assert main([*argv, "--retry-failed"]) == 0  # the fourth attempt: no crash left
    assert "| complete |" in capsys.readouterr().out
    assert _lines(log) == [0.01]


def test_trials_whose_worker_died_do_not_count(fake, tmp_path):
    from optuna.trial import TrialState

    cfg = SearchConfig("fake", coefs=(1e-2,), out_dir=str(tmp_path), max_attempts=2)
    for _ in range(4):  # four workers die mid-trial: their trials are failed as stale
        store, study = search_worker._open(cfg)
        with store.lock():
            search_worker._plan(cfg, study, retry_failed=True)
            claim = search_worker._claim(store, study)
            study.tell(claim.trial, state=TrialState.FAIL)  # as fail_stale_trials does
        store.close()
    rows = run_search(cfg)
    assert rows[0]["state"] == "complete" and rows[0]["attempts"] == 5


def test_a_journaled_result_is_stored_not_run_again(fake, tmp_path):
    """A worker killed after its trial finished, before the storage took the result, leaves
    it in the journal: the point's next trial stores it instead of training again."""
    log = tmp_path / "runs.log"
    cfg = SearchConfig("fake", coefs=(1e-2, 1e-3), out_dir=str(tmp_path), overrides=(f"log={log}",))
    journal = cfg.search_dir / "journal"
    journal.mkdir(parents=True)
    attrs = {"metrics": {"val_loss": 0.125, "zero_fraction": 0.5}, "run_dir": "x", "seconds": 1}
    (journal / "coef0.01.json").write_text(json.dumps({"trial": 7, "value": 0.125, "attrs": attrs}))
    (journal / "coef0.5.json").write_text("{}")  # a point of no search: left alone
    rows = run_search(cfg)
    assert rows[-1]["coef"] == 1e-2 and rows[-1]["val_loss"] == 0.125
    assert _lines(log) == [1e-3]  # only the other point ran
    assert sorted(p.name for p in journal.iterdir()) == ["coef0.5.json"]
