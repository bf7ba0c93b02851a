"""Hooking penalties onto the outputs of named modules: :func:`attach` and its :class:`Regularizer`.

What lives here:

- :func:`attach` checks its arguments (the model, ``spec``, ``select``, ``when``; a compiled
  model is refused because compiled code ignores hooks added later), then puts one hook per
  matched module and penalty on the model and returns a :class:`Regularizer`.
- :class:`Regularizer` collects what the hooks record during a forward pass and hands it
  out as one loss term, ``reg.penalty()``, once per training step; it warns about values
  never consumed, about hooks that never ran and about reentrant checkpointing, and its
  ``state_dict`` carries the state of adaptive penalties (:class:`~actreg.TargetSparsity`).
- ``_Hook``, the forward hook: by default it records only in training mode with grad
  enabled (``when="train"``), computes but does not record again when gradient
  checkpointing re-runs a forward in backward, and checks for NaN/inf on request.

Name and pattern resolution, output selection, hook registration and removal, and what a
copied or pickled model carries (no live hook) are shared with :class:`actreg.Monitor`
in :mod:`actreg._hooks`.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from actreg._attach_warnings import empty_cause, warn_not_activations, warn_repeated
from actreg._errors import ActregError
from actreg._hooks import Hook, HookSet, in_backward
from actreg._resolve import (
    Select,
    check_model,
    check_select_keys,
    selector_for,
)
from actreg.layers import ActivityRegularization
from actreg.penalties import Penalty

__all__ = ["Regularizer", "attach"]

WHEN = ("train", "always")
_PENDING_WARN = 10_000


class _Hook(Hook):
    """A forward hook that records one module's penalty into its Regularizer.

    Copying or pickling a model (``copy.deepcopy``, ``torch.save(model)``) turns the hook
    into a no-op in the copy (see :class:`actreg._hooks.Hook`): a copy is not regularized
    until it is attached itself.
    """

    def __init__(self, reg: Regularizer, name: str, penalty: Penalty, select: Select) -> None:
        super().__init__(name, select)
        self.reg = reg
        self.penalty = penalty
        # Set when the module last ran in training mode without grad: the forward of
        # reentrant checkpointing does that, and its recomputation then comes in backward.
        self.no_grad_forward = False

    def __call__(self, module: nn.Module, args: Any, output: Any) -> None:
        reg = self.reg
        grad = torch.is_grad_enabled()
        reg._hooks_ran = True
        if module.training and not grad:
            self.no_grad_forward = True
            reg._no_grad_train = True
        if reg.when == "train" and not (module.training and grad):
            return
        # Gradient checkpointing re-runs the forward during backward. The value is still
        # computed (non-reentrant checkpointing checks that recomputation saves the same
        # tensors) but not recorded again.
        backward = in_backward()
        if backward and self.no_grad_forward and grad:
            reg._warn_reentrant(self.name)
        x = self.select(output)
        if reg.check_finite and not backward:
            _check_finite(x, self.name, reg.steps)
        value = self.penalty(x)
        if not backward:
            if self.no_grad_forward and grad:
                self.no_grad_forward = False
            reg._record(self.name, value)


def _check_finite(x: Tensor, name: str, step: int) -> None:
    """Raise if ``x`` holds NaN or inf (one host sync; only with ``check_finite=True``)."""
    if not isinstance(x, Tensor) or not x.is_floating_point() or bool(torch.isfinite(x).all()):
        return
    nan = int(torch.isnan(x).sum())
    inf = int(torch.isinf(x).sum())
    raise ActregError(
        f"non-finite values in the output of module {name!r} at step {step} "
        f"({step} reg.penalty() calls so far): {nan} NaN and {inf} inf of {x.numel()} values "
        f"(shape {tuple(x.shape)}, dtype {x.dtype}); lower the learning rate, clip gradients, "
        "or look for a division by zero or an overflow in float16 before this layer"
    )


class Regularizer(HookSet):
    """Penalties attached to modules of a model; created by :func:`attach`.

    Attributes:
        when: ``"train"`` (record only for modules in training mode with grad enabled)
            or ``"always"``.
        check_finite: raise :class:`~actreg.ActregError` when a hooked output holds NaN
            or inf (one host sync per hooked call).
        steps: how many times :meth:`penalty` has been called.
        last: per-layer values of the previous :meth:`penalty` call, as floats.
        hooked: whether its hooks are on the model (False after :meth:`remove`).
    """

    def __init__(self, model: nn.Module, when: str, check_finite: bool = False) -> None:
        super().__init__()
        self.model = model
        self.when = when
        self.check_finite = check_finite
        self.steps = 0
        self.entries: list[tuple[str, Penalty]] = []
        self._records: list[tuple[str, Tensor]] = []
        self._last: dict[str, Tensor] = {}
        self._warned = False
        self._recorded_once = False
        self._warned_empty = False
        self._warned_reentrant = False
        self._hooks_ran = False  # any hook called at all (what the empty warning names)
        self._no_grad_train = False  # a hooked module ran in training mode without grad

    def _add(self, name: str, module: nn.Module, penalty: Penalty, select: Select) -> None:
        if not isinstance(penalty, Penalty):
            raise ActregError(
                f"the penalty for {name!r} must be an actreg penalty (e.g. actreg.L1(1e-3)), "
                f"got {penalty!r}"
            )
        self._register(module, _Hook(self, name, penalty, select))
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

    def _warn_reentrant(self, name: str) -> None:
        if self._warned_reentrant:
            return
        self._warned_reentrant = True
        warnings.warn(
            f"actreg: module {name!r} is recomputed in backward after a forward without "
            "grad: reentrant gradient checkpointing (use_reentrant=True) runs its forward "
            "under no_grad, so its penalty is not in the loss (or has no gradient); use "
            "torch.utils.checkpoint.checkpoint(..., use_reentrant=False)",
            stacklevel=2,
        )

    def _warn_empty(self) -> None:
        """Warn once when a training step finds nothing ever recorded (hooks never ran)."""
        if self._warned_empty or not self.hooked:
            return
        if not (self.model.training and torch.is_grad_enabled()):
            return
        self._warned_empty = True
        names = ", ".join(repr(name) for name, _ in self.entries[:5])
        cause = empty_cause(self._no_grad_train, self._hooks_ran)
        warnings.warn(
            f"actreg: reg.penalty() found nothing recorded since attach ({names}) although "
            f"the model is in training mode: {cause}.",
            stacklevel=3,
        )

    @property
    def pending(self) -> int:
        """How many values are recorded and not yet consumed by :meth:`penalty`."""
        return len(self._records)

    def penalty(self) -> Tensor:
        """Return the sum of every penalty recorded since the last call, and clear them.

        With nothing recorded, returns a 0-dim zero tensor on the model's device.

        Raises:
            ActregError: after :meth:`remove` (nothing can be recorded any more: a loss
                without its penalty is never what a training loop wants).
        """
        if not self.hooked:
            raise ActregError(
                "this Regularizer was removed (reg.remove(), or the end of its `with` block) "
                "and records nothing: attach again with actreg.attach(model, spec)"
            )
        records, self._records = self._records, []
        self._warned = False
        self.steps += 1
        if not records:
            self._last = {}
            if not self._recorded_once:
                self._warn_empty()
            return torch.zeros((), device=_device(self.model))
        self._recorded_once = True
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

    def state_dict(self) -> dict[str, Any]:
        """The state of stateful penalties (e.g. :class:`~actreg.TargetSparsity`), per entry.

        Save it with the model and optimizer so a resumed run continues with the same
        adapted coefficients.
        """
        return {
            "steps": self.steps,
            "penalties": [[name, penalty.state_dict()] for name, penalty in self.entries],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output into a Regularizer attached the same way."""
        saved = state.get("penalties", [])
        names = [name for name, _ in self.entries]
        if [entry[0] for entry in saved] != names:
            raise ActregError(
                f"state was saved for layers {[entry[0] for entry in saved]}, but this "
                f"Regularizer has {names}; attach the same spec before loading"
            )
        for (_, penalty), (_, penalty_state) in zip(self.entries, saved, strict=True):
            penalty.load_state_dict(penalty_state)
        self.steps = int(state.get("steps", self.steps))

    def clear(self) -> None:
        """Drop everything recorded without returning it."""
        self._records = []

    def remove(self) -> None:
        """Remove every hook this Regularizer added and drop what they recorded; calling it
        again does nothing."""
        super().remove()
        self._records = []

    def __repr__(self) -> str:
        body = ", ".join(f"{name!r}: {penalty!r}" for name, penalty in self.entries)
        state = "" if self.hooked else ", removed"
        return f"Regularizer({{{body}}}, when={self.when!r}{state})"


def _device(model: nn.Module) -> torch.device:
    for param in model.parameters():
        return param.device
    for buffer in model.buffers():
        return buffer.device
    return torch.device("cpu")


def _check_not_compiled(model: nn.Module) -> None:
    """Raise if ``model`` or a submodule was compiled: hooks added later would never run."""
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    optimized = getattr(eval_frame, "OptimizedModule", None)
    for name, module in model.named_modules():
        where = f"submodule {name!r}" if name else "the model"
        if optimized is not None and isinstance(module, optimized):
            raise ActregError(
                f"{where} is a torch.compile() wrapper (OptimizedModule); compiled code "
                "does not see hooks added after compiling. Attach first, then compile: "
                "reg = actreg.attach(model, spec); model = torch.compile(model)"
            )
        if getattr(module, "_compiled_call_impl", None) is not None:
            raise ActregError(
                f"{where} was compiled in place (module.compile()); compiled code does not "
                "see hooks added after compiling. Call actreg.attach before module.compile()"
            )


def attach(
    model: nn.Module,
    spec: Mapping[str, Penalty] | None = None,
    *,
    select: Select | Mapping[str, Select] | None = None,
    when: str = "train",
    check_finite: bool = False,
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
        check_finite: raise :class:`~actreg.ActregError` naming the layer and the step
            (the number of ``reg.penalty()`` calls so far) when a hooked output holds NaN
            or inf. Costs one host sync per hooked call (and a graph break under
            ``torch.compile``), so it is off by default.

    Returns:
        A :class:`Regularizer`; add ``reg.penalty()`` to the loss every step.

    Example:
        >>> import torch, actreg
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU())
        >>> reg = actreg.attach(model, {"1": actreg.L1(1e-3)})
        >>> loss = model(torch.randn(2, 4)).sum() + reg.penalty()
        >>> reg.remove()

    Under ``torch.compile``, attach *before* compiling; attaching to a compiled module
    raises :class:`~actreg.ActregError`. See ``docs/INTEGRATIONS.md``.
    """
    model = check_model(model)
    _check_not_compiled(model)
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
    reg = Regularizer(model, when, check_finite=bool(check_finite))
    try:
        targets = reg._targets(model, spec, select)
        warn_not_activations(targets)
        warn_repeated(targets, _Hook)
        for key, name, module, selector in targets:
            reg._add(name, module, spec[key], selector)
        for name, module in layers:
            reg._add(name, module, module.penalty, selector_for(name, select))
    except Exception:
        reg.remove()
        raise
    return reg
