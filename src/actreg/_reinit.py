"""Writing revived units' weights for :func:`actreg.revive`: rows, bias, optimizer state.

Kept apart from :mod:`actreg.revival` (which finds the producer, the dead units and their
directions); the design notes on ``rate=`` and on the optimizer's second moments are there.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from actreg._errors import ActregError

Producer = nn.Linear | nn.Conv1d | nn.Conv2d
Forward = Callable[[nn.Module, Tensor], Any]
_SECOND_MOMENTS = ("exp_avg_sq", "max_exp_avg_sq", "square_avg", "sum")
_RATE_VALUES = 1 << 16  # pre-activations per unit kept to set a revived unit's bias


def _reset_state(
    optimizer: torch.optim.Optimizer | None, param: Tensor, dead: Tensor, fired: Tensor, axis: int
) -> None:
    """Zero the optimizer's state of ``param``'s revived slices along ``axis``; second
    moments take the live slices' mean instead (see the module's design notes)."""
    if optimizer is None:
        return
    state = optimizer.state.get(param, {})
    for key, value in state.items():
        if not (isinstance(value, Tensor) and value.shape == param.shape):
            continue
        moved = value.movedim(axis, 0)  # a view: writes go to the state
        if key in _SECOND_MOMENTS and bool(fired.any()):
            moved[dead] = moved[fired].mean(0)
        else:
            moved[dead] = 0


def check_rate(rate: Any) -> float:
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate < 1:
        raise ActregError(
            f"rate must be a share in (0, 1) (the revived units' firing rate, e.g. 1 - the "
            f"layer's target sparsity), or None for bias 0; got {rate!r}"
        )
    return float(rate)


def check_floor(floor: Any, rate: float | None) -> float:
    if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not 0 <= floor < 1:
        raise ActregError(
            f"floor must be a share in [0, 1) (units active on less of the inputs are "
            f"revived; 0: only units active on none), got {floor!r}"
        )
    if rate is not None and floor >= rate:
        raise ActregError(
            f"floor={floor:g} is not below rate={rate:g}: revived units would count as dead "
            f"at the next revival; use a floor of about rate / 10 ({rate / 10:g})"
        )
    return float(floor)


def reinit(
    producer: Producer,
    consumer: nn.Module | None,
    fired: Tensor,
    dead: Tensor,
    directions: Tensor,
    init: str,
    scale: float,
    optimizer: torch.optim.Optimizer | None,
) -> None:
    weight = producer.weight
    rows = weight.reshape(weight.shape[0], -1)
    alive = rows[fired].norm(dim=1).mean() if bool(fired.any()) else rows.norm(dim=1).mean()
    directions = directions.to(weight)
    weight[dead] = (directions * alive * scale).reshape(len(dead), *weight.shape[1:])
    _reset_state(optimizer, weight, dead, fired, 0)
    if producer.bias is not None:
        producer.bias[dead] = 0.0
        _reset_state(optimizer, producer.bias, dead, fired, 0)
    if init == "resample" and isinstance(consumer, nn.Linear) and isinstance(producer, nn.Linear):
        if consumer.weight.shape[0] == directions.shape[1]:  # an autoencoder's decoder
            consumer.weight[:, dead] = directions.T.to(consumer.weight)
            _reset_state(optimizer, consumer.weight, dead, fired, 1)


def set_rate(
    model: nn.Module,
    producer: Producer,
    inputs: Tensor,
    dead: Tensor,
    dim: int,
    rate: float,
    batch_size: int,
    forward: Forward,
) -> None:
    """Shift the revived units' biases so that each fires on a share ``rate`` of ``inputs``."""
    assert producer.bias is not None
    chunks = math.ceil(len(inputs) / batch_size)
    per_chunk = max(1, _RATE_VALUES // chunks)
    seen: list[Tensor] = []

    def on_producer(m: nn.Module, args: Any, out: Tensor) -> None:
        values = out.detach()[..., dead] if dim == -1 else out.detach()[:, dead]
        values = values.movedim(dim, 0).reshape(len(dead), -1).float()
        if values.shape[1] > per_chunk:  # a conv map or long sequences: a random subset
            values = values[:, torch.randperm(values.shape[1], device=values.device)[:per_chunk]]
        seen.append(values)

    handle = producer.register_forward_hook(on_producer)
    try:
        for i in range(0, len(inputs), batch_size):
            forward(model, inputs[i : i + batch_size])
    finally:
        handle.remove()
    values = torch.cat(seen, 1)
    k = min(values.shape[1], max(1, math.ceil((1.0 - rate) * values.shape[1])))
    producer.bias[dead] -= values.kthvalue(k, dim=1).values.to(producer.bias)
