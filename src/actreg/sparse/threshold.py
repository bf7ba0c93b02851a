"""Training-free activation sparsity: per-module magnitude thresholds at a chosen zero fraction.

The baseline of TEAL and CATS (2024): without any training, set the smallest activations
to zero. :func:`magnitude_thresholds` runs sample batches through a model and finds, for
each named module (a name from ``model.named_modules()`` or a glob pattern, as for
:func:`actreg.attach`), the magnitude ``t`` below which the wanted share of its output
values lies: the ``sparsity``-quantile of ``|a|`` over every value of every batch.
:func:`apply_thresholds` then puts forward hooks on those modules that replace each output
value with ``|a| < t`` by an exact zero. Any activation works (ReLU, GELU, SiLU, ...); a
module whose output is already sparser than asked (a trained ReLU) gets ``t = 0`` and is
left as it is.

Design:

* The threshold is the exact quantile of all calibration values (``torch.kthvalue`` with
  the linear interpolation of :func:`torch.quantile`, which refuses inputs over 16M
  values), not a histogram or a running estimate: exact, and testable against
  ``torch.quantile``. It keeps every calibration value of every module until the end (4
  bytes each); pass as many batches as that allows.
* Each module is calibrated on the unthresholded model (as TEAL does), in one pass over
  the batches: with the thresholds applied together, a module that reads an earlier
  thresholded one sees slightly different inputs, so its zero fraction is close to, not
  exactly, the one asked for (measure it, e.g. with :class:`actreg.Monitor`).
* One threshold per module (per layer, as TEAL), not per unit: the zero fraction asked for
  is the module's, and a per-unit threshold would zero each unit at the same rate, which a
  trained sparse layer does not do.
* The output is replaced by a forward hook (a hook that returns a tensor), not by swapping
  modules: any module type works, the ``state_dict`` is unchanged, and removing the hooks
  restores the model. Forward hooks run in the order they were registered: hooks put on
  the same modules later (an :class:`actreg.Monitor`) see the thresholded output, hooks put
  on earlier see the raw one. A copied or pickled model loses the hooks, as with
  :func:`actreg.attach`.

Example:
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.GELU())
    >>> batches = [torch.randn(64, 8) for _ in range(4)]
    >>> t = magnitude_thresholds(net, "1", batches, sparsity=0.5)
    >>> with apply_thresholds(net, t):
    ...     zeros = float((net(torch.randn(256, 8)) == 0).float().mean())
    >>> 0.4 < zeros < 0.6
    True
    >>> bool((net(torch.randn(4, 8)) == 0).any())  # the hooks are gone
    False
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from actreg._errors import ActregError
from actreg._hooks import Hook, HookSet
from actreg._resolve import Select, check_model, check_select_keys, lookup

__all__ = ["MagnitudeThresholds", "apply_thresholds", "magnitude_thresholds"]

Forward = Callable[[nn.Module, Any], Any]


def _check_sparsity(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ActregError(f"{what} must be a zero fraction in [0, 1), got {value!r}")
    if not 0.0 <= value < 1.0:
        raise ActregError(
            f"{what} must be a zero fraction in [0, 1) (e.g. 0.9 for 90% zeros), got {value!r}"
        )
    return float(value)


def _default_forward(model: nn.Module, batch: Any) -> Any:
    """``model(batch)`` for a tensor, ``model(**batch)`` for a mapping, ``model(batch[0])``
    for a tuple or list (the inputs of an ``(inputs, targets)`` pair)."""
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise ActregError("an empty tuple is not a batch; pass forward=")
        return model(batch[0])
    return model(batch)


def _quantile(values: Tensor, q: float) -> float:
    """The ``q``-quantile of a 1-D tensor with :func:`torch.quantile`'s linear interpolation,
    for any length (two ``kthvalue`` calls; ``torch.quantile`` refuses over 16M values).

    Example:
        >>> _quantile(torch.tensor([4.0, 1.0, 3.0, 2.0]), 0.5)
        2.5
    """
    n = values.numel()
    pos = q * (n - 1)
    below = math.floor(pos)
    above = min(below + 1, n - 1)
    lo = float(values.kthvalue(below + 1).values)
    hi = float(values.kthvalue(above + 1).values) if above != below else lo
    return lo + (pos - below) * (hi - lo)


class _Collect(Hook):
    """Keeps ``|output|`` of one module, flattened, for every calibration batch."""

    def __init__(self, name: str, select: Select) -> None:
        super().__init__(name, select)
        self.values: list[Tensor] = []

    def __call__(self, module: nn.Module, args: Any, output: Any) -> None:
        self.values.append(self.select(output).detach().abs().flatten().float())


@torch.no_grad()
def magnitude_thresholds(
    model: nn.Module,
    names_or_patterns: str | Iterable[str],
    batches: Iterable[Any],
    sparsity: float | Mapping[str, float],
    *,
    forward: Forward | None = None,
    select: Select | Mapping[str, Select] | None = None,
) -> dict[str, float]:
    """Per-module magnitude thresholds that zero ``sparsity`` of each module's output values.

    The model runs in evaluation mode without gradients (its mode is restored after).

    Args:
        model: the model.
        names_or_patterns: a module name or glob pattern (``"transformer.h.*.mlp.act"``),
            or several, as for :func:`actreg.attach`.
        batches: sample inputs (a list, a DataLoader, any iterable), each passed to
            ``forward``.
        sparsity: the zero fraction in [0, 1) wanted in every module, or a mapping from
            names/patterns to it (one entry must match each module).
        forward: ``(model, batch) -> output``; default ``model(batch)`` for a tensor,
            ``model(**batch)`` for a mapping, ``model(batch[0])`` for a tuple or list.
        select: how to read the tensor from a module's output, as in :func:`actreg.attach`.

    Returns:
        ``{module name: threshold}``: the ``sparsity``-quantile of the module's ``|a|``
        over every calibration value (0.0 where that many values are already zero).

    Raises:
        ActregError: a sparsity outside [0, 1), a name or pattern that matches no module,
            no batches, or a module that did not run on them.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU())
        >>> magnitude_thresholds(net, "1", [torch.randn(32, 4)], {"*": 0.1})  # ReLU: ~50% zeros
        {'1': 0.0}
    """
    model = check_model(model)
    if isinstance(sparsity, Mapping):
        for key, value in sparsity.items():
            _check_sparsity(value, f"sparsity[{key!r}]")
    else:
        sparsity = _check_sparsity(sparsity, "sparsity")
    keys = [names_or_patterns] if isinstance(names_or_patterns, str) else list(names_or_patterns)
    if not keys:
        raise ActregError("magnitude_thresholds needs a module name or pattern, e.g. 'act'")
    check_select_keys(model, select)
    wanted: dict[str, float] = {}
    targets: list[tuple[nn.Module, _Collect]] = []
    for _, name, module, selector in HookSet._targets(model, keys, select):
        if name in wanted:
            continue
        if isinstance(sparsity, Mapping):
            missing = -1.0
            value = lookup(name, sparsity, missing)
            if value == missing:
                raise ActregError(
                    f"no sparsity for module {name!r}: the mapping's keys {list(sparsity)} "
                    "match none of its names; add the name or a pattern"
                )
            wanted[name] = value
        else:
            wanted[name] = sparsity
        targets.append((module, _Collect(name, selector)))
    hooks = HookSet()  # every name resolved and every sparsity found before hooking any
    for module, collector in targets:
        hooks._register(module, collector)
    collectors = [collector for _, collector in targets]
    run = forward or _default_forward
    was_training = model.training
    model.eval()
    seen = 0
    try:
        for batch in batches:
            run(model, batch)
            seen += 1
    finally:
        hooks.remove()
        model.train(was_training)
    if seen == 0:
        raise ActregError(
            "magnitude_thresholds got no batches: pass a non-empty iterable of sample inputs "
            "(a list of tensors, a DataLoader)"
        )
    out: dict[str, float] = {}
    for collector in collectors:
        if not collector.values:
            raise ActregError(
                f"module {collector.name!r} did not run on the {seen} calibration batches; "
                "check forward= and that the module is used by the model's forward"
            )
        values = torch.cat(collector.values)
        if values.numel() == 0:
            raise ActregError(f"module {collector.name!r} gave only empty outputs")
        out[collector.name] = _quantile(values, wanted[collector.name])
    return out


class _Zero(Hook):
    """Replaces the values of a module's output with ``|a| < threshold`` by zeros (unlike
    the recording hooks of its base, it returns the new output)."""

    def __init__(self, name: str, threshold: float) -> None:
        super().__init__(name, lambda out: out)
        self.threshold = threshold

    def __call__(self, module: nn.Module, args: Any, output: Any) -> Tensor:  # type: ignore[override]
        if not isinstance(output, Tensor):
            raise ActregError(
                f"apply_thresholds can only replace a tensor output; module {self.name!r} "
                f"returned {type(output).__name__}: threshold the activation module itself "
                "(e.g. 'mlp.act', not the block)"
            )
        return output.masked_fill(output.abs() < self.threshold, 0.0)


class MagnitudeThresholds(HookSet):
    """The hooks :func:`apply_thresholds` put on a model; ``remove()`` or a ``with`` block
    takes them off.

    Attributes:
        thresholds: ``{module name: threshold}`` in effect.
    """

    def __init__(self, model: nn.Module, thresholds: Mapping[str, float]) -> None:
        super().__init__()
        model = check_model(model)
        if not isinstance(thresholds, Mapping) or not thresholds:
            raise ActregError(
                "apply_thresholds needs a non-empty mapping {module name or pattern: threshold}, "
                "e.g. what magnitude_thresholds returns"
            )
        for key, value in thresholds.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ActregError(f"threshold for {key!r} must be a number, got {value!r}")
            if not (math.isfinite(value) and value >= 0):
                raise ActregError(f"threshold for {key!r} must be finite and >= 0, got {value}")
        self.thresholds: dict[str, float] = {}
        targets = self._targets(model, thresholds.keys(), None)  # all resolved before hooking
        for key, name, module, _ in targets:
            if name in self.thresholds:
                continue
            self.thresholds[name] = float(thresholds[key])
            self._register(module, _Zero(name, float(thresholds[key])))

    def __repr__(self) -> str:
        state = "" if self.hooked else ", removed"
        return f"MagnitudeThresholds({len(self.thresholds)} modules{state})"


def apply_thresholds(model: nn.Module, thresholds: Mapping[str, float]) -> MagnitudeThresholds:
    """Zero every output value with ``|a| < threshold`` of the named modules (forward hooks).

    Args:
        model: the model.
        thresholds: ``{module name or pattern: threshold}``, e.g. from
            :func:`magnitude_thresholds`.

    Returns:
        The hooks, as a :class:`MagnitudeThresholds`: ``remove()`` them, or use it as a
        context manager.

    Raises:
        ActregError: an empty mapping, a negative or non-finite threshold, a name or
            pattern that matches no module; at run time a module whose output is not a
            tensor.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Tanh())
        >>> hooks = apply_thresholds(net, {"1": 10.0})  # |tanh| < 1 < 10: all zeros
        >>> bool((net(torch.randn(2, 4)) == 0).all()), hooks
        (True, MagnitudeThresholds(1 modules))
        >>> hooks.remove()
    """
    return MagnitudeThresholds(model, thresholds)
