"""A coefficient that follows a target: the target-sparsity controller.

:class:`TargetSparsity` wraps a penalty and scales it so that the measured sparsity of the
tensor it penalizes settles at a target: "90% zeros in this layer" without a search.
(:class:`actreg.Scheduled`, a coefficient that follows the step, is in
:mod:`actreg.schedule`.)

It is a penalty itself, usable in :func:`actreg.attach` specs. It counts a step each time
it is called with grad enabled on a tensor that requires grad (a training forward), not
during evaluation or a checkpoint recomputation in backward. Use one object per layer: an
object shared by several layers counts one step per layer and call.

Why it works per unit, ramps, fades in and has a push up of its own (the full comparison,
3 seeds on MNIST and scikit-learn's digits, is in docs/TARGET.md, "Why this design"): under
Adam a penalty whose gradient dominates a unit's moves its weights by about the learning
rate per step whatever the coefficient (SAELens issue 719), so a layer-level loop kills
units before it reacts. Each unit's penalty gradient is weighted by its running firing rate
(full above the wanted rate, none at half of it, a push back up below); the penalty fades in
over 50 steps and the wanted sparsity ramps down from the measured one; integral control of
the log-coefficient, clamped to ``[min_coef, max_coef]``, copes with any start.
:meth:`TargetSparsity.calibrate` is a slow outer loop on held-out measurements: it shifts
the training-time set point (why a set point and not a corrected measurement: its
docstring and docs/TARGET.md).

Example:
    >>> import torch, actreg
    >>> model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU())
    >>> ctl = actreg.TargetSparsity(actreg.L1(1e-3), target=0.9)
    >>> reg = actreg.attach(model, {"1": ctl})
    >>> loss = model(torch.randn(4, 8)).sum() + reg.penalty()
    >>> ctl.steps, f"{ctl.coef:.1e}"  # the wanted sparsity starts at the measured one
    (1, '1.0e-03')
    >>> reg.remove()
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from actreg import metrics
from actreg._errors import ActregError, finite_number
from actreg._hooks import training
from actreg._penalty import (
    Penalty,
    build,
    check_coef,
    check_penalty,
    make_penalty,
    serialize,
)

__all__ = ["MEASURES", "PUSH", "TargetSparsity"]

MEASURES = ("zero_fraction", "l0")
PUSH = ("auto", "ramp", "target")


class _UnitGrad(torch.autograd.Function):
    """Identity in the forward pass; the backward pass scales the gradient per unit."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weights: Tensor) -> Tensor:
        ctx.save_for_backward(weights)
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (weights,) = ctx.saved_tensors
        return grad * weights, None


class TargetSparsity(Penalty, name="target_sparsity"):
    """Steer a penalty so that its layer settles at a target sparsity, with every unit alive.

    Each training call measures the share of active values (``|x| > eps``) of the penalized
    tensor, per unit and overall, and

    * **scales the penalty's gradient per unit** by ``clamp(2 * rate / wanted - 1, -1, 1)``,
      where ``rate`` is the unit's running share of active positions and ``wanted``
      the target's active share (``1 - target``; for ``measure="l0"``: ``target / units``).
      A unit that fires more than wanted gets the full penalty, one at half the wanted
      rate none, and one that fires less is pushed back up (a negative weight), so the
      penalty never finishes a unit off (``per_unit=False``: weight 1 everywhere);
    * takes a dual-ascent step on the log of the coefficient,
      ``log c += rate * clamp(log(active / wanted_t), -1, 1)``, within
      ``[min_coef, max_coef]``, toward a wanted share ``wanted_t`` that starts at the first
      batch's active share and comes down to ``wanted`` by ``ramp`` nats per step; the
      push up has its own coefficient, moved by the opposite step (it grows while the
      layer is sparser than wanted, e.g. pressed down by the penalties of layers above;
      against ``wanted_t`` or against ``wanted`` itself, see ``push``); with ``lead > 0``
      the step's error looks ahead: ``log(active / wanted_t) - lead * log(mean / active)``
      (clamped to ``[-1, 1]``), ``mean`` the running mean of the active share, so a layer
      already moving toward its target as fast as its remaining gap is not raised further
      and one about to overshoot is lowered before it arrives (the push up does not look
      ahead); with ``ahead`` the ramp waits for the layer (below);
    * multiplies the penalty by ``min(1, (step + 1) / warmup)`` over the first ``warmup``
      steps.

    The penalty's value is the wrapped penalty's times the coefficient's scale and the
    warm-up factor (the per-unit weights act on the gradient only). Everything stays on
    the tensor's device: no host sync in training, except once, at step
    :attr:`ZERO_CHECK_STEPS` with ``eps=0``, to check that the layer gives exact zeros at
    all (tanh and sigmoid never do: it raises and names the fix). The running rate of a
    unit averages just enough batches to expect :attr:`RATE_EVIDENCE` active positions at
    the wanted rate: the current batch alone for conv maps and long sequences, a few
    batches for a small batch of vectors.

    Args:
        penalty: the penalty to scale, any penalty (sums too); its ``coef`` (for a sum the
            sum of its terms', see :mod:`actreg.penalties`) is the starting value (> 0).
        target: the wanted zero fraction in (0, 1), or with ``measure="l0"`` the wanted
            number of active units per position (> 0, below the number of units).
        measure: ``"zero_fraction"`` (share of values with ``|x| <= eps``) or ``"l0"``
            (active units along ``dim`` per position), as in :mod:`actreg.metrics`.
        rate: the step size on the log-coefficient per training call.
        eps: values with ``|x| <= eps`` count as zero.
        dim: the unit axis (``-1`` for ``(N, H)`` and ``(N, T, H)``, ``1`` for conv maps).
        smoothing: the factor of the running mean reported as :attr:`measured`.
        min_coef: lower bound of the coefficient.
        max_coef: upper bound of the coefficient.
        ramp: how fast the wanted active share comes down, in nats per step (0: the target
            from the first step). For a run of ``N`` steps the lab's ``sparse-rectifier`` ramps
            over 60% of it, ``math.log(1 / (1 - target)) / (0.6 * N)`` (docs/TARGET.md, "The
            ramp"); its ``cnn`` keeps this default.
        warmup: steps over which the penalty fades in (0: none).
        per_unit: scale the gradient per unit by its firing rate (see above).
        push: what the push up steers toward: ``"ramp"`` (the ramp's wanted share: keeps
            layers that run ahead of a fast ramp near the target after it), ``"target"``
            (the target itself), or ``"auto"``: ``"ramp"`` for ramps of at least
            :attr:`FAST_RAMP` nats per step, else ``"target"`` (against a slow ramp the
            push grows for hundreds of steps and blew activations up; docs/TARGET.md).
        lead: how far ahead the coefficient's error looks, in horizons of the running mean
            (``smoothing``: ~100 steps): a derivative term in the step (in the
            coefficient, which sums the steps, proportional action on the measured
            sparsity), which damps the overshoot of a coefficient that a layer answers
            late (conv maps under Adam: ~100 steps; docs/TARGET.md, "Looking ahead"; the
            lab's ``cnn`` used 1 until it waited for its maps, ``ahead`` below).
            A layer that has not moved yet gets the plain step, so one that answers late
            still lets the coefficient climb, less far. 0 (the default): the current
            batch only.
        ahead: the ramp waits for the layer: the coefficient's wanted share is never more
            than ``ahead`` nats below the layer's running mean of the active share, so
            while the ramp is ahead of the layer the error is at most
            ``log(active / mean) + ahead``. A layer that has not answered raises its
            coefficient by ``rate * ahead`` a step instead of ``rate``; one that closes
            ``ahead`` nats over a horizon of the mean (``1 / (1 - smoothing)`` steps) is
            not raised further, so the coefficient looks for the smallest value that
            moves the layer at that pace instead of climbing while a late layer catches
            up with a fast ramp. Near the target (a mean within ``ahead`` nats of it)
            the rule is the plain one; the push up keeps the ramp's own wanted share.
            ``None`` (the default): no wait. With ``lead=0``, 0.5 and a start measured
            by a one-epoch pilot brought the Fashion-MNIST CNN near its grid-searched
            coefficients; 0.5 alone did not (docs/TARGET.md, "The ramp waits for the
            layer").

    Attributes:
        steps: training calls so far.

    :meth:`calibrate` moves the training-time set point by held-out measurements.

    Its state (the two log-scales, the per-unit running rates, the ramp's start, the
    running measurement, the step, the set point's shift) is in :meth:`state_dict`, so a
    resumed run continues exactly; its settings are in :meth:`get_config`.
    """

    composite = True
    ZERO_CHECK_STEPS = 100
    """At this step, with ``eps=0``, a layer that never gave an exact zero raises."""
    RATE_EVIDENCE = 20
    """Active positions a unit at the wanted rate is expected to show in its running rate."""
    FAST_RAMP = 0.02
    """Under ``push="auto"``, ramps at least this fast (nats per step) steer the push up
    toward the ramp; slower ones toward the target."""
    CALIBRATE_GAIN = 0.5
    """Share of a held-out miss (log-ratio of active shares) one :meth:`calibrate` corrects."""
    CALIBRATE_LIMIT = 0.5
    """Largest set-point shift in nats of the active share (0.9 zeros: 0.835 to 0.939)."""

    def __init__(
        self,
        penalty: Penalty,
        target: float = 0.9,
        measure: str = "zero_fraction",
        *,
        rate: float = 0.05,
        eps: float = 0.0,
        dim: int = -1,
        smoothing: float = 0.99,
        min_coef: float = 1e-10,
        max_coef: float = 1e4,
        ramp: float = 0.02,
        warmup: int = 50,
        per_unit: bool = True,
        push: str = "auto",
        lead: float = 0.0,
        ahead: float | None = None,
    ) -> None:
        self.penalty = check_penalty(penalty, "TargetSparsity")
        if measure not in MEASURES:
            raise ActregError(f"unknown measure {measure!r}; use one of {MEASURES}")
        target = finite_number(target, "target", "a zero fraction such as 0.9, or active units")
        if measure == "zero_fraction" and not 0 < target < 1:
            raise ActregError(f"a zero-fraction target must lie in (0, 1), got {target!r}")
        if measure == "l0" and target <= 0:
            raise ActregError(f"an l0 target (active units) must be > 0, got {target!r}")
        if not 0 <= smoothing < 1:
            raise ActregError(f"smoothing must lie in [0, 1), got {smoothing!r}")
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise ActregError(f"warmup must be an int >= 0 (steps), got {warmup!r}")
        self.target = target
        self.measure = measure
        self.rate = check_coef(rate, "rate")
        self.eps = metrics.check_eps(eps)
        self.dim = dim
        self.smoothing = float(smoothing)
        self.ramp = check_coef(ramp, "ramp")
        self.warmup = warmup
        self.per_unit = bool(per_unit)
        if push not in PUSH:
            raise ActregError(f"unknown push={push!r}; use one of {PUSH}")
        self.push = push
        self.lead = check_coef(lead, "lead")
        if ahead is not None:
            ahead = finite_number(ahead, "ahead", "nats, e.g. 0.5, or None")
            if ahead <= 0:
                raise ActregError(f"ahead must be > 0 nats (or None: no wait), got {ahead!r}")
        self.ahead = ahead
        self.base = check_coef(penalty.coef, "the wrapped penalty's coefficient")
        if self.base <= 0:
            raise ActregError(f"{penalty!r} has coefficient 0: start from a positive one")
        self.min_coef = finite_number(min_coef, "min_coef", "e.g. 1e-10")
        self.max_coef = finite_number(max_coef, "max_coef", "e.g. 1e4")
        if not 0 < self.min_coef <= self.base <= self.max_coef:
            raise ActregError(
                f"need 0 < min_coef <= coefficient <= max_coef, got {self.min_coef:g}, "
                f"{self.base:g}, {self.max_coef:g}"
            )
        self.steps = 0
        self._log_scale = torch.zeros(())
        self._measured = torch.zeros(())
        self._start = torch.ones(())  # the ramp's first wanted active share
        self._saw_zero = torch.zeros((), dtype=torch.bool)
        self._unit_rate = torch.zeros(0)  # per unit, set at the first training step
        self._log_push = torch.zeros(())
        self.shift = 0.0  # log of the set point's active share over the target's (calibrate)
        self.settled = False  # calibrate: the layer has once reached its target (or set point)

    def _wanted(self, units: int) -> float:
        """The target as a share of active values."""
        if self.measure == "l0":
            if self.target >= units:
                raise ActregError(
                    f"an l0 target of {self.target:g} active units needs more than "
                    f"{units} units along dim={self.dim}; ask for fewer or check dim="
                )
            return min(1.0, self.target / units * math.exp(self.shift))
        return min(1.0, (1.0 - self.target) * math.exp(self.shift))

    def _push_to_ramp(self) -> bool:
        return self.push == "ramp" or (self.push == "auto" and self.ramp >= self.FAST_RAMP)

    def forward(self, x: Tensor) -> Tensor:
        if self._log_scale.device != x.device:
            for key in ("_log_scale", "_log_push", "_measured", "_start", "_saw_zero"):
                setattr(self, key, getattr(self, key).to(x.device))
            self._unit_rate = self._unit_rate.to(x.device)
        scale = self._log_scale.exp()
        if self.warmup and self.steps < self.warmup:
            scale = scale * ((self.steps + 1) / self.warmup)
        if not training(x):
            return self.penalty.forward(x) * scale
        with torch.no_grad():
            rates = metrics.firing_rate(x.detach(), self.dim, self.eps).float()
            wanted = self._wanted(rates.numel())
            self._track(rates, x.numel() // max(rates.numel(), 1), wanted)
        if self.per_unit:
            with torch.no_grad():
                shape = [1] * x.dim()
                shape[metrics.check_unit_dim(x, self.dim)] = rates.numel()
                weights = (self._unit_rate * (2 / wanted) - 1).clamp(-1.0, 1.0)
                lift = (self._log_push - self._log_scale).exp()
                weights = torch.where(weights < 0, weights * lift, weights).view(shape)
            x = _UnitGrad.apply(x, weights)
        value = self.penalty.forward(x) * scale
        with torch.no_grad():
            self._update(rates, wanted)
        return value

    def _track(self, rates: Tensor, positions: int, wanted: float) -> None:
        """Update the per-unit firing rates: a running mean over just enough batches to
        expect ``RATE_EVIDENCE`` active positions of a unit at the wanted rate."""
        if self.steps == 0 or self._unit_rate.shape != rates.shape:
            self._unit_rate = rates.clone()
            return
        keep = max(0.0, 1.0 - positions * wanted / self.RATE_EVIDENCE)
        self._unit_rate.mul_(keep).add_(rates, alpha=1.0 - keep)

    def _update(self, rates: Tensor, wanted: float) -> None:
        active = rates.mean()
        if self.steps == 0:
            self._start = active.clamp(min=wanted) if self.ramp else self._start.fill_(wanted)
        wanted_t = (self._start * math.exp(-self.ramp * self.steps)).clamp(min=wanted)
        mean = self._mean_active(rates.numel())
        # The ramp waits for the layer (ahead=): the coefficient's wanted share stays within
        # `ahead` nats of the layer's running mean; the push keeps the ramp's own.
        coef_wanted = wanted_t
        if self.ahead is not None and self.steps:
            coef_wanted = torch.maximum(wanted_t, mean * math.exp(-self.ahead))
        error = self._coef_error(active, coef_wanted, wanted)
        if self.lead and self.steps:  # the progress over about one running-mean horizon
            error = error - self.lead * torch.log((mean + 1e-6) / (active + 1e-6))
        error = error.clamp(-1.0, 1.0)
        low, high = math.log(self.min_coef / self.base), math.log(self.max_coef / self.base)
        self._log_scale = (self._log_scale + self.rate * error).clamp(low, high)
        # The push answers to the ramp, or to the target itself (push=).
        push_wanted = wanted_t if self._push_to_ramp() else wanted
        push_error = torch.log((active + 1e-6) / push_wanted).clamp(-1.0, 1.0)
        self._log_push = (self._log_push - self.rate * push_error).clamp(low, high)
        m = active * rates.numel() if self.measure == "l0" else 1 - active
        w = self.smoothing if self.steps else 0.0
        self._measured = w * self._measured + (1 - w) * m
        self.steps += 1
        if self.eps == 0.0 and self.steps <= self.ZERO_CHECK_STEPS:
            self._saw_zero = self._saw_zero | (active < 1)
            if self.steps == self.ZERO_CHECK_STEPS and not bool(self._saw_zero):
                raise ActregError(
                    f"TargetSparsity({self.penalty!r}, target={self.target:g}) saw no exact "
                    f"zero in {self.steps} training steps: this layer's activation (tanh, "
                    "sigmoid, ...) cannot give exact zeros, so the target is out of reach; "
                    "count small values as zeros with eps= (e.g. eps=0.05), use "
                    'measure="l0" with eps=, or penalize a ReLU layer'
                )

    def _mean_active(self, units: int) -> Tensor:
        """The running mean of the active share (:attr:`measured` as a share; ``units``
        for ``measure="l0"``): the mean that ``lead`` and ``ahead`` read."""
        return self._measured / units if self.measure == "l0" else 1 - self._measured

    def _coef_error(self, active: Tensor, wanted_t: Tensor, wanted: float) -> Tensor:
        """The coefficient's error before ``lead`` and the clamp to ``[-1, 1]``: the
        log-ratio of the active share to the ramp's wanted share ``wanted_t`` (symmetric
        in "too many" and "too few", and as strong near 95% zeros as near 50%). ``wanted``
        is the target's share. (A subclass may change the rule;
        ``scripts/target_variants.py`` does, as a diagnostic.)"""
        return torch.log((active + 1e-6) / wanted_t)

    def calibrate(self, measured: float) -> float:
        """Move the training-time set point by a held-out measurement of the layer.

        Call it after a validation pass with the layer's sparsity measured there, in this
        controller's measure (zero fraction, or active units for ``"l0"``). The miss is the
        log-ratio of the active shares, ``log(active / wanted)`` (as the coefficient's own
        error); the set point's active share is multiplied by ``exp(-CALIBRATE_GAIN *
        miss)``, its total shift clipped to ``CALIBRATE_LIMIT`` nats either way. Calls
        change nothing until the layer has settled: once its held-out sparsity reached
        the target, or its training-time sparsity (:attr:`measured`) the set point; before
        that the layer is still on its way down from its first, denser state, and a
        correction would only add to the controller's own. The shift and the settled flag
        are in :meth:`state_dict`; training forwards never change them.

        Args:
            measured: the held-out zero fraction (in ``[0, 1]``), or active units (``>= 0``).

        Returns:
            The shift in effect, in nats of the active share (> 0: more active in training).

        Example:
            >>> import actreg
            >>> ctl = actreg.TargetSparsity(actreg.L1(1e-3), target=0.9)
            >>> ctl.calibrate(0.8)  # denser than the target: still on its way, skipped
            0.0
            >>> round(ctl.calibrate(0.92), 3)  # sparser: ask training for less
            0.112
        """
        measured = finite_number(measured, "measured", "the held-out zero fraction or active units")
        if self.measure == "zero_fraction" and not 0 <= measured <= 1:
            raise ActregError(f"a measured zero fraction lies in [0, 1], got {measured!r}")
        if measured < 0:
            raise ActregError(f"measured active units must be >= 0, got {measured!r}")
        zeros = self.measure == "zero_fraction"
        active, wanted = (1.0 - measured, 1.0 - self.target) if zeros else (measured, self.target)
        if not self.settled and self.steps:
            trained = 1.0 - self.measured if zeros else self.measured
            units = len(self._unit_rate)
            self.settled = trained <= self._wanted(units) * (1 if zeros else units)
        self.settled = self.settled or active <= wanted
        if self.settled:
            miss = math.log(max(active, 1e-6) / wanted)
            limit = self.CALIBRATE_LIMIT
            self.shift = min(limit, max(-limit, self.shift - self.CALIBRATE_GAIN * miss))
        return self.shift

    @property
    def coef(self) -> float:
        """The coefficient in effect: the wrapped penalty's times the scale (one host sync).

        Setting it sets the scale (within ``[min_coef, max_coef]``); the wrapped penalty
        is left alone.
        """
        return self.base * float(self._log_scale.exp())

    @coef.setter
    def coef(self, value: float) -> None:
        value = check_coef(value, "coef")
        if not self.min_coef <= value <= self.max_coef:
            raise ActregError(
                f"coef must lie in [min_coef, max_coef] = [{self.min_coef:g}, "
                f"{self.max_coef:g}], got {value:g}"
            )
        log_scale = math.log(value / self.base)
        self._log_scale = torch.full((), log_scale, device=self._log_scale.device)

    def get_config(self) -> dict[str, Any]:
        """The settings (the wrapped penalty as :func:`actreg.serialize` gives it)."""
        return {
            "penalty": serialize(self.penalty),
            "target": self.target,
            "measure": self.measure,
            "rate": self.rate,
            "eps": self.eps,
            "dim": self.dim,
            "smoothing": self.smoothing,
            "min_coef": self.min_coef,
            "max_coef": self.max_coef,
            "ramp": self.ramp,
            "warmup": self.warmup,
            "per_unit": self.per_unit,
            "push": self.push,
            "lead": self.lead,
            "ahead": self.ahead,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Penalty:
        """Build a controller from :meth:`get_config` output (in its initial state)."""
        return build(cls, (), {**config, "penalty": make_penalty(config["penalty"])})

    @property
    def measured(self) -> float:
        """The running mean of the measured sparsity (one host sync)."""
        return float(self._measured)

    def state_dict(self) -> dict[str, Any]:
        """The state: log-scale, unit rates, ramp start, measurement, step, the set point's
        shift from :meth:`calibrate` (and settings)."""
        return {
            "log_scale": self._log_scale.detach().clone(),
            "measured": self._measured.detach().clone(),
            "start": self._start.detach().clone(),
            "saw_zero": self._saw_zero.detach().clone(),
            "unit_rate": self._unit_rate.detach().clone(),
            "log_push": self._log_push.detach().clone(),
            "steps": self.steps,
            "shift": self.shift,
            "settled": self.settled,
            "target": self.target,
            "measure": self.measure,
            "base": self.base,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output (target and measure must match)."""
        keys = ("log_scale", "log_push", "measured", "start", "saw_zero", "unit_rate")
        missing = {*keys, "steps", "shift", "settled"} - set(state)
        if missing:
            raise ActregError(f"not a TargetSparsity state_dict: missing {sorted(missing)}")
        for key in ("target", "measure", "base"):
            if key in state and state[key] != getattr(self, key):
                raise ActregError(
                    f"state_dict has {key}={state[key]!r}, this controller {getattr(self, key)!r}"
                )
        device = self._log_scale.device
        for key in keys:
            setattr(self, f"_{key}", torch.as_tensor(state[key]).to(device).clone())
        self.steps = int(state["steps"])
        self.shift = float(state["shift"])
        self.settled = bool(state["settled"])

    def _args(self) -> list[str]:
        args = [repr(self.penalty), f"target={self.target:g}"]
        if self.measure != "zero_fraction":
            args.append(f"measure={self.measure!r}")
        return args
