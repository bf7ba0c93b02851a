"""Conversion: swap the ``nn.Linear`` layers that read ReLU-like outputs for sparse-input ones.

:func:`eligible` lists the layers :func:`convert` picks; :func:`convert` swaps them for
:class:`~actreg.sparse.SparseInputLinear` (same parameters, calibrated thresholds) and makes
their ``nn.Sequential`` a :class:`~actreg.sparse.SparseSequential`; :func:`fold_input_scaling`
folds an input standardization into a first layer so that it reads raw zeros.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from actreg._errors import ActregError
from actreg._resolve import check_model, resolve
from actreg.layers import ActivityRegularization, TopK
from actreg.sparse._backend import Backend, Kernels, backend
from actreg.sparse.calibrate import calibrate
from actreg.sparse.linear import SparseInputLinear, Threshold, _check_threshold
from actreg.sparse.runtime import SparseSequential

__all__ = ["ZERO_KEEPERS", "ZERO_MAKERS", "convert", "eligible", "fold_input_scaling"]

#: Modules whose outputs have exact zeros (ReLU-like), so a Linear after them gets sparse input.
ZERO_MAKERS: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.Hardshrink, nn.Softshrink, nn.Threshold, TopK,
)  # fmt: skip
#: Modules that keep zeros zero at inference, looked through when finding a Linear's producer.
ZERO_KEEPERS: tuple[type[nn.Module], ...] = (
    nn.Dropout, nn.Identity, nn.Flatten, ActivityRegularization,
)  # fmt: skip


def _producer(children: list[nn.Module], i: int) -> nn.Module | None:
    """The module whose output feeds ``children[i]``, looking through zero keepers."""
    for prev in reversed(children[:i]):
        if not isinstance(prev, ZERO_KEEPERS):
            return prev
    return None


def eligible(model: nn.Module) -> list[str]:
    """Names of the ``nn.Linear`` layers that :func:`convert` picks by default: those that
    follow a ReLU-like module (:data:`ZERO_MAKERS`, looking through :data:`ZERO_KEEPERS`)
    inside an ``nn.Sequential``.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
        >>> eligible(net)
        ['2']
    """
    model = check_model(model)
    found = []
    for seq_name, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        children = list(seq.named_children())
        mods = [m for _, m in children]
        for i, (name, mod) in enumerate(children):
            prod = _producer(mods, i)
            if isinstance(mod, nn.Linear) and isinstance(prod, ZERO_MAKERS):
                if not isinstance(prod, nn.Threshold) or prod.value == 0:
                    found.append(f"{seq_name}.{name}" if seq_name else name)
    return found


def _named_linears(model: nn.Module, names: str | Iterable[str]) -> list[str]:
    keys = [names] if isinstance(names, str) else list(names)
    out: list[str] = []
    for key, hits in resolve(model, keys).items():
        linear = [n for n, m in hits if isinstance(m, nn.Linear)]
        if not linear:
            kinds = ", ".join(f"{n!r} is {type(m).__name__}" for n, m in hits[:5])
            raise ActregError(
                f"{key!r} names no nn.Linear ({kinds}); sparse.convert only converts nn.Linear"
            )
        out += [n for n in linear if n not in out]
    return out


def convert(
    model: nn.Module,
    names: str | Iterable[str] | None = None,
    *,
    threshold: str | Threshold = "auto",
    inplace: bool = False,
    fuse: bool = True,
    kernels: Kernels | Backend = "auto",
) -> nn.Module:
    """Replace eligible ``nn.Linear`` layers with :class:`SparseInputLinear`.

    Args:
        model: the model; not modified unless ``inplace=True``.
        names: the Linear layers to convert (names or glob patterns from
            ``model.named_modules()``). By default, every Linear that follows a ReLU-like
            module (:data:`ZERO_MAKERS`, looking through dropout and identities) inside an
            ``nn.Sequential``; activations applied in ``forward`` code must be named.
        threshold: ``"auto"`` (:func:`calibrate` each layer shape on this machine; takes a
            second or so per shape), a zero fraction in ``[0, 1]``, or ``{batch: fraction}``.
        inplace: swap the layers in ``model`` itself instead of in a deep copy.
        fuse: make every plain ``nn.Sequential`` that holds a converted layer a
            :class:`SparseSequential` (its class changes, nothing else), which runs Linear/ReLU
            runs in one C++ call.
        kernels: the kernels the converted layers run: ``"auto"`` (default: the C++ kernels
            where a compiler is present, built here on first use, once per machine, with one
            log line; else one warning and pure PyTorch; ``ACTREG_EXTENSION`` forces either),
            ``"torch"`` (pure PyTorch), ``"cpp"`` (C++ or an error), or a backend object
            (see :func:`actreg.sparse.backend`).

    Returns:
        The converted model (``model`` itself when ``inplace``). Parameters are shared with
        the replaced layers, so ``state_dict`` keys and values do not change. Hooks on the
        replaced layers are not carried over.

    Raises:
        ActregError: for unknown names (with close matches), names of modules that are not
            ``nn.Linear``, a bad threshold or ``kernels``, or ``kernels="cpp"`` (or
            ``ACTREG_EXTENSION=1``) where the C++ kernels do not build.

    Example:
        >>> import torch, actreg.sparse
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
        >>> type(actreg.sparse.convert(net, ["2"], threshold=0.8)[2]).__name__
        'SparseInputLinear'
    """
    model = check_model(model)
    if isinstance(threshold, str) and threshold != "auto":
        raise ActregError(f'threshold must be "auto" or a number, got {threshold!r}')
    if not isinstance(threshold, str):
        _check_threshold(threshold)
    chosen = eligible(model) if names is None else _named_linears(model, names)
    kernels = backend(kernels)
    target = model if inplace else copy.deepcopy(model)
    modules = dict(target.named_modules())
    if any(modules[n].weight.device.type == "cpu" for n in chosen):
        kernels.load()  # build (once per machine) before calibrating: time what will run
    if not chosen:
        warnings.warn(
            f"no nn.Linear after a ReLU-like module found in {type(model).__name__}; "
            "pass names= to choose layers",
            stacklevel=2,
        )
    for name in chosen:
        old = modules[name]
        assert isinstance(old, nn.Linear)
        t: Threshold
        if isinstance(threshold, str):
            w = old.weight
            t = calibrate(
                old.in_features, old.out_features, dtype=w.dtype, device=w.device, kernels=kernels
            )
        else:
            t = threshold
        new = SparseInputLinear.from_linear(old, threshold=t, kernels=kernels)
        parent_name, _, child = name.rpartition(".")
        parent = modules[parent_name] if parent_name else target
        setattr(parent, child, new)
        if fuse and type(parent) is nn.Sequential:
            parent.__class__ = SparseSequential  # same children and state: only forward differs
        if isinstance(parent, SparseSequential):
            parent.backend = kernels
    return target


def fold_input_scaling(
    linear: nn.Linear, shift: float | Tensor = 0.0, scale: float | Tensor = 1.0
) -> nn.Linear:
    """A new ``nn.Linear`` equal to ``linear((x - shift) / scale)`` that reads ``x`` itself.

    Input scaling (standardization, min-max) turns the zeros of raw data, such as the ~80% of
    MNIST pixels that are black, into non-zero values; folding it into the first layer's
    weights and bias (``W / scale`` and ``b - W @ (shift / scale)``) lets that layer skip the
    raw zeros. ``shift`` and ``scale`` are scalars or per-feature vectors of length
    ``in_features``; computed in float64, stored in the layer's dtype, so outputs agree with
    the scaled original to rounding.

    Example:
        >>> import torch
        >>> lin = torch.nn.Linear(3, 2)
        >>> folded = fold_input_scaling(lin, shift=0.13, scale=0.31)
        >>> x = torch.tensor([[0.0, 0.5, 1.0]])
        >>> torch.allclose(folded(x), lin((x - 0.13) / 0.31), atol=1e-5)
        True
    """
    if not isinstance(linear, nn.Linear):
        raise ActregError(f"fold_input_scaling needs an nn.Linear, got {type(linear).__name__}")
    w = linear.weight.detach().double()
    n = linear.in_features

    def vec(v: float | Tensor, what: str) -> Tensor:
        t = torch.as_tensor(v, dtype=torch.float64, device=w.device).reshape(-1)
        if t.numel() not in (1, n) or not bool(torch.isfinite(t).all()):
            raise ActregError(
                f"{what} must be a finite scalar or {n} finite values (one per input feature), "
                f"got {t.numel()} values"
            )
        return t.expand(n)

    sh, sc = vec(shift, "shift"), vec(scale, "scale")
    if bool((sc == 0).any()):
        raise ActregError("scale must be non-zero (a constant feature's scale is usually 1)")
    new = nn.Linear(n, linear.out_features, device=w.device, dtype=linear.weight.dtype)
    with torch.no_grad():
        wf = w / sc
        b = linear.bias.detach().double() if linear.bias is not None else w.new_zeros(w.shape[0])
        new.weight.copy_(wf)
        new.bias.copy_(b - wf @ sh)
    return new
