"""``transformer-lm``: sparse FFN activations in a small decoder-only transformer.

Usage::

    pip install "actreg[experiments,transformers]"
    actreg data fetch austen
    actreg run transformer-lm --set max_steps=1500 --set threads=1

A word-level GPT-2-style language model (4 layers, width 256, 4 heads, context 128 by
default) on the Jane Austen corpus or any folder with ``train.txt``, ``valid.txt`` and
``test.txt``. Variants (``variants=``): ``gelu`` (the dense baseline), ``relu``,
``relu-l1`` (L1 on the FFN activations ``transformer.h.*.mlp.act`` with a progressive
coefficient, as ProSparse: an :class:`actreg.Scheduled` factor rising as a quarter sine
from 0 to 1 over the first ``l1_ramp`` share of the steps), ``relu-target``
(:class:`actreg.TargetSparsity` at ``target_sparsity``), and ``threshold``: training-free
per-layer magnitude thresholds (:func:`sparse.magnitude_thresholds`, TEAL/CATS)
calibrated on training batches to the zero fraction ``relu-target`` reached in each layer
(else ``threshold_sparsity`` or ``target_sparsity``), applied to the trained ``gelu`` and
``relu`` models. Each model is reported with validation and test perplexity and, per FFN
layer, the zero fraction and dead units on the validation split (:class:`actreg.Monitor`).
Each trained variant's weights, activation and vocabulary go to ``VARIANT/model.pt``
(plain data: loads with ``weights_only=True``), which ``actreg speedup`` rebuilds.

Design:

* The model (Hugging Face's GPT-2 built from a config), its windows of tokens and its
  evaluation are in :mod:`~actreg.lab.experiments._transformer_model`, with the reasons.
* The model at the end of training is evaluated (linear warm-up, cosine decay to the end),
  not the best validation epoch: a penalized model gets sparser as it trains, so its best
  validation epoch can be a less sparse one.
* Every default that sets a length of training is a share of the steps (warm-up, L1 ramp),
  and the L1 penalty is a mean over the activation's elements, so the defaults carry over
  to other corpora, widths and context lengths; ``threads=0`` picks the thread count from
  the step's FLOPs (:func:`actreg.lab.train.choose_threads`).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, ClassVar

import torch
from torch import nn

import actreg
from actreg import sparse
from actreg._errors import ActregError
from actreg.lab._checkpoint import atomic_save
from actreg.lab._checks import check_fraction
from actreg.lab.data.text import Corpus
from actreg.lab.experiments._common import check_targets, layer_penalties
from actreg.lab.experiments._contract import layer_means
from actreg.lab.experiments._rundir import save_results
from actreg.lab.experiments._seq import SeqConfig
from actreg.lab.experiments._transformer_model import (
    FFN,
    build_model,
    evaluate_lm,
    loss,
    windows,
)
from actreg.lab.train import choose_threads, lr_factor, seed_everything

__all__ = [
    "FFN",
    "VARIANTS",
    "WEIGHTS",
    "TransformerLMConfig",
    "build_model",
    "evaluate_lm",
    "run",
    "search_metrics",
    "summary_rows",
    "windows",
]

VARIANTS = ("gelu", "relu", "relu-l1", "relu-target", "threshold")
WEIGHTS = "model.pt"
"""In ``RUN_DIR/VARIANT/``: ``{"model": state_dict, "activation", "vocab": id -> word}``."""


@dataclass
class TransformerLMConfig(SeqConfig):
    """The transformer language model experiment (defaults: 2 epochs on a CPU)."""

    layers: int = 4  # transformer blocks
    width: int = 256  # model width (n_embd); the FFN has 4 x width units
    heads: int = 4  # attention heads
    context: int = 128  # tokens per training window and evaluation window
    dropout: float = 0.1  # embedding, attention and residual dropout
    epochs: int = 2  # passes over the training split (see max_steps)
    max_steps: int | None = None  # stop after this many steps (None: all epochs)
    batch_size: int = 16  # windows per step
    eval_batch_size: int = 16  # windows per evaluation step
    lr: float = 1e-3  # peak learning rate (Adam), linear warm-up then cosine decay
    warmup: float = 0.05  # share of the steps with a linear learning-rate warm-up
    clip: float = 1.0  # gradient norm clipping (0 = off)
    l1: float = 0.1  # L1 coefficient (mean over the FFN activations); target mode's start
    l1_ramp: float = 0.5  # relu-l1: share of the steps over which the L1 factor rises 0 -> 1
    target_sparsity: float | None = 0.9  # relu-target: the zero fraction asked per FFN layer
    target_l0: float | None = None  # or the active units per token and layer
    threshold_sparsity: float | None = None  # threshold: zero fraction (None: relu-target's)
    calib_batches: int = 8  # threshold: training batches for the calibration
    variants: tuple[str, ...] = VARIANTS  # which of gelu, relu, relu-l1, relu-target, threshold
    log_every: int = 50  # record training loss and penalty every this many steps
    threads: int = 0  # torch threads (0 = chosen from the step's FLOPs)

    POSITIVE: ClassVar[tuple[str, ...]] = (
        "layers", "width", "heads", "eval_batch_size", "calib_batches", "log_every", "max_steps",
    )  # fmt: skip

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.context, bool) or not isinstance(self.context, int) or self.context < 2:
            raise ActregError(f"context must be an int >= 2, got {self.context!r}")
        if self.width % self.heads:
            raise ActregError(f"width ({self.width}) must be a multiple of heads ({self.heads})")
        check_fraction(self, "dropout")
        check_fraction(self, "warmup")
        if not (0 < self.l1_ramp <= 1):
            raise ActregError(f"l1_ramp is a share of the steps in (0, 1], got {self.l1_ramp!r}")
        if not (self.l1 > 0 and math.isfinite(self.l1)):
            raise ActregError(f"l1 must be a positive number, got {self.l1!r}")
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown or not self.variants:
            raise ActregError(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
        check_targets(self.target_sparsity, self.target_l0)
        if "relu-target" in self.variants and self.target_sparsity is self.target_l0 is None:
            raise ActregError("relu-target needs target_sparsity (e.g. 0.9) or target_l0")
        if self.threshold_sparsity is not None and not 0 <= self.threshold_sparsity < 1:
            raise ActregError(
                f"threshold_sparsity is a zero fraction in [0, 1), got {self.threshold_sparsity!r}"
            )
        if "threshold" in self.variants and not {"gelu", "relu"} & set(self.variants):
            raise ActregError("the threshold variant thresholds gelu or relu: add one of them")
        basis = ("relu-target" in self.variants, self.threshold_sparsity, self.target_sparsity)
        if "threshold" in self.variants and basis == (False, None, None):
            raise ActregError("threshold needs relu-target, threshold_sparsity or target_sparsity")


def _penalties(cfg: TransformerLMConfig, variant: str, total: int) -> dict[str, actreg.Penalty]:
    names = [f"transformer.h.{i}.mlp.act" for i in range(cfg.layers)]
    if variant == "relu-target":
        targets = SimpleNamespace(target_sparsity=cfg.target_sparsity, target_l0=cfg.target_l0)
        return layer_penalties(names, lambda _: actreg.L1(cfg.l1, reduction="mean"), targets)
    ramp = max(1.0, cfg.l1_ramp * total)

    def rise(step: int) -> float:  # ProSparse's progressive factor: a quarter sine, 0 -> 1
        return math.sin(0.5 * math.pi * min(1.0, step / ramp))

    return {n: actreg.Scheduled(actreg.L1(cfg.l1, reduction="mean"), rise) for n in names}


def train_variant(
    cfg: TransformerLMConfig, corpus: Corpus, variant: str
) -> tuple[nn.Module, dict[str, Any]]:
    """Train one variant; returns the model and its results."""
    from tqdm.auto import tqdm

    seed_everything(cfg.seed)
    model = build_model(cfg, len(corpus.vocab), "gelu" if variant == "gelu" else "relu")
    per_epoch = len(windows(corpus.train, cfg.context)) // cfg.batch_size
    if per_epoch < 1:
        raise ActregError(
            f"the training split makes fewer than batch_size={cfg.batch_size} windows of "
            f"context={cfg.context}; lower batch_size or context"
        )
    total = per_epoch * cfg.epochs if cfg.max_steps is None else cfg.max_steps
    total = min(total, per_epoch * cfg.epochs)
    if cfg.threads == 0:
        torch.set_num_threads(choose_threads(6.0 * _params(model) * cfg.batch_size * cfg.context))
    spec = _penalties(cfg, variant, total) if variant in ("relu-l1", "relu-target") else None
    reg = actreg.attach(model, spec) if spec else None
    valid = windows(corpus.valid, cfg.context)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    warm = max(1, round(cfg.warmup * total))
    gen = torch.Generator().manual_seed(cfg.seed)
    history: list[dict[str, Any]] = []
    trace: list[dict[str, float]] = []
    window = {"task": 0.0, "penalty": 0.0, "n": 0}
    step, start = 0, time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        offset = int(torch.randint(cfg.context, (1,), generator=gen))
        data = windows(corpus.train, cfg.context, offset if epoch > 1 else 0)
        order = torch.randperm(len(data), generator=gen)
        steps = min(per_epoch, total - step)
        bar = tqdm(range(steps), desc=f"{variant} {epoch}/{cfg.epochs}",
                   disable=not cfg.progress, leave=False)  # fmt: skip
        for i in bar:
            for group in opt.param_groups:
                group["lr"] = cfg.lr * lr_factor(step, total, warm)
            task = loss(model, data[order[i * cfg.batch_size : (i + 1) * cfg.batch_size]])
            penalty = reg.penalty() if reg is not None else torch.zeros(())
            opt.zero_grad(set_to_none=True)
            (task + penalty).backward()
            if cfg.clip:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            opt.step()
            step += 1
            window["task"] += float(task.detach())
            window["penalty"] += float(penalty.detach())
            window["n"] += 1
            if step % cfg.log_every == 0:
                n = window["n"]
                trace.append({"step": step, "train_ppl": math.exp(window["task"] / n),
                              "penalty": window["penalty"] / n})  # fmt: skip
                bar.set_postfix(ppl=f"{trace[-1]['train_ppl']:.1f}")
                window = {"task": 0.0, "penalty": 0.0, "n": 0}
        val = evaluate_lm(model, valid, cfg.eval_batch_size)
        history.append({"epoch": epoch, "step": step, "val_ppl": val["ppl"],
                        "val_zero_fraction": val["zero_fraction"],
                        "seconds": time.perf_counter() - start})  # fmt: skip
        if step >= total:
            break
    coefs = {  # the coefficients in effect at the end
        name: p.coef * (p.factor() if isinstance(p, actreg.Scheduled) else 1.0)
        for name, p in (spec or {}).items()
    }
    if reg is not None:
        reg.remove()
    test = evaluate_lm(model, windows(corpus.test, cfg.context), cfg.eval_batch_size)
    out = {"history": history, "trace": trace, "val_ppl": val["ppl"], "test_ppl": test["ppl"],
           "layers": val["layers"], "zero_fraction": val["zero_fraction"],
           "dead_fraction": val["dead_fraction"], "coefs": coefs, "steps": step,
           "tokens": step * cfg.batch_size * cfg.context, "parameters": _params(model),
           "seconds": time.perf_counter() - start}  # fmt: skip
    return model, out


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def threshold_variant(
    cfg: TransformerLMConfig, corpus: Corpus, model: nn.Module, sparsity: dict[str, float]
) -> dict[str, Any]:
    """Calibrate per-layer magnitude thresholds on training batches to ``sparsity`` and
    evaluate ``model`` with them applied."""
    start = time.perf_counter()
    data = windows(corpus.train, cfg.context)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(cfg.seed + 1))
    batches = [
        data[order[i * cfg.batch_size : (i + 1) * cfg.batch_size], :-1]
        for i in range(min(cfg.calib_batches, math.ceil(len(data) / cfg.batch_size)))
    ]
    thresholds = sparse.magnitude_thresholds(model, FFN, batches, sparsity)
    with sparse.apply_thresholds(model, thresholds):  # before evaluate_lm's Monitor
        val = evaluate_lm(model, windows(corpus.valid, cfg.context), cfg.eval_batch_size)
        test = evaluate_lm(model, windows(corpus.test, cfg.context), cfg.eval_batch_size)
    return {"calibrated_to": sparsity, "thresholds": thresholds, "val_ppl": val["ppl"],
            "test_ppl": test["ppl"], "layers": val["layers"],
            "zero_fraction": val["zero_fraction"], "dead_fraction": val["dead_fraction"],
            "seconds": time.perf_counter() - start}  # fmt: skip


def _threshold_sparsity(cfg: TransformerLMConfig, variants: dict[str, Any]) -> dict[str, float]:
    names = [f"transformer.h.{i}.mlp.act" for i in range(cfg.layers)]
    if cfg.threshold_sparsity is not None:
        return dict.fromkeys(names, cfg.threshold_sparsity)
    if "relu-target" in variants:
        layers = variants["relu-target"]["layers"]
        return {n: min(layers[n]["zero_fraction"], 0.999) for n in names}
    return dict.fromkeys(names, float(cfg.target_sparsity or 0.0))


def goals(variants: dict[str, Any]) -> dict[str, Any]:
    """The issue's goals for each trained sparse variant: >= 90% FFN zeros, validation
    perplexity at most 2% above dense ReLU's, and below every thresholded model's."""
    out: dict[str, Any] = {}
    if "relu" not in variants:
        return out
    base = variants["relu"]["val_ppl"]
    for name in (n for n in ("relu-l1", "relu-target") if n in variants):
        v = variants[name]
        vs_relu = v["val_ppl"] / base - 1
        row: dict[str, Any] = {"zero_fraction": v["zero_fraction"], "zeros_met":
                               v["zero_fraction"] >= 0.9, "val_ppl_vs_relu": vs_relu,
                               "ppl_met": vs_relu <= 0.02}  # fmt: skip
        for other in (k for k in variants if k.endswith("+threshold")):
            row[f"beats_{other}"] = v["val_ppl"] < variants[other]["val_ppl"]
        out[name] = row
    return out


def run(cfg: TransformerLMConfig) -> dict[str, Any]:
    """Train the variants; writes ``results.json`` and the sparsity-perplexity plot."""
    corpus = cfg.load()
    build_model(cfg, len(corpus.vocab), "relu")  # fails early without transformers
    run_dir = cfg.run_dir("transformer-lm")
    results: dict[str, Any] = {"variants": {}}
    models: dict[str, nn.Module] = {}
    for variant in (v for v in cfg.variants if v != "threshold"):
        models[variant], results["variants"][variant] = train_variant(cfg, corpus, variant)
        (run_dir / variant).mkdir(exist_ok=True)  # for `actreg speedup`: plain data only
        atomic_save({"model": models[variant].state_dict(), "vocab": corpus.vocab,
                     "activation": "gelu" if variant == "gelu" else "relu"},
                    run_dir / variant / WEIGHTS)  # fmt: skip
    if "threshold" in cfg.variants:
        sparsity = _threshold_sparsity(cfg, results["variants"])
        for base in ("gelu", "relu"):
            if base in models:
                out = threshold_variant(cfg, corpus, models[base], sparsity)
                results["variants"][f"{base}+threshold"] = out
    results["goals"] = goals(results["variants"])
    results["data"] = corpus.info
    from actreg.lab import plots

    points = {k: (v["zero_fraction"], v["val_ppl"]) for k, v in results["variants"].items()}
    path = plots.sparsity_scatter(points, run_dir / "sparsity_perplexity.png",
                                  title="FFN zero fraction and validation perplexity")  # fmt: skip
    results["pictures"] = {"sparsity_perplexity": os.path.relpath(path, run_dir)}
    save_results(run_dir, "transformer-lm", cfg, results)
    return results


def search_metrics(results: dict[str, Any]) -> dict[str, float]:
    """A search trial's metrics: the ``relu-l1`` variant's (else the first's) validation and
    test perplexity and FFN sparsity (means over the layers).

    Example:
        >>> out = {"val_ppl": 90.0, "test_ppl": 95.0, "layers": {"a": {"zero_fraction": 0.9}}}
        >>> search_metrics({"variants": {"relu-l1": out}})
        {'val_ppl': 90.0, 'test_ppl': 95.0, 'zero_fraction': 0.9}
    """
    variants = results["variants"]
    out = variants["relu-l1"] if "relu-l1" in variants else next(iter(variants.values()))
    return {"val_ppl": out["val_ppl"], "test_ppl": out["test_ppl"], **layer_means(out["layers"])}


def summary_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per model: perplexities, mean and per-layer FFN zero fraction, dead units."""
    rows = []
    relu = results["variants"].get("relu", {}).get("val_ppl")
    for name, out in results["variants"].items():
        row: dict[str, Any] = {"variant": name, "val_ppl": out["val_ppl"],
                               "test_ppl": out["test_ppl"]}  # fmt: skip
        row["val_ppl_vs_relu"] = out["val_ppl"] / relu - 1 if relu else None
        row["zero_fraction"] = out["zero_fraction"]
        row["dead_fraction"] = out["dead_fraction"]
        for layer, stats in out["layers"].items():
            short = layer.replace("transformer.h.", "h").replace(".mlp.act", "")
            row[f"{short}_zeros"] = stats["zero_fraction"]
            row[f"{short}_dead"] = stats["dead_fraction"]
        row["minutes"] = out["seconds"] / 60
        rows.append(row)
    return rows
