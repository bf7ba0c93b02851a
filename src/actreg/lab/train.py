"""The one training loop of the experiments: seeded, early stopping, checkpoints, resume.

What lives here:

- :class:`TrainConfig`, every training setting as a plain value (saved whole in each
  checkpoint and results file).
- :func:`fit`, the loop: Adam/AdamW/SGD with a linear learning-rate warm-up and cosine
  decay, the task loss plus ``reg.penalty()`` every step, validation after every epoch
  (with an :class:`actreg.Monitor` measuring sparsity if given), early stopping, the best
  epoch's weights restored at the end, and ``checkpoint.pt`` written after every epoch.
- :func:`regularize`, how :func:`fit` attaches the penalties: ``actreg.attach`` with each
  penalty wrapped in ``actreg.Scheduled(penalty, warmup=cfg.penalty_warmup_steps)``.
- :func:`evaluate`, :func:`batches`, :func:`seed_everything`: the helpers the experiments
  share.

It uses the public API like a user would.

Design choices:

- :func:`fit` takes the penalties (``spec=``) and attaches them itself rather than taking a
  ready :class:`actreg.Regularizer`: the loop then owns the hooks' lifetime (removed when it
  returns, even on an error) and the penalty warm-up is the library's own mechanism,
  ``actreg.Scheduled``, rather than a second ramp written in the loop. ``Scheduled`` counts
  its steps per training call, so each spec key must hook one module (checked); its factor
  at step ``s`` is ``min(1, (s + 1) / warmup)``.
- ``checkpoint.pt`` keeps its meaning (``"model"``: the best epoch's weights, ``"epoch"``:
  that epoch) and adds ``"resume"``: the state after the last completed epoch (weights,
  optimizer, ``reg.state_dict()`` with e.g. ``TargetSparsity``'s coefficient, the batch
  order's and torch's random states, history, early-stopping count). ``fit(resume=True)``
  continues from it and gives the same history and weights, bit for bit, as a run never
  interrupted (only torch's random generator is restored: the loop draws from no other).
  Loaded with :func:`actreg.load_checkpoint`, so it holds plain data only.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from actreg import (
    ActregError,
    Monitor,
    Penalty,
    Regularizer,
    Reviver,
    Scheduled,
    attach,
)
from actreg.lab._checkpoint import resume_state, save_checkpoint
from actreg.lab._checks import check_choice, check_fields

__all__ = [
    "TrainConfig",
    "batches",
    "choose_threads",
    "evaluate",
    "fit",
    "lr_factor",
    "regularize",
    "seed_everything",
]


OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine")

LossFn = Callable[[nn.Module, Tensor, Tensor], Tensor]
"""``loss_fn(model, x, y) -> 0-dim task loss`` (the penalty is added by :func:`fit`)."""
MetricsFn = Callable[[nn.Module, Tensor, Tensor], dict[str, float]]
"""``metrics_fn(model, x, y) -> {name: value}``, run in eval mode without grad."""


@dataclass
class TrainConfig:
    """How to train. Every field is a plain value so configs save to JSON whole."""

    POSITIVE: ClassVar[tuple[str, ...]] = (
        "epochs",
        "batch_size",
    )  # settings that must be >= 1 (counts, widths)

    epochs: int = 10  # passes over the training split
    batch_size: int = 128  # examples per step
    lr: float = 1e-3  # peak learning rate
    optimizer: str = "adam"  # adam | adamw | sgd (momentum 0.9, nesterov)
    weight_decay: float = 0.0  # L2 on weights (decoupled for adamw)
    schedule: str = "cosine"  # constant | cosine (decay to 0 over all steps)
    warmup_steps: int = 0  # linear learning-rate warm-up
    penalty_warmup_steps: int = 0  # ramp each penalty in over these steps (actreg.Scheduled)
    patience: int = 0  # early stopping: epochs without improvement (0 = off)
    seed: int = 0  # seeds torch, numpy and random, and the batch order
    progress: bool = True  # show a progress bar (tqdm)
    threads: int = 0  # torch threads (the process's, kept after fit); 0 = from the first step
    stop_after: int = 0  # stop after this many epochs, the schedule spanning all (0: none)

    def __post_init__(self) -> None:
        check_fields(self)  # types; counts and rates >= 0
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("schedule", self.schedule, SCHEDULES)
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ActregError(f"lr must be a positive number, got {self.lr!r}")
        if self.stop_after > self.epochs:
            raise ActregError(
                f"stop_after={self.stop_after} is more than epochs={self.epochs}: it stops a "
                "run early (a pilot); set it to at most epochs, or 0"
            )


#: FLOPs of one training step (forward and backward) under which one thread is used. A
#: step that small is over before a pool's workers help, and PyTorch's pool spins while it
#: waits, against any other busy process: on a shared 2-core machine the demo took 8 s
#: with two threads and 7 s with one when quiet, 65-142 s with two beside a busy process.
ONE_THREAD_FLOPS = 2e8


def choose_threads(step_flops: float, cores: int | None = None) -> int:
    """Torch threads for training steps of ``step_flops``: 1 for small steps, else the cores.

    Example:
        >>> choose_threads(5e6), choose_threads(2e9, cores=4)
        (1, 4)
    """
    if step_flops < ONE_THREAD_FLOPS:
        return 1
    return max(1, cores or os.cpu_count() or 1)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def batches(n: int, batch_size: int, generator: torch.Generator | None = None) -> Iterator[Tensor]:
    """Index batches over ``n`` examples: shuffled with ``generator``, in order without."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


@torch.no_grad()
def evaluate(
    model: nn.Module, x: Tensor, y: Tensor, metrics_fn: MetricsFn, batch_size: int = 1000
) -> dict[str, float]:
    """Example-weighted averages of ``metrics_fn`` over ``x`` in batches, in eval mode."""
    was_training = model.training
    model.eval()
    totals: dict[str, float] = {}
    try:
        for idx in batches(len(x), batch_size):
            for key, value in metrics_fn(model, x[idx], y[idx]).items():
                totals[key] = totals.get(key, 0.0) + value * len(idx)
    finally:
        model.train(was_training)
    return {key: value / max(len(x), 1) for key, value in totals.items()}


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay
        )
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(step: int, total: int, warmup_steps: int, schedule: str = "cosine") -> float:
    """The learning rate's factor at ``step`` (0-based) of ``total``: a linear warm-up over
    ``warmup_steps``, then a cosine decay to 0 at ``total`` (``schedule="constant"``: 1).

    Example:
        >>> [round(lr_factor(s, 10, 2), 3) for s in (0, 1, 2, 6, 10)]
        [0.5, 1.0, 1.0, 0.5, 0.0]
    """
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "cosine":
        done = (step - warmup_steps) / max(total - warmup_steps, 1)
        return 0.5 * (1 + math.cos(math.pi * min(done, 1.0)))
    return 1.0


def _scalar_stats(stats: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    return {
        layer: {k: v for k, v in values.items() if isinstance(v, float)}
        for layer, values in stats.items()
    }


def regularize(
    model: nn.Module, spec: Mapping[str, Penalty] | None, cfg: TrainConfig
) -> Regularizer | None:
    """Attach ``spec`` to ``model`` as :func:`fit` does; ``None`` for no spec.

    With ``cfg.penalty_warmup_steps``, each penalty is wrapped in
    ``actreg.Scheduled(penalty, warmup=cfg.penalty_warmup_steps)``: its factor is
    ``min(1, (step + 1) / warmup)`` at training step ``step``. ``Scheduled`` counts one step
    per training call, so each key must name one module called once per step.

    Example:
        >>> import torch, actreg
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU())
        >>> reg = regularize(model, {"1": actreg.L1(1.0)}, TrainConfig(penalty_warmup_steps=4))
        >>> name, penalty = reg.entries[0]
        >>> name, type(penalty).__name__, penalty.warmup
        ('1', 'Scheduled', 4)
        >>> reg.remove()
    """
    if not spec:
        return None
    warmup = cfg.penalty_warmup_steps
    if warmup:
        spec = {key: Scheduled(penalty, warmup=warmup) for key, penalty in spec.items()}
    reg = attach(model, spec)
    if warmup and len(reg.entries) != len(spec):
        names = [name for name, _ in reg.entries]
        reg.remove()
        raise ActregError(
            f"penalty_warmup_steps wraps each spec entry in one actreg.Scheduled, which "
            f"counts a step per call, but the {len(spec)} keys hook {len(names)} modules "
            f"({names}); give each module its own key"
        )
    return reg


def fit(
    model: nn.Module,
    train: tuple[Tensor, Tensor],
    val: tuple[Tensor, Tensor],
    *,
    loss_fn: LossFn,
    metrics_fn: MetricsFn,
    objective: str,
    cfg: TrainConfig,
    spec: Mapping[str, Penalty] | None = None,
    monitor: Monitor | None = None,
    run_dir: Path | None = None,
    resume: bool = False,
    after_step: Callable[[], None] | None = None,
    after_epoch: Callable[[int], None] | None = None,
    reviver: Reviver | None = None,
    desc: str = "train",
) -> dict[str, Any]:
    """Train ``model`` and return its history; restores the best epoch's weights.

    Args:
        model: the model.
        train: ``(x, y)`` training tensors.
        val: ``(x, y)`` validation tensors, evaluated after every epoch.
        loss_fn: the task loss; the penalty is added to it.
        metrics_fn: validation metrics; ``objective`` names the one to minimize.
        cfg: the :class:`TrainConfig`.
        spec: the penalties, ``{module name or pattern: penalty}`` as for
            :func:`actreg.attach` (``None``: no penalty). :func:`fit` attaches them (see
            :func:`regularize` for the warm-up) and removes the hooks when it returns.
        monitor: measured on the validation pass of each epoch (reset before it).
        run_dir: where ``checkpoint.pt`` is written after every epoch: the best weights
            (``"model"``, ``"epoch"``), the config, and under ``"resume"`` what a resumed
            run needs (the last weights, optimizer, regularizer state, random states).
        resume: continue the run whose ``checkpoint.pt`` is in ``run_dir`` after its last
            completed epoch; the history and weights then equal an uninterrupted run's.
        after_step: called after every optimizer step (e.g. decoder renormalization).
        after_epoch: called with the epoch number after each epoch's validation, except
            the last (e.g. resampling dead units). Changes it makes are validated at the
            end of the next epoch, so the weights kept as best were always validated.
        reviver: an :class:`actreg.Reviver`, called with the step count after every
            optimizer step (its ``optimizer`` is set to the one :func:`fit` makes).
        desc: the progress bar's label.

    Returns:
        ``{"history": [per-epoch dicts], "best_epoch": int, "steps": int, "seconds": float}``.
    """
    from tqdm.auto import tqdm

    reg = regularize(model, spec, cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        seed_everything(cfg.seed)
        gen = torch.Generator().manual_seed(cfg.seed)
        opt = _optimizer(model, cfg)
        if reviver is not None:
            reviver.optimizer = opt
        x_train, y_train = train
        steps_per_epoch = math.ceil(len(x_train) / cfg.batch_size)
        total_steps = steps_per_epoch * cfg.epochs
        last_epoch = cfg.stop_after or cfg.epochs  # the schedule spans cfg.epochs either way
        history: list[dict[str, Any]] = []
        best: tuple[float, int, dict[str, Tensor]] | None = None
        step, stale, first, stopped, elapsed = 0, 0, 1, False, 0.0
        if resume:
            ckpt = resume_state(run_dir, cfg)
            last = ckpt["resume"]
            model.load_state_dict(last["model"])
            opt.load_state_dict(last["optimizer"])
            if (reg is None) != (last["regularizer"] is None):
                raise ActregError(
                    "resume: the checkpoint was saved "
                    f"{'without' if last['regularizer'] is None else 'with'} penalties; "
                    "pass the same spec as the interrupted run"
                )
            if reg is not None:
                reg.load_state_dict(last["regularizer"])
            gen.set_state(last["batch_rng"])
            torch.set_rng_state(last["torch_rng"])
            history, step, stale = last["history"], last["step"], last["stale"]
            first, stopped, elapsed = last["epoch"] + 1, last["stopped"], last["seconds"]
            best = (last["best_value"], ckpt["epoch"], ckpt["model"])
        start = time.perf_counter() - elapsed
        count_flops = cfg.threads == 0  # the first step's FLOPs choose the thread count
        for epoch in range(first, last_epoch + 1):
            if stopped:
                break
            model.train()
            task_sum = torch.zeros(())
            pen_sum = torch.zeros(())
            bar = tqdm(
                batches(len(x_train), cfg.batch_size, gen),
                total=steps_per_epoch,
                desc=f"{desc} {epoch}/{cfg.epochs}",
                disable=not cfg.progress,
                leave=False,
            )
            for i, idx in enumerate(bar, start=1):
                for group in opt.param_groups:
                    group["lr"] = cfg.lr * lr_factor(
                        step, total_steps, cfg.warmup_steps, cfg.schedule
                    )
                counter = FlopCounterMode(display=False) if count_flops else None
                with counter if counter is not None else contextlib.nullcontext():
                    task = loss_fn(model, x_train[idx], y_train[idx])
                    penalty = reg.penalty() if reg is not None else torch.zeros(())
                    loss = task + penalty
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                if counter is not None:
                    torch.set_num_threads(choose_threads(counter.get_total_flops()))
                    count_flops = False
                opt.step()
                if after_step is not None:
                    after_step()
                step += 1
                if reviver is not None:
                    reviver(step)
                task_sum += task.detach()
                pen_sum += penalty.detach()
                if cfg.progress and (i % 20 == 0 or i == steps_per_epoch):
                    bar.set_postfix(
                        task=f"{float(task_sum) / i:.4f}", penalty=f"{float(pen_sum) / i:.4f}"
                    )
            if monitor is not None:
                monitor.reset()
            metrics = evaluate(model, *val, metrics_fn)
            if objective not in metrics:
                raise ActregError(f"objective {objective!r} is not one of {sorted(metrics)}")
            row: dict[str, Any] = {
                "epoch": epoch,
                "train_task_loss": float(task_sum) / steps_per_epoch,
                "train_penalty": float(pen_sum) / steps_per_epoch,
                **{f"val_{k}": v for k, v in metrics.items()},
                "seconds": time.perf_counter() - start,
            }
            if monitor is not None:
                row["val_sparsity"] = _scalar_stats(monitor.compute())
            history.append(row)
            value = metrics[objective]
            if best is None or value < best[0]:
                best = (value, epoch, copy.deepcopy(model.state_dict()))
                stale = 0
            else:
                stale += 1
            stopped = bool(cfg.patience) and stale >= cfg.patience
            if not stopped and after_epoch is not None and epoch < last_epoch:
                after_epoch(epoch)
            if run_dir is not None:
                last = {
                    "epoch": epoch,
                    "step": step,
                    "stale": stale,
                    "stopped": stopped,
                    "seconds": time.perf_counter() - start,
                    "history": history,
                    "best_value": best[0],
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "regularizer": None if reg is None else reg.state_dict(),
                    "batch_rng": gen.get_state(),
                    "torch_rng": torch.get_rng_state(),
                }
                save_checkpoint(run_dir, best[2], best[1], cfg, last)
        assert best is not None
        model.load_state_dict(best[2])
        return {
            "history": history,
            "best_epoch": best[1],
            "steps": step,
            "seconds": time.perf_counter() - start,
        }
    finally:
        if reg is not None:
            reg.remove()
