"""One search worker: enqueue the grid, claim a point, run it with heartbeats, record it.

Data flows one way: the grid (:mod:`~actreg.lab.search.grid`) says which points exist, the
worker runs them, the storage (:mod:`~actreg.lab.search._db`) records them. A grid point
is a trial enqueued with ``user_attrs={"coef": c, "stage": ...}``. Every state change
happens under the search-wide lock, so at most one trial per grid point is ever waiting or
running, and a point with a finished trial is never run again.

A trial runs the experiment found in the registry and keeps what its search contract's
``metrics`` returns (a flat dict of floats) as the trial's ``metrics`` attribute; the
objective is one of them. Nothing here names an experiment.

Nothing finished is lost:

* A trial's outcome is kept in memory until the storage has it: every storage call rides
  out outages (:mod:`~actreg.lab.search._retry`), and storing it is safe to repeat (a
  result already stored is recognized, not stored twice).
* A finished result is also written to ``SEARCH_DIR/journal/coefC.json`` before it is
  stored, and removed once stored. A worker killed in between (or given up on an outage)
  leaves it there; the next trial of that point takes the result from it instead of
  training again.
* A trial whose worker died (no heartbeat for ``grace`` seconds) is failed and enqueued
  again; such attempts do not count toward ``max_attempts``, only trials that raised do.
  After an outage, workers wait ``grace + 2 * heartbeat`` seconds (and, on PostgreSQL, as
  long after a server restart) before failing any trial as stale, so running trials
  whose heartbeats the outage stopped get time to beat again. A result whose trial was
  failed as stale all the same is stored in the point's retry if nobody runs it yet.
"""

from __future__ import annotations

import functools
import logging
import time
import warnings
from typing import Any

from actreg._errors import ActregError
from actreg.lab.search._db import Store
from actreg.lab.search._trial import Claim, clean_journal, run_trial, start
from actreg.lab.search.config import SearchConfig
from actreg.lab.search.grid import refine_grid

__all__ = ["retry_failed", "trials_by_coef", "unfinished", "work"]

log = logging.getLogger("actreg.lab.search")

POLL = 1.0  # seconds between looks at the queue while other workers run the last trials
RETRY_FROM = "retry_from"  # study attribute: trials before this number no longer count


def _open(config: SearchConfig) -> tuple[Store, Any]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    store = Store(str(config.storage), config.heartbeat, config.grace, config.patience)

    def create() -> Any:
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
        return study

    try:
        return store, store.locked("opening the study", create)
    except BaseException:
        store.close()
        raise


def trials_by_coef(study: Any) -> dict[float, list[Any]]:
    """The study's trials by grid point (coefficient), in trial order."""
    points: dict[float, list[Any]] = {}
    for trial in study.get_trials(deepcopy=False):
        if "coef" in trial.user_attrs:
            points.setdefault(float(trial.user_attrs["coef"]), []).append(trial)
    return points


def _raised(trials: list[Any], since: int) -> list[Any]:
    """The trials that raised (not those whose worker died), numbered ``since`` or later."""
    return [t for t in trials if "error" in t.user_attrs and t.number >= since]


def _live(trials: list[Any]) -> bool:
    from optuna.trial import TrialState

    return any(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in trials)


def _settled(trials: list[Any], max_attempts: int, since: int) -> bool:
    """A point is settled when it completed or its trials raised ``max_attempts`` times."""
    from optuna.trial import TrialState

    if any(t.state == TrialState.COMPLETE for t in trials):
        return True
    return not _live(trials) and len(_raised(trials, since)) >= max_attempts


def _wanted(config: SearchConfig, points: dict[float, list[Any]], since: int) -> list[Any]:
    """The grid points as ``(coef, stage)``: the coarse ones, and the refined ones once
    every coarse point is settled."""
    wanted = [(c, "coarse") for c in config.coefs]
    coarse = [points.get(c, []) for c in config.coefs]
    if config.refine and all(_settled(t, config.max_attempts, since) for t in coarse):
        values = [_value(t) for t in coarse]
        wanted += [(c, "refine") for c in refine_grid(config.coefs, values, config.refine)]
    return wanted


def _plan(config: SearchConfig, study: Any, retry_failed: bool) -> None:
    """Enqueue every grid point that has no waiting, running or finished trial (under lock).

    A point whose trial was failed as stale (its worker died) is enqueued again at once; a
    point whose trial raised only when ``retry_failed`` (a search command starting again).
    """
    points = trials_by_coef(study)
    since = int(study.user_attrs.get(RETRY_FROM, 0))
    for coef, stage in _wanted(config, points, since):
        trials = points.get(coef, [])
        if _settled(trials, config.max_attempts, since) or _live(trials):
            continue
        if _raised(trials, since) and not retry_failed:
            continue
        study.enqueue_trial(
            {"coef": coef}, user_attrs={"coef": coef, "stage": stage, "attempt": len(trials) + 1}
        )


def _value(trials: list[Any]) -> float | None:
    from optuna.trial import TrialState

    done = [t for t in trials if t.state == TrialState.COMPLETE]
    return float(done[0].value) if done else None


def unfinished(config: SearchConfig, study: Any) -> list[str]:
    """What keeps the search from being finished, one line per grid point (empty: done)."""
    from optuna.trial import TrialState

    points = trials_by_coef(study)
    since = int(study.user_attrs.get(RETRY_FROM, 0))
    out = []
    for coef, _ in _wanted(config, points, since):
        trials = points.get(coef, [])
        if any(t.state == TrialState.COMPLETE for t in trials):
            continue
        raised = _raised(trials, since)
        last = f" (last error: {raised[-1].user_attrs['error'][:200]})" if raised else ""
        if _settled(trials, config.max_attempts, since):
            out.append(
                f"coef {coef:g} was given up: its trial raised {len(raised)} times{last}; "
                "fix the cause, then run the same command with --retry-failed to try it again"
            )
        elif raised and not _live(trials):
            out.append(
                f"coef {coef:g} failed {len(raised)} of {config.max_attempts} allowed "
                f"times{last}; run the same command again to retry it"
            )
        else:
            out.append(f"coef {coef:g} has no result yet; run the same command again to resume")
    return out


def retry_failed(config: SearchConfig) -> None:
    """Give every grid point ``max_attempts`` fresh attempts: failures so far stop counting."""
    store, study = _open(config)
    try:

        def mark() -> None:
            study.set_user_attr(RETRY_FROM, len(study.get_trials(deepcopy=False)))

        store.locked("marking failed trials for a retry", mark)
    finally:
        store.close()


def _claim(store: Store, study: Any) -> Claim | None:
    """Set one waiting trial running (heartbeat first, so a death right after is seen)."""
    from optuna.trial import TrialState

    for frozen in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        store.storage.record_heartbeat(frozen._trial_id)
        if store.storage.set_trial_state_values(frozen._trial_id, state=TrialState.RUNNING):
            return start(study, frozen._trial_id)
    return None


def _next(
    config: SearchConfig, store: Store, study: Any, stale_ok: bool
) -> tuple[Claim | None, bool]:
    """Fail stale trials, plan, claim: the claimed trial (or None) and whether any runs."""
    import optuna
    from optuna.trial import TrialState

    if stale_ok:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
    _plan(config, study, retry_failed=False)
    trial = _claim(store, study)
    running = bool(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
    return trial, running


def work(config: SearchConfig) -> None:
    """One worker: run grid points until none is left to run or running elsewhere.

    Raises:
        ActregError: when the storage stays unreachable for ``config.patience`` seconds
            (a finished result not yet stored stays in the journal for the rerun).
    """
    store, study = _open(config)
    window = config.grace + 2 * config.heartbeat  # after an outage, let heartbeats resume

    def tidy() -> None:  # journal entries of points already complete
        clean_journal(config, store.call("reading the trials", lambda: trials_by_coef(study)))

    try:
        store.locked("planning the grid", lambda: _plan(config, study, retry_failed=True))
        tidy()
        while True:
            recent = store.outage.recently_back(window) or store.server_started_within(window)
            step = functools.partial(_next, config, store, study, stale_ok=not recent)
            trial, running = store.locked("claiming a trial", step)
            if trial is not None:
                run_trial(config, store, study, trial)
            elif running:
                time.sleep(POLL)
            else:
                tidy()
                return
    finally:
        store.close()
