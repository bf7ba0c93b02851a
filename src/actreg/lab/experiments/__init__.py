"""Experiments: each a config dataclass and a ``run(config) -> results`` function.

The registry :data:`EXPERIMENTS` maps the CLI's names to them (their descriptions and
search objectives come from :mod:`actreg.lab.catalog`, which the CLI reads without
PyTorch). An entry also declares what ``actreg search`` needs to tune its coefficient
(:class:`SearchSpec`: objectives, the metrics a trial records, the settings a trial runs
with, the coefficient's field); an entry without one cannot be searched. The search names
no experiment: a new experiment becomes searchable by declaring its contract here.

Example:
    >>> get("cnn").search.objectives[0]
    'val_error'
"""

from __future__ import annotations

import difflib
from typing import Any

from actreg._errors import ActregError
from actreg.lab.catalog import CATALOG
from actreg.lab.experiments import (
    ablations,
    cnn,
    lstm_lm,
    seq2seq,
    sparse_ae,
    sparse_rectifier,
    transformer_lm,
)
from actreg.lab.experiments._contract import Experiment, SearchSpec
from actreg.lab.experiments._rundir import load_results

__all__ = ["EXPERIMENTS", "Experiment", "SearchSpec", "get", "load_results"]

EXPERIMENTS: dict[str, Experiment[Any, Any]] = {
    "sparse-ae": Experiment(
        "sparse-ae",
        sparse_ae.SparseAEConfig,
        sparse_ae.run,
        sparse_ae.summary_rows,
        CATALOG["sparse-ae"].doc,
        SearchSpec(
            objectives=CATALOG["sparse-ae"].objectives,
            metrics=sparse_ae.search_metrics,
            settings=("compare=false", "progress=false"),  # only the penalized model
            aliases=CATALOG["sparse-ae"].aliases,
        ),
    ),
    "sparse-rectifier": Experiment(
        "sparse-rectifier",
        sparse_rectifier.SparseRectifierConfig,
        sparse_rectifier.run,
        sparse_rectifier.summary_rows,
        CATALOG["sparse-rectifier"].doc,
        SearchSpec(
            objectives=CATALOG["sparse-rectifier"].objectives,
            metrics=sparse_rectifier.search_metrics,
            settings=("variants=relu-l1", "progress=false"),  # only the penalized model
        ),
    ),
    "cnn": Experiment(
        "cnn",
        cnn.CNNConfig,
        cnn.run,
        cnn.summary_rows,
        CATALOG["cnn"].doc,
        SearchSpec(
            objectives=CATALOG["cnn"].objectives,
            metrics=cnn.search_metrics,
            settings=("compare=false", "progress=false"),  # only the penalized model
        ),
    ),
    "lstm-lm": Experiment(
        "lstm-lm",
        lstm_lm.LSTMLMConfig,
        lstm_lm.run,
        lstm_lm.summary_rows,
        CATALOG["lstm-lm"].doc,
    ),
    "transformer-lm": Experiment(
        "transformer-lm",
        transformer_lm.TransformerLMConfig,
        transformer_lm.run,
        transformer_lm.summary_rows,
        CATALOG["transformer-lm"].doc,
        SearchSpec(
            objectives=CATALOG["transformer-lm"].objectives,
            metrics=transformer_lm.search_metrics,
            settings=("variants=relu-l1", "progress=false"),  # only the penalized model
            coef_field="l1",
        ),
    ),
    "seq2seq": Experiment(
        "seq2seq",
        seq2seq.Seq2SeqConfig,
        seq2seq.run,
        seq2seq.summary_rows,
        CATALOG["seq2seq"].doc,
    ),
    "ablation": Experiment(
        "ablation",
        ablations.AblationConfig,
        ablations.run,
        ablations.summary_rows,
        CATALOG["ablation"].doc,
    ),
}


def get(name: str) -> Experiment[Any, Any]:
    """The experiment called ``name``; an unknown name lists the valid ones."""
    if name not in EXPERIMENTS:
        close = difflib.get_close_matches(name, EXPERIMENTS, n=2)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ActregError(f"unknown experiment {name!r}{hint}; valid: {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[name]
