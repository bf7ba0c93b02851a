"""Keeping units alive while training: :class:`AuxK`, :class:`FiringFloor`, :class:`Reviver`.

:func:`actreg.revive` (in :mod:`actreg.revival`) re-initializes units that are already dead;
the objects here act during training so that fewer die or stay dead.

* :class:`AuxK` (Gao et al. 2024): the top ``k_aux`` *dead* latents (not fired for
  ``dead_after`` positions) reconstruct the residual of the main code through the decoder,
  which gives them gradient they would otherwise never get. It tracks firing itself, from
  the code it is given each step.
* :class:`FiringFloor`: a penalty on units whose firing rate falls under a floor. A dead
  ReLU passes no gradient through its output, so the penalty reads the *pre-activations*:
  attach it to the Linear or Conv module that feeds the activation (``{"fc1": ...}``).

Design choices:

* AuxK takes ``(pre, code, residual)`` rather than the model, so it serves any autoencoder
  whose code is a TopK/BatchTopK of pre-activations and whose decoder is linear in the code;
  the decoder's bias is left out (it is already in the main reconstruction), and the
  residual is detached so that the auxiliary loss trains only the dead latents' paths.
  Its loss is the mean squared error (``reduction="mean"``, like ``F.mse_loss``) times
  ``coef`` (the paper's 1/32), and exactly 0 when no latent is dead (no host sync).
* FiringFloor's value is the hinge ``coef * mean_j max(0, floor - rate_j)`` on the measured
  firing rate (the larger of the batch's and its running mean, so a unit that fires again
  is released at once); its gradient is that of a smooth rate ``mean sigmoid(z / s_j)``,
  where ``s_j`` is the unit's RMS pre-activation in the batch. Scaling by ``s_j`` keeps the
  gradient alive however far below zero a dead unit's pre-activations sit, without a
  temperature to tune per dataset.
* :class:`Reviver` calls :func:`actreg.revive` (``init="fresh"``) on its layers at regular
  steps over the first part of training: a penalty pushing a layer to high sparsity kills
  some units in its first few dozen steps, before per-unit rates are known, and a dead
  ReLU never comes back by itself. In docs/TARGET.md (MNIST, 3x1000 MLP, target 0.9, 3
  seeds) five revivals over the first 70% of training took the dead units from 4.2 / 0.3 /
  3.5% to 0.4 / 0.0 / 0.1% (unpenalized: 1.8 / 10.4 / 18.5%). Under a sparsity target pass
  ``rate=1 - target``: units revived at bias 0 fire on about half the inputs, the layer's
  controller then raises its coefficient and kills them again (digits at 0.95: 49% of the
  third layer dead with bias-0 revival, 11% with ``rate``). Reviving later (80%) kept
  fewer dead but left the last revived units too little time to become sparse (0.95 target:
  higher error); stopping at 60% let the third layer die again. It is stateless given the
  step number, so a resumed run revives at the same steps. A model not called as
  ``model(batch)`` (an LSTM language model takes its hidden state too) gives ``forward``,
  passed on to :func:`actreg.revive`: the sample stays a tensor of examples.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from actreg import functional as F
from actreg._errors import ActregError
from actreg._hooks import in_backward
from actreg._reinit import check_floor, check_rate
from actreg.penalties import Penalty, check_coef
from actreg.revival import revive as _revive

__all__ = ["AuxK", "FiringFloor", "Reviver"]


def _training(x: Tensor) -> bool:
    return torch.is_grad_enabled() and x.requires_grad and not in_backward()


def _weight_of(decoder: Any) -> Tensor:
    if isinstance(decoder, nn.Linear):
        return decoder.weight
    if isinstance(decoder, Tensor) and decoder.dim() == 2:
        return decoder
    raise ActregError(
        "AuxK needs the decoder as an nn.Linear (latents -> output) or its 2-d weight "
        f"(output, latents), got {type(decoder).__name__}"
    )


class AuxK(nn.Module):
    """The auxiliary loss of TopK autoencoders on dead latents (Gao et al. 2024).

    Each training call counts, per latent, the positions since it last fired in ``code``;
    latents silent for ``dead_after`` positions are dead. The ``k_aux`` dead latents with
    the largest pre-activations then reconstruct the main code's residual through the
    decoder's weight: ``coef * mean((e - W relu(topk_dead(pre)))**2)``, ``e`` the residual.

    Args:
        decoder: the decoder's ``nn.Linear`` reading the code (or its weight, shape
            ``(output, latents)``); only its weight is used.
        k_aux: how many dead latents reconstruct the residual (> 0; the paper uses about
            half the input width).
        dead_after: positions (examples, tokens) without firing after which a latent counts
            as dead.
        coef: the factor of the loss (the paper's 1/32).

    The firing counter is the buffer ``since_fired`` (in ``state_dict``).

    Example:
        >>> import torch, actreg
        >>> enc, dec = torch.nn.Linear(8, 32), torch.nn.Linear(32, 8)
        >>> aux = actreg.AuxK(dec, k_aux=4, dead_after=0)  # every silent latent is dead
        >>> x = torch.randn(16, 8)
        >>> pre = enc(x); code = actreg.TopK(2)(pre.relu()); x_hat = dec(code)
        >>> loss = torch.nn.functional.mse_loss(x_hat, x) + aux(pre, code, x - x_hat)
        >>> int((aux.since_fired > 0).sum()) > 0, aux(pre, code, x - x_hat) > 0
        (True, tensor(True))
    """

    since_fired: Tensor

    def __init__(
        self,
        decoder: nn.Linear | Tensor,
        k_aux: int,
        dead_after: int = 10_000,
        coef: float = 1 / 32,
    ) -> None:
        super().__init__()
        weight = _weight_of(decoder)
        latents = weight.shape[1]
        if isinstance(k_aux, bool) or not isinstance(k_aux, int) or k_aux <= 0:
            raise ActregError(
                f"AuxK needs an integer k_aux > 0 (dead latents used), got {k_aux!r}; "
                f"e.g. k_aux={max(1, weight.shape[0] // 2)} (half the output width)"
            )
        if k_aux > latents:
            raise ActregError(f"k_aux={k_aux} exceeds the decoder's {latents} latents")
        if isinstance(dead_after, bool) or not isinstance(dead_after, int) or dead_after < 0:
            raise ActregError(f"dead_after must be an int >= 0 (positions), got {dead_after!r}")
        self._decoder = (decoder,)  # a tuple: not registered, so not in this state_dict
        self.k_aux = k_aux
        self.dead_after = dead_after
        self.coef = check_coef(coef, "coef")
        self.register_buffer(
            "since_fired", torch.zeros(latents, dtype=torch.int64, device=weight.device)
        )

    @property
    def dead(self) -> Tensor:
        """A boolean mask of the latents that count as dead now."""
        return self.since_fired >= max(self.dead_after, 1)

    def update(self, code: Tensor) -> None:
        """Count the positions of ``code`` (latents on the last axis) since each latent fired."""
        with torch.no_grad():
            flat = code.detach().reshape(-1, code.shape[-1])
            fired = (flat != 0).any(0)
            self.since_fired.copy_(
                torch.where(fired, 0, self.since_fired + flat.shape[0]).to(self.since_fired)
            )

    def forward(self, pre: Tensor, code: Tensor, residual: Tensor) -> Tensor:
        """The loss; in training (grad enabled on ``pre``) it first counts ``code``'s firing.

        Args:
            pre: the pre-activations, latents on the last axis.
            code: the sparse code computed from ``pre`` (same shape).
            residual: ``x - x_hat`` of the main reconstruction (detached here).
        """
        weight = _weight_of(self._decoder[0])
        if pre.shape != code.shape or pre.shape[-1] != weight.shape[1]:
            raise ActregError(
                f"AuxK expects pre and code of shape (..., {weight.shape[1]}), got "
                f"{tuple(pre.shape)} and {tuple(code.shape)}"
            )
        if _training(pre):
            self.update(code)
        dead = self.dead
        masked = pre.masked_fill(~dead, float("-inf"))
        values, indices = masked.topk(self.k_aux, dim=-1)
        z = torch.zeros_like(pre).scatter(-1, indices, values.clamp_min(0))
        error = residual.detach() - nn.functional.linear(z, weight.to(z.dtype))
        return self.coef * error.square().mean() * dead.any().to(error.dtype)

    def extra_repr(self) -> str:
        return f"k_aux={self.k_aux}, dead_after={self.dead_after}, coef={self.coef:g}"


class FiringFloor(Penalty, name="firing_floor"):
    """Push units whose firing rate falls under ``floor`` back up (attach to pre-activations).

    A unit fires at a position when its pre-activation exceeds ``threshold`` (0 for ReLU).
    Value: ``coef * mean_j max(0, floor - rate_j)``, ``rate_j`` the larger of the batch's
    firing rate and its running mean; gradient: that of ``mean sigmoid((z - threshold) / s_j)``
    for the units under the floor (``s_j`` the unit's RMS in the batch), so units above the
    floor are left alone.

    Args:
        coef: the coefficient. A dead unit's own weights get no other gradient, so under
            Adam its scale hardly matters for them; it sets how hard the push reaches the
            layers below (the mean over units keeps that bounded however wide the layer).
        floor: the wanted minimum firing rate in (0, 1).
        dim: the unit axis (-1 for linear layers, 1 for conv maps).
        momentum: weight of each batch in the running firing rate (0.1: a unit that stops
            firing is under the floor within a few dozen steps).
        threshold: the pre-activation above which a unit counts as firing.

    Example:
        >>> import torch, actreg
        >>> fc = torch.nn.Linear(4, 3)
        >>> with torch.no_grad(): fc.bias[0] = -100.0  # unit 0 never fires
        >>> floor = actreg.FiringFloor(1.0, floor=0.05)
        >>> reg = actreg.attach(torch.nn.Sequential(fc), {"0": floor})
        >>> _ = fc(torch.randn(8, 4)); reg.penalty().backward()
        >>> bool(fc.bias.grad[0] < 0)  # descending raises the dead unit's bias
        True
    """

    def __init__(
        self,
        coef: float = 1.0,
        floor: float = 0.01,
        dim: int = -1,
        momentum: float = 0.1,
        threshold: float = 0.0,
    ) -> None:
        self.coef = coef
        floor = check_coef(floor, "floor")
        if not 0 < floor < 1:
            raise ActregError(f"floor (a firing rate) must lie in (0, 1), got {floor!r}")
        if not 0 < momentum <= 1:
            raise ActregError(f"momentum must lie in (0, 1], got {momentum!r}")
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise ActregError(f"dim must be an int (the unit axis), got {dim!r}")
        self.floor = floor
        self.dim = dim
        self.momentum = float(momentum)
        self.threshold = float(threshold)
        self.steps = 0
        self._rate: Tensor | None = None

    def get_config(self) -> dict[str, Any]:
        """The constructor's arguments (the running rate is in :meth:`state_dict`)."""
        return {
            "coef": self.coef,
            "floor": self.floor,
            "dim": self.dim,
            "momentum": self.momentum,
            "threshold": self.threshold,
        }

    @property
    def rate(self) -> Tensor | None:
        """The running firing rate per unit (``None`` before the first training call)."""
        return self._rate

    def forward(self, x: Tensor) -> Tensor:
        dim = F.check_dim(x, self.dim)
        z = (x - self.threshold).movedim(dim, -1).reshape(-1, x.shape[dim])
        batch_rate = (z.detach() > 0).to(z.dtype).mean(0)
        if self._rate is not None and self._rate.shape != batch_rate.shape:
            raise ActregError(
                f"FiringFloor saw {self._rate.numel()} units before and {x.shape[dim]} now; "
                "use one FiringFloor per layer"
            )
        rate = batch_rate
        if self._rate is not None:
            rate = torch.maximum(batch_rate, self._rate.to(batch_rate))
        if _training(x):
            self._update(batch_rate)
        scale = z.detach().square().mean(0).sqrt().clamp_min(1e-6)
        smooth = torch.sigmoid(z / scale).mean(0)
        measured = rate + (smooth - smooth.detach())
        return self.coef * (self.floor - measured).clamp_min(0).mean()

    def _update(self, batch_rate: Tensor) -> None:
        with torch.no_grad():
            if self._rate is None:
                self._rate = batch_rate.detach().clone()
            else:
                old = self._rate.to(batch_rate)
                self._rate = old + self.momentum * (batch_rate.detach() - old)
        self.steps += 1

    def state_dict(self) -> dict[str, Any]:
        """The running firing rate and the step."""
        rate = None if self._rate is None else self._rate.detach().clone()
        return {"rate": rate, "steps": self.steps}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        if "steps" not in state:
            raise ActregError(f"not a FiringFloor state_dict: keys {sorted(state)}")
        rate = state.get("rate")
        self._rate = None if rate is None else torch.as_tensor(rate).clone()
        self.steps = int(state["steps"])

    def _args(self) -> list[str]:
        args = [f"{self.coef:g}", f"floor={self.floor:g}"]
        if self.dim != -1:
            args.append(f"dim={self.dim}")
        return args


def _per_layer(value: Any, layers: Sequence[str], what: str) -> dict[str, Any]:
    """One value per watched layer: a mapping must name each exactly; else shared."""
    if not isinstance(value, Mapping):
        return dict.fromkeys(layers, value)
    if set(value) != set(layers):
        raise ActregError(
            f"{what} maps layers {sorted(value)}, but the Reviver watches {list(layers)}: "
            f"give one {what} per watched layer (or one number for all)"
        )
    return {n: value[n] for n in layers}


class Reviver:
    """Revive the dead units of some layers every ``every`` steps up to step ``until``.

    Call it with the number of optimizer steps taken so far, after each step; at steps
    ``every, 2 * every, ...`` up to ``until`` it runs :func:`actreg.revive` on each layer
    with ``inputs`` (a fixed sample of training inputs) and returns what it revived.

    Args:
        model: the model.
        layers: names of the activation modules to watch (each must have a Linear/Conv
            producer, see :func:`actreg.revive`).
        inputs: the examples a unit must be zero on to count as dead (a few thousand
            training inputs; 2,000 or more keeps rare-but-alive units from looking dead).
        every: steps between revivals (> 0).
        until: the last step at which units are revived (revived units need steps to
            learn, so stop well before the end, e.g. at 70% of training).
        optimizer: its moments for the re-initialized weights are zeroed; may be set
            later through the attribute of that name.
        init: ``"fresh"`` (random directions) or ``"resample"`` (toward badly handled
            inputs; for autoencoders), as in :func:`actreg.revive`.
        scale: new weight rows get ``scale`` times the live rows' mean norm.
        forward: ``(model, batch) -> output``, how to run the model on a batch of
            ``inputs`` (default ``model(batch)``), as in :func:`actreg.revive`.
        batch_size: examples of ``inputs`` per forward.
        rate: the share of ``inputs`` on which a revived unit fires (its bias is set to
            match, see :func:`actreg.revive`); for layers under a sparsity target, their
            active share ``1 - target`` (under an L0 target of ``k`` active units, ``k /
            units``). A mapping gives each layer its own (every layer in ``layers``).
            ``None``: bias 0 (about half).
        floor: units active on less than this share of ``inputs`` are revived too (0:
            only units active on none); under a sparsity target about a tenth of ``rate``
            (see :func:`actreg.revive`). A mapping gives each layer its own.

    Example:
        >>> import torch, actreg
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU())
        >>> with torch.no_grad(): net[0].bias[:2] = -100.0  # units 0 and 1 never fire
        >>> reviver = actreg.Reviver(net, ["1"], torch.randn(256, 4), every=10, until=50)
        >>> reviver(5), reviver(10)["1"].tolist()
        ({}, [0, 1])
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str],
        inputs: Tensor,
        *,
        every: int,
        until: int,
        optimizer: torch.optim.Optimizer | None = None,
        init: str = "fresh",
        scale: float = 1.0,
        forward: Callable[[nn.Module, Tensor], Any] | None = None,
        batch_size: int = 2000,
        rate: float | Mapping[str, float] | None = None,
        floor: float | Mapping[str, float] = 0.0,
    ) -> None:
        if isinstance(layers, str) or not layers:
            raise ActregError(f"layers must be a non-empty list of module names, got {layers!r}")
        for name, value in (("every", every), ("until", until), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                what = "examples" if name == "batch_size" else "steps"
                raise ActregError(f"{name} must be a whole number of {what} >= 1, got {value!r}")
        if forward is not None and not callable(forward):
            raise ActregError(
                f"forward must be a callable (model, batch) -> output, got {type(forward).__name__}"
            )
        if not isinstance(inputs, Tensor) or len(inputs) == 0:
            raise ActregError("Reviver needs a non-empty tensor of inputs to measure firing on")
        self.model, self.layers, self.inputs = model, list(layers), inputs
        self.every, self.until = every, until
        self.optimizer, self.init, self.scale = optimizer, init, scale
        self.forward, self.batch_size = forward, batch_size
        rates = _per_layer(rate, layers, "rate")
        self.rates: dict[str, float | None] = {
            n: None if r is None else check_rate(r) for n, r in rates.items()
        }
        floors = _per_layer(floor, layers, "floor")
        self.floors = {n: check_floor(f, self.rates[n]) for n, f in floors.items()}
        self.revived: dict[str, int] = dict.fromkeys(self.layers, 0)  # units revived so far

    def __call__(self, step: int) -> dict[str, Tensor]:
        """After optimizer step number ``step`` (1-based): revive if it is a revival step."""
        if step % self.every or step > self.until:
            return {}
        out: dict[str, Tensor] = {}
        for layer in self.layers:
            dead = _revive(
                self.model,
                layer,
                self.inputs,
                optimizer=self.optimizer,
                init=self.init,
                scale=self.scale,
                forward=self.forward,
                batch_size=self.batch_size,
                rate=self.rates[layer],
                floor=self.floors[layer],
            )
            if len(dead):
                out[layer] = dead
                self.revived[layer] += len(dead)
        return out

    def __repr__(self) -> str:
        return (
            f"Reviver(layers={self.layers}, every={self.every}, until={self.until}, "
            f"init={self.init!r}, scale={self.scale}, rates={self.rates}, floors={self.floors})"
        )
