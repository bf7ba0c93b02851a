"""Choosing the coefficient: a coarse pass over decades, then a finer pass inside the best one.

The article's procedure as one resumable, parallel command::

    actreg search sparse-ae --coef 1e-1,1e-2,1e-3,1e-4 --refine 3 --set data=digits

Every grid point is one Optuna trial in a database (a SQLite file by default, any
SQLAlchemy URL such as PostgreSQL for several machines). Grid points are enqueued once and
claimed by one worker each; running trials send heartbeats, and a trial whose worker died
(even by SIGKILL) is marked failed and enqueued again. Running the same command again
finishes an interrupted search; finished trials are not run again.

The refinement goes into the decade between the best coarse value and its better
neighbour: ``refine=3`` puts 3 log-spaced points strictly inside it, ``refine=(2, 5)``
puts ``2 * lo`` and ``5 * lo`` there (1-2-5 steps).

Example:
    >>> coarse_grid("1e-1,1e-2,1e-3")
    (0.1, 0.01, 0.001)
    >>> refine_grid((0.1, 0.01, 0.001), [0.5, 0.2, 0.3], (2, 5))  # best 0.01, then 0.001
    [0.002, 0.005]
    >>> refine_grid((0.1, 0.01, 0.001), [0.5, 0.2, 0.3], 1)
    [0.00316228]
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from actreg._errors import ActregError
from actreg.lab.search._db import check_storage_url, safe_url

__all__ = [
    "OBJECTIVES",
    "SearchConfig",
    "coarse_grid",
    "refine_grid",
    "run_search",
    "search_rows",
    "trial_metrics",
    "write_search_report",
]

OBJECTIVES: dict[str, tuple[str, ...]] = {
    "sparse-ae": ("val_mse", "val_loss", "test_mse", "probe_error", "noisy_probe_error"),
    "sparse-rectifier": ("val_error", "val_loss", "test_error", "test_loss"),
    "cnn": ("val_error", "val_loss", "test_error"),
}
"""Objectives (lower is better) per experiment; the first is the default."""

SEARCH_SETTINGS: dict[str, tuple[str, ...]] = {
    "sparse-ae": ("compare=false", "progress=false"),
    "sparse-rectifier": ("variants=relu-l1", "progress=false"),
    "cnn": ("compare=false", "progress=false"),
}
"""Overrides applied before the user's: train only the penalized model, no progress bars."""

RESERVED = ("coef", "out_dir", "run_name")


def _sig(value: float) -> float:
    return float(f"{value:.6g}")


def coarse_grid(coefs: str | Sequence[float]) -> tuple[float, ...]:
    """Parse and check the coarse grid: positive, finite, duplicates dropped.

    Raises:
        ActregError: for an empty grid or a value that is not a positive number.
    """
    items = [c for c in coefs.replace(" ", "").split(",") if c] if isinstance(coefs, str) else coefs
    grid: list[float] = []
    for item in items:
        try:
            value = float(item)
        except (TypeError, ValueError):
            msg = f"coefficient {item!r} is not a number; e.g. --coef 1e-2,1e-3"
            raise ActregError(msg) from None
        if not (math.isfinite(value) and value > 0):
            raise ActregError(f"coefficients must be positive and finite, got {item!r}")
        if _sig(value) not in grid:
            grid.append(_sig(value))
    if not grid:
        raise ActregError("the coefficient grid is empty; e.g. --coef 1e-1,1e-2,1e-3,1e-4")
    return tuple(grid)


def check_refine(refine: int | Sequence[float]) -> int | tuple[float, ...]:
    """``refine`` as an int >= 0 (log-spaced points) or a tuple of mantissas in [1, 10)."""
    if isinstance(refine, bool):
        raise ActregError(f"refine must be a count or mantissas such as 1,2,5, got {refine!r}")
    if isinstance(refine, int):
        if refine < 0:
            raise ActregError(f"refine must be >= 0, got {refine}")
        return refine
    steps = tuple(float(m) for m in refine)
    if not steps or any(not 1 <= m < 10 for m in steps):
        raise ActregError(f"refine mantissas must lie in [1, 10), e.g. 1,2,5; got {refine!r}")
    return steps


def refine_grid(
    coarse: Sequence[float], values: Sequence[float | None], refine: int | Sequence[float]
) -> list[float]:
    """New points inside the decade between the best coarse value and its better neighbour.

    Args:
        coarse: the coarse coefficients.
        values: their objective values (``None`` for a failed trial); lower is better.
        refine: a count of log-spaced points, or mantissas (``(1, 2, 5)``) of that decade.

    Returns:
        The new coefficients (not already in ``coarse``), ascending.
    """
    refine = check_refine(refine)
    done = sorted((c, v) for c, v in zip(coarse, values, strict=True) if v is not None)
    if not done or refine == 0:
        return []
    best = min(range(len(done)), key=lambda i: done[i][1])
    c_best = done[best][0]
    below = done[best - 1] if best > 0 else None
    above = done[best + 1] if best + 1 < len(done) else None
    if above is not None and (below is None or above[1] <= below[1]):
        lo, hi = c_best, min(above[0], 10 * c_best)
    elif below is not None:
        lo, hi = max(below[0], c_best / 10), c_best
    else:
        lo, hi = c_best, 10 * c_best
    if isinstance(refine, int):
        ratio = math.log10(hi / lo)
        points = [lo * 10 ** (ratio * k / (refine + 1)) for k in range(1, refine + 1)]
    else:
        decade = 10 ** math.floor(math.log10(lo) + 1e-9)
        points = [m * decade * 10**e for e in (0, 1) for m in refine]
        points = [p for p in points if lo * (1 + 1e-9) < p < hi * (1 - 1e-9)]
    have = set(coarse)
    return sorted({_sig(p) for p in points} - have)


@dataclasses.dataclass
class SearchConfig:
    """A coefficient search over a registered experiment.

    Attributes:
        experiment: a name from :data:`actreg.lab.experiments.EXPERIMENTS`.
        coefs: the coarse grid (e.g. ``(1e-1, 1e-2, 1e-3, 1e-4)``).
        refine: log-spaced points (int) or 1-2-5 style mantissas inside the best decade.
        objective: what to minimize (default: the experiment's first in :data:`OBJECTIVES`).
        storage: a SQLAlchemy URL (default: ``sqlite:///OUT_DIR/search/optuna.db``).
        study: the study name (default: the experiment and a hash of these settings, so
            the same command resumes the same study).
        overrides: ``key=value`` settings of the experiment (as ``actreg run --set``).
        workers: worker processes on this machine.
        out_dir: trials go to ``OUT_DIR/search/STUDY/trials``, the report next to them.
        heartbeat: seconds between heartbeats of a running trial.
        grace: seconds without a heartbeat after which a running trial is retried.
        max_attempts: how often a grid point is tried before it is given up.
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

    def __post_init__(self) -> None:
        from actreg.lab.experiments import get

        self.coefs = coarse_grid(self.coefs)
        self.refine = check_refine(self.refine)
        self.overrides = tuple(self.overrides)
        exp = get(self.experiment)
        known = OBJECTIVES.get(self.experiment)
        if self.objective is None:
            self.objective = known[0] if known else "val_loss"
        if known and self.objective not in known:
            raise ActregError(
                f"unknown objective {self.objective!r} for {self.experiment}; "
                f"choose from {', '.join(known)}"
            )
        for item in self.overrides:
            if item.split("=", 1)[0].strip().replace("-", "_") in RESERVED:
                raise ActregError(f"--set {item!r}: the search sets {', '.join(RESERVED)} itself")
        self.experiment_config(self.coefs[0], "check")  # validates the overrides now
        if self.workers < 1 or self.heartbeat < 1 or self.grace <= self.heartbeat:
            raise ActregError(
                f"need workers >= 1, heartbeat >= 1 and grace > heartbeat, got {self.workers}, "
                f"{self.heartbeat}, {self.grace}"
            )
        if self.storage is None:
            self.storage = f"sqlite:///{Path(self.out_dir) / 'search' / 'optuna.db'}"
        check_storage_url(self.storage)
        if self.study is None:
            self.study = f"{self.experiment}-{self.fingerprint()[:10]}"
        del exp

    def fingerprint(self) -> str:
        """A hash of what defines the search (not the workers, storage or study name)."""
        key = [self.experiment, self.coefs, self.refine, self.objective, sorted(self.overrides)]
        return hashlib.sha1(json.dumps(key).encode()).hexdigest()

    def describe(self) -> dict[str, Any]:
        """The settings as saved with the study and in reports (password masked)."""
        out = dataclasses.asdict(self)
        out["storage"] = safe_url(str(self.storage))
        out["coefs"], out["overrides"] = list(self.coefs), list(self.overrides)
        return out

    @property
    def search_dir(self) -> Path:
        """``OUT_DIR/search/STUDY``: trial runs and the report."""
        return Path(self.out_dir) / "search" / str(self.study)

    def experiment_config(self, coef: float, run_name: str) -> Any:
        """The experiment's config for one trial."""
        from actreg.lab.experiments import get
        from actreg.lab.experiments._config import apply_overrides

        exp = get(self.experiment)
        sets = [*SEARCH_SETTINGS.get(self.experiment, ()), *self.overrides]
        cfg = apply_overrides(exp.config(), sets)
        if self.workers > 1 and "threads" in {f.name for f in dataclasses.fields(cfg)}:
            if not any(s.startswith("threads=") for s in self.overrides):
                import os

                threads = max(1, (os.cpu_count() or 1) // self.workers)
                cfg = dataclasses.replace(cfg, threads=threads)
        return dataclasses.replace(
            cfg, coef=coef, out_dir=str(self.search_dir / "trials"), run_name=run_name
        )


def _best(history: list[dict[str, Any]], best_epoch: int) -> dict[str, Any]:
    return history[max(best_epoch, 1) - 1] if history else {}


def _mean(layers: dict[str, dict[str, Any]], key: str) -> float | None:
    values = [s[key] for s in layers.values() if isinstance(s.get(key), (int, float))]
    return sum(values) / len(values) if values else None


def trial_metrics(experiment: str, results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Objective candidates and sparsity statistics from an experiment's results dict.

    For the penalized variant: the validation values at the best epoch, the test values,
    and the code's (or the mean over layers of) ``zero_fraction``, ``l0``, ``dead_fraction``.
    Other experiments: top-level numeric ``val_*``/``test_*`` keys and sparsity keys.

    Example:
        >>> trial_metrics("other", {"val_loss": 0.5, "zero_fraction": 0.9})
        {'objectives': {'val_loss': 0.5}, 'sparsity': {'zero_fraction': 0.9}}
    """
    obj: dict[str, Any] = {}
    layers: dict[str, dict[str, Any]] = {}
    if experiment in OBJECTIVES:
        variants = results["variants"]
        name = "relu-l1" if "relu-l1" in variants else next(iter(variants))
        out = variants[name]
        best = _best(out["history"], out["best_epoch"])
        obj = {k: v for k, v in best.items() if k.startswith("val_") and isinstance(v, float)}
        obj.update({k: v for k, v in out.items() if k.startswith("test_")})
        if experiment == "sparse-ae":
            obj["val_loss"] = obj.get("val_mse")
            obj["probe_error"] = 1 - out["probe"]["clean"]
            obj["noisy_probe_error"] = 1 - out["probe"]["noisy"]
            layers = {"code": out["code"]}
        else:
            layers = out.get("layers") or out.get("maps") or {}
    else:
        obj = {k: v for k, v in results.items() if k.startswith(("val_", "test_"))}
        layers = {"": results}
    sparsity = {k: _mean(layers, k) for k in ("zero_fraction", "l0", "dead_fraction")}
    return {
        "objectives": {k: float(v) for k, v in obj.items() if isinstance(v, (int, float))},
        "sparsity": {k: float(v) for k, v in sparsity.items() if v is not None},
    }


def run_search(config: SearchConfig) -> list[dict[str, Any]]:
    """Run (or resume, or join) the search; returns :func:`search_rows` and writes the report.

    With ``workers > 1`` the workers are separate processes; the same call on another
    machine with the same ``storage`` joins the search.
    """
    from actreg.lab.search import _run as _search_run

    if config.workers == 1:
        _search_run.work(config)
    else:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        procs = [
            ctx.Process(target=_search_run.work, args=(config,)) for _ in range(config.workers)
        ]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join()
        bad = [p.exitcode for p in procs if p.exitcode != 0]
        if bad:
            raise ActregError(f"{len(bad)} search worker(s) failed (exit codes {bad}); see the log")
    rows = search_rows(config)
    write_search_report(config, rows)
    return rows


def search_rows(config: SearchConfig) -> list[dict[str, Any]]:
    """One row per grid point: the finished trial's coefficient, objective and sparsity."""
    from actreg.lab.search import _run as _search_run

    return _search_run.rows(config)


def write_search_report(config: SearchConfig, rows: list[dict[str, Any]] | None = None) -> Path:
    """Write ``search.md``, ``search.json`` and ``tradeoff.png`` into ``config.search_dir``.

    Returns:
        The path of ``search.md``.
    """
    from actreg.lab import plots
    from actreg.lab.report import format_table

    rows = search_rows(config) if rows is None else rows
    out = config.search_dir
    out.mkdir(parents=True, exist_ok=True)
    objective = str(config.objective)
    done = [r for r in rows if r.get(objective) is not None]
    lines = [
        f"# Coefficient search: {config.experiment}",
        "",
        f"Study `{config.study}` in `{safe_url(str(config.storage))}`, objective "
        f"`{config.objective}` (lower is better).",
        "",
        format_table([{k: v for k, v in r.items() if k != "run_dir"} for r in rows]),
        "",
    ]
    if done:
        png = plots.tradeoff(
            [r["coef"] for r in done],
            [r[objective] for r in done],
            [r.get("zero_fraction") or 0.0 for r in done],
            out / "tradeoff.png",
            task_label=str(config.objective),
            title=f"{config.experiment}: {config.objective} and zero fraction vs coefficient",
        )
        lines += [f"![trade-off]({png.name})", ""]
    lines += ["Run folders:", ""] + [f"- {r['coef']:g}: `{r['run_dir']}`" for r in rows]
    (out / "search.json").write_text(
        json.dumps({"search": config.describe(), "rows": rows}, indent=2) + "\n"
    )
    path = out / "search.md"
    path.write_text("\n".join(lines) + "\n")
    return path
