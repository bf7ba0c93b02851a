"""What the sequence experiments share: the base config, locked dropout, corpus loading,
and a residual ReLU feed-forward block (:class:`ReLUFFN`) whose activations give exact zeros."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar, cast

import torch
from torch import Tensor, nn

import actreg
from actreg._errors import ActregError
from actreg.lab._checks import check_choice, check_fields, check_out_dir, check_targets
from actreg.lab.data.text import Corpus, load_corpus
from actreg.lab.experiments._contract import SPARSITY
from actreg.lab.experiments._rundir import make_run_dir
from actreg.lab.experiments._targets import in_target_mode
from actreg.lab.train import choose_threads

__all__ = [
    "LockedDropout",
    "ReLUFFN",
    "SeqConfig",
    "check_relu_block",
    "monitored",
]

OPTIMIZERS = ("adam", "sgd")
RELU_PENALTIES = ("l1",)
T = TypeVar("T")


def check_relu_block(cfg: Any, default: str) -> None:
    """The settings of a ReLU block and its penalty: ``ffn`` (units, 0 = no block),
    ``penalty`` (``default`` or one of :data:`RELU_PENALTIES`, which needs a block),
    ``coef``, and the targets, which steer the block's penalty only."""
    if cfg.penalty not in (default, *RELU_PENALTIES):
        raise ActregError(
            f"unknown penalty {cfg.penalty!r}; use one of {(default, *RELU_PENALTIES)}"
        )
    if isinstance(cfg.ffn, bool) or not isinstance(cfg.ffn, int) or cfg.ffn < 0:
        raise ActregError(f"ffn must be >= 0 units (0 = no ReLU block), got {cfg.ffn!r}")
    if cfg.penalty != default and not cfg.ffn:
        raise ActregError(
            f"penalty={cfg.penalty} goes on the ReLU block, which ffn=0 leaves out: "
            "set ffn=N (e.g. ffn=1024)"
        )
    check_targets(cfg.target_sparsity, cfg.target_l0)
    if in_target_mode(cfg) and cfg.penalty == default:
        raise ActregError(
            "a sparsity target steers the penalty on the ReLU block (an LSTM's output is "
            f"never exactly 0): set ffn=N and penalty={RELU_PENALTIES[0]} (e.g. --set "
            f"ffn=1024 --set penalty={RELU_PENALTIES[0]})"
        )
    actreg.make_penalty("l1", cfg.coef)


def monitored(
    model: nn.Module, watch: list[str], fn: Callable[[], T]
) -> tuple[T, dict[str, dict[str, float]]]:
    """``fn()`` and the sparsity statistics (:data:`SPARSITY`) of the modules ``watch``
    over what ``fn`` ran, per module (none for an empty ``watch``).

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
        >>> out, stats = monitored(model, ["1"], lambda: model(torch.randn(3, 4)))
        >>> sorted(stats["1"])
        ['dead_fraction', 'l0', 'zero_fraction']
    """
    if not watch:
        return fn(), {}
    monitor = actreg.Monitor(model, watch)
    try:
        out = fn()
        stats = monitor.compute()
    finally:
        monitor.remove()
    return out, {n: {k: float(v) for k, v in s.items() if k in SPARSITY} for n, s in stats.items()}


@dataclass
class SeqConfig:
    """Settings every sequence experiment has. Subclasses add the model and the penalty."""

    POSITIVE: ClassVar[tuple[str, ...]] = (
        "vocab_size",
        "epochs",
        "batch_size",
    )  # settings that must be >= 1 (counts, widths)

    data: str = "austen"  # a corpus folder (train.txt, valid.txt, test.txt) or a name in data_dir
    data_dir: str | None = None  # default: $ACTREG_DATA or the user cache
    vocab_size: int = 10000  # words kept (<unk> and <eos> included)
    seed: int = 0  # seeds the initialization, dropout and batch order
    epochs: int = 10  # passes over the training data (at most; see patience)
    batch_size: int = 20  # sequences per step
    lr: float = 2e-3  # learning rate
    optimizer: str = "adam"  # adam | sgd (plain SGD, as the reference's first phase)
    clip: float = 0.25  # gradient norm clipping (0 = off); 0.25 as in awd-lstm-lm
    patience: int = 0  # early stopping: epochs without validation improvement (0 = off)
    out_dir: str = "runs"  # results go to OUT_DIR/EXPERIMENT/RUN_NAME
    run_name: str | None = None  # default: a timestamp
    overwrite: bool = False  # replace the results of an existing run_name
    progress: bool = True  # progress bars
    threads: int = (
        1  # torch threads (0 = chosen from the work, as the fit loop: 1 for small models)
    )

    def __post_init__(self) -> None:
        check_fields(self)  # types; numbers finite, not negative; POSITIVE >= 1
        if self.vocab_size < 3:
            raise ActregError(
                f"vocab_size must be >= 3 (<unk>, <eos> and a word), got {self.vocab_size}"
            )
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        if not self.lr > 0:
            raise ActregError(f"lr must be a positive number, got {self.lr!r}")

    def load(self) -> Corpus:
        """Check ``out_dir``, set the thread count and load the corpus
        (:func:`actreg.lab.data.text.load_corpus`)."""
        check_out_dir(self.out_dir)
        if self.threads:
            torch.set_num_threads(self.threads)
        return load_corpus(self.data, vocab_size=self.vocab_size, data_dir=self.data_dir)

    def set_threads(self, model: nn.Module, tokens: int) -> int:
        """With ``threads=0``, set the fit loop's choice for ``model`` and return it.

        The choice is :func:`actreg.lab.train.choose_threads` for a training step of about
        ``6 x parameters x tokens`` FLOPs (2 forward and 4 backward per parameter and
        token): the fit loop counts its first step with ``FlopCounterMode`` instead, which
        does not see PyTorch's fused CPU LSTM (it counts 0 FLOPs there). Other values were
        set by :meth:`load`; returns torch's thread count either way.
        """
        if self.threads == 0:
            params = sum(p.numel() for p in model.parameters())
            torch.set_num_threads(choose_threads(6.0 * params * tokens))
        return torch.get_num_threads()

    def run_dir(self, experiment: str) -> Path:
        """``OUT_DIR/EXPERIMENT/RUN_NAME``, created."""
        return make_run_dir(cast(Any, self), experiment)

    def optimizer_for(self, model: nn.Module) -> torch.optim.Optimizer:
        """The configured optimizer over ``model``'s parameters."""
        if self.optimizer == "sgd":
            return torch.optim.SGD(model.parameters(), lr=self.lr)
        return torch.optim.Adam(model.parameters(), lr=self.lr)


class LockedDropout(nn.Module):
    """Variational dropout: one mask per sequence, shared over time (awd-lstm-lm's).

    Args:
        p: the drop probability.
        time_dim: the time axis of the inputs (0 for time-first ``(T, B, H)``).

    Example:
        >>> drop = LockedDropout(0.5).train()
        >>> y = drop(torch.ones(4, 2, 3))
        >>> bool((y[0] == y[3]).all())  # the same units are dropped at every step
        True
    """

    def __init__(self, p: float = 0.5, time_dim: int = 0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ActregError(f"dropout must be in [0, 1), got {p!r}")
        self.p = p
        self.time_dim = time_dim

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        shape = list(x.shape)
        shape[self.time_dim] = 1
        mask = x.new_empty(shape).bernoulli_(1.0 - self.p) / (1.0 - self.p)
        return x * mask

    def extra_repr(self) -> str:
        return f"p={self.p}"


class ReLUFFN(nn.Module):
    """``x + down(relu(up(x)))``: a residual feed-forward block with a ReLU (``act``) inside.

    The ReLU's output, ``(..., width)`` with the units last, is where zeros make sense in a
    recurrent model (an LSTM's output lies in (-1, 1) and is almost never exactly 0): the
    place of an L1 penalty or a sparsity target, as on the FFN activations of ProSparse
    (Song et al. 2024). The residual keeps the block's input width, so a decoder tied to
    the embedding still fits, and a block whose units all die leaves the model as it was.

    Example:
        >>> block = ReLUFFN(8, 32)
        >>> block(torch.randn(5, 3, 8)).shape, type(block.act).__name__
        (torch.Size([5, 3, 8]), 'ReLU')
    """

    def __init__(self, size: int, width: int) -> None:
        super().__init__()
        self.up = nn.Linear(size, width)
        self.act = nn.ReLU()
        self.down = nn.Linear(width, size)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.down(self.act(self.up(x)))
