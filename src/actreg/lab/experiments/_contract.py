"""What an experiment declares in the registry, and what its search contract promises.

An :class:`Experiment` is a config dataclass, a ``run(config) -> results`` function, a
summary for tables, and optionally a :class:`SearchSpec`: the contract that lets
``actreg search`` tune its coefficient without knowing anything else about it (the
objectives it may minimize, the flat metrics a trial records, the settings a trial runs
with, and which config field holds the searched coefficient).

Design: the contract lives in each registry entry, not in the search. The alternative, a
table in the search keyed by experiment name, is what this replaced: every new experiment
meant editing the search, and the search had to know each result's layout. Each experiment
module defines its own ``search_metrics`` beside the results it builds; the helpers they
share (the best epoch's validation values, layer means) are here.

Example:
    >>> spec = SearchSpec(objectives=("val_loss",), metrics=lambda r: {"val_loss": r["loss"]})
    >>> spec.metrics({"loss": 0.5}), spec.coef_field
    ({'val_loss': 0.5}, 'coef')
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

# for the experiments' results TypedDicts: typing has it from Python 3.11
if sys.version_info >= (3, 11):
    from typing import NotRequired
else:  # Python 3.10: torch depends on typing_extensions
    from typing_extensions import NotRequired

from actreg._errors import ActregError

__all__ = ["Experiment", "NotRequired", "SearchSpec", "best_epoch_metrics", "layer_means"]

C = TypeVar("C")
R = TypeVar("R", bound=Mapping[str, Any])

SPARSITY = ("zero_fraction", "l0", "dead_fraction")
"""The sparsity statistics a searchable experiment reports (means over its watched layers)."""


@dataclass(frozen=True)
class SearchSpec(Generic[R]):
    """How ``actreg search`` may tune an experiment's coefficient.

    Attributes:
        objectives: metric names a search may minimize (lower is better); the first is
            the default.
        metrics: a trial's metrics from the experiment's results: a flat dict of floats
            holding every objective plus anything else worth a column (sparsity).
        settings: ``key=value`` overrides applied before the user's (e.g. train only the
            penalized model, no progress bars).
        coef_field: the config field that holds the searched coefficient.
        aliases: other names accepted for an objective (``{"val_loss": "val_mse"}``).

    Every searchable config also has ``out_dir`` and ``run_name`` fields (where ``run``
    writes), and the results carry ``run_dir``; a ``threads`` field, where present, is
    divided among the workers.
    """

    objectives: tuple[str, ...]
    metrics: Callable[[R], dict[str, float]]
    settings: tuple[str, ...] = ()
    coef_field: str = "coef"
    aliases: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.objectives:
            raise ActregError("a SearchSpec needs at least one objective, e.g. ('val_loss',)")
        unknown = [a for a, o in self.aliases.items() if o not in self.objectives]
        if unknown:
            raise ActregError(f"aliases {unknown} do not name one of {self.objectives}")

    def objective(self, name: str | None) -> str:
        """The metric behind an objective name (None: the default); unknown names are refused.

        Raises:
            ActregError: naming the valid objectives.
        """
        if name is None:
            return self.objectives[0]
        if name in self.objectives:
            return name
        if name in self.aliases:
            return self.aliases[name]
        valid = ", ".join((*self.objectives, *self.aliases))
        raise ActregError(f"unknown objective {name!r}; choose from {valid}")


@dataclass(frozen=True)
class Experiment(Generic[C, R]):
    """A registered experiment.

    Attributes:
        name: the CLI's name (``actreg run NAME``).
        config: the config dataclass; ``config()`` gives the defaults.
        run: trains and writes ``results.json``; returns the results (with ``run_dir``).
        summary: rows for a table, from the results (or a loaded ``results.json``).
        doc: one line for ``actreg run --help``.
        search: the contract ``actreg search`` needs; None: not searchable.
    """

    name: str
    config: type[C]
    run: Callable[[C], R]
    summary: Callable[[dict[str, Any]], list[dict[str, Any]]]
    doc: str
    search: SearchSpec[R] | None = None


def best_epoch_metrics(out: Mapping[str, Any]) -> dict[str, float]:
    """The float ``val_*`` values of the best epoch and the ``test_*`` values of a variant.

    ``out`` is one trained variant: :func:`actreg.lab.train.fit`'s ``history`` and
    ``best_epoch`` plus test values.

    Example:
        >>> out = {"history": [{"val_loss": 0.5}, {"val_loss": 0.4}], "best_epoch": 2}
        >>> best_epoch_metrics({**out, "test_loss": 0.45})
        {'val_loss': 0.4, 'test_loss': 0.45}
    """
    history = out["history"]
    best = history[max(out["best_epoch"], 1) - 1] if history else {}
    metrics = {k: v for k, v in best.items() if k.startswith("val_") and isinstance(v, float)}
    metrics.update({k: v for k, v in out.items() if k.startswith("test_")})
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


def layer_means(layers: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """The mean over layers of each numeric statistic in :data:`SPARSITY`.

    Example:
        >>> layer_means({"a": {"zero_fraction": 0.8, "l0": 3.0}, "b": {"zero_fraction": 0.6}})
        {'zero_fraction': 0.7, 'l0': 3.0}
    """
    out = {}
    for key in SPARSITY:
        values = [s[key] for s in layers.values() if isinstance(s.get(key), (int, float))]
        if values:
            out[key] = float(sum(values) / len(values))
    return out
