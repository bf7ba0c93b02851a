"""The fault suite: nothing finished is lost, nothing is stored twice, the rerun completes.

Real processes and real faults: ``kill -9`` of a whole search (parent and workers) and of
single workers at random moments (seeded), trials whose worker dies again and again, and a
training run killed between epochs and resumed from its checkpoint. Storage outages:
``test_search_outage.py``, with the helpers of this file. The search runs the toy experiment of
``test_search.py`` (a trial sleeps about a second), registered in every process.

``ACTREG_FAULT_ROUNDS=N`` sets the number of kill rounds of each kind (default: 3 of the
search, 1 of a single worker); ``-s`` shows the counts of each test, e.g.
``ACTREG_FAULT_ROUNDS=12 pytest -s tests/lab/test_faults.py -k kill`` (docs/RELIABILITY.md).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("optuna")

from actreg.lab.experiments import EXPERIMENTS
from actreg.lab.search import SearchConfig, run_search

sys.path.insert(0, str(Path(__file__).parent))
from test_search import FAKE  # the toy experiment, registered in every process

TESTS = Path(__file__).parent
ROUNDS = int(os.environ.get("ACTREG_FAULT_ROUNDS", "0"))  # 0: the defaults below
STUDIES = max(1, (ROUNDS + 2) // 3)  # searches killed 3 times each
SEED = 16

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/task").exists(), reason="finds worker processes through /proc (Linux)"
)


@pytest.fixture(autouse=True)
def fake(monkeypatch):
    monkeypatch.setitem(EXPERIMENTS, "fake", FAKE)


# A search command as a script: spawned workers re-run its top level, so they know the toy.
DRIVER = """
import json, sys
sys.path.insert(0, {tests!r})
import test_search
test_search.register()
if __name__ == "__main__":
    from actreg import ActregError
    from actreg.lab.search import SearchConfig, run_search
    try:
        run_search(SearchConfig(**json.loads(sys.argv[1])))
    except ActregError as err:
        sys.stderr.write(f"actreg: error: {{err}}\\n")
        sys.exit(2)
"""


def _spec(tmp_path: Path, **changes: Any) -> dict[str, Any]:
    spec = {
        "experiment": "fake",
        "coefs": [1e-1, 1e-2, 1e-3, 1e-4, 1e-5],
        "refine": 2,  # 7 grid points, the last two once the coarse ones are settled
        "objective": "val_loss",
        "study": f"faults-{uuid.uuid4().hex[:8]}",
        "out_dir": str(tmp_path),
        "overrides": ["sleep=0.8", f"log={tmp_path / 'runs.log'}"],
        "workers": 2,
        "heartbeat": 1,
        "grace": 2,
    }
    spec.update(changes)
    return spec


def _search(tmp_path: Path, spec: dict[str, Any]) -> subprocess.Popen:
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(tests=str(TESTS)))
    return subprocess.Popen(
        [sys.executable, str(driver), json.dumps(spec)],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "search.err", "a"),
        start_new_session=True,  # its own process group: kill -9 of the whole search
    )


def _count(path: Path) -> int:
    return len(path.read_text().split()) if path.exists() else 0


def _started(tmp_path: Path, proc: subprocess.Popen, before: int, timeout: float = 120) -> None:
    """Wait until a trial started after ``before`` starts (or the search ended)."""
    deadline = time.time() + timeout
    while _count(tmp_path / "runs.log.start") <= before and proc.poll() is None:
        assert time.time() < deadline, "no trial started"
        time.sleep(0.05)


def _workers(pid: int) -> list[int]:
    """The worker processes of a search (not multiprocessing's resource tracker)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    out = []
    for child in children:
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
            out.append(int(child))
    return out


def _alive(pgid: int) -> list[int]:
    """The live (not zombie) processes of a process group."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


def _kill_search(proc: subprocess.Popen) -> None:
    """kill -9 of the search's parent and workers at once; returns when all are gone."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 30
    while _alive(proc.pid):
        assert time.time() < deadline, "the search's processes outlived kill -9"
        time.sleep(0.05)


def _complete(spec: dict[str, Any]) -> dict[float, list[tuple[int, float]]]:
    """``{coef: [(trial number, value) of each complete trial]}`` from the storage."""
    import optuna
    from optuna.trial import TrialState

    storage = spec.get("storage") or f"sqlite:///{spec['out_dir']}/search/optuna.db"
    try:
        study = optuna.load_study(study_name=spec["study"], storage=storage)
    except KeyError:
        return {}
    out: dict[float, list[tuple[int, float]]] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        out.setdefault(float(t.user_attrs["coef"]), []).append((t.number, float(t.value)))
    return out


def _finished_runs(tmp_path: Path) -> Counter:
    """How often each coefficient's experiment ran to its end."""
    log = tmp_path / "runs.log"
    return Counter(float(x) for x in log.read_text().split()) if log.exists() else Counter()


def _check_done(tmp_path: Path, spec: dict[str, Any], seen: dict) -> None:
    """Every point complete once, every result seen before unchanged, every run finished once."""
    done = _complete(spec)
    assert len(done) == len(spec["coefs"]) + 2, done  # 2 refined points
    assert all(len(v) == 1 for v in done.values()), done  # none stored twice
    assert all(done[c] == [v] for c, v in seen.items()), (seen, done)  # not lost or changed
    runs = _finished_runs(tmp_path)
    assert set(runs) == set(done) and set(runs.values()) == {1}, runs  # no finished run redone
    cfg = SearchConfig(**spec)
    assert (cfg.search_dir / "search.md").exists()
    assert not list((cfg.search_dir / "journal").glob("*.json"))


@pytest.mark.slow
@pytest.mark.parametrize("study", range(STUDIES), ids=lambda s: f"study{s}")
def test_kill_the_search_at_random_moments(tmp_path, study):
    """Three rounds: start the search, kill -9 it at a random moment (all its processes;
    in the last round, the parent alone: its workers go on as orphans beside the rerun);
    then the rerun completes with every point once and every result seen before unchanged."""
    rng = random.Random(SEED + study)
    spec = _spec(tmp_path, coefs=[10.0**-k for k in range(1, 9)])  # 10 points
    seen: dict[float, tuple[int, float]] = {}
    kills: Counter = Counter()
    orphans = []
    for round_ in range(3):
        proc = _search(tmp_path, spec)
        _started(tmp_path, proc, _count(tmp_path / "runs.log.start"))
        time.sleep(rng.uniform(0.0, 2.0))
        kind = "parent" if round_ == 2 else "search"
        if proc.poll() is None:
            if kind == "search":
                _kill_search(proc)
            else:
                os.kill(proc.pid, signal.SIGKILL)
                orphans.append(proc.pid)
            kills[kind] += 1
        proc.wait()
        for coef, trials in _complete(spec).items():  # what finished stays finished
            assert len(trials) == 1 and seen.setdefault(coef, trials[0]) == trials[0]
    proc = _search(tmp_path, spec)
    assert proc.wait(timeout=300) == 0, (tmp_path / "search.err").read_text()
    deadline = time.time() + 120
    while any(_alive(pgid) for pgid in orphans):  # orphaned workers end when nothing is left
        assert time.time() < deadline, "orphaned workers did not end"
        time.sleep(0.1)
    _check_done(tmp_path, spec, seen)
    print(
        f"\nkill rounds: {sum(kills.values())} (whole search {kills['search']}, parent only "
        f"{kills['parent']}); points finished before the last run: {len(seen)} of 10; "
        "lost 0, stored twice 0, finished runs redone 0"
    )


@pytest.mark.slow
@pytest.mark.parametrize("round_", range(ROUNDS or 1), ids=lambda r: f"round{r}")
def test_kill_one_worker_the_other_finishes(tmp_path, round_):
    """kill -9 of one of two workers at a random moment: the parent exits 0 with a report."""
    rng = random.Random(SEED + round_)
    spec = _spec(tmp_path)
    proc = _search(tmp_path, spec)
    _started(tmp_path, proc, 0)
    time.sleep(rng.uniform(0.0, 3.0))
    workers = _workers(proc.pid)
    if workers:
        os.kill(rng.choice(workers), signal.SIGKILL)
    err = tmp_path / "search.err"
    assert proc.wait(timeout=300) == 0, err.read_text()
    _check_done(tmp_path, spec, {})
    killed = "1 of 2 workers stopped early" in err.read_text()
    print(f"\nworker killed: {bool(workers)}, parent saw it: {killed}, lost 0, stored twice 0")


@pytest.mark.slow
def test_all_workers_killed_the_parent_says_rerun(tmp_path):
    spec = _spec(tmp_path)
    proc = _search(tmp_path, spec)
    _started(tmp_path, proc, 0)
    for pid in _workers(proc.pid):
        os.kill(pid, signal.SIGKILL)
    assert proc.wait(timeout=120) == 2
    err = (tmp_path / "search.err").read_text()
    assert "actreg: error: 2 of 2 workers stopped early (exit codes [-9, -9])" in err, err
    assert "has no result yet; run the same command again to resume" in err
    assert "Traceback" not in err
    run_search(SearchConfig(**{**spec, "workers": 1}))  # the rerun, here: it resumes
    _check_done(tmp_path, spec, {})


@pytest.mark.slow
def test_a_trial_killed_three_times_is_still_retried(tmp_path):
    """Its worker dies thrice (SIGKILL inside the trial): not given up, the rerun finishes."""
    spec = _spec(
        tmp_path,
        coefs=[1e-2],
        refine=0,
        workers=1,
        overrides=[f"log={tmp_path / 'runs.log'}", "crash=kill:3"],
    )
    for _ in range(3):
        proc = _search(tmp_path, spec)
        assert proc.wait(timeout=120) == -signal.SIGKILL
    rows = run_search(SearchConfig(**spec))  # the fourth attempt, after the grace period
    assert rows[0]["state"] == "complete" and rows[0]["attempts"] == 4
    assert _count(tmp_path / "runs.log.crashes") == 3


TRAIN = """
import sys, time, torch
from pathlib import Path
from torch import nn
from actreg.lab.train import TrainConfig, fit

def train(run_dir, resume, pause):
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(512, 8, generator=gen), torch.randint(0, 2, (512,), generator=gen)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2))
    cfg = TrainConfig(epochs=8, batch_size=32, progress=False, threads=1)
    out = fit(
        model, (x[:384], y[:384]), (x[384:], y[384:]),
        loss_fn=lambda m, a, b: nn.functional.cross_entropy(m(a), b),
        metrics_fn=lambda m, a, b: {"loss": float(nn.functional.cross_entropy(m(a), b))},
        objective="loss", cfg=cfg, run_dir=run_dir, resume=resume,
        after_epoch=lambda epoch: time.sleep(pause),
    )
    history = [{k: v for k, v in row.items() if k != "seconds"} for row in out["history"]]
    torch.save({"history": history, "model": model.state_dict()}, run_dir / "final.pt")

if __name__ == "__main__":
    train(Path(sys.argv[1]), sys.argv[2] == "1", float(sys.argv[3]))
"""


def _train(run_dir: Path, resume: bool, pause: float) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", TRAIN, str(run_dir), str(int(resume)), str(pause)],
        stderr=subprocess.PIPE,
    )


@pytest.mark.slow
def test_training_killed_between_epochs_resumes_from_its_checkpoint(tmp_path):
    """kill -9 mid-training; the rerun with resume=True continues from the last checkpoint
    and ends bit for bit where an uninterrupted run ends."""
    import torch

    from actreg import load_checkpoint

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    for d in (whole, killed):
        d.mkdir()
    proc = _train(killed, resume=False, pause=0.3)
    deadline = time.time() + 120
    while True:
        assert time.time() < deadline and proc.poll() is None, "training ended too soon"
        if (killed / "checkpoint.pt").exists():
            if load_checkpoint(killed / "checkpoint.pt")["resume"]["epoch"] >= 3:
                break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stopped_at = load_checkpoint(killed / "checkpoint.pt")["resume"]["epoch"]
    assert 3 <= stopped_at < 8 and not (killed / "final.pt").exists()
    proc = _train(killed, resume=True, pause=0.0)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr.decode()
    threads = torch.get_num_threads()
    script: dict[str, Any] = {"__name__": "train"}
    exec(compile(TRAIN, "train", "exec"), script)
    try:  # the uninterrupted run, here
        script["train"](whole, False, 0.0)
    finally:
        torch.set_num_threads(threads)
    a, b = (torch.load(d / "final.pt") for d in (whole, killed))
    assert a["history"] == b["history"] and len(a["history"]) == 8
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
