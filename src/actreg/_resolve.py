"""Resolving module names and glob patterns, and reading a tensor out of module outputs.

Shared by :func:`actreg.attach` and :class:`actreg.Monitor` (through their hook base,
:mod:`actreg._hooks`) and by :func:`actreg.sparse.convert`, so all follow one rule: a key
is a name from ``model.named_modules()`` or a glob pattern (``"blocks.*.act"``); a name
that does not exist is an error listing the close ones. :func:`lookup` applies the same
rule to per-layer settings given as mappings.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from torch import Tensor, nn

from actreg._errors import ActregError

Select = Callable[[Any], Tensor]
T = TypeVar("T")

_GLOB = set("*?[")


def _suggest(name: str, names: list[str]) -> str:
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    if not close:
        close = [n for n in names if n and (name in n or n in name)][:5]
    shown = close or names[:10]
    label = "closest names" if close else "some names"
    return f"{label}: {', '.join(repr(n) for n in shown)}"


def check_model(model: Any) -> nn.Module:
    """Return ``model`` if it is an ``nn.Module`` actreg can hook, else raise."""
    if isinstance(model, nn.DataParallel):
        raise ActregError(
            "nn.DataParallel runs hooks once per replica on several threads, so recorded "
            "values would be split across devices; use DistributedDataParallel, or attach "
            "to model.module and compute the penalty yourself"
        )
    if not isinstance(model, nn.Module):
        raise ActregError(f"expected a torch.nn.Module, got {type(model).__name__}")
    return model


def resolve(model: nn.Module, keys: Iterable[str]) -> dict[str, list[tuple[str, nn.Module]]]:
    """Map each name or glob pattern in ``keys`` to the ``(name, module)`` pairs it matches.

    Raises:
        ActregError: for a name that does not exist (listing close matches) or a pattern
            that matches nothing.
    """
    modules = dict(model.named_modules())
    names = list(modules)
    out: dict[str, list[tuple[str, nn.Module]]] = {}
    for key in keys:
        if not isinstance(key, str):
            raise ActregError(f"module names must be strings, got {key!r}")
        if key in modules:
            out[key] = [(key, modules[key])]
        elif _GLOB & set(key):
            hits = [(n, m) for n, m in modules.items() if n and fnmatch.fnmatchcase(n, key)]
            if not hits:
                raise ActregError(
                    f"pattern {key!r} matches no module of {type(model).__name__}; "
                    f"{_suggest(key, names)}"
                )
            out[key] = hits
        else:
            raise ActregError(
                f"no module named {key!r} in {type(model).__name__}; {_suggest(key, names)} "
                "(names come from model.named_modules(); glob patterns such as "
                "'layers.*.act' are allowed)"
            )
    return out


#: Kinds of module whose output is not an activation, by type or class name (Hugging Face
#: names its norms and attention blocks ``LlamaRMSNorm``, ``GPT2Attention``, ...).
_NOT_ACTIVATIONS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.Embedding)
_NOT_ACTIVATION_WORDS = ("Norm", "Attention", "Embedding")


def not_activations(matches: Iterable[tuple[str, nn.Module]]) -> list[str]:
    """``"name (Type)"`` for the matched modules whose output is not an activation.

    Normalization, attention and embedding modules; what a pattern that should land on
    activations (``"model.layers.*.mlp.*"``) often catches by accident.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2), nn.ReLU())
        >>> not_activations(net.named_children())
        ['1 (LayerNorm)']
    """
    out = []
    for name, module in matches:
        kind = type(module).__name__
        if isinstance(module, _NOT_ACTIVATIONS) or any(w in kind for w in _NOT_ACTIVATION_WORDS):
            out.append(f"{name} ({kind})")
    return out


def first_tensor(output: Any, name: str = "") -> Tensor:
    """The default output selection: the tensor itself, or the first item of a tuple/list.

    ``nn.LSTM`` returns ``(output, (h, c))``, so its output sequence is used.
    """
    value = output
    while isinstance(value, (tuple, list)) and value:
        value = value[0]
    if isinstance(value, Tensor):
        return value
    kind = type(output).__name__
    hint = (
        " (a PackedSequence: pass select=lambda out: "
        "torch.nn.utils.rnn.pad_packed_sequence(out[0], batch_first=True)[0])"
        if type(value).__name__ == "PackedSequence"
        else ""
    )
    raise ActregError(
        f"cannot read a tensor from the output of module {name!r}: got {kind}{hint}; "
        "pass select= (a callable output -> tensor, or a mapping name -> callable)"
    )


def lookup(name: str, mapping: Mapping[str, T], default: T) -> T:
    """The value of the first key of ``mapping`` that is ``name`` or a pattern matching it.

    The rule for every per-layer setting given as a mapping (``select=``, Monitor's ``dim=``).
    """
    for key, value in mapping.items():
        if key == name or (_GLOB & set(key) and fnmatch.fnmatchcase(name, key)):
            return value
    return default


def selector_for(name: str, select: Select | Mapping[str, Select] | None) -> Select:
    """The output selector for ``name``: its mapping entry, a callable, or the default."""
    if select is None:
        return lambda out: first_tensor(out, name)
    if callable(select):
        return select
    if isinstance(select, Mapping):
        return lookup(name, select, lambda out: first_tensor(out, name))
    raise ActregError(
        f"select must be a callable or a mapping of names to callables, got {type(select).__name__}"
    )


def check_select_keys(model: nn.Module, select: object) -> None:
    """Raise if a ``select`` mapping names modules that do not exist."""
    if isinstance(select, Mapping):
        resolve(model, select.keys())
