"""``lstm-lm``: a word-level LSTM language model with and without AR/TAR (Merity et al. 2017).

Usage::

    actreg data fetch austen
    actreg run lstm-lm --set layers=1 --set limit_tokens=120000 --set epochs=10
    actreg run lstm-lm --set ffn=1024 --set penalty=l1 --set target_sparsity=0.9  # ReLU variant

Trains the same model twice on the same data and budget: once with AR (``alpha *
mean(dropped_output**2)`` on the last layer's output after its dropout) and TAR (``beta *
mean((raw_output[t+1] - raw_output[t])**2)`` on the last layer's output before dropout,
time-first) added to the loss, as awd-lstm-lm does, and once without. The penalties are
attached with :func:`actreg.attach` to the modules ``drop_out`` (AR) and the last
``rnns.K`` LSTM (TAR, first tensor of its ``(output, (h, c))``). In the plain variant the
same penalties are attached and measured (``reg.last``) but not added to the loss.
Perplexities are of the task loss only. Truncated BPTT carries the hidden state across
chunks, detached; gradients are clipped; the learning rate is divided by ``lr_decay``
whenever validation perplexity does not improve (in target mode: while the ReLU block's
validation sparsity is off the target and not getting closer, or on it and not
improving; the weights kept are the best on the target, see
:mod:`~actreg.lab.experiments._targets`).

The ReLU variant (``ffn=N``, ``penalty=l1``): a residual ReLU feed-forward block
(:class:`~actreg.lab.experiments._seq.ReLUFFN`, ``N`` units) between the last LSTM and its
output dropout, and an L1 penalty (mean over the block's values) on its ReLU, ``ffn.act``,
instead of AR/TAR; ``target_sparsity`` or ``target_l0`` wrap it in
:class:`actreg.TargetSparsity` (units: the last axis of the time-first ``(T, B, N)``
activations; ``coef`` is then the starting coefficient). AR/TAR are still measured, not
added. The zero share, dead share and active units of ``ffn.act`` are measured on the
validation split every epoch and on the test split at the end. In target mode the block's
dead units are revived as in the vision experiments (``revive_rounds``, by default 5 over
the first 70% of the planned steps, :class:`actreg.Reviver` with ``init="fresh"``); a unit
is dead when it is zero on a fixed sample of :data:`REVIVE_TOKENS` training tokens, cut into
``bptt``-token windows that each start from a zero hidden state. After each validation pass
the controller's set point is moved by the block's validation sparsity
(:meth:`actreg.TargetSparsity.calibrate`; ``calibrate=false``: not): the controller steers
the training forwards, and the block settled sparser on held-out text than it was asked
for (docs/TARGET.md).

Design: a residual block rather than a ReLU bottleneck before the decoder. A bottleneck
changes the decoder's input width (no weight tying) and makes every token's prediction
pass through the sparse code, so dead units cost perplexity directly; the residual block
keeps the tied decoder and is where activation sparsity is studied in language models
(the FFN of ProSparse). Revival runs the model on windows of training tokens through the
Reviver's ``forward`` (:func:`~actreg.lab.experiments._lstm_model.run_windows`) rather than
on the training loop's own chunks with the carried hidden state: the sample stays a tensor
of examples, so the library's batching and per-example choices apply unchanged, and a zero
starting state only adds the first positions of a stream to what a unit is measured on.
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

import actreg
from actreg._errors import ActregError
from actreg.lab._checks import check_fraction
from actreg.lab.data.text import Corpus, batchify, bptt_batches
from actreg.lab.experiments._common import layer_penalties, make_reviver
from actreg.lab.experiments._lstm_model import (
    LSTMLM,
    attach_ar_tar,
    detach,
    evaluate_lm,
    run_windows,
)
from actreg.lab.experiments._rundir import save_results
from actreg.lab.experiments._seq import SeqConfig, check_relu_block, monitored
from actreg.lab.experiments._targets import penalized_label, target_miss
from actreg.lab.train import seed_everything

__all__ = [
    "LSTMLM",
    "LSTMLMConfig",
    "attach_ar_tar",
    "detach",
    "evaluate_lm",
    "run",
    "summary_rows",
]

FFN_ACT = "ffn.act"  # the ReLU of the feed-forward block: where the sparse penalty goes
REVIVE_TOKENS = 20_000  # training tokens a ReLU-block unit must be zero on to count as dead


@dataclass
class LSTMLMConfig(SeqConfig):
    """The LSTM language model experiment (defaults: a full run to early stopping on a CPU).

    The measured runs of docs/RESULTS_SEQUENCE.md use a smaller budget (see the commands).
    """

    POSITIVE: ClassVar[tuple[str, ...]] = (
        "emb_size",
        "hidden",
        "eval_batch_size",
        "log_every",
    )  # >= 1, besides the base class's
    layers: int = 2  # LSTM layers (1-3)
    emb_size: int = 256  # embedding width (= the last LSTM layer's width when tied)
    hidden: int = 512  # width of the LSTM layers below the last
    tie_weights: bool = True  # decoder weight = embedding weight (last layer has emb_size)
    dropout: float = 0.4  # locked dropout on the last layer's output (AR is measured after it)
    dropout_h: float = 0.25  # locked dropout between LSTM layers
    dropout_i: float = 0.4  # locked dropout on the embeddings
    bptt: int = 35  # truncated BPTT length (steps per chunk)
    eval_batch_size: int = 10  # streams for validation and test (as awd-lstm-lm)
    alpha: float = 2.0  # AR coefficient
    beta: float = 1.0  # TAR coefficient
    epochs: int = 40  # at most; training stops earlier when validation stalls (patience)
    patience: int = 3  # early stopping: epochs without validation improvement (0 = off)
    lr_decay: float = 4.0  # divide the learning rate by this when validation does not improve
    limit_tokens: int | None = None  # train on the first N training tokens only (None: all)
    log_every: int = 100  # record training loss and AR/TAR every this many chunks
    compare: bool = True  # also train the same model without AR/TAR
    ffn: int = 0  # units of a residual ReLU block after the last LSTM (0 = none)
    penalty: str = "ar_tar"  # ar_tar: AR + TAR | l1: L1 on the ReLU block (needs ffn > 0)
    coef: float = 0.01  # the l1 coefficient (mean over values; the start in target mode)
    target_sparsity: float | None = None  # ask for this zero fraction in the ReLU block
    target_l0: float | None = None  # or for this many active ReLU units per token
    revive_rounds: int | None = None  # ReLU-block revivals over 70% of training (None: 5 if target)
    revive_floor: float = 0.0  # target mode: also revive units firing < this x the wanted rate
    calibrate: bool = True  # target mode: move the set point by each validation's sparsity

    def __post_init__(self) -> None:
        super().__post_init__()
        check_relu_block(self, "ar_tar")
        if self.revive_rounds and self.penalty == "ar_tar":
            raise ActregError(
                "revive_rounds revives the ReLU block's units, which penalty=ar_tar leaves "
                "out: set ffn=N and penalty=l1, or drop revive_rounds"
            )
        if not 1 <= self.layers <= 3:
            raise ActregError(f"layers must be 1, 2 or 3, got {self.layers!r}")
        for name in ("dropout", "dropout_h", "dropout_i", "revive_floor"):
            check_fraction(self, name)
        if isinstance(self.bptt, bool) or not isinstance(self.bptt, int) or self.bptt < 2:
            raise ActregError(
                f"bptt must be >= 2: TAR differences consecutive steps, got {self.bptt!r}"
            )
        if not self.lr_decay >= 1.0:
            raise ActregError(f"lr_decay must be >= 1 (1 = no decay), got {self.lr_decay!r}")
        if self.limit_tokens is not None and self.limit_tokens < 3 * self.batch_size:
            raise ActregError(
                f"limit_tokens={self.limit_tokens} is too small for batch_size={self.batch_size}; "
                f"use at least {3 * self.batch_size} (or none for the whole training split)"
            )


def _ppl(loss: float) -> float:
    return math.exp(min(loss, 50.0))


def train_variant(
    cfg: LSTMLMConfig, corpus: Corpus, penalized: bool, run_dir: Path, name: str
) -> dict[str, Any]:
    """Train one model; its penalty (AR/TAR, or the ReLU block's) joins the loss only when
    ``penalized``; AR/TAR are always measured."""
    from tqdm.auto import tqdm

    seed_everything(cfg.seed)
    ids = corpus.train[: cfg.limit_tokens]
    if len(ids) < 3 * cfg.batch_size:
        raise ActregError(
            f"{len(ids)} training tokens are too few for batch_size={cfg.batch_size}: "
            "each stream needs at least 3 tokens; lower batch_size"
        )
    train = batchify(ids, cfg.batch_size)
    valid = batchify(corpus.valid, min(cfg.eval_batch_size, len(corpus.valid)))
    test = batchify(corpus.test, min(cfg.eval_batch_size, len(corpus.test)))
    model = LSTMLM(
        len(corpus.vocab), cfg.emb_size, cfg.hidden, cfg.layers,
        cfg.dropout, cfg.dropout_h, cfg.dropout_i, cfg.tie_weights, cfg.ffn,
    )  # fmt: skip
    cfg.set_threads(model, cfg.batch_size * cfg.bptt)
    reg = attach_ar_tar(model, cfg.alpha, cfg.beta)
    watch = [FFN_ACT] if model.ffn is not None else []  # measured on validation and test
    sparse = None  # the ReLU block's penalty, attached only where it joins the loss
    if penalized and cfg.penalty != "ar_tar":
        spec = layer_penalties([FFN_ACT], lambda _: actreg.L1(cfg.coef, "mean"), cfg)
        sparse = actreg.attach(model, spec)
    ar_name, tar_name = "drop_out", model.last_rnn
    opt = cfg.optimizer_for(model)
    lr = cfg.lr
    chunks = math.ceil((train.size(0) - 1) / cfg.bptt)
    reviver = None if sparse is None else _reviver(cfg, model, ids, spec, chunks * cfg.epochs, opt)
    history: list[dict[str, Any]] = []
    trace: list[dict[str, float]] = []
    best: tuple[tuple[float, float], int, dict[str, Tensor]] | None = None
    step, stale, start = 0, 0, time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        hidden = model.init_hidden(cfg.batch_size)
        sums = {"task": 0.0, "ar": 0.0, "tar": 0.0, "tokens": 0.0, "chunks": 0.0}
        window = dict.fromkeys(sums, 0.0)
        bar = tqdm(
            bptt_batches(train, cfg.bptt), total=chunks, desc=f"{name} {epoch}/{cfg.epochs}",
            disable=not cfg.progress, leave=False,
        )  # fmt: skip
        for x, y in bar:
            if x.size(0) < 2:  # a one-step tail: TAR needs two steps
                continue
            hidden = detach(hidden)
            logits, hidden = model(x, hidden)
            task = nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
            penalty = reg.penalty()
            if sparse is not None:
                loss = task + sparse.penalty()
            else:
                loss = task + penalty if penalized else task
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            opt.step()
            step += 1
            if reviver is not None:
                reviver(step)
            last = reg.last
            values = {"task": float(task.detach()) * y.numel(), "ar": last[ar_name],
                      "tar": last[tar_name], "tokens": y.numel(), "chunks": 1}  # fmt: skip
            for acc in (sums, window):
                for key, value in values.items():
                    acc[key] += value
            if step % cfg.log_every == 0:
                trace.append(_point(step, epoch, window))
                bar.set_postfix(ppl=f"{trace[-1]['train_ppl']:.1f}", ar=f"{trace[-1]['ar']:.3f}")
                window = dict.fromkeys(sums, 0.0)
        val_loss, val_ffn = monitored(model, watch, lambda: evaluate_lm(model, valid, cfg.bptt))
        row = {**_point(step, epoch, sums), "val_ppl": _ppl(val_loss), "lr": lr,
               "seconds": time.perf_counter() - start}  # fmt: skip
        row.update({f"val_ffn_{k}": v for k, v in val_ffn.get(FFN_ACT, {}).items()})
        if sparse is not None:
            row.update(_calibrate(cfg, spec[FFN_ACT], val_ffn.get(FFN_ACT, {})))
        history.append(row)
        # in target mode an epoch off the target ranks by its distance to it, behind any
        # on it: the weights kept are at the target, and reaching it counts as progress
        miss = target_miss(cfg, val_ffn.get(FFN_ACT)) if sparse is not None else 0.0
        rank = (miss, val_loss)
        if best is None or rank < best[0]:
            best = (rank, epoch, copy.deepcopy(model.state_dict()))
            stale = 0
            torch.save({"model": best[2], "epoch": epoch}, run_dir / f"{name}.pt")
        else:
            stale += 1
            lr /= cfg.lr_decay
            for group in opt.param_groups:
                group["lr"] = lr
            if cfg.patience and stale >= cfg.patience:
                break
    assert best is not None
    reg.remove()
    if sparse is not None:
        sparse.remove()
    model.load_state_dict(best[2])
    test_loss, test_ffn = monitored(model, watch, lambda: evaluate_lm(model, test, cfg.bptt))
    return {
        "penalized": penalized,
        "history": history,
        "trace": trace,
        "best_epoch": best[1],
        "val_ppl": _ppl(best[0][1]),
        "test_ppl": _ppl(test_loss),
        "ffn": test_ffn.get(FFN_ACT, {}),  # the ReLU block's sparsity (test split)
        "steps": step,
        **({"revived_units": reviver.revived} if reviver is not None else {}),
        "parameters": sum(p.numel() for p in model.parameters()),
        "seconds": time.perf_counter() - start,
    }


def _reviver(
    cfg: LSTMLMConfig, model: LSTMLM, ids: Tensor, spec: Any, steps: int, opt: Any
) -> actreg.Reviver | None:
    """The ReLU block's reviver (:func:`~actreg.lab.experiments._common.make_reviver`, the
    vision experiments' defaults): ``bptt``-token windows of the training tokens, each run
    from a zero hidden state, :data:`REVIVE_TOKENS` tokens in all, about 2,000 per forward."""
    rows = ids[: len(ids) // cfg.bptt * cfg.bptt].view(-1, cfg.bptt)
    reviver = make_reviver(
        model, spec, rows, cfg, steps=steps, examples=max(1, REVIVE_TOKENS // cfg.bptt),
        forward=run_windows, batch_size=max(1, 2000 // cfg.bptt),
    )  # fmt: skip
    if reviver is not None:
        reviver.optimizer = opt
    return reviver


def _calibrate(cfg: LSTMLMConfig, penalty: Any, stats: dict[str, float]) -> dict[str, float]:
    """The ReLU block's coefficient and, in target mode, its training-time sparsity (the
    controller's running measure) and set-point shift after :meth:`actreg.TargetSparsity.
    calibrate` with the validation ``stats`` (unless ``cfg.calibrate`` is off)."""
    out = {"ffn_coef": float(penalty.coef)}
    if isinstance(penalty, actreg.TargetSparsity):
        out["ffn_train_measured"] = penalty.measured
        if cfg.calibrate and stats:
            penalty.calibrate(stats["l0" if penalty.measure == "l0" else "zero_fraction"])
        out["ffn_shift"] = penalty.shift
    return out


def _point(step: int, epoch: int, acc: dict[str, float]) -> dict[str, Any]:
    n = max(acc["chunks"], 1.0)
    return {
        "step": step,
        "epoch": epoch,
        "train_ppl": _ppl(acc["task"] / max(acc["tokens"], 1.0)),
        "ar": acc["ar"] / n,
        "tar": acc["tar"] / n,
    }


def run(cfg: LSTMLMConfig) -> dict[str, Any]:
    """Run the experiment; writes ``results.json`` (and the best weights) into the run folder."""
    corpus = cfg.load()
    run_dir = cfg.run_dir("lstm-lm")
    label = "ar_tar" if cfg.penalty == "ar_tar" else penalized_label(cfg)
    variants = [(label, True)] + ([("none", False)] if cfg.compare else [])
    results: dict[str, Any] = {"variants": {}}
    for name, penalized in variants:
        results["variants"][name] = train_variant(cfg, corpus, penalized, run_dir, name)
    if cfg.compare:
        with_, without = (results["variants"][k] for k in (label, "none"))
        results["val_ppl_gain"] = 1.0 - with_["val_ppl"] / without["val_ppl"]
        results["test_ppl_gain"] = 1.0 - with_["test_ppl"] / without["test_ppl"]
    results["data"] = corpus.info
    save_results(run_dir, "lstm-lm", cfg, results)
    return results


def summary_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per variant: best-epoch validation and test perplexity, final AR/TAR values,
    and with a ReLU block its test zero share, dead share and active units."""
    rows = []
    for name, out in results["variants"].items():
        final = out["history"][-1]
        row = {
            "variant": name,
            "val_ppl": out["val_ppl"],
            "test_ppl": out["test_ppl"],
            "best_epoch": out["best_epoch"],
            "epochs": len(out["history"]),
            "ar_last_epoch": final["ar"],
            "tar_last_epoch": final["tar"],
        }
        row.update({f"ffn_{k}": v for k, v in out.get("ffn", {}).items()})
        rows.append({**row, "minutes": out["seconds"] / 60})
    return rows
