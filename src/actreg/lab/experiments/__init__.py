"""Experiments: each a config dataclass and a ``run(config) -> results`` function.

The registry :data:`EXPERIMENTS` maps the CLI's names to them.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from actreg._errors import ActregError
from actreg.lab.experiments import ablations, cnn, lstm_lm, seq2seq, sparse_ae, sparse_rectifier

__all__ = ["EXPERIMENTS", "Experiment", "get"]


@dataclass(frozen=True)
class Experiment:
    """A registered experiment."""

    name: str
    config: type
    run: Callable[[Any], dict[str, Any]]
    summary: Callable[[dict[str, Any]], list[dict[str, Any]]]
    doc: str


EXPERIMENTS: dict[str, Experiment] = {
    "sparse-ae": Experiment(
        "sparse-ae",
        sparse_ae.SparseAEConfig,
        sparse_ae.run,
        sparse_ae.summary_rows,
        "overcomplete autoencoder with a sparse code, linear probe, noise robustness",
    ),
    "sparse-rectifier": Experiment(
        "sparse-rectifier",
        sparse_rectifier.SparseRectifierConfig,
        sparse_rectifier.run,
        sparse_rectifier.summary_rows,
        "3x1000 ReLU MLP with L1 on every hidden layer vs none vs tanh (Glorot et al. 2011)",
    ),
    "cnn": Experiment(
        "cnn", cnn.CNNConfig, cnn.run, cnn.summary_rows, "small CNN with L1 on its feature maps"
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


def get(name: str) -> Experiment:
    """The experiment called ``name``; an unknown name lists the valid ones."""
    if name not in EXPERIMENTS:
        close = difflib.get_close_matches(name, EXPERIMENTS, n=2)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ActregError(f"unknown experiment {name!r}{hint}; valid: {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[name]
