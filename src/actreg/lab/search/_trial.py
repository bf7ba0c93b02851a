"""One claimed trial, from the experiment's run to its outcome in the storage.

:func:`run_trial` runs the experiment with a heartbeat thread, journals a finished result
(``SEARCH_DIR/journal/coefC.json``), stores the outcome with :func:`store_outcome` (under
the lock, retried through outages, safe to repeat) and then removes the journal. A
journal left by a worker that died before storing is picked up by the point's next trial
instead of training again. See :mod:`~actreg.lab.search.worker` for the guarantees.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from actreg._errors import ActregError
from actreg.lab.experiments import get
from actreg.lab.search._db import Store, scrub
from actreg.lab.search._retry import transient
from actreg.lab.search.config import SearchConfig

__all__ = ["Claim", "clean_journal", "run_trial", "start", "store_outcome"]

log = logging.getLogger("actreg.lab.search")


@dataclasses.dataclass
class Claim:
    """A trial this worker set running: the optuna Trial and its grid point."""

    trial: Any
    coef: float
    stage: str

    @property
    def run_name(self) -> str:
        return f"trial{self.trial.number:04d}_coef{self.coef:g}"


def start(study: Any, trial_id: int) -> Claim:
    """Claim a trial set running: its coefficient, host and process recorded."""
    import optuna

    trial = optuna.trial.Trial(study, trial_id)
    attrs = trial.user_attrs
    coef = float(attrs["coef"])
    trial.suggest_float("coef", coef / 10, coef * 10, log=True)
    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("pid", os.getpid())
    return Claim(trial, coef, str(attrs.get("stage")))


class _Heartbeat:
    """A thread recording the trial's heartbeat every ``store.heartbeat`` seconds."""

    def __init__(self, store: Store, trial_id: int) -> None:
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, args=(store, trial_id), daemon=True)

    def _loop(self, store: Store, trial_id: int) -> None:
        while not self.stop.wait(store.heartbeat):
            try:
                store.storage.record_heartbeat(trial_id)
            except Exception as err:  # keep beating; the next one may succeed
                if transient(err) and store.backend != "sqlite":
                    store.outage.failed(f"heartbeat of trial {trial_id}", err)
                else:
                    msg = scrub(str(err), store.url)
                    log.warning("heartbeat of trial %d failed: %s", trial_id, msg)
            else:
                store.outage.ok()

    def __enter__(self) -> _Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def journal_path(config: SearchConfig, coef: float) -> Path:
    """Where a point's finished result waits until the storage has it."""
    return config.search_dir / "journal" / f"coef{coef!r}.json"


def clean_journal(config: SearchConfig, points: dict[float, list[Any]]) -> None:
    """Remove the journal entries of points already complete (a worker killed after
    storing a result, before removing its entry, leaves one behind)."""
    from optuna.trial import TrialState

    folder = config.search_dir / "journal"
    for path in folder.glob("coef*.json") if folder.is_dir() else []:
        try:
            coef = float(path.name[len("coef") : -len(".json")])
        except ValueError:
            continue
        if any(t.state == TrialState.COMPLETE for t in points.get(coef, [])):
            path.unlink(missing_ok=True)


def _write_journal(path: Path, entry: dict[str, Any]) -> None:
    """Write a journal entry whole or not at all (a temporary file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(entry, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def store_outcome(
    store: Store, study: Any, claim: Claim, value: float | None, attrs: dict[str, Any]
) -> str:
    """Record a trial's outcome (call under the lock; safe to repeat after a lost connection).

    Returns:
        What happened: ``"stored"``, ``"stored in trial N"`` (the trial was failed as stale
        meanwhile and its point's retry was waiting), or ``"dropped: REASON"``.
    """
    from optuna.trial import TrialState

    storage = store.storage
    trial = claim.trial
    frozen = storage.get_trial(trial._trial_id)
    if frozen.state != TrialState.RUNNING:
        if frozen.state == TrialState.COMPLETE or (
            value is None and frozen.user_attrs.get("error") == attrs.get("error")
        ):
            return "stored"  # by the previous attempt, whose connection then died
        if value is None:
            return "dropped: the trial was failed as stale meanwhile"
        same = [
            t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("coef") == claim.coef
        ]
        if any(t.state == TrialState.COMPLETE for t in same):
            return "dropped: another trial of this point finished meanwhile"
        waiting = [t for t in same if t.state == TrialState.WAITING]
        if not waiting or not storage.set_trial_state_values(
            waiting[0]._trial_id, state=TrialState.RUNNING
        ):
            return "dropped: the trial was failed as stale and its retry runs elsewhere"
        trial = start(study, waiting[0]._trial_id).trial
        attrs = {**attrs, "result_of_trial": frozen.number}
    for key, val in attrs.items():
        storage.set_trial_user_attr(trial._trial_id, key, val)
    if value is None:
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    else:
        storage.set_trial_state_values(trial._trial_id, TrialState.COMPLETE, [value])
    return "stored" if trial._trial_id == frozen._trial_id else f"stored in trial {trial.number}"


def _outcome(config: SearchConfig, claim: Claim) -> tuple[float | None, dict[str, Any]]:
    """Run the trial's experiment: its objective (``None`` if it raised) and attributes."""
    start_time = time.perf_counter()
    attrs: dict[str, Any] = {}
    value: float | None = None
    try:
        exp_cfg = config.experiment_config(claim.coef, claim.run_name)
        results = get(config.experiment).run(exp_cfg)
        metrics = {k: float(v) for k, v in config.spec.metrics(results).items()}
        if config.metric not in metrics:
            raise ActregError(
                f"objective {config.metric!r} not in the metrics of {config.experiment}'s "
                f"trial; available: {', '.join(metrics)}"
            )
        value = metrics[config.metric]
        attrs["metrics"] = metrics
        attrs["run_dir"] = str(results.get("run_dir", ""))
    except Exception as err:
        attrs["error"] = f"{type(err).__name__}: {err}"[:1000]
        log.error("trial %d failed: %s\n%s", claim.trial.number, err, traceback.format_exc())
    attrs["seconds"] = round(time.perf_counter() - start_time, 3)
    return value, attrs


def _journaled(config: SearchConfig, claim: Claim) -> tuple[float | None, dict[str, Any]]:
    """The point's result from its journal, or from running the experiment (journaled)."""
    number = claim.trial.number
    journal = journal_path(config, claim.coef)
    if journal.exists():
        saved = json.loads(journal.read_text())
        log.info(
            "trial %d: coef=%g: the result of trial %d (finished, not stored) is in %s",
            number,
            claim.coef,
            saved["trial"],
            journal,
        )
        return float(saved["value"]), {**saved["attrs"], "journal_of_trial": saved["trial"]}
    log.info("trial %d: coef=%g (%s) started", number, claim.coef, claim.stage)
    value, attrs = _outcome(config, claim)
    if value is not None:
        try:
            _write_journal(journal, {"trial": number, "value": value, "attrs": attrs})
        except OSError as err:  # the result is still in memory
            log.warning("trial %d: no journal (%s); storing the result directly", number, err)
    return value, attrs


def run_trial(config: SearchConfig, store: Store, study: Any, claim: Claim) -> None:
    """Run a claimed trial and store its outcome (see the module's docstring)."""
    number = claim.trial.number
    with _Heartbeat(store, claim.trial._trial_id):
        value, attrs = _journaled(config, claim)
        what = f"storing the result of trial {number} (coef={claim.coef:g})"
        done = store.locked(what, lambda: store_outcome(store, study, claim, value, attrs))
    journal_path(config, claim.coef).unlink(missing_ok=True)
    if done != "stored":
        log.warning("trial %d: result %s", number, done)
    if value is not None:
        name = config.objective
        secs = attrs["seconds"]
        log.info("trial %d: coef=%g %s=%.5g (%.1f s)", number, claim.coef, name, value, secs)
