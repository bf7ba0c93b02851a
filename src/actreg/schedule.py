"""A coefficient that follows the training step: :class:`Scheduled` (e.g. a warm-up).

:class:`Scheduled` multiplies a penalty by a function of the step (a linear warm-up, as
sparse-autoencoder practice does, or any ``step -> factor``). It is a penalty itself and
counts a step each time it is called in a training forward (grad enabled, a tensor that
requires grad, not a checkpoint recomputation in backward), as
:class:`actreg.TargetSparsity` does. The lab's training loop uses it for its
``penalty_warmup_steps``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor

from actreg._errors import ActregError
from actreg._hooks import training
from actreg._penalty import Penalty, build, check_coef, check_penalty, make_penalty, serialize

__all__ = ["Scheduled"]


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
        >>> from actreg.schedule import Scheduled
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
        if training(x):
            self.steps += 1
        return value

    def state_dict(self) -> dict[str, Any]:
        """``{"steps": n}``, and the wrapped penalty's state under ``"penalty"`` if it has
        one (a controller inside a warm-up resumes exactly too)."""
        state: dict[str, Any] = {"steps": self.steps}
        inner = self.penalty.state_dict()
        if inner:
            state["penalty"] = inner
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        if "steps" not in state:
            raise ActregError(f"not a Scheduled state_dict: keys {sorted(state)}")
        self.steps = int(state["steps"])
        if "penalty" in state:
            self.penalty.load_state_dict(state["penalty"])

    def _args(self) -> list[str]:
        args = [repr(self.penalty)]
        if self.schedule is not None:
            args.append(f"schedule={getattr(self.schedule, '__name__', 'fn')}")
        if self.warmup:
            args.append(f"warmup={self.warmup}")
        return args
