"""Diagnostics: a lab classifier in target mode with the controller changed, and its trace.

Runs ``cnn`` or ``sparse-rectifier`` exactly as ``actreg run`` does, with every
:class:`actreg.TargetSparsity` the lab builds replaced by a subclass that

* takes extra keyword settings (``--controller '{"rate": 0.01}'``: a fifth of the
  coefficient's step; ``ramp``, ``per_unit``, ...; they override the lab's), and
* with ``--rule deadline``, treats the ramp as a deadline instead of a leash: a layer
  sparser than the ramp's wanted share but not yet at the target keeps its coefficient
  (the library's rule lowers it), so the ramp sets the slowest pace, not the pace. The
  coefficient's error (:meth:`actreg.TargetSparsity._coef_error`, the one thing the rule
  changes) is ``clamp(max(log(a / w_t), 0) + min(log(a / w), 0), -1, 1)`` (``a`` the
  batch's active share, ``w_t`` the ramp's, ``w`` the target's), where the library's is
  ``clamp(log(a / w_t), -1, 1)``. The two agree while the layer is behind the ramp
  (``a >= w_t``) and, once the ramp has reached the target (``w_t = w``), everywhere;
  past the target while the ramp is still above it, the deadline lowers the coefficient
  by ``log(a / w)``, less than the library's ``log(a / w_t)``.

* with ``--freeze-after N``, stops every coefficient after ``N`` training steps (where
  the controller has found it; its ``rate`` becomes 1e-12; the per-unit weights keep
  following the firing rates), and with ``--then-coefs c1,c2,...`` sets them to those
  values first (one per penalized layer, in order): whether the cost lies in the path's
  start or in what it leaves.

* with ``--rule patient``, does not raise the coefficient while the layer is answering:
  when the library's error asks for a higher coefficient but the batch is sparser than the
  layer's running mean (``smoothing``, ~100 steps), the error is 0. The coefficient then
  rises only while the layer has stalled, which bounds the integral's windup by the
  layer's delay in answering instead of letting it grow for the whole delay of its
  arrival at the target (an anti-windup rule). With ``measure="l0"`` it is the library's
  rule.

* with ``--rule wait``, the ramp waits for the layer: its wanted share is never more than
  ``--ahead`` nats (default 0.5) below the layer's running mean of the active share
  (``smoothing``, ~100 steps), so the coefficient's error is at most
  ``log(a / m) + ahead`` while the ramp is ahead of the layer. A layer that has not
  answered raises its coefficient by ``rate * ahead`` a step, not by ``rate``; one that
  closes ``ahead`` nats over a horizon is not raised further. Combined with ``lead`` as
  the library combines them (the look-ahead is subtracted after). The rule is the
  library's ``TargetSparsity(ahead=)``, which began here, and the script passes it on
  (``--ahead`` overrides ``ahead`` in ``--controller``). Chosen on permuted
  MNIST (``scripts/transform_idx.py``), checked on Fashion-MNIST, not adopted
  (docs/TARGET.md, "The ramp waits for the layer").

* with ``--pilot-epochs E``, first runs ``E`` epochs with the same controller (its own
  run, ``RUN_NAME-pilot``), then starts the real run from the pilot's final coefficients
  (``layer_coefs``; the weights start afresh from the seed). The pilot is the real
  run's first ``E`` epochs in its learning-rate schedule (not one that decays to 0 at
  the pilot's end) and its controllers' timing; its dead-unit revivals are timed over
  its own ``E`` epochs (70 % of them), not the real run's. It replaces the lab's own
  pilot (``cnn``'s ``pilot_epochs``, its default since): that one times revivals as the
  real run does. (``--freeze-after`` turns the lab's pilot off too: it counts the real
  run's steps and controllers, and ``--rule wait`` turns the lab's wait, ``ahead``, off:
  the rule is the script's.) Whether a start that is
  measured closes the gap that a start at ``coef`` leaves (docs/TARGET.md, "The ramp
  waits for the layer").

The library's own look-ahead, ``TargetSparsity(lead=)``, began here as a rule
(``--controller '{"lead": 1}'`` runs it), as did its wait (``ahead``) and ``cnn``'s pilot.
The script runs the lab's ``cnn`` with its defaults of the day: since its ramp waits and
a pilot starts it, ``--set ahead=none --set pilot_epochs=0`` repeats a run made before
(with ``--set lead=1`` for one made at the look-ahead's default, docs/TARGET.md), and a
run through the script with the lab's pilot traces the pilot's controllers first.

Every tenth training step of each controller (step, coefficient, active share of the
batch) goes to ``RUN_DIR/trace.json``, and the script's own settings (rule, controller,
freeze) with the summary to ``RUN_DIR/variant.json``: ``run_config.json`` holds the lab's
config only. docs/TARGET.md ("Where target mode's cost lies")
has the runs made with it. Not part of the package: the lab keeps the library's rule.

Usage::

    python scripts/target_variants.py cnn --rule deadline --set ramp_share=0.6 --set data=mnist
    python scripts/target_variants.py cnn --controller '{"rate": 0.01}' --set data=mnist
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import actreg
from actreg._hooks import training
from actreg.lab import train
from actreg.lab.experiments import get
from actreg.lab.experiments._config import apply_overrides

RULES = ("library", "deadline", "patient", "wait")
TRACE_EVERY = 10


def controller_class(
    rule: str,
    settings: dict[str, Any],
    traces: list[list[Any]],
    freeze_after: int = 0,
    then_coefs: tuple[float, ...] = (),
    ahead: float = 0.5,
    built: list[Any] | None = None,
) -> type:
    """A :class:`actreg.TargetSparsity` subclass with ``settings`` and the ``rule``; each
    instance appends its trace (a list of ``(step, coef, active share)``) to ``traces``.
    With ``freeze_after > 0`` its coefficient stops moving after that many training steps
    (its ``rate`` becomes 1e-12), set first to its entry of ``then_coefs`` where given (the
    n-th instance built takes the n-th entry)."""
    if freeze_after < 0:
        raise SystemExit(f"--freeze-after takes a number of steps >= 0, got {freeze_after}")
    if then_coefs and not freeze_after:
        raise SystemExit("--then-coefs sets the coefficients at the freeze: add --freeze-after N")
    if rule not in RULES:
        raise SystemExit(f"unknown rule {rule!r}; use one of {RULES}")
    if not ahead > 0:
        raise SystemExit(f"--ahead takes nats > 0, got {ahead}")

    if rule == "wait":  # the library's TargetSparsity(ahead=), which began as this rule
        settings = {**settings, "ahead": ahead}

    class Variant(actreg.TargetSparsity):  # unregistered: serializes as its parent
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **{**kwargs, **settings})
            self.trace: list[tuple[int, float, float]] = []
            self.index = len(traces)
            traces.append(self.trace)  # type: ignore[arg-type]
            if built is not None:
                built.append(self)
            if then_coefs and self.index >= len(then_coefs):
                raise SystemExit(
                    f"--then-coefs has {len(then_coefs)} values; give one per penalized layer"
                )

        def forward(self, x: Tensor) -> Tensor:
            if freeze_after and self.steps == freeze_after and then_coefs:
                self.coef = then_coefs[self.index]
            if freeze_after and self.steps >= freeze_after:
                self.rate = 1e-12
            out = super().forward(x)
            if self.steps % TRACE_EVERY == 0 and training(x):
                active = float((x.detach() != 0).float().mean())
                self.trace.append((self.steps, self.coef, active))
            return out

        def _coef_error(self, active: Tensor, wanted_t: Tensor, wanted: float) -> Tensor:
            if rule in ("library", "wait"):
                return super()._coef_error(active, wanted_t, wanted)
            if rule == "patient":
                error = super()._coef_error(active, wanted_t, wanted)
                has_mean = self.steps > 0 and self.measure == "zero_fraction"
                sparser = (1 - active) > self._measured  # than its running mean: answering
                return torch.where((error > 0) & sparser, 0.0, error) if has_mean else error
            behind = torch.log((active + 1e-6) / wanted_t).clamp(min=0.0)
            past = torch.log((active + 1e-6) / wanted).clamp(max=0.0)
            return (behind + past).clamp(-1.0, 1.0)

    return Variant


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", choices=["cnn", "sparse-rectifier"])
    parser.add_argument("--rule", choices=RULES, default="library")
    parser.add_argument(
        "--freeze-after", type=int, default=0, help="stop the coefficients after N steps"
    )
    parser.add_argument(
        "--then-coefs", default="", help="with --freeze-after: the frozen coefficients, c1,c2"
    )
    parser.add_argument(
        "--ahead", type=float, default=0.5, help="--rule wait: nats the ramp may lead by"
    )
    parser.add_argument(
        "--pilot-epochs",
        type=int,
        default=0,
        help="first a run of this many epochs; its final coefficients start the real run",
    )
    parser.add_argument("--controller", default="{}", help="TargetSparsity settings (JSON)")
    parser.add_argument("--target", type=float, default=0.9, help="target_sparsity")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    settings = json.loads(args.controller)
    then = tuple(float(c) for c in args.then_coefs.split(",") if c.strip())
    traces: list[list[Any]] = []
    exp = get(args.experiment)
    first = ["compare=false"] if args.experiment == "cnn" else ["variants=relu-l1"]
    cfg = apply_overrides(
        exp.config(),
        [*first, "threads=1", "progress=false", f"seed={args.seed}", *args.set,
         f"target_sparsity={args.target}"],
    )  # fmt: skip
    pilot: list[float] = []
    if args.pilot_epochs < 0:
        raise SystemExit(f"--pilot-epochs takes epochs >= 0, got {args.pilot_epochs}")
    if args.pilot_epochs and args.pilot_epochs >= cfg.epochs:
        raise SystemExit(f"--pilot-epochs {args.pilot_epochs} needs more epochs= than that")
    # Steps and controller indices count per run: the lab's own pilot would shift both.
    if (args.pilot_epochs or args.freeze_after) and getattr(cfg, "pilot_epochs", 0):
        cfg = replace(cfg, pilot_epochs=0)
    # Under the wait rule --ahead sets the controllers' wait, so the lab's own is off (and
    # its config does not record the lab's 0.5).
    if args.rule == "wait" and getattr(cfg, "ahead", None) is not None:
        cfg = replace(cfg, ahead=None)
    if args.pilot_epochs:
        built: list[Any] = []
        name = f"{cfg.run_name}-pilot" if cfg.run_name else None
        pilot_cfg = replace(cfg, epochs=args.pilot_epochs, run_name=name)
        pilot_traces: list[list[Any]] = []
        cls = controller_class(args.rule, settings, pilot_traces, ahead=args.ahead, built=built)
        # The pilot is the real run's first epochs: its learning-rate schedule and the
        # controllers' timing are the full run's (the schedule's total and the planned
        # steps scaled by epochs / pilot epochs), so it does not decay to 0 at its end.
        stretch = cfg.epochs / args.pilot_epochs
        module = sys.modules[exp.run.__module__]
        saved = (actreg.TargetSparsity, train.lr_factor, module.planned_steps)

        def lr_factor(step: int, total: int, *rest: Any) -> float:
            return saved[1](step, round(total * stretch), *rest)

        def planned_steps(n_train: int, c: Any) -> int:
            return saved[2](n_train, replace(c, epochs=cfg.epochs))

        actreg.TargetSparsity = cls  # type: ignore[misc]
        train.lr_factor, module.planned_steps = lr_factor, planned_steps
        try:
            pilot_out = exp.run(pilot_cfg)
        finally:
            actreg.TargetSparsity, train.lr_factor, module.planned_steps = saved  # type: ignore[misc]
        Path(pilot_out["run_dir"], "trace.json").write_text(json.dumps(pilot_traces))
        variant = next(iter(pilot_out["variants"].values()))  # the penalized one, built first
        pilot = [ctl.coef for ctl in built[: len(variant.get("maps", variant.get("layers", {})))]]
        cfg = replace(cfg, layer_coefs=tuple(pilot))
    original = actreg.TargetSparsity
    actreg.TargetSparsity = controller_class(
        args.rule, settings, traces, args.freeze_after, then, args.ahead
    )  # type: ignore[misc]
    try:
        out = exp.run(cfg)
    finally:
        actreg.TargetSparsity = original  # type: ignore[misc]
    Path(out["run_dir"], "trace.json").write_text(json.dumps(traces))
    variant = next(iter(out["variants"].values()))
    layers = variant["maps" if args.experiment == "cnn" else "layers"]
    summary = {
        "rule": args.rule,
        "controller": settings,
        "freeze_after": args.freeze_after,
        "then_coefs": list(then),
        "ahead": args.ahead if args.rule == "wait" else None,
        "pilot_epochs": args.pilot_epochs,
        "pilot_coefs": pilot,
        "test_error": variant["test_error"],
        "test_loss": variant["test_loss"],
        "zero_fraction": {k: round(v["zero_fraction"], 4) for k, v in layers.items()},
        "dead_fraction": {k: round(v["dead_fraction"], 4) for k, v in layers.items()},
        "best_epoch": variant["best_epoch"],
        "run_dir": out["run_dir"],
    }
    Path(out["run_dir"], "variant.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
