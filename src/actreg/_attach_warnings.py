"""What :func:`actreg.attach` and an empty ``reg.penalty()`` warn about, worded in one place.

- :func:`warn_not_activations`: a glob pattern that lands on norms, attention or embeddings.
- :func:`warn_repeated`: a module that gets two penalties without a word.
- :func:`empty_cause`: why a training step found nothing recorded, named from what the
  hooks saw; torch.compile is blamed only when it has compiled code in this process
  (:func:`compiled_anything`), never by default.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

from torch import nn

from actreg._resolve import Select, not_activations

__all__ = ["compiled_anything", "empty_cause", "warn_not_activations", "warn_repeated"]


def compiled_anything() -> bool:
    """Whether torch.compile (dynamo) has compiled a frame in this process.

    Example:
        >>> isinstance(compiled_anything(), bool)
        True
    """
    dynamo = sys.modules.get("torch._dynamo.utils")
    counters = getattr(dynamo, "counters", None)
    return bool(counters is not None and counters["frames"].get("ok", 0))


def empty_cause(no_grad_train: bool, hooks_ran: bool) -> str:
    """Why hooked modules recorded nothing in a training step, and the fix.

    Args:
        no_grad_train: a hooked module ran in training mode with grad disabled.
        hooks_ran: any hook was called at all.

    Example:
        >>> empty_cause(False, True).split(":")[0]
        'they ran only in evaluation mode'
    """
    if no_grad_train:
        return (
            "they ran in training mode under torch.no_grad() (or inference_mode), where "
            "when='train' records nothing: run the training forward with grad enabled "
            "(evaluate under model.eval()), or attach with when='always'"
        )
    if hooks_ran:
        return (
            "they ran only in evaluation mode: call model.train() before the training "
            "forward, or attach with when='always'"
        )
    if compiled_anything():
        return (
            "the hooks never ran. torch.compile has compiled code in this process: if "
            "the model (or another instance of its class) was compiled before "
            "actreg.attach, compiled code ignores hooks added later: attach before "
            "compiling, in a fresh process. Otherwise check that these modules are "
            "called in forward"
        )
    return (
        "the hooks never ran: check that these modules are called in the model's "
        "forward (not only inside reentrant gradient checkpointing), and that the "
        "forward ran between attach and reg.penalty()"
    )


def warn_not_activations(targets: list[tuple[str, str, nn.Module, Select]]) -> None:
    """Warn when a glob pattern lands on norms, attention or embeddings (named keys are
    deliberate; a pattern often catches more than its author meant)."""
    by_pattern: dict[str, list[tuple[str, nn.Module]]] = {}
    for key, name, module, _ in targets:
        if set("*?[") & set(key):
            by_pattern.setdefault(key, []).append((name, module))
    for key, matches in by_pattern.items():
        wrong = not_activations(matches)
        if wrong:
            shown = ", ".join(wrong[:4]) + (f" and {len(wrong) - 4} more" if len(wrong) > 4 else "")
            warnings.warn(
                f"pattern {key!r} matches {len(matches)} modules, {len(wrong)} of whose outputs "
                f"are not activations: {shown}. Penalizing them is rarely meant; narrow the "
                f"pattern to the activation modules (e.g. '...mlp.act_fn')",
                UserWarning,
                stacklevel=3,
            )


def warn_repeated(targets: list[tuple[str, str, nn.Module, Select]], hook_type: type[Any]) -> None:
    """Warn when a module gets two penalties without a word: matched by two keys of one
    spec, or already hooked by another Regularizer that is still attached (a live hook of
    ``hook_type``, the Regularizer's hook class)."""
    keys: dict[str, list[str]] = {}
    for key, name, _, _ in targets:
        keys.setdefault(name, []).append(key)
    for name, found in keys.items():
        if len(found) > 1:
            warnings.warn(
                f"module {name!r} is matched by {len(found)} keys ({', '.join(map(repr, found))}) "
                "and gets each of their penalties; if you meant one, narrow the patterns; to "
                "add several on purpose, use one key with their sum (actreg.L1(a) + actreg.L2(b))",
                UserWarning,
                stacklevel=3,
            )
    for _, name, module, _ in targets:
        others = [h for h in module._forward_hooks.values() if isinstance(h, hook_type)]
        if any(h.reg.hooked for h in others):
            warnings.warn(
                f"module {name!r} already carries a penalty from another Regularizer that is "
                "still attached: both record, and both count if both penalties join the loss; "
                "call the old one's remove() first",
                UserWarning,
                stacklevel=3,
            )
