"""What a search is: the experiment, the grid, the objective, where trials are stored.

:class:`SearchConfig` checks everything before a trial runs (the experiment's search
contract, the objective, the overrides, the storage URL) and builds each trial's
experiment config from the experiment's :class:`~actreg.lab.experiments.SearchSpec`:
its settings, then the user's overrides, then the coefficient in the field the spec names
and the trial's folder. Nothing here names an experiment.

A target search (``targets=(0.8, 0.9, 0.95)``) is the alternative to a coefficient grid:
each trial runs the experiment in target mode, its ``target_sparsity`` setting at one
target (the coefficient stays the experiment's, as the controller's start), and the report
shows the achieved zero fraction against the objective. Any experiment whose config has a
``target_sparsity`` field can be searched so.

Design: a target search reuses the coefficient search's machinery whole: the targets are
the grid (``coefs`` holds them, each a trial's ``coef`` attribute in the storage), so the
worker, the storage and resuming need no second path; only the field a trial's value goes
into (:attr:`SearchConfig.grid_key`), the checks, and the report's labels differ.

Design: the config holds the experiment's *name*, not the :class:`Experiment` object, and
looks it up in the registry when needed. Worker processes are spawned, and a name crosses
a process boundary (and sits in the study's saved settings) where functions would not.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from actreg._errors import ActregError
from actreg.lab.experiments import EXPERIMENTS, SearchSpec, get
from actreg.lab.experiments._config import apply_overrides
from actreg.lab.search._db import check_storage_url, safe_url
from actreg.lab.search.grid import check_refine, coarse_grid, target_grid

__all__ = ["TARGET_FIELD", "SearchConfig", "search_spec"]

TRIAL_FIELDS = ("out_dir", "run_name")
"""Config fields every trial sets itself (besides the spec's coefficient field)."""

TARGET_FIELD = "target_sparsity"
"""The config field a target search's trial sets (besides :data:`TRIAL_FIELDS`)."""
TARGET_FIELDS = (TARGET_FIELD, "target_l0")
"""Config fields a target search refuses in the overrides (it sets the target itself)."""


def search_spec(experiment: str) -> SearchSpec[Any]:
    """The search contract of a registered experiment.

    Raises:
        ActregError: for an unknown experiment, or one that declares no contract (naming
            the searchable ones).
    """
    spec = get(experiment).search
    if spec is None:
        able = [name for name, exp in EXPERIMENTS.items() if exp.search is not None]
        raise ActregError(
            f"{experiment} declares no search contract (Experiment.search in "
            f"actreg.lab.experiments); searchable: {', '.join(able)}"
        )
    return spec


@dataclasses.dataclass
class SearchConfig:
    """A coefficient search over a registered experiment.

    Attributes:
        experiment: a name from :data:`actreg.lab.experiments.EXPERIMENTS` whose entry
            declares a search contract.
        coefs: the coarse grid (e.g. ``(1e-1, 1e-2, 1e-3, 1e-4)``).
        refine: log-spaced points (int) or 1-2-5 style mantissas inside the best decade.
        objective: what to minimize (default: the experiment's first objective).
        storage: a SQLAlchemy URL (default: ``sqlite:///OUT_DIR/search/optuna.db``).
        study: the study name (default: the experiment and a hash of these settings, so
            the same command resumes the same study).
        overrides: ``key=value`` settings of the experiment (as ``actreg run --set``).
        workers: worker processes on this machine.
        out_dir: trials go to ``OUT_DIR/search/STUDY/trials``, the report next to them.
        heartbeat: seconds between heartbeats of a running trial.
        grace: seconds without a heartbeat after which a running trial is retried.
        max_attempts: how often a grid point's trial may raise before the point is given
            up (a trial whose worker died does not count).
        patience: seconds a storage outage may last before a worker gives up (the same
            command, run again, resumes).
        retry_failed: give the points given up (and the failed ones) fresh attempts.
        targets: zero-fraction targets: search over these instead of coefficients (each
            trial in target mode); ``coefs`` then holds them and ``refine`` must be 0.

    Example:
        >>> cfg = SearchConfig("cnn", coefs=(1e-3, 1e-4), out_dir="/tmp/runs")
        >>> cfg.objective, cfg.study.startswith("cnn-"), cfg.grid_key
        ('val_error', True, 'coef')
        >>> SearchConfig("cnn", targets=(0.9, 0.8), out_dir="/tmp/runs").coefs
        (0.8, 0.9)
    """

    experiment: str
    coefs: tuple[float, ...] = (1e-1, 1e-2, 1e-3, 1e-4)
    refine: int | tuple[float, ...] = 0
    objective: str | None = None
    storage: str | None = None
    study: str | None = None
    overrides: tuple[str, ...] = ()
    workers: int = 1
    out_dir: str = "runs"
    heartbeat: int = 5
    grace: int = 20
    max_attempts: int = 3
    targets: tuple[float, ...] = ()
    patience: float = 120.0
    retry_failed: bool = False

    def __post_init__(self) -> None:
        self.refine = check_refine(self.refine)
        self.targets = tuple(self.targets)
        if self.targets:
            self.targets = self.coefs = target_grid(self.targets)
            if self.refine:
                raise ActregError(
                    "a target search runs the targets it is given; --refine refines a "
                    "coefficient grid: leave it out, or list more targets"
                )
        else:
            self.coefs = coarse_grid(self.coefs)
        self.overrides = tuple(self.overrides)
        spec = search_spec(self.experiment)
        if self.objective is None:
            self.objective = spec.objectives[0]
        try:
            spec.objective(self.objective)
        except ActregError as err:
            raise ActregError(f"{err} (experiment {self.experiment})") from None
        own = TARGET_FIELDS if self.targets else (spec.coef_field,)
        reserved = (*own, *TRIAL_FIELDS)
        for item in self.overrides:
            if item.split("=", 1)[0].strip().replace("-", "_") in reserved:
                raise ActregError(f"--set {item!r}: the search sets {', '.join(reserved)} itself")
        trial = self.experiment_config(self.coefs[0], "check")  # validates the overrides now
        if not self.targets and getattr(trial, "layer_coefs", None) is not None:
            raise ActregError(
                "--set layer_coefs=... fixes every layer's coefficient, so each point of the "
                f"coefficient grid would run the same model; leave layer_coefs out to search "
                f"{spec.coef_field}, or search targets with --target (layer_coefs then sets "
                "the controllers' starting values)"
            )
        if self.workers < 1 or self.heartbeat < 1 or self.grace <= self.heartbeat:
            raise ActregError(
                f"need workers >= 1, heartbeat >= 1 and grace > heartbeat, got {self.workers}, "
                f"{self.heartbeat}, {self.grace}"
            )
        if self.max_attempts < 1 or not self.patience > 0:
            raise ActregError(
                f"need max_attempts >= 1 and patience > 0 seconds, got {self.max_attempts}, "
                f"{self.patience}"
            )
        if self.storage is None:
            self.storage = f"sqlite:///{Path(self.out_dir) / 'search' / 'optuna.db'}"
        check_storage_url(self.storage)
        if self.study is None:
            self.study = f"{self.experiment}-{self.fingerprint()[:10]}"

    @property
    def spec(self) -> SearchSpec[Any]:
        """The experiment's search contract."""
        return search_spec(self.experiment)

    @property
    def grid_key(self) -> str:
        """What a grid point is: ``"coef"``, or ``"target"`` in a target search."""
        return "target" if self.targets else "coef"

    @property
    def metric(self) -> str:
        """The metric the objective names (an alias resolved)."""
        return self.spec.objective(self.objective)

    def fingerprint(self) -> str:
        """A hash of what defines the search (not the workers, storage or study name)."""
        key = [self.experiment, self.coefs, self.refine, self.objective, sorted(self.overrides)]
        if self.targets:  # a coefficient search's key is unchanged
            key.append("targets")
        return hashlib.sha1(json.dumps(key).encode()).hexdigest()

    def describe(self) -> dict[str, Any]:
        """The settings as saved with the study and in reports (password masked)."""
        out = dataclasses.asdict(self)
        out["storage"] = safe_url(str(self.storage))
        out["coefs"], out["overrides"] = list(self.coefs), list(self.overrides)
        out["targets"] = list(self.targets)
        return out

    @property
    def search_dir(self) -> Path:
        """``OUT_DIR/search/STUDY``: trial runs and the report."""
        return Path(self.out_dir) / "search" / str(self.study)

    def experiment_config(self, coef: float, run_name: str) -> Any:
        """The experiment's config for one trial: the spec's settings, the user's
        overrides, then the coefficient (in a target search: the target) and the trial's
        folder."""
        spec = self.spec
        cfg = apply_overrides(get(self.experiment).config(), [*spec.settings, *self.overrides])
        fields = {f.name for f in dataclasses.fields(cfg)}
        field = TARGET_FIELD if self.targets else spec.coef_field
        if self.targets and field not in fields:
            raise ActregError(
                f"{self.experiment} has no target mode (its config has no {field} setting); "
                "search its coefficient with --coef instead"
            )
        missing = [f for f in (spec.coef_field, *TRIAL_FIELDS) if f not in fields]
        if missing:
            raise ActregError(
                f"{type(cfg).__name__} has no field {', '.join(missing)}; a searchable "
                "experiment's config needs its SearchSpec.coef_field, out_dir and run_name"
            )
        if self.workers > 1 and "threads" in fields:
            if not any(s.startswith("threads=") for s in self.overrides):
                threads = max(1, (os.cpu_count() or 1) // self.workers)
                cfg = dataclasses.replace(cfg, threads=threads)
        changes = {field: coef, "out_dir": str(self.search_dir / "trials")}
        return dataclasses.replace(cfg, **changes, run_name=run_name)
