"""Running a search: start the workers, collect one row per grid point, write the report.

:func:`run_search` is the whole command: it starts ``workers`` processes of
:func:`~actreg.lab.search.worker.work` (or runs one in this process), then reads the
study back (:func:`search_rows`) and writes ``search.md``, ``search.json`` and
``tradeoff.png`` (:func:`write_search_report`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import os
import sys
from pathlib import Path
from typing import Any

from actreg._errors import ActregError
from actreg.lab import plots
from actreg.lab.report import format_table
from actreg.lab.search._db import Store, safe_url
from actreg.lab.search.config import SearchConfig
from actreg.lab.search.worker import retry_failed, trials_by_coef, unfinished, work

__all__ = ["run_search", "search_rows", "write_search_report"]

log = logging.getLogger("actreg.lab.search")


def run_search(config: SearchConfig) -> list[dict[str, Any]]:
    """Run (or resume, or join) the search; returns :func:`search_rows` and writes the report.

    With ``workers > 1`` the workers are separate processes; the same call on another
    machine with the same ``storage`` joins the search. Workers that die while the others
    finish the work are only logged.

    Raises:
        ActregError: after writing the report, when a grid point has no result: which
            points, why, and how to go on (run again to resume, ``--retry-failed`` for a
            point given up).
    """
    if config.retry_failed:
        retry_failed(config)
        config = dataclasses.replace(config, retry_failed=False)
    died: list[int] = []
    if config.workers == 1:
        work(config)
    else:
        ctx = multiprocessing.get_context("spawn")
        level = log.getEffectiveLevel()
        procs = [ctx.Process(target=_worker, args=(config, level)) for _ in range(config.workers)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join()
        died = [int(p.exitcode or 0) for p in procs if p.exitcode != 0]
    rows, missing = _read(config)
    path = write_search_report(config, rows)
    stopped = f"{len(died)} of {config.workers} workers stopped early (exit codes {died})"
    if died and not missing:
        log.warning("%s; the others finished the work", stopped)
    if missing:
        head = f"{stopped}; " if died else ""
        raise ActregError(
            f"{head}the search is not finished: {'; '.join(missing)} (report so far: {path})"
        )
    return rows


def _worker(config: SearchConfig, level: int) -> None:
    """A worker process: its log on stderr, an error as one ``actreg: error:`` line."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s [{os.getpid()}] %(message)s", "%H:%M:%S"))
    log.addHandler(handler)
    log.setLevel(level)
    try:
        work(config)
    except ActregError as err:
        sys.stderr.write(f"actreg: error: {err}\n")
        sys.exit(1)


def search_rows(config: SearchConfig) -> list[dict[str, Any]]:
    """One row per grid point, ascending coefficient: the finished trial's (else the last
    one's) coefficient, objective, the other metrics of the experiment's contract (those
    that are no objective first, e.g. sparsity), attempts, seconds and run folder."""
    return _read(config)[0]


def _read(config: SearchConfig) -> tuple[list[dict[str, Any]], list[str]]:
    """:func:`search_rows` and :func:`~actreg.lab.search.worker.unfinished`."""
    import optuna
    from optuna.trial import TrialState

    store = Store(str(config.storage), config.heartbeat, config.grace, config.patience)
    try:

        def load() -> tuple[dict[float, list[Any]], list[str]]:
            try:
                study = optuna.load_study(study_name=config.study, storage=store.storage)
            except KeyError:
                raise ActregError(f"no study {config.study!r} in {store.masked}") from None
            return trials_by_coef(study), unfinished(config, study)

        points, missing = store.call("reading the results", load)
    finally:
        store.close()
    objectives = set(config.spec.objectives)
    out = []
    for coef in sorted(points):
        trials = points[coef]
        done = [t for t in trials if t.state == TrialState.COMPLETE]
        best = done[0] if done else trials[-1]
        attrs = best.user_attrs
        metrics: dict[str, float] = attrs.get("metrics", {})
        row: dict[str, Any] = {
            config.grid_key: coef,  # "target" in a target search
            "stage": attrs.get("stage"),
            "state": best.state.name.lower(),
            "trial": best.number,
            str(config.objective): float(best.value) if done else None,
        }
        row.update({k: v for k, v in metrics.items() if k not in objectives})
        row.update({k: v for k, v in metrics.items() if k in objectives and k not in row})
        row["attempts"] = len(trials)
        row["seconds"] = attrs.get("seconds")
        row["run_dir"] = attrs.get("run_dir")
        out.append(row)
    return out, missing


def write_search_report(config: SearchConfig, rows: list[dict[str, Any]] | None = None) -> Path:
    """Write ``search.md``, ``search.json`` and ``tradeoff.png`` into ``config.search_dir``.

    Returns:
        The path of ``search.md``.
    """
    rows = search_rows(config) if rows is None else rows
    out = config.search_dir
    out.mkdir(parents=True, exist_ok=True)
    objective = str(config.objective)
    done = [r for r in rows if r.get(objective) is not None]
    lines = [
        f"# {'Target' if config.targets else 'Coefficient'} search: {config.experiment}",
        "",
        f"Study `{config.study}` in `{safe_url(str(config.storage))}`, objective "
        f"`{config.objective}` (lower is better).",
        "",
        format_table([{k: v for k, v in r.items() if k != "run_dir"} for r in rows]),
        "",
    ]
    if done and config.targets:  # the task metric against the zero fraction reached
        png = plots.target_tradeoff(
            [r["target"] for r in done],
            [r[objective] for r in done],
            [r.get("zero_fraction") or 0.0 for r in done],
            out / "tradeoff.png",
            task_label=objective,
            title=f"{config.experiment}: {objective} against the zero fraction reached",
        )
        lines += [f"![trade-off]({png.name})", ""]
    elif done:
        png = plots.tradeoff(
            [r["coef"] for r in done],
            [r[objective] for r in done],
            [r.get("zero_fraction") or 0.0 for r in done],
            out / "tradeoff.png",
            task_label=str(config.objective),
            title=f"{config.experiment}: {config.objective} and zero fraction vs coefficient",
        )
        lines += [f"![trade-off]({png.name})", ""]
    lines += ["Run folders:", ""] + [f"- {r[config.grid_key]:g}: `{r['run_dir']}`" for r in rows]
    (out / "search.json").write_text(
        json.dumps({"search": config.describe(), "rows": rows}, indent=2) + "\n"
    )
    path = out / "search.md"
    path.write_text("\n".join(lines) + "\n")
    return path
