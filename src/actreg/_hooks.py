"""The one forward-hook base under :func:`actreg.attach` and :class:`actreg.Monitor`.

Both put forward hooks on named modules of a model and read a tensor from each output.
What they share lives here, once:

- :class:`Hook`, the base of their hooks: the module's name and its output selector (the
  tensor itself, the first tensor of a tuple or list such as ``nn.LSTM``'s
  ``(output, (h, c))``, or the user's ``select=``; see :mod:`actreg._resolve`). A hook
  serves one live owner, so a copied or pickled model (``copy.deepcopy(model)``,
  ``torch.save(model)``) gets a :class:`NoOp` in its place: the copy is neither
  regularized nor watched until it is hooked itself, and nothing of the owner (recorded
  penalties, statistics) is copied or pickled along with it.
- :class:`HookSet`, the base of :class:`~actreg.Regularizer` and :class:`~actreg.Monitor`:
  resolves names and glob patterns into modules (all of them before hooking any, so a bad
  name leaves the model untouched), registers the hooks, and removes them all at once,
  also as a context manager.
- :func:`in_backward`: whether autograd's engine is running a backward pass, as when
  gradient checkpointing re-runs a forward; hooks then neither record nor count.

Design: each subclass writes its own ``__call__`` instead of filling in a template
method of :class:`Hook`. The call is the hot path (a few microseconds per hooked layer and
step, see docs/PERFORMANCE.md), and the two differ in what they check before reading the
output: attach first looks at the training mode and grad, Monitor at the backward pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Self

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from actreg._resolve import Select, resolve, selector_for

__all__ = ["Hook", "HookSet", "NoOp", "in_backward", "training"]


def in_backward() -> bool:
    """True while autograd's engine runs a backward pass (e.g. checkpoint recomputation).

    Example:
        >>> in_backward()
        False
    """
    if torch.compiler.is_compiling():
        return False
    return torch._C._current_graph_task_id() != -1


def training(x: torch.Tensor) -> bool:
    """Whether a call on ``x`` is a training forward (grad on, not a backward recompute):
    when :class:`actreg.TargetSparsity` and :class:`actreg.Scheduled` count a step."""
    return torch.is_grad_enabled() and x.requires_grad and not in_backward()


class NoOp:
    """What a copied or unpickled actreg hook becomes: a forward hook that does nothing."""

    def __call__(self, module: nn.Module, args: Any, output: Any) -> None:
        return None


class Hook:
    """Base of actreg's forward hooks: one module's name and its output selector.

    Subclasses implement ``__call__(module, args, output)`` and read the tensor with
    ``self.select(output)``. A deep copy or an unpickled copy of a hook is a
    :class:`NoOp`.

    Example:
        >>> import copy, pickle
        >>> hook = Hook("act", lambda out: out)
        >>> type(copy.deepcopy(hook)).__name__, type(pickle.loads(pickle.dumps(hook))).__name__
        ('NoOp', 'NoOp')
    """

    def __init__(self, name: str, select: Select) -> None:
        self.name = name
        self.select = select

    def __call__(self, module: nn.Module, args: Any, output: Any) -> None:
        raise NotImplementedError  # pragma: no cover - implemented by each subclass

    def __deepcopy__(self, memo: dict[int, Any]) -> NoOp:
        return NoOp()

    def __reduce__(self) -> tuple[type, tuple[()]]:
        return (NoOp, ())


class HookSet:
    """Base of :class:`~actreg.Regularizer` and :class:`~actreg.Monitor`: the hooks one
    owner put on a model, found by name or pattern and removed together.

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU())
        >>> [(key, name) for key, name, _, _ in HookSet._targets(model, ["*"], None)]
        [('*', '0'), ('*', '1')]
    """

    def __init__(self) -> None:
        self._handles: list[RemovableHandle] = []

    @staticmethod
    def _targets(
        model: nn.Module, keys: Iterable[str], select: Select | Mapping[str, Select] | None
    ) -> list[tuple[str, str, nn.Module, Select]]:
        """``(key, name, module, selector)`` for every module each name or pattern matches.

        In the order of ``keys``, then of ``model.named_modules()``; raises
        :class:`~actreg.ActregError` for a name or pattern that matches nothing.
        """
        return [
            (key, name, module, selector_for(name, select))
            for key, matches in resolve(model, keys).items()
            for name, module in matches
        ]

    def _register(self, module: nn.Module, hook: Hook) -> None:
        self._handles.append(module.register_forward_hook(hook))

    @property
    def hooked(self) -> bool:
        """Whether the hooks are on the model (False after :meth:`remove`)."""
        return bool(self._handles)

    def remove(self) -> None:
        """Remove every hook this object added; calling it again does nothing."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
