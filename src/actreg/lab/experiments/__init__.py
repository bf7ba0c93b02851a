"""Experiments: each a config dataclass and a ``run(config) -> results`` function.

The registry :data:`EXPERIMENTS` maps the CLI's names to them. An entry also declares what
``actreg search`` needs to tune its coefficient (:class:`SearchSpec`: objectives, the
metrics a trial records, the settings a trial runs with, the coefficient's field); an
entry without one cannot be searched. The search names no experiment: a new experiment
becomes searchable by declaring its contract here.

Example:
    >>> get("cnn").search.objectives[0]
    'val_error'
"""

from __future__ import annotations

import difflib
from typing import Any

from actreg._errors import ActregError
from actreg.lab.experiments import ablations, cnn, lstm_lm, seq2seq, sparse_ae, sparse_rectifier
from actreg.lab.experiments._common import load_results
from actreg.lab.experiments._contract import Experiment, SearchSpec

__all__ = ["EXPERIMENTS", "Experiment", "SearchSpec", "get", "load_results"]

EXPERIMENTS: dict[str, Experiment[Any, Any]] = {
    "sparse-ae": Experiment(
        "sparse-ae",
        sparse_ae.SparseAEConfig,
        sparse_ae.run,
        sparse_ae.summary_rows,
        "overcomplete autoencoder with a sparse code, linear probe, noise robustness",
        SearchSpec(
            objectives=("val_mse", "test_mse", "probe_error", "noisy_probe_error"),
            metrics=sparse_ae.search_metrics,
            settings=("compare=false", "progress=false"),  # only the penalized model
            aliases={"val_loss": "val_mse"},
        ),
    ),
    "sparse-rectifier": Experiment(
        "sparse-rectifier",
        sparse_rectifier.SparseRectifierConfig,
        sparse_rectifier.run,
        sparse_rectifier.summary_rows,
        "3x1000 ReLU MLP with L1 on every hidden layer vs none vs tanh (Glorot et al. 2011)",
        SearchSpec(
            objectives=("val_error", "val_loss", "test_error", "test_loss"),
            metrics=sparse_rectifier.search_metrics,
            settings=("variants=relu-l1", "progress=false"),  # only the penalized model
        ),
    ),
    "cnn": Experiment(
        "cnn",
        cnn.CNNConfig,
        cnn.run,
        cnn.summary_rows,
        "small CNN with L1 on its feature maps",
        SearchSpec(
            objectives=("val_error", "val_loss", "test_error", "test_loss"),
            metrics=cnn.search_metrics,
            settings=("compare=false", "progress=false"),  # only the penalized model
        ),
    ),
    "lstm-lm": Experiment(
        "lstm-lm",
        lstm_lm.LSTMLMConfig,
        lstm_lm.run,
        lstm_lm.summary_rows,
        "word-level LSTM language model with AR/TAR (Merity et al. 2017) vs none",
    ),
    "seq2seq": Experiment(
        "seq2seq",
        seq2seq.Seq2SeqConfig,
        seq2seq.run,
        seq2seq.summary_rows,
        "LSTM sequence autoencoder with an L1 penalty on its bottleneck code vs none",
    ),
    "ablation": Experiment(
        "ablation",
        ablations.AblationConfig,
        ablations.run,
        ablations.summary_rows,
        "the article's tips tested over seeds: --set question=which-norm|where|width|...",
    ),
}


def get(name: str) -> Experiment[Any, Any]:
    """The experiment called ``name``; an unknown name lists the valid ones."""
    if name not in EXPERIMENTS:
        close = difflib.get_close_matches(name, EXPERIMENTS, n=2)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ActregError(f"unknown experiment {name!r}{hint}; valid: {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[name]
