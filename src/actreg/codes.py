"""Sparse codes of the current generation, next to :class:`actreg.TopK`.

* :class:`BatchTopK` (Bussmann, Leask & Nanda 2024): the ``k * positions`` largest values of
  the whole batch, so ``k`` active units per position on average; at inference a single
  global threshold estimated in training, so each example is coded on its own.
* :class:`JumpReLU` (Rajamanoharan et al. 2024): ``z * H(z - theta)`` with a learned
  threshold per unit; its L0 is trained through straight-through estimators
  (:meth:`JumpReLU.l0`, :meth:`JumpReLU.penalty`).
* :func:`tie_init`: an encoder initialized as the transpose of its decoder (Gao et al. 2024).

Design choices:

* BatchTopK keeps only positive values (ReLU, then the batch top-k), as in the paper, so its
  threshold (the running mean of the smallest kept value) is positive and inference is
  ``x * (x > threshold)``. A BatchTopK that has never trained has no threshold: evaluation
  then raises instead of silently falling back to the batch rule.
* JumpReLU's penalty has to see the pre-activations (a unit just under its threshold outputs
  0), which a hook on the output cannot. The module keeps a reference to its last input
  (only while grad is enabled; autograd keeps that tensor anyway) and its penalty reads it.
  Called on a tensor that did not come from that forward (evaluation, ``when="always"``),
  the penalty counts non-zeros of the tensor itself: the same value, without gradient.
* The threshold is stored as ``log_threshold`` (as the paper's reference code), so it stays
  positive under any optimizer step.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from actreg import functional as F
from actreg._errors import ActregError
from actreg._hooks import in_backward
from actreg.penalties import Penalty, check_coef

__all__ = ["BatchTopK", "JumpReLU", "JumpReLUL0", "tie_init"]


def _check_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ActregError(f"{name} must be an int, got {value!r}")
    return value


def _check_width(k: float, x: Tensor, dim: int, who: str) -> int:
    """The unit axis of ``x`` (normalized); raise if ``k`` exceeds the layer's width."""
    dim = F.check_dim(x, dim)
    width = x.shape[dim]
    if k > width:
        raise ActregError(
            f"{who} k={k:g} is larger than the layer: axis {dim} of its input "
            f"{tuple(x.shape)} has {width} units; use k <= {width} (or the right dim=)"
        )
    return dim


class BatchTopK(nn.Module):
    """Keep the ``k * positions`` largest positive values of the whole batch, zero the rest.

    A *position* is every index but the unit axis ``dim`` (an example of ``(N, H)``, a
    pixel of ``(N, C, H, W)``), so ``k`` units are active per position on average: busy
    examples get more, easy ones fewer. In training the module also keeps the running mean
    of the smallest kept value (``threshold``, a buffer in ``state_dict``); in evaluation
    it outputs ``x * (x > threshold)``, one example at a time.

    Args:
        k: active units per position on average (> 0; may be fractional).
        dim: the unit axis (-1 for linear layers, 1 for conv maps).
        momentum: weight of each training batch in the running threshold (0.1: the
            threshold follows the code as it trains; with 0.01, as in SAELens, a
            784-1024 MNIST autoencoder with k=32 coded test images with 24.6 units after
            350 steps, with 0.1 with 31.2).

    Example:
        >>> import torch, actreg
        >>> code = actreg.BatchTopK(1)
        >>> code(torch.tensor([[3.0, 2.0], [1.0, 0.5]]))  # 2 values kept, both in row 0
        tensor([[3., 2.],
                [0., 0.]])
        >>> code.threshold
        tensor(2.)
        >>> _ = code.eval(); code(torch.tensor([[1.5, 2.5]]))
        tensor([[0.0000, 2.5000]])
    """

    threshold: Tensor

    def __init__(self, k: float, dim: int = -1, momentum: float = 0.1) -> None:
        super().__init__()
        if isinstance(k, bool) or not isinstance(k, (int, float)) or not k > 0:
            raise ActregError(f"BatchTopK needs k > 0 (active units per position), got {k!r}")
        if not 0 < momentum <= 1:
            raise ActregError(f"momentum must lie in (0, 1], got {momentum!r}")
        self.k = k
        self.dim = _check_int(dim, "BatchTopK dim")
        self.momentum = float(momentum)
        self.register_buffer("threshold", torch.tensor(math.nan))

    def forward(self, x: Tensor) -> Tensor:
        dim = _check_width(self.k, x, self.dim, "BatchTopK")
        if not self.training:
            if bool(torch.isnan(self.threshold)):
                raise ActregError(
                    "BatchTopK has no inference threshold yet: it is estimated in training "
                    "mode; train the model first (or set module.threshold.fill_(value))"
                )
            return x * (x > self.threshold.to(x.dtype))
        positions = x.numel() // max(x.shape[dim], 1)
        count = min(round(self.k * positions), x.numel())
        if count == 0:
            return torch.zeros_like(x)
        values, indices = x.flatten().topk(count)
        kept = torch.zeros(x.numel(), dtype=torch.bool, device=x.device)
        out = x.clamp_min(0) * kept.scatter(0, indices, True).view_as(x)
        if not in_backward():
            with torch.no_grad():
                self._update(values)
        return out

    def _update(self, values: Tensor) -> None:
        # The smallest positive kept value (sorted descending), without a host sync.
        smallest = torch.where(values > 0, values, math.inf).min().to(self.threshold)
        old = self.threshold
        new = torch.where(
            torch.isnan(old), smallest, (1 - self.momentum) * old + self.momentum * smallest
        )
        self.threshold.copy_(torch.where(torch.isfinite(smallest), new, old))

    def extra_repr(self) -> str:
        return f"k={self.k:g}, dim={self.dim}"


def _rectangle(u: Tensor) -> Tensor:
    """The rectangle kernel ``K(u) = H(u + 1/2) - H(u - 1/2)``."""
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


def _unit_shape(x: Tensor, dim: int) -> list[int]:
    shape = [1] * x.dim()
    shape[dim] = x.shape[dim]
    return shape


def _sum_to_units(g: Tensor, dim: int) -> Tensor:
    return g.movedim(dim, -1).reshape(-1, g.shape[dim]).sum(0)


class _JumpReLUFn(torch.autograd.Function):
    """``z * H(z - theta)``; d/dz = H(z - theta), d/dtheta = -(theta / eps) K((z - theta) / eps)."""

    @staticmethod
    def forward(ctx: Any, z: Tensor, theta: Tensor, eps: float, dim: int) -> Tensor:
        t = theta.view(_unit_shape(z, dim))
        ctx.save_for_backward(z, theta)
        ctx.eps, ctx.dim = eps, dim
        return z * (z > t).to(z.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, None, None]:
        z, theta = ctx.saved_tensors
        t = theta.view(_unit_shape(z, ctx.dim))
        grad_z = grad * (z > t).to(grad.dtype)
        pseudo = -(t / ctx.eps) * _rectangle((z - t) / ctx.eps)
        return grad_z, _sum_to_units(grad * pseudo, ctx.dim), None, None


class _StepFn(torch.autograd.Function):
    """``H(z - theta)``; d/dz = 0 (as in the paper), d/dtheta = -(1 / eps) K((z - theta) / eps)."""

    @staticmethod
    def forward(ctx: Any, z: Tensor, theta: Tensor, eps: float, dim: int) -> Tensor:
        t = theta.view(_unit_shape(z, dim))
        ctx.save_for_backward(z, theta)
        ctx.eps, ctx.dim = eps, dim
        return (z > t).to(z.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, Tensor, None, None]:
        z, theta = ctx.saved_tensors
        t = theta.view(_unit_shape(z, ctx.dim))
        pseudo = -(1.0 / ctx.eps) * _rectangle((z - t) / ctx.eps)
        return None, _sum_to_units(grad * pseudo, ctx.dim), None, None


class JumpReLU(nn.Module):
    """``z * H(z - theta)`` with a learned threshold ``theta > 0`` per unit (JumpReLU SAEs).

    Gradients: ``H(z - theta)`` for ``z``; for ``theta`` the paper's pseudo-derivative
    ``-(theta / bandwidth) * K((z - theta) / bandwidth)`` with the rectangle kernel ``K``,
    so only pre-activations within ``bandwidth / 2`` of the threshold move it. Add
    ``coef * module.l0()`` to the loss (or attach ``module.penalty(coef)``) to train the
    number of active units directly.

    Args:
        units: the width of the unit axis.
        dim: the unit axis (-1 for linear layers, 1 for conv maps).
        threshold: the initial threshold (> 0), one value or one per unit.
        bandwidth: the kernel width of the straight-through estimators (> 0), in the
            units of the pre-activations (the paper's 1e-3 is for inputs scaled to
            ``E||x||^2 = d``).

    Under Adam a step moves ``log_threshold`` by about the learning rate, so a threshold
    changes by at most ~``lr`` of itself per step; in short runs give the thresholds their
    own parameter group with a larger rate (e.g. 0.02).

    Example:
        >>> import torch, actreg
        >>> act = actreg.JumpReLU(3, threshold=0.5)
        >>> act(torch.tensor([[0.2, 0.7, -1.0]]))
        tensor([[0.0000, 0.7000, -0.0000]], grad_fn=<_JumpReLUFnBackward>)
        >>> act.l0()
        tensor(1., grad_fn=<DivBackward0>)
    """

    def __init__(
        self,
        units: int,
        dim: int = -1,
        threshold: float | Tensor = 1e-3,
        bandwidth: float = 1e-3,
    ) -> None:
        super().__init__()
        units = _check_int(units, "JumpReLU units")
        if units < 1:
            raise ActregError(f"JumpReLU needs units >= 1, got {units}")
        theta = torch.as_tensor(threshold, dtype=torch.get_default_dtype()).detach().clone()
        if theta.numel() not in (1, units):
            raise ActregError(f"threshold must be one value or {units} (one per unit)")
        if not bool(torch.isfinite(theta).all()) or bool((theta <= 0).any()):
            raise ActregError(
                f"JumpReLU thresholds must be finite and > 0 (they are learned as log "
                f"thresholds), got min {float(theta.min()):g}; use a small positive value "
                "such as 1e-3"
            )
        self.bandwidth = check_coef(bandwidth, "bandwidth")
        if self.bandwidth <= 0:
            raise ActregError("bandwidth must be > 0, e.g. 1e-3")
        self.units = units
        self.dim = _check_int(dim, "JumpReLU dim")
        self.log_threshold = nn.Parameter(theta.expand(units).log().clone())
        self._last: Tensor | None = None

    def __getstate__(self) -> dict[str, Any]:
        # The last input belongs to a graph: copies and pickles start without it.
        state = self.__dict__.copy()
        state["_last"] = None
        return state

    @property
    def threshold(self) -> Tensor:
        """The thresholds ``exp(log_threshold)``, one per unit."""
        return self.log_threshold.exp()

    def _check(self, x: Tensor) -> int:
        dim = F.check_dim(x, self.dim)
        if x.shape[dim] != self.units:
            raise ActregError(
                f"JumpReLU({self.units}) got {x.shape[dim]} units on axis {dim} of a "
                f"{tuple(x.shape)} input; build it with units={x.shape[dim]} or set dim="
            )
        return dim

    def forward(self, x: Tensor) -> Tensor:
        dim = self._check(x)
        self._last = x if torch.is_grad_enabled() else None
        theta = self.threshold.to(x.dtype)
        return _JumpReLUFn.apply(x, theta, self.bandwidth, dim)

    def l0(self, x: Tensor | None = None) -> Tensor:
        """Active units per position of the last forward (or of pre-activations ``x``).

        The value is the exact count; its gradient reaches the thresholds only, through
        ``-(1 / bandwidth) * K((z - theta) / bandwidth)``.
        """
        z = self._last if x is None else x
        if z is None:
            raise ActregError(
                "JumpReLU.l0() needs a forward with grad enabled first (or pass the "
                "pre-activations: module.l0(z))"
            )
        dim = self._check(z)
        step = _StepFn.apply(z, self.threshold.to(z.dtype), self.bandwidth, dim)
        return step.sum() / max(z.numel() // self.units, 1)

    def penalty(self, coef: float = 1e-3) -> JumpReLUL0:
        """A penalty ``coef * l0`` to attach to this module (``{"act": act.penalty(1e-3)}``)."""
        return JumpReLUL0(self, coef)

    def extra_repr(self) -> str:
        return f"{self.units}, dim={self.dim}, bandwidth={self.bandwidth:g}"


class JumpReLUL0(Penalty):
    """``coef * L0`` of a :class:`JumpReLU`, trained through its threshold's estimator.

    Attach it to the JumpReLU module itself; :class:`~actreg.TargetSparsity` can wrap it.
    On a tensor that is not the output of the module's last forward with grad, it counts
    that tensor's non-zeros per position (same value, no gradient).

    Example:
        >>> import torch, actreg
        >>> act = actreg.JumpReLU(4)
        >>> reg = actreg.attach(torch.nn.Sequential(act), {"0": act.penalty(0.1)})
        >>> _ = act(torch.ones(2, 4)); reg.penalty()  # 4 active units per row
        tensor(0.4000, grad_fn=<MulBackward0>)
    """

    def __init__(self, module: JumpReLU, coef: float = 1e-3) -> None:
        if not isinstance(module, JumpReLU):
            raise ActregError(f"JumpReLUL0 needs a JumpReLU module, got {type(module).__name__}")
        self.module = module
        self.coef = coef

    def get_config(self) -> dict[str, Any]:
        """``module`` and ``coef``. Not in the name registry: the config holds the module
        itself, so build it with :meth:`JumpReLU.penalty` rather than by name."""
        return {"module": self.module, "coef": self.coef}

    def forward(self, x: Tensor) -> Tensor:
        last = self.module._last
        if last is not None and last.shape == x.shape and x.requires_grad:
            return self.coef * self.module.l0()
        dim = self.module._check(x)
        return self.coef * (x != 0).sum().to(x.dtype) / max(x.numel() // x.shape[dim], 1)

    def _args(self) -> list[str]:
        return [f"{self.coef:g}", f"units={self.module.units}"]


@torch.no_grad()
def tie_init(encoder: nn.Linear, decoder: nn.Linear) -> None:
    """Set ``encoder.weight`` to ``decoder.weight.T`` (Gao et al. 2024's initialization).

    Example:
        >>> import torch, actreg
        >>> enc, dec = torch.nn.Linear(4, 16), torch.nn.Linear(16, 4)
        >>> actreg.tie_init(enc, dec); torch.equal(enc.weight, dec.weight.T)
        True
    """
    for name, layer in (("encoder", encoder), ("decoder", decoder)):
        if not isinstance(layer, nn.Linear):
            raise ActregError(f"tie_init needs nn.Linear layers; {name} is {type(layer).__name__}")
    if encoder.weight.shape != decoder.weight.T.shape:
        raise ActregError(
            f"encoder weight {tuple(encoder.weight.shape)} is not the transpose of decoder "
            f"weight {tuple(decoder.weight.shape)}: need Linear(d, n) and Linear(n, d)"
        )
    encoder.weight.copy_(decoder.weight.T)
