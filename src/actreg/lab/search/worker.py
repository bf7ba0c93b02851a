"""One search worker: enqueue the grid, claim a point, run it with heartbeats, record it.

Data flows one way: the grid (:mod:`~actreg.lab.search.grid`) says which points exist, the
worker runs them, the storage (:mod:`~actreg.lab.search._db`) records them. A grid point
is a trial enqueued with ``user_attrs={"coef": c, "stage": ...}``. Every state change
happens under :meth:`~actreg.lab.search._db.Store.lock`, so at most one trial per grid
point is ever waiting or running, and a point with a finished trial is never run again.

A trial runs the experiment found in the registry and keeps what its search contract's
``metrics`` returns (a flat dict of floats) as the trial's ``metrics`` attribute; the
objective is one of them. Nothing here names an experiment.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback
import warnings
from typing import Any

from actreg._errors import ActregError
from actreg.lab.experiments import get
from actreg.lab.search._db import Store, scrub
from actreg.lab.search.config import SearchConfig
from actreg.lab.search.grid import refine_grid

__all__ = ["trials_by_coef", "work"]

log = logging.getLogger("actreg.lab.search")

POLL = 1.0  # seconds between looks at the queue while other workers run the last trials


def _open(config: SearchConfig) -> tuple[Store, Any]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    store = Store(str(config.storage), config.heartbeat, config.grace)
    with store.lock():
        study = optuna.create_study(
            study_name=config.study, storage=store.storage, load_if_exists=True
        )
        saved = study.user_attrs.get("fingerprint")
        if saved is None:
            study.set_user_attr("fingerprint", config.fingerprint())
            study.set_user_attr("search", config.describe())
        elif saved != config.fingerprint():
            old = study.user_attrs.get("search", {})
            raise ActregError(
                f"study {config.study!r} in {store.masked} was created by a different search "
                f"({old.get('experiment')}, coefs {old.get('coefs')}, refine "
                f"{old.get('refine')}, objective {old.get('objective')}, overrides "
                f"{old.get('overrides')}); use the same settings or another --study"
            )
    return store, study


def trials_by_coef(study: Any) -> dict[float, list[Any]]:
    """The study's trials by grid point (coefficient), in trial order."""
    points: dict[float, list[Any]] = {}
    for trial in study.get_trials(deepcopy=False):
        if "coef" in trial.user_attrs:
            points.setdefault(float(trial.user_attrs["coef"]), []).append(trial)
    return points


def _settled(trials: list[Any], max_attempts: int) -> bool:
    """A point is settled when it completed or has used up its attempts."""
    from optuna.trial import TrialState

    if any(t.state == TrialState.COMPLETE for t in trials):
        return True
    live = any(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in trials)
    return not live and len(trials) >= max_attempts


def _plan(config: SearchConfig, study: Any, retry_failed: bool) -> None:
    """Enqueue every grid point that has no waiting, running or finished trial (under lock)."""
    from optuna.trial import TrialState

    points = trials_by_coef(study)
    wanted = [(c, "coarse") for c in config.coefs]
    coarse = [points.get(c, []) for c in config.coefs]
    if config.refine and all(_settled(t, config.max_attempts) for t in coarse):
        values = [_value(t) for t in coarse]
        wanted += [(c, "refine") for c in refine_grid(config.coefs, values, config.refine)]
    for coef, stage in wanted:
        trials = points.get(coef, [])
        if _settled(trials, config.max_attempts):
            continue
        if any(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in trials):
            continue
        # Failed trials: stale ones (worker died) are retried at once; a trial that
        # raised is retried when a search command starts again.
        raised = [t for t in trials if "error" in t.user_attrs]
        if raised and not retry_failed:
            continue
        study.enqueue_trial(
            {"coef": coef}, user_attrs={"coef": coef, "stage": stage, "attempt": len(trials) + 1}
        )


def _value(trials: list[Any]) -> float | None:
    from optuna.trial import TrialState

    done = [t for t in trials if t.state == TrialState.COMPLETE]
    return float(done[0].value) if done else None


def _claim(store: Store, study: Any) -> Any:
    """Set one waiting trial running (heartbeat first, so a death right after is seen)."""
    import optuna
    from optuna.trial import TrialState

    for frozen in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        store.storage.record_heartbeat(frozen._trial_id)
        if store.storage.set_trial_state_values(frozen._trial_id, state=TrialState.RUNNING):
            return optuna.trial.Trial(study, frozen._trial_id)
    return None


class _Heartbeat:
    """A thread recording the trial's heartbeat every ``interval`` seconds."""

    def __init__(self, store: Store, trial_id: int) -> None:
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, args=(store, trial_id), daemon=True)

    def _loop(self, store: Store, trial_id: int) -> None:
        while not self.stop.wait(store.heartbeat):
            try:
                store.storage.record_heartbeat(trial_id)
            except Exception as err:  # keep beating; the next one may succeed
                msg = scrub(str(err), store.url)
                log.warning("heartbeat of trial %d failed: %s", trial_id, msg)

    def __enter__(self) -> _Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def _finish(store: Store, study: Any, trial: Any, value: float | None) -> None:
    from optuna.trial import TrialState

    with store.lock():
        if study._storage.get_trial(trial._trial_id).state != TrialState.RUNNING:
            log.warning("trial %d was declared stale meanwhile; result dropped", trial.number)
            return
        if value is None:
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, value)


def _run_trial(config: SearchConfig, store: Store, study: Any, trial: Any) -> None:
    coef = float(trial.user_attrs["coef"])
    trial.suggest_float("coef", coef / 10, coef * 10, log=True)
    run_name = f"trial{trial.number:04d}_coef{coef:g}"
    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("pid", os.getpid())
    log.info("trial %d: coef=%g (%s) started", trial.number, coef, trial.user_attrs["stage"])
    start = time.perf_counter()
    value: float | None = None
    with _Heartbeat(store, trial._trial_id):
        try:
            results = get(config.experiment).run(config.experiment_config(coef, run_name))
            metrics = {k: float(v) for k, v in config.spec.metrics(results).items()}
            if config.metric not in metrics:
                raise ActregError(
                    f"objective {config.metric!r} not in the metrics of {config.experiment}'s "
                    f"trial; available: {', '.join(metrics)}"
                )
            value = metrics[config.metric]
            trial.set_user_attr("metrics", metrics)
            trial.set_user_attr("run_dir", str(results.get("run_dir", "")))
        except Exception as err:
            trial.set_user_attr("error", f"{type(err).__name__}: {err}"[:1000])
            log.error("trial %d failed: %s\n%s", trial.number, err, traceback.format_exc())
        trial.set_user_attr("seconds", round(time.perf_counter() - start, 3))
    _finish(store, study, trial, value)
    if value is not None:
        log.info(
            "trial %d: coef=%g %s=%.5g (%.1f s)",
            trial.number,
            coef,
            config.objective,
            value,
            time.perf_counter() - start,
        )


def work(config: SearchConfig) -> None:
    """One worker: run grid points until none is left to run or running elsewhere."""
    import optuna
    from optuna.trial import TrialState

    store, study = _open(config)
    try:
        with store.lock():
            _plan(config, study, retry_failed=True)
        while True:
            with store.lock():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    optuna.storages.fail_stale_trials(study)
                _plan(config, study, retry_failed=False)
                trial = _claim(store, study)
                running = bool(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
            if trial is not None:
                _run_trial(config, store, study, trial)
            elif running:
                time.sleep(POLL)
            else:
                return
    finally:
        store.close()
