"""``seq2seq``: an LSTM sequence autoencoder with an L1 penalty on its bottleneck code.

Usage::

    actreg data fetch austen
    actreg run seq2seq --set coef=1e-3 --set limit_sentences=6000

An encoder LSTM reads a sentence; its final hidden state goes through ``code`` (a linear
layer and a ReLU: the bottleneck) and sets the decoder LSTM's initial state; the decoder
rebuilds the sentence word by word (teacher forcing in training). The L1 penalty is
attached with :func:`actreg.attach` to ``code``; the same model is also trained without it.
Reported on the test sentences: token reconstruction accuracy with teacher forcing and
with greedy decoding from the code alone, exact sentence matches, and the code's sparsity
(zero fraction, L0, dead units) measured by an :class:`actreg.Monitor`.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_sequence

import actreg
from actreg._errors import ActregError
from actreg.lab._checks import check_fraction
from actreg.lab.data.text import EOS, Corpus, sentences
from actreg.lab.experiments._rundir import save_results
from actreg.lab.experiments._seq import SeqConfig
from actreg.lab.train import batches, seed_everything

__all__ = ["Seq2SeqConfig", "SeqAutoencoder", "run", "summary_rows"]

IGNORE = -100


@dataclass
class Seq2SeqConfig(SeqConfig):
    """The sequence autoencoder experiment (defaults: the CPU run of docs/RESULTS_SEQUENCE.md)."""

    POSITIVE: ClassVar[tuple[str, ...]] = (
        "emb_size",
        "hidden",
        "code",
        "log_every",
    )  # >= 1, besides the base class's
    vocab_size: int = 5000  # words kept (<unk> and <eos> included)
    epochs: int = 6  # passes over the training sentences (at most; see patience)
    batch_size: int = 64  # sentences per step
    clip: float = 1.0  # gradient norm clipping (0 = off)
    emb_size: int = 64  # word embedding width (shared by encoder and decoder)
    hidden: int = 128  # LSTM width of encoder and decoder
    code: int = 128  # bottleneck width (ReLU units after the encoder's final state)
    dropout: float = 0.1  # dropout on the decoder's inputs and outputs
    max_len: int = 15  # longest sentence kept, in tokens
    limit_sentences: int | None = 6000  # training sentences used (None: all)
    eval_sentences: int | None = 1000  # validation and test sentences used (None: all)
    coef: float = 1e-3  # L1 coefficient (Keras scaling: sum over code units / batch)
    log_every: int = 20  # record training loss and penalty every this many steps
    compare: bool = True  # also train the same model without the penalty

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fraction(self, "dropout")
        if isinstance(self.max_len, bool) or not isinstance(self.max_len, int) or self.max_len < 2:
            raise ActregError(f"max_len must be >= 2 tokens, got {self.max_len!r}")
        for name in ("limit_sentences", "eval_sentences"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ActregError(f"{name} must be >= 1 or none, got {value!r}")


class SeqAutoencoder(nn.Module):
    """Encoder LSTM -> ``code`` (Linear + ReLU) -> decoder LSTM initial state -> words.

    Batch-first: ``forward(x (B, L), lengths) -> logits (B, L + 1, V)`` predicting the
    sentence followed by ``<eos>``, from ``<eos>`` followed by the sentence.

    Example:
        >>> model = SeqAutoencoder(30, emb_size=4, hidden=6, code=5)
        >>> model(torch.ones(2, 3, dtype=torch.long), torch.tensor([3, 2])).shape
        torch.Size([2, 4, 30])
    """

    def __init__(
        self, vocab: int, emb_size: int = 128, hidden: int = 256, code: int = 256,
        dropout: float = 0.1, bos: int = 1,
    ) -> None:  # fmt: skip
        super().__init__()
        self.bos = bos
        self.embed = nn.Embedding(vocab, emb_size)
        self.encoder = nn.LSTM(emb_size, hidden, batch_first=True)
        self.code = nn.Sequential(nn.Linear(hidden, code), nn.ReLU())
        self.init_state = nn.Linear(code, 2 * hidden)
        self.drop = nn.Dropout(dropout)
        self.decoder = nn.LSTM(emb_size, hidden, batch_first=True)
        self.out = nn.Linear(hidden, vocab)

    def encode(self, x: Tensor, lengths: Tensor) -> Tensor:
        """The code ``(B, code)`` of padded sentences ``x`` with true ``lengths``."""
        packed = pack_padded_sequence(
            self.embed(x), lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        _, (h, _) = self.encoder(packed)
        return self.code(h[-1])

    def _state(self, z: Tensor) -> tuple[Tensor, Tensor]:
        h, c = torch.tanh(self.init_state(z)).chunk(2, dim=-1)
        return h.unsqueeze(0).contiguous(), c.unsqueeze(0).contiguous()

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        z = self.encode(x, lengths)
        bos = x.new_full((x.size(0), 1), self.bos)
        inputs = self.drop(self.embed(torch.cat([bos, x], dim=1)))
        out, _ = self.decoder(inputs, self._state(z))
        return self.out(self.drop(out))

    @torch.no_grad()
    def greedy(self, z: Tensor, steps: int) -> Tensor:
        """Decode ``steps`` words from codes ``z``, feeding back the most likely word."""
        state = self._state(z)
        word = torch.full((z.size(0), 1), self.bos, dtype=torch.long, device=z.device)
        words = []
        for _ in range(steps):
            out, state = self.decoder(self.embed(word), state)
            word = self.out(out).argmax(-1)
            words.append(word)
        return torch.cat(words, dim=1)


def pad_batch(items: list[Tensor], eos: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(inputs (B, L), lengths, targets (B, L + 1))``: targets end with ``eos``, pads ignored.

    Example:
        >>> x, n, y = pad_batch([torch.tensor([5, 6]), torch.tensor([7])], eos=1)
        >>> x.tolist(), n.tolist(), y.tolist()
        ([[5, 6], [7, 0]], [2, 1], [[5, 6, 1], [7, 1, -100]])
    """
    lengths = torch.tensor([len(t) for t in items])
    x = pad_sequence(items, batch_first=True)
    y = pad_sequence([torch.cat([t, t.new_tensor([eos])]) for t in items], batch_first=True,
                     padding_value=IGNORE)  # fmt: skip
    return x, lengths, y


@torch.no_grad()
def evaluate_ae(
    model: SeqAutoencoder, data: list[Tensor], eos: int, batch_size: int = 256
) -> dict[str, float]:
    """Loss, teacher-forced and greedy token accuracy, exact sentence matches."""
    was_training = model.training
    model.eval()
    loss = correct = greedy = exact = tokens = 0.0
    for start in range(0, len(data), batch_size):
        x, lengths, y = pad_batch(data[start : start + batch_size], eos)
        logits = model(x, lengths)
        mask = y != IGNORE
        loss += float(
            nn.functional.cross_entropy(
                logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE, reduction="sum"
            )
        )
        correct += float(((logits.argmax(-1) == y) & mask).sum())
        hits = (model.greedy(model.encode(x, lengths), y.size(1)) == y) & mask
        greedy += float(hits.sum())
        exact += float((hits.sum(1) == mask.sum(1)).sum())
        tokens += float(mask.sum())
    model.train(was_training)
    return {
        "loss": loss / max(tokens, 1.0),
        "token_accuracy": correct / max(tokens, 1.0),
        "greedy_accuracy": greedy / max(tokens, 1.0),
        "exact_match": exact / max(len(data), 1),
    }


def _measure(model: SeqAutoencoder, data: list[Tensor], eos: int) -> dict[str, Any]:
    """:func:`evaluate_ae` plus the code's sparsity from a Monitor on ``code``."""
    with actreg.Monitor(model, "code") as monitor:
        metrics: dict[str, Any] = evaluate_ae(model, data, eos)
        stats = monitor.compute()["code"]
    metrics["code"] = {k: v for k, v in stats.items() if k != "firing_rate"}
    return metrics


def train_variant(
    cfg: Seq2SeqConfig, data: dict[str, list[Tensor]], vocab: int, eos: int,
    penalized: bool, run_dir: Path, name: str,
) -> dict[str, Any]:  # fmt: skip
    """Train one autoencoder (with the L1 code penalty when ``penalized``)."""
    from tqdm.auto import tqdm

    seed_everything(cfg.seed)
    model = SeqAutoencoder(vocab, cfg.emb_size, cfg.hidden, cfg.code, cfg.dropout, bos=eos)
    cfg.set_threads(model, cfg.batch_size * (cfg.max_len + 1))
    reg = actreg.attach(model, {"code": actreg.L1(cfg.coef)}) if penalized else None
    opt = cfg.optimizer_for(model)
    gen = torch.Generator().manual_seed(cfg.seed)
    train = data["train"]
    history: list[dict[str, Any]] = []
    trace: list[dict[str, float]] = []
    best: tuple[float, int, dict[str, Tensor]] | None = None
    step, stale, start = 0, 0, time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        sums = torch.zeros(3)  # task loss, penalty, steps
        window = torch.zeros(3)
        bar = tqdm(batches(len(train), cfg.batch_size, gen), desc=f"{name} {epoch}/{cfg.epochs}",
                   total=math.ceil(len(train) / cfg.batch_size), disable=not cfg.progress,
                   leave=False)  # fmt: skip
        for idx in bar:
            x, lengths, y = pad_batch([train[i] for i in idx.tolist()], eos)
            logits = model(x, lengths)
            task = nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(),
                                               ignore_index=IGNORE)  # fmt: skip
            penalty = reg.penalty() if reg is not None else torch.zeros(())
            opt.zero_grad(set_to_none=True)
            (task + penalty).backward()
            if cfg.clip:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            opt.step()
            step += 1
            values = torch.stack([task.detach(), penalty.detach(), torch.ones(())])
            sums += values
            window += values
            if step % cfg.log_every == 0:
                trace.append({"step": step, "train_loss": float(window[0] / window[2]),
                              "train_penalty": float(window[1] / window[2])})  # fmt: skip
                window.zero_()
        val = _measure(model, data["valid"], eos)
        history.append({
            "epoch": epoch, "train_loss": float(sums[0] / sums[2]),
            "train_penalty": float(sums[1] / sums[2]),
            **{f"val_{k}": v for k, v in val.items()}, "seconds": time.perf_counter() - start,
        })  # fmt: skip
        if best is None or val["loss"] < best[0]:
            best, stale = (val["loss"], epoch, copy.deepcopy(model.state_dict())), 0
            torch.save({"model": best[2], "epoch": epoch}, run_dir / f"{name}.pt")
        else:
            stale += 1
            if cfg.patience and stale >= cfg.patience:
                break
    assert best is not None
    if reg is not None:
        reg.remove()
    model.load_state_dict(best[2])
    return {
        "penalized": penalized,
        "history": history,
        "trace": trace,
        "best_epoch": best[1],
        "test": _measure(model, data["test"], eos),
        "steps": step,
        "seconds": time.perf_counter() - start,
    }


def _load(cfg: Seq2SeqConfig, corpus: Corpus) -> dict[str, list[Tensor]]:
    limits = {"train": cfg.limit_sentences, "valid": cfg.eval_sentences,
              "test": cfg.eval_sentences}  # fmt: skip
    data = {}
    for split, limit in limits.items():
        data[split] = sentences(split, corpus, max_len=cfg.max_len)[:limit]
        if not data[split]:
            raise ActregError(
                f"no {split} sentence of 1..{cfg.max_len} tokens in {corpus.info['folder']}; "
                "raise max_len or check the file"
            )
    return data


def run(cfg: Seq2SeqConfig) -> dict[str, Any]:
    """Run the experiment; writes ``results.json`` (and the best weights) into the run folder."""
    corpus = cfg.load()
    data = _load(cfg, corpus)
    run_dir = cfg.run_dir("seq2seq")
    eos = corpus.stoi[EOS]
    variants = [("l1", True)] + ([("none", False)] if cfg.compare else [])
    results: dict[str, Any] = {"variants": {}}
    for name, penalized in variants:
        results["variants"][name] = train_variant(
            cfg, data, len(corpus.vocab), eos, penalized, run_dir, name
        )
    results["sentences"] = {split: len(items) for split, items in data.items()}
    results["data"] = corpus.info
    save_results(run_dir, "seq2seq", cfg, results)
    return results


def summary_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per variant: test reconstruction and code sparsity."""
    rows = []
    for name, out in results["variants"].items():
        test = out["test"]
        rows.append(
            {
                "variant": name,
                "token_accuracy": test["token_accuracy"],
                "greedy_accuracy": test["greedy_accuracy"],
                "exact_match": test["exact_match"],
                "code_zero_fraction": test["code"]["zero_fraction"],
                "code_l0": test["code"]["l0"],
                "dead_fraction": test["code"]["dead_fraction"],
                "minutes": out["seconds"] / 60,
            }
        )
    return rows
