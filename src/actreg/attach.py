"""Hooking penalties onto the outputs of named modules: :func:`attach`."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from actreg._errors import ActregError
from actreg._resolve import Select, check_model, check_select_keys, resolve, selector_for
from actreg.layers import ActivityRegularization
from actreg.penalties import Penalty

__all__ = ["Regularizer", "attach"]

WHEN = ("train", "always")
_PENDING_WARN = 10_000


def in_backward() -> bool:
    """True while autograd's engine runs a backward pass (e.g. checkpoint recomputation)."""
    if torch.compiler.is_compiling():
        return False
    return torch._C._current_graph_task_id() != -1


class _Hook:
    """A forward hook that records one module's penalty into its Regularizer.

    Copying or pickling a model (``copy.deepcopy``, ``torch.save(model)``) turns the hook
    into a no-op in the copy: a copy is not regularized until it is attached itself.
    """

    def __init__(self, reg: Regularizer, name: str, penalty: Penalty, select: Select) -> None:
        self.reg = reg
        self.name = name
        self.penalty = penalty
        self.select = select

    def __call__(self, module: nn.Module, args: Any, output: Any) -> None:
        reg = self.reg
        if reg.when == "train" and not (module.training and torch.is_grad_enabled()):
            return
        value = self.penalty(self.select(output))
        # Gradient checkpointing re-runs the forward during backward. The value is still
        # computed (non-reentrant checkpointing checks that recomputation saves the same
        # tensors) but not recorded again.
        if not in_backward():
            reg._record(self.name, value)

    def __deepcopy__(self, memo: dict[int, Any]) -> _NoOp:
        return _NoOp()

    def __reduce__(self) -> tuple[type, tuple[()]]:
        return (_NoOp, ())


class _NoOp:
    """What a copied or unpickled actreg hook becomes."""

    def __call__(self, module: nn.Module, args: Any, output: Any) -> None:
        return None


class Regularizer:
    """Penalties attached to modules of a model; created by :func:`attach`.

    Attributes:
        when: ``"train"`` (record only for modules in training mode with grad enabled)
            or ``"always"``.
        last: per-layer values of the previous :meth:`penalty` call, as floats.
    """

    def __init__(self, model: nn.Module, when: str) -> None:
        self.model = model
        self.when = when
        self.entries: list[tuple[str, Penalty]] = []
        self._handles: list[RemovableHandle] = []
        self._records: list[tuple[str, Tensor]] = []
        self._last: dict[str, Tensor] = {}
        self._warned = False

    def _add(self, name: str, module: nn.Module, penalty: Penalty, select: Select) -> None:
        if not isinstance(penalty, Penalty):
            raise ActregError(
                f"the penalty for {name!r} must be an actreg penalty (e.g. actreg.L1(1e-3)), "
                f"got {penalty!r}"
            )
        hook = _Hook(self, name, penalty, select)
        self._handles.append(module.register_forward_hook(hook))
        self.entries.append((name, penalty))

    def _record(self, name: str, value: Tensor) -> None:
        self._records.append((name, value))
        if len(self._records) > _PENDING_WARN and not self._warned:
            self._warned = True
            warnings.warn(
                f"actreg has {len(self._records)} penalties recorded and not consumed; "
                "call reg.penalty() every training step (or reg.clear()), or attach with "
                "when='train' and evaluate under model.eval() / torch.no_grad()",
                stacklevel=3,
            )

    @property
    def pending(self) -> int:
        """How many values are recorded and not yet consumed by :meth:`penalty`."""
        return len(self._records)

    def penalty(self) -> Tensor:
        """Return the sum of every penalty recorded since the last call, and clear them.

        With nothing recorded, returns a 0-dim zero tensor on the model's device.
        """
        records, self._records = self._records, []
        self._warned = False
        if not records:
            self._last = {}
            return torch.zeros((), device=_device(self.model))
        per_layer: dict[str, Tensor] = {}
        for name, value in records:
            per_layer[name] = per_layer[name] + value if name in per_layer else value
        self._last = {name: value.detach() for name, value in per_layer.items()}
        values = list(per_layer.values())
        total = values[0]
        for value in values[1:]:
            total = total + value
        return total

    @property
    def last(self) -> dict[str, float]:
        """Per-layer values of the previous :meth:`penalty` call, as floats (for logging)."""
        return {name: float(value) for name, value in self._last.items()}

    def clear(self) -> None:
        """Drop everything recorded without returning it."""
        self._records = []

    def remove(self) -> None:
        """Remove every hook this Regularizer added; calling it again does nothing."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._records = []

    def __enter__(self) -> Regularizer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        body = ", ".join(f"{name!r}: {penalty!r}" for name, penalty in self.entries)
        state = "" if self._handles else ", removed"
        return f"Regularizer({{{body}}}, when={self.when!r}{state})"


def _device(model: nn.Module) -> torch.device:
    for param in model.parameters():
        return param.device
    for buffer in model.buffers():
        return buffer.device
    return torch.device("cpu")


def attach(
    model: nn.Module,
    spec: Mapping[str, Penalty] | None = None,
    *,
    select: Select | Mapping[str, Select] | None = None,
    when: str = "train",
) -> Regularizer:
    """Hook penalties onto the outputs of modules of ``model``, without editing it.

    Args:
        model: any ``nn.Module``.
        spec: maps module names (from ``model.named_modules()``) or glob patterns
            (``"blocks.*.act"``) to penalties. Every :class:`~actreg.ActivityRegularization`
            module in the model is attached too; with no spec, only those.
        select: how to read the penalized tensor from a module's output: a callable, or
            a mapping from names/patterns to callables. By default a tensor output is used
            as is and a tuple/list output by its first tensor (``nn.LSTM``'s sequence).
        when: ``"train"`` records only while the module is in training mode and grad is
            enabled; ``"always"`` records in evaluation too.

    Returns:
        A :class:`Regularizer`; add ``reg.penalty()`` to the loss every step.

    Example:
        >>> import torch, actreg
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU())
        >>> reg = actreg.attach(model, {"1": actreg.L1(1e-3)})
        >>> loss = model(torch.randn(2, 4)).sum() + reg.penalty()
        >>> reg.remove()
    """
    model = check_model(model)
    if when not in WHEN:
        raise ActregError(f"unknown when={when!r}; use 'train' or 'always'")
    if spec is not None and not isinstance(spec, Mapping):
        raise ActregError(
            f"spec must be a mapping of module names to penalties, got {type(spec).__name__}; "
            "e.g. {'encoder.act': actreg.L1(1e-3)}"
        )
    spec = dict(spec or {})
    check_select_keys(model, select)
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, ActivityRegularization)]
    if not spec and not layers:
        raise ActregError(
            f"nothing to regularize in {type(model).__name__}: pass a spec such as "
            "{'layer_name': actreg.L1(1e-3)} or add actreg.ActivityRegularization modules"
        )
    reg = Regularizer(model, when)
    try:
        for key, matches in resolve(model, spec).items():
            for name, module in matches:
                reg._add(name, module, spec[key], selector_for(name, select))
        for name, module in layers:
            reg._add(name, module, module.penalty, selector_for(name, select))
    except Exception:
        reg.remove()
        raise
    return reg
