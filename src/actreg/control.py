"""Coefficients that change during training: a target-sparsity controller and schedules.

:class:`TargetSparsity` wraps a penalty and scales it so that the measured sparsity of the
tensor it penalizes settles at a target: "90% zeros in this layer" without a search.
:class:`Scheduled` multiplies a penalty by a function of the step (e.g. a linear warm-up,
as sparse-autoencoder practice does).

Both are penalties themselves, usable in :func:`actreg.attach` specs. They count a step
each time they are called with grad enabled on a tensor that requires grad (a training
forward), not during evaluation or a checkpoint recomputation in backward. Use one object
per layer: an object shared by several layers counts one step per layer and call.

Example:
    >>> import torch, actreg
    >>> model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU())
    >>> ctl = actreg.TargetSparsity(actreg.L1(1e-3), target=0.9)
    >>> reg = actreg.attach(model, {"1": ctl})
    >>> loss = model(torch.randn(4, 8)).sum() + reg.penalty()
    >>> ctl.steps, ctl.coef > 1e-3  # about half the ReLU outputs are zero: coefficient up
    (1, True)
    >>> reg.remove()
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from actreg import metrics
from actreg._errors import ActregError
from actreg._hooks import in_backward
from actreg._penalty import (
    Penalty,
    build,
    check_coef,
    check_penalty,
    make_penalty,
    serialize,
)

__all__ = ["MEASURES", "Scheduled", "TargetSparsity"]

MEASURES = ("zero_fraction", "l0")


def _training(x: Tensor) -> bool:
    return torch.is_grad_enabled() and x.requires_grad and not in_backward()


class TargetSparsity(Penalty, name="target_sparsity"):
    """Adjust a penalty's coefficient so that the sparsity of its layer settles at a target.

    Each training call measures the sparsity of the penalized tensor and takes a dual-ascent
    step on the log of the coefficient, ``log c += rate * log(active / wanted)`` clipped to
    ``[-rate, rate]``, where ``active`` is the share of non-zero values (``1 - zero_fraction``)
    and ``wanted`` is ``1 - target`` (for ``measure="l0"``: active units and ``target``).
    Everything stays on the tensor's device; nothing is copied to the host in training.

    Args:
        penalty: the penalty to scale, any penalty (sums too); its ``coef`` (for a sum the
            sum of its terms', see :mod:`actreg.penalties`) is the starting value (> 0).
        target: the wanted zero fraction in (0, 1), or with ``measure="l0"`` the wanted
            number of active units per position (> 0).
        measure: ``"zero_fraction"`` (share of values with ``|x| <= eps``) or ``"l0"``
            (active units along ``dim`` per position), as in :mod:`actreg.metrics`.
        rate: the step size on the log-coefficient per training call.
        eps: values with ``|x| <= eps`` count as zero.
        dim: the unit axis for ``measure="l0"``.
        smoothing: the factor of the running mean reported as :attr:`measured`.
        min_coef: lower bound of the coefficient.
        max_coef: upper bound of the coefficient.

    Attributes:
        steps: training calls so far.

    Its state (the log-scale, the running measurement, the step) is in :meth:`state_dict`,
    so a resumed run continues exactly; its settings are in :meth:`get_config`.
    """

    composite = True

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
    ) -> None:
        self.penalty = check_penalty(penalty, "TargetSparsity")
        if measure not in MEASURES:
            raise ActregError(f"unknown measure {measure!r}; use one of {MEASURES}")
        target = check_coef(target, "target")
        if measure == "zero_fraction" and not 0 < target < 1:
            raise ActregError(f"a zero-fraction target must lie in (0, 1), got {target!r}")
        if measure == "l0" and target <= 0:
            raise ActregError(f"an l0 target (active units) must be > 0, got {target!r}")
        if not 0 <= smoothing < 1:
            raise ActregError(f"smoothing must lie in [0, 1), got {smoothing!r}")
        self.target = target
        self.measure = measure
        self.rate = check_coef(rate, "rate")
        self.eps = metrics.check_eps(eps)
        self.dim = dim
        self.smoothing = float(smoothing)
        self.base = check_coef(penalty.coef, "the wrapped penalty's coefficient")
        if self.base <= 0:
            raise ActregError(f"{penalty!r} has coefficient 0: start from a positive one")
        self.min_coef = check_coef(min_coef, "min_coef")
        self.max_coef = check_coef(max_coef, "max_coef")
        if not 0 < self.min_coef <= self.base <= self.max_coef:
            raise ActregError(
                f"need 0 < min_coef <= coefficient <= max_coef, got {self.min_coef:g}, "
                f"{self.base:g}, {self.max_coef:g}"
            )
        self.steps = 0
        self._log_scale = torch.zeros(())
        self._measured = torch.zeros(())

    def _measure(self, x: Tensor) -> Tensor:
        if self.measure == "l0":
            return metrics.l0(x, self.dim, self.eps).float()
        return metrics.zero_fraction(x, self.eps).float()

    def forward(self, x: Tensor) -> Tensor:
        if self._log_scale.device != x.device:
            self._log_scale = self._log_scale.to(x.device)
            self._measured = self._measured.to(x.device)
        value = self.penalty.forward(x) * self._log_scale.exp()
        if _training(x):
            with torch.no_grad():
                self._update(self._measure(x.detach()))
        return value

    def _update(self, m: Tensor) -> None:
        # The log-ratio of active units to the target's: symmetric in "too many" and
        # "too few", and as strong near 95% zeros as near 50%.
        if self.measure == "l0":
            active, wanted = m, self.target
        else:
            active, wanted = 1 - m, 1 - self.target
        error = torch.log((active + 1e-6) / wanted).clamp(-1.0, 1.0)
        low, high = math.log(self.min_coef / self.base), math.log(self.max_coef / self.base)
        self._log_scale = (self._log_scale + self.rate * error).clamp(low, high)
        w = self.smoothing if self.steps else 0.0
        self._measured = w * self._measured + (1 - w) * m
        self.steps += 1

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
        """The controller's state: log-scale, running measurement, step (and the settings)."""
        return {
            "log_scale": self._log_scale.detach().clone(),
            "measured": self._measured.detach().clone(),
            "steps": self.steps,
            "target": self.target,
            "measure": self.measure,
            "base": self.base,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output (target and measure must match)."""
        missing = {"log_scale", "measured", "steps"} - set(state)
        if missing:
            raise ActregError(f"not a TargetSparsity state_dict: missing {sorted(missing)}")
        for key in ("target", "measure", "base"):
            if key in state and state[key] != getattr(self, key):
                raise ActregError(
                    f"state_dict has {key}={state[key]!r}, this controller {getattr(self, key)!r}"
                )
        device = self._log_scale.device
        self._log_scale = torch.as_tensor(state["log_scale"]).to(device).clone()
        self._measured = torch.as_tensor(state["measured"]).to(device).clone()
        self.steps = int(state["steps"])

    def _args(self) -> list[str]:
        args = [repr(self.penalty), f"target={self.target:g}"]
        if self.measure != "zero_fraction":
            args.append(f"measure={self.measure!r}")
        return args


class Scheduled(Penalty, name="scheduled"):
    """A penalty times a factor that depends on the training step.

    ``coef`` is the wrapped penalty's (reading and setting it reach through); the value
    in effect at the current step is ``factor() * coef``. A config holds the schedule
    callable itself: it round-trips in Python (and pickles when the callable does), and
    through JSON only without a schedule.

    Args:
        penalty: the penalty to scale, any penalty (sums too).
        schedule: ``step -> factor`` (a float >= 0); ``None`` for a constant 1.
        warmup: ramp the factor linearly from ``1 / warmup`` to 1 over the first ``warmup``
            steps (multiplies ``schedule``).

    Example:
        >>> import torch, actreg
        >>> from actreg.control import Scheduled
        >>> p = Scheduled(actreg.L1(1.0), warmup=4)
        >>> x = torch.ones(1, 2, requires_grad=True)
        >>> [round(float(p(x).detach()), 2) for _ in range(5)]
        [0.5, 1.0, 1.5, 2.0, 2.0]
    """

    composite = True

    def __init__(
        self,
        penalty: Penalty,
        schedule: Callable[[int], float] | None = None,
        *,
        warmup: int = 0,
    ) -> None:
        self.penalty = check_penalty(penalty, "Scheduled")
        if schedule is not None and not callable(schedule):
            raise ActregError(f"schedule must be a callable step -> factor, got {schedule!r}")
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise ActregError(f"warmup must be an int >= 0 (steps), got {warmup!r}")
        self.schedule = schedule
        self.warmup = warmup
        self.steps = 0

    def factor(self, step: int | None = None) -> float:
        """The factor at ``step`` (default: the current step)."""
        step = self.steps if step is None else step
        value = 1.0 if self.schedule is None else self.schedule(step)
        value = check_coef(value, f"schedule({step})")
        if self.warmup:
            value *= min(1.0, (step + 1) / self.warmup)
        return value

    @property
    def coef(self) -> float:
        """The wrapped penalty's coefficient, the one the schedule multiplies."""
        return self.penalty.coef

    @coef.setter
    def coef(self, value: float) -> None:
        self.penalty.coef = value

    def get_config(self) -> dict[str, Any]:
        """``penalty`` (as :func:`actreg.serialize` gives it), ``schedule``, ``warmup``."""
        return {
            "penalty": serialize(self.penalty),
            "schedule": self.schedule,
            "warmup": self.warmup,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Penalty:
        """Build a schedule from :meth:`get_config` output (at step 0)."""
        return build(cls, (), {**config, "penalty": make_penalty(config["penalty"])})

    def forward(self, x: Tensor) -> Tensor:
        value = self.factor() * self.penalty.forward(x)
        if _training(x):
            self.steps += 1
        return value

    def state_dict(self) -> dict[str, Any]:
        """``{"steps": n}``."""
        return {"steps": self.steps}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        self.steps = int(state["steps"])

    def _args(self) -> list[str]:
        args = [repr(self.penalty)]
        if self.schedule is not None:
            args.append(f"schedule={getattr(self.schedule, '__name__', 'fn')}")
        if self.warmup:
            args.append(f"warmup={self.warmup}")
        return args
