"""The experiments' names, one-line descriptions and search objectives, without PyTorch.

The command line lists these in ``--help``; importing the experiments themselves would
import PyTorch first (seconds), so the registry (:mod:`actreg.lab.experiments`) takes each
entry's description and objectives from here: one place for them, read by both. A test
checks that the catalog and the registry name the same experiments.

Example:
    >>> CATALOG["cnn"].objectives[0]
    'val_error'
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["CATALOG", "Entry"]


@dataclass(frozen=True)
class Entry:
    """What the help of ``actreg run`` and ``actreg search`` says of one experiment.

    Attributes:
        doc: one line for ``actreg run --help``.
        objectives: what ``actreg search`` may minimize (the first is the default); empty:
            the experiment cannot be searched.
        aliases: other names accepted for an objective.
    """

    doc: str
    objectives: tuple[str, ...] = ()
    aliases: Mapping[str, str] = field(default_factory=dict)


CATALOG: dict[str, Entry] = {
    "sparse-ae": Entry(
        "overcomplete autoencoder with a sparse code, linear probe, noise robustness",
        ("val_mse", "test_mse", "probe_error", "noisy_probe_error"),
        {"val_loss": "val_mse"},
    ),
    "sparse-rectifier": Entry(
        "3x1000 ReLU MLP with L1 on every hidden layer vs none vs tanh (Glorot et al. 2011)",
        ("val_error", "val_loss", "test_error", "test_loss"),
    ),
    "cnn": Entry(
        "small CNN with L1 on its feature maps",
        ("val_error", "val_loss", "test_error", "test_loss"),
    ),
    "lstm-lm": Entry("word-level LSTM language model with AR/TAR (Merity et al. 2017) vs none"),
    "transformer-lm": Entry(
        "small GPT-2 LM: sparse FFN activations by L1 ramp or target vs dense and thresholds",
        ("val_ppl", "test_ppl"),
    ),
    "seq2seq": Entry("LSTM sequence autoencoder with an L1 penalty on its bottleneck code vs none"),
    "ablation": Entry(
        "the article's tips tested over seeds: --set question=which-norm|where|width|..."
    ),
}
