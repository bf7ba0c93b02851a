"""The model of ``lstm-lm``: :class:`LSTMLM`, its AR/TAR attachment, truncated-BPTT helpers.

Split from :mod:`~actreg.lab.experiments.lstm_lm` (which exports these names and holds the
config, the training loop and the results): the model and how it is run on token streams
are one piece, the experiment around it another.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

import actreg
from actreg.lab.data.text import bptt_batches
from actreg.lab.experiments._seq import LockedDropout, ReLUFFN

__all__ = ["LSTMLM", "Hidden", "attach_ar_tar", "detach", "evaluate_lm", "run_windows"]

Hidden = list[tuple[Tensor, Tensor]]


class LSTMLM(nn.Module):
    """Embedding, 1-3 LSTM layers with locked dropout between them, output dropout, decoder.

    Time-first: ``forward(x (T, B), hidden) -> (logits (T, B, V), hidden)``. The modules
    ``rnns.K`` (the last LSTM) and ``drop_out`` (its dropout) are where TAR and AR attach.
    With ``ffn > 0`` a residual ReLU block ``ffn`` (its ReLU: ``ffn.act``) follows the last
    LSTM, before ``drop_out``.

    Example:
        >>> model = LSTMLM(50, emb_size=8, hidden=16, layers=2)
        >>> logits, h = model(torch.zeros(5, 3, dtype=torch.long), model.init_hidden(3))
        >>> tuple(logits.shape), len(h)
        ((5, 3, 50), 2)
    """

    def __init__(
        self,
        vocab: int,
        emb_size: int = 256,
        hidden: int = 512,
        layers: int = 2,
        dropout: float = 0.4,
        dropout_h: float = 0.25,
        dropout_i: float = 0.4,
        tie_weights: bool = True,
        ffn: int = 0,
    ) -> None:
        super().__init__()
        self.encoder = nn.Embedding(vocab, emb_size)
        self.drop_in = LockedDropout(dropout_i)
        sizes = [emb_size] + [hidden] * (layers - 1) + [emb_size if tie_weights else hidden]
        self.sizes = sizes
        self.rnns = nn.ModuleList(nn.LSTM(sizes[i], sizes[i + 1]) for i in range(layers))
        self.drop_h = nn.ModuleList(LockedDropout(dropout_h) for _ in range(layers - 1))
        self.ffn = ReLUFFN(sizes[-1], ffn) if ffn else None
        self.drop_out = LockedDropout(dropout)
        self.decoder = nn.Linear(sizes[-1], vocab)
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        if tie_weights:
            self.decoder.weight = self.encoder.weight
        else:
            nn.init.uniform_(self.decoder.weight, -0.1, 0.1)

    @property
    def last_rnn(self) -> str:
        """The name of the last LSTM module (where TAR attaches)."""
        return f"rnns.{len(self.rnns) - 1}"

    def init_hidden(self, batch_size: int) -> Hidden:
        """Zero ``(h, c)`` per layer for ``batch_size`` streams."""
        weight = self.decoder.weight
        return [
            (weight.new_zeros(1, batch_size, n), weight.new_zeros(1, batch_size, n))
            for n in self.sizes[1:]
        ]

    def forward(self, x: Tensor, hidden: Hidden) -> tuple[Tensor, Hidden]:
        out = self.drop_in(self.encoder(x))
        new: Hidden = []
        for i, rnn in enumerate(self.rnns):
            out, state = rnn(out, hidden[i])
            new.append(state)
            if i < len(self.drop_h):
                out = self.drop_h[i](out)
        if self.ffn is not None:
            out = self.ffn(out)
        return self.decoder(self.drop_out(out)), new


def detach(hidden: Hidden) -> Hidden:
    """The hidden state cut from its history (truncated BPTT)."""
    return [(h.detach(), c.detach()) for h, c in hidden]


def attach_ar_tar(model: LSTMLM, alpha: float = 2.0, beta: float = 1.0) -> actreg.Regularizer:
    """AR on ``drop_out`` (after dropout) and TAR on the last LSTM (before dropout), via attach.

    Example:
        >>> model = LSTMLM(50, emb_size=8, hidden=16, layers=1)
        >>> reg = attach_ar_tar(model)
        >>> _ = model(torch.zeros(4, 2, dtype=torch.long), model.init_hidden(2))
        >>> _ = reg.penalty()
        >>> sorted(reg.last)
        ['drop_out', 'rnns.0']
    """
    return actreg.attach(
        model, {"drop_out": actreg.AR(alpha), model.last_rnn: actreg.TAR(beta, time_dim=0)}
    )


@torch.no_grad()
def evaluate_lm(model: LSTMLM, data: Tensor, bptt: int) -> float:
    """Mean cross-entropy per token over the ``(T, B)`` streams, hidden state carried."""
    was_training = model.training
    model.eval()
    hidden = model.init_hidden(data.size(1))
    total, count = 0.0, 0
    for x, y in bptt_batches(data, bptt):
        logits, hidden = model(x, hidden)
        total += float(
            nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum")
        )
        count += y.numel()
    model.train(was_training)
    return total / max(count, 1)


def run_windows(model: nn.Module, rows: Tensor) -> tuple[Tensor, Hidden]:
    """``model`` on ``(N, T)`` rows of tokens, each a stream from a zero hidden state: the
    ``forward`` of :class:`actreg.Reviver` for a sample of training windows.

    Example:
        >>> model = LSTMLM(50, emb_size=8, hidden=16, layers=1)
        >>> logits, _ = run_windows(model, torch.zeros(3, 5, dtype=torch.long))
        >>> tuple(logits.shape)  # time-first, as the model's forward
        (5, 3, 50)
    """
    assert isinstance(model, LSTMLM)
    return model(rows.T.contiguous(), model.init_hidden(len(rows)))
