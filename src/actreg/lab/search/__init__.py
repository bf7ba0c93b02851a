"""Choosing the coefficient: a coarse pass over decades, then a finer pass inside the best one.

The article's procedure as one resumable, parallel command::

    actreg search sparse-ae --coef 1e-1,1e-2,1e-3,1e-4 --refine 3 --set data=digits

Every grid point is one Optuna trial in a database (a SQLite file by default, PostgreSQL
for several machines). Grid points are enqueued once and claimed by one worker each;
running trials send heartbeats, and a trial whose worker died (even by SIGKILL) is marked
failed and enqueued again. Running the same command again finishes an interrupted search;
finished trials are not run again. Storage outages are ridden out, and a finished result
waits (in memory and a journal) until it is stored: see docs/RELIABILITY.md.

The search is generic: it names no experiment. What it needs from one (objectives, the
metrics a trial records, settings, the coefficient's field) is the experiment's
:class:`~actreg.lab.experiments.SearchSpec` in the registry. Its modules import one way:

* :mod:`~actreg.lab.search.grid`: the coarse and refined grids (pure functions);
* :mod:`~actreg.lab.search._retry`: retries through storage outages (backoff, deadline);
* :mod:`~actreg.lab.search._db`: storage URLs (masked in all output), the lock, Optuna storage;
* :mod:`~actreg.lab.search.config`: :class:`SearchConfig`, checked before any trial;
* :mod:`~actreg.lab.search._trial`: one claimed trial: run, journal, store its outcome;
* :mod:`~actreg.lab.search.worker`: one worker (grid -> trial -> storage);
* :mod:`~actreg.lab.search.run`: workers, rows, report.

Example:
    >>> coarse_grid("1e-1,1e-2,1e-3")
    (0.1, 0.01, 0.001)
    >>> refine_grid((0.1, 0.01, 0.001), [0.5, 0.2, 0.3], (2, 5))  # best 0.01, then 0.001
    [0.002, 0.005]
"""

from __future__ import annotations

from actreg.lab.search.config import SearchConfig, search_spec
from actreg.lab.search.grid import check_refine, coarse_grid, refine_grid
from actreg.lab.search.run import run_search, search_rows, write_search_report

__all__ = [
    "SearchConfig",
    "check_refine",
    "coarse_grid",
    "refine_grid",
    "run_search",
    "search_rows",
    "search_spec",
    "write_search_report",
]
