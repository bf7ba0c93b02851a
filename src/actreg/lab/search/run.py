"""Running a search: start the workers, collect one row per grid point, write the report.

:func:`run_search` is the whole command: it starts ``workers`` processes of
:func:`~actreg.lab.search.worker.work` (or runs one in this process), then reads the
study back (:func:`search_rows`) and writes ``search.md``, ``search.json`` and
``tradeoff.png`` (:func:`write_search_report`).
"""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path
from typing import Any

from actreg._errors import ActregError
from actreg.lab import plots
from actreg.lab.report import format_table
from actreg.lab.search._db import Store, safe_url
from actreg.lab.search.config import SearchConfig
from actreg.lab.search.worker import trials_by_coef, work

__all__ = ["run_search", "search_rows", "write_search_report"]


def run_search(config: SearchConfig) -> list[dict[str, Any]]:
    """Run (or resume, or join) the search; returns :func:`search_rows` and writes the report.

    With ``workers > 1`` the workers are separate processes; the same call on another
    machine with the same ``storage`` joins the search.
    """
    if config.workers == 1:
        work(config)
    else:
        ctx = multiprocessing.get_context("spawn")
        procs = [ctx.Process(target=work, args=(config,)) for _ in range(config.workers)]
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
    """One row per grid point, ascending coefficient: the finished trial's (else the last
    one's) coefficient, objective, the other metrics of the experiment's contract (those
    that are no objective first, e.g. sparsity), attempts, seconds and run folder."""
    import optuna
    from optuna.trial import TrialState

    store = Store(str(config.storage), config.heartbeat, config.grace)
    try:
        study = optuna.load_study(study_name=config.study, storage=store.storage)
    except KeyError:
        raise ActregError(f"no study {config.study!r} in {store.masked}") from None
    try:
        points = trials_by_coef(study)
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
    return out


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
