"""Sparse-input inference: turn the zeros that activation regularization buys into speed.

:func:`convert` swaps the ``nn.Linear`` layers that read ReLU-like outputs for
:class:`SparseInputLinear`, which has the same parameters (and ``state_dict``) and computes
the same outputs, but at inference reads only the weight columns whose input is non-zero.
It falls back to the dense ``F.linear`` when the input has fewer zeros than a threshold
measured on this machine (:func:`calibrate`). :func:`measure` compares a model with its
converted copy. Kernels and timing live in :mod:`actreg.sparse._kernels`.

Example:
    >>> import torch, actreg.sparse
    >>> net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    >>> fast = actreg.sparse.convert(net, threshold=0.5)
    >>> fast
    SparseSequential(
      (0): Linear(in_features=8, out_features=16, bias=True)
      (1): ReLU()
      (2): SparseInputLinear(in_features=16, out_features=2, bias=True, threshold=0.5)
    )
    >>> x = torch.randn(3, 8)
    >>> with torch.no_grad():
    ...     torch.allclose(fast(x), net(x), atol=1e-6)
    True
"""

from __future__ import annotations

import contextlib
import copy
import math
import operator
import statistics
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules import module as _module_globals

from actreg._errors import ActregError
from actreg._resolve import check_model, resolve
from actreg.layers import ActivityRegularization, TopK
from actreg.sparse import _kernels as _k
from actreg.sparse._kernels import (
    _use_ext,
    calibrate,
    load_extension,
    nonzero_fraction,
    sparse_linear,
    time_interleaved,
)

__all__ = [
    "SparseInputLinear",
    "SparseReport",
    "SparseSequential",
    "calibrate",
    "convert",
    "eligible",
    "flop_limit",
    "fold_input_scaling",
    "load_extension",
    "measure",
    "pure_pytorch",
]

#: Modules whose outputs have exact zeros (ReLU-like), so a Linear after them gets sparse input.
ZERO_MAKERS: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.Hardshrink, nn.Softshrink, nn.Threshold, TopK,
)  # fmt: skip
#: Modules that keep zeros zero at inference, looked through when finding a Linear's producer.
ZERO_KEEPERS: tuple[type[nn.Module], ...] = (
    nn.Dropout, nn.Identity, nn.Flatten, ActivityRegularization,
)  # fmt: skip

Threshold = float | Mapping[int, float]


#: Bumped whenever a SparseInputLinear's threshold is set or a parameter or module is
#: registered (SparseSequential keeps a plan while it is unchanged).
_GENERATION = [0]


def _version(t: Tensor) -> int:
    """The in-place version counter (inference tensors have none: -1)."""
    return -1 if t.is_inference() else t._version


def _check_threshold(threshold: object) -> dict[int, float]:
    """A threshold as ``{batch_size: zero fraction}``; a float applies to every batch size."""
    if isinstance(threshold, (int, float)) and not isinstance(threshold, bool):
        threshold = {1: float(threshold)}
    if not isinstance(threshold, Mapping) or not threshold:
        raise ActregError(
            f'threshold must be "auto", a zero fraction in [0, 1] or a mapping batch size -> '
            f"zero fraction, got {threshold!r}"
        )
    out: dict[int, float] = {}
    for b, t in threshold.items():
        ok_b = isinstance(b, int) and not isinstance(b, bool) and b >= 1
        ok_t = isinstance(t, (int, float)) and not isinstance(t, bool)
        if not ok_b or not ok_t or not (0.0 <= t <= 1.0 or t == math.inf):
            raise ActregError(
                f"threshold entries must be batch size (int >= 1) -> zero fraction in [0, 1] "
                f"(or inf for never), got {b!r}: {t!r}"
            )
        out[b] = float(t)
    return dict(sorted(out.items()))


class SparseInputLinear(nn.Linear):
    """An ``nn.Linear`` that skips the zero entries of its input at inference.

    With grad disabled (``torch.no_grad()``/``torch.inference_mode()``), or in eval mode with
    nothing requiring grad, an input whose fraction of zeros is at least the threshold for
    its batch size goes through :func:`actreg.sparse._kernels.sparse_linear` (the C++ kernel
    after :func:`load_extension`, else ``F.embedding_bag``); otherwise, and
    always when training with grad enabled, this is exactly ``nn.Linear``. Parameters and
    ``state_dict`` keys are those of ``nn.Linear``. A transposed copy of the weight
    (``in x out``, refreshed when the weight changes) costs the weight's memory once more.

    Args:
        threshold: zero fraction from which the sparse path is used: a float for every batch
            size, or ``{batch_size: fraction}`` (the nearest batch size on a log scale
            applies; ``math.inf`` means never).

    Example:
        >>> import torch
        >>> layer = SparseInputLinear(4, 2, threshold=0.5)
        >>> x = torch.tensor([[0.0, 0.0, 3.0, 0.0]])
        >>> layer.uses_sparse(x), layer.uses_sparse(torch.ones(1, 4))
        (True, False)
        >>> with torch.no_grad():
        ...     torch.allclose(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))
        True
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        threshold: Threshold = 0.5,
    ) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.threshold = threshold
        self._wt: Tensor | None = None
        self._wt_key: tuple[Any, ...] | None = None

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, threshold: Threshold) -> SparseInputLinear:
        """A ``SparseInputLinear`` sharing ``linear``'s parameters (no copy)."""
        new = cls(
            linear.in_features,
            linear.out_features,
            linear.bias is not None,
            device="meta",
            threshold=threshold,
        )
        new.weight = linear.weight
        new.bias = linear.bias
        new.train(linear.training)
        return new

    @property
    def threshold(self) -> dict[int, float]:
        """``{batch_size: zero fraction}``; may be set to a float or a mapping."""
        return self._threshold

    @threshold.setter
    def threshold(self, value: Threshold) -> None:
        self._threshold = _check_threshold(value)
        self._by_batch: dict[int, float] = {}
        self.__dict__["_cpp_state"] = None
        _GENERATION[0] += 1  # fused plans re-read their thresholds

    def threshold_for(self, batch: int) -> float:
        """The zero fraction from which a batch of ``batch`` rows uses the sparse path."""
        t = self._by_batch.get(batch)
        if t is None:
            sizes = list(self.threshold)
            near = min(sizes, key=lambda b: (abs(math.log(b) - math.log(max(batch, 1))), -b))
            t = self._by_batch[batch] = self.threshold[near]
        return t

    def uses_sparse(self, x: Tensor) -> bool:
        """Whether ``forward(x)`` would take the sparse path (ignoring grad mode). The zero
        fraction is counted exactly up to 4096 entries and on a strided sample beyond."""
        rows = x.numel() // max(self.in_features, 1)
        if rows == 0 or x.dtype != self.weight.dtype or x.device != self.weight.device:
            return False
        limit = self.threshold_for(rows)
        return limit <= 1.0 and 1.0 - nonzero_fraction(x) >= limit

    def _needs_grad(self, x: Tensor) -> bool:
        if not torch.is_grad_enabled():
            return False
        if self.training or x.requires_grad or self.weight.requires_grad:
            return True
        return self.bias is not None and self.bias.requires_grad

    def transposed_weight(self) -> Tensor:
        """``weight.T`` as a contiguous ``(in, out)`` tensor, cached until the weight changes
        (a new tensor, or an in-place update; inference tensors, which have no version
        counter, are taken as unchanged while they are the same tensor)."""
        w = self.weight
        key = (w.data_ptr(), _version(w), w.dtype, w.device)
        if self._wt is None or key != self._wt_key:
            with torch.no_grad():
                self._wt = w.detach().t().contiguous()
            self._wt_key = key
        return self._wt

    def _cpp(self) -> Any:
        """The C++ object (``_EXT.Chain`` of this one layer) that decides and runs a batch in
        one call, or None where the kernels do not take the weights (not CPU float32/64);
        rebuilt when the weight or bias is replaced, or the threshold is set."""
        state = self.__dict__.get("_cpp_state")
        ps = self._parameters
        if state is None or ps["weight"] is not state[1] or ps["bias"] is not state[2]:
            w, b = self.weight, self.bias
            cpp = None
            if _use_ext(w, w, b):  # the parameters themselves: C++ sees `.data` swaps
                cpp = _k._EXT.Chain([w], [self.transposed_weight()], [b], [False])
            state = self.__dict__["_cpp_state"] = (cpp, w, b)
        return state[0]

    def forward(self, x: Tensor) -> Tensor:
        if self._needs_grad(x) or x.dim() == 0 or x.shape[-1] != self.in_features:
            return F.linear(x, self.weight, self.bias)  # with PyTorch's errors
        x2 = x if x.dim() == 2 else x.reshape(-1, self.in_features)
        rows = x2.shape[0]
        cpp = self._cpp() if _k._EXT and rows and not x2.is_cuda else None
        if cpp is not None and x2.dtype == self.weight.dtype:  # decide + run in one C++ call
            if not x2.is_contiguous():
                x2 = x2.contiguous()
            out = cpp.run(x2)
            if out is None:  # first batch of this size, or the weights changed in place
                if not cpp.fresh():
                    self.__dict__["_cpp_state"] = None
                    cpp = self._cpp()
                    if cpp is None or x2.dtype != self.weight.dtype:
                        return self.forward(x)
                cpp.set_limits(rows, [self.threshold_for(rows)])
                out = cpp.run(x2)
        elif self.uses_sparse(x):
            out = sparse_linear(x2, self.transposed_weight(), self.bias)
        else:
            return F.linear(x, self.weight, self.bias)
        return out if x.dim() == 2 else out.reshape(*x.shape[:-1], self.out_features)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()  # caches are rebuilt on first use
        state.update(_wt=None, _wt_key=None, _cpp_state=None)
        return state

    def extra_repr(self) -> str:
        t = self.threshold
        shown = t[1] if list(t) == [1] else t
        return f"{super().extra_repr()}, threshold={shown}"


_LINEARS = (nn.Linear, SparseInputLinear)


def _bump(*_: object) -> None:
    _GENERATION[0] += 1


def _watch_registrations() -> None:
    """Count parameter and module (re)registrations anywhere (global hooks, installed once on
    first use), so that fused plans notice a replaced weight or layer."""
    if not _WATCHING:
        _module_globals.register_module_parameter_registration_hook(_bump)
        _module_globals.register_module_module_registration_hook(_bump)
        _WATCHING.append(True)


_WATCHING: list[bool] = []


class _Chain:
    """A run of Linear (+ ReLU) layers and its C++ object (``_EXT.Chain``), which holds the
    weights, transposed weights and biases so that a call passes one tensor. The object is
    rebuilt when it reports a weight or bias changed (storage or in-place version), and the
    thresholds are set per row count on first use."""

    __slots__ = ("cpp", "dtype", "layers", "relus", "width")

    def __init__(self, layers: list[nn.Linear], relus: list[bool]) -> None:
        self.layers, self.relus = layers, relus
        self.refresh()

    def refresh(self) -> None:
        wts = [
            lin.transposed_weight() if isinstance(lin, SparseInputLinear) else lin.weight
            for lin in self.layers
        ]
        ws = [lin.weight for lin in self.layers]  # not detached: C++ sees `.data` swaps
        bs = [lin.bias for lin in self.layers]
        self.dtype = ws[0].dtype
        self.width = self.layers[0].in_features
        self.cpp = _k._EXT.Chain(ws, wts, bs, self.relus)

    def one_by_one(self, x: Tensor) -> Tensor:
        for lin, relu in zip(self.layers, self.relus, strict=True):
            x = lin(x)
            x = F.relu(x) if relu else x
        return x

    def run_slow(self, x: Tensor) -> Tensor:
        """What forward does when ``cpp.run(x)`` returned None: reshape, convert, rebuild,
        set this batch size's thresholds, or run the layers one by one."""
        dim = x.dim()
        x2 = x if dim == 2 else x.reshape(-1, x.shape[-1]) if dim else x.view(1, 1)
        if x2.dtype != self.dtype and self.layers[0].weight.dtype == x2.dtype:
            if not _chainable(self.layers):  # e.g. converted to half precision
                return self.one_by_one(x)
            self.refresh()  # the model was converted to another dtype
            _GENERATION[0] += 1
        if x2.dtype != self.dtype or x2.shape[1] != self.width or not x2.shape[0] or not dim:
            return self.one_by_one(x)  # PyTorch's own errors, or its empty result
        if not x2.is_contiguous():
            x2 = x2.contiguous()
        out = self.cpp.run(x2)
        if out is None:  # a weight changed, or the first batch of this size
            rows = x2.shape[0]
            if not self.cpp.fresh():
                self.refresh()
                _GENERATION[0] += 1  # plans call the C++ object directly: rebuild them
            self.cpp.set_limits(
                rows,
                [
                    lin.threshold_for(rows) if isinstance(lin, SparseInputLinear) else math.inf
                    for lin in self.layers
                ],
            )
            out = self.cpp.run(x2)
        return out if dim == 2 else out.reshape(*x.shape[:-1], out.shape[1])


def _chainable(layers: list[nn.Linear]) -> bool:
    """Whether the C++ chain takes these layers: widths that chain, one float dtype, contiguous
    weights and biases on the CPU."""
    w0 = layers[0].weight
    for i, lin in enumerate(layers):
        w, b = lin.weight, lin.bias
        if i and layers[i - 1].out_features != lin.in_features:
            return False
        if w.device.type != "cpu" or w.dtype != w0.dtype or w.dtype not in _FLOATS:
            return False
        if not _k._use_ext(w, w, b):
            return False
    return True


_FLOATS = (torch.float32, torch.float64)
_FORWARD_HOOKS = operator.attrgetter("_forward_hooks")
_PRE_HOOKS = operator.attrgetter("_forward_pre_hooks")


def _hooked(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks)


class _Plan:
    """What a SparseSequential runs at inference: modules and chains, in order, with what it
    was built for (the children, the hooks, the dropout modes)."""

    __slots__ = ("calls", "dropouts", "generation", "hooked", "mods", "steps", "watched")

    def __init__(self, mods: tuple[nn.Module, ...]) -> None:
        self.mods = mods
        self.generation = _GENERATION[0]
        # fused modules: a hook added to one of them later makes the plan invalid
        self.watched = [m for m in mods if not _hooked(m)]
        self.hooked = [m for m in mods if _hooked(m)]
        self.dropouts = [(m, m.training) for m in mods if isinstance(m, nn.Dropout)]
        self.steps: list[nn.Module | _Chain] = []
        layers: list[nn.Linear] = []
        relus: list[bool] = []

        def flush() -> None:
            if layers:
                if _chainable(layers):
                    self.steps.append(_Chain(list(layers), list(relus)))
                else:
                    for lin, relu in zip(layers, relus, strict=True):
                        self.steps += [lin, nn.ReLU()] if relu else [lin]
            layers.clear()
            relus.clear()

        for m in mods:
            kind = type(m)
            if m._forward_hooks or m._forward_pre_hooks:
                pass
            elif isinstance(m, nn.Linear) and kind in _LINEARS:
                layers.append(m)
                relus.append(False)
                continue
            elif kind is nn.ReLU and layers:
                relus[-1] = True
                continue
            elif kind is nn.Identity or (kind is nn.Dropout and (not m.training or m.p == 0)):
                continue
            flush()
            self.steps.append(m)
        flush()
        # what forward calls: a chain's C++ object directly (None: take the slow path)
        self.calls = [
            (s.cpp.run, s.run_slow) if isinstance(s, _Chain) else (s, None) for s in self.steps
        ]

    def valid(self, mods: tuple[nn.Module, ...]) -> bool:
        if self.generation != _GENERATION[0] or mods != self.mods:
            return False
        if any(map(_FORWARD_HOOKS, self.watched)) or any(map(_PRE_HOOKS, self.watched)):
            return False  # a hook was added to a fused module
        if self.hooked and not all(map(_hooked, self.hooked)):
            return False  # a hook was removed: fuse again
        return not self.dropouts or all(m.training is mode for m, mode in self.dropouts)


class SparseSequential(nn.Sequential):
    """An ``nn.Sequential`` that runs its Linear/ReLU runs in one C++ call at inference.

    :func:`convert` gives this class to every ``nn.Sequential`` that holds a
    :class:`SparseInputLinear` (same children, same names, same ``state_dict``). With the C++
    kernels loaded (:func:`load_extension`), a CPU input and no grad needed, each run of
    ``nn.Linear``/``SparseInputLinear`` layers, each optionally followed by ``nn.ReLU``
    (looking through ``nn.Identity`` and inactive dropout), goes through one call that
    decides layer by layer, as the layers themselves would: the sparse kernel where the
    input's zero fraction reaches the layer's threshold, else ``addmm`` (a plain ``nn.Linear``
    is always dense). That removes the fixed Python cost of each module call and ReLU, which
    at batch 1 is as large as a sparse layer's arithmetic. Everything else (other modules,
    modules with hooks, training with grad) runs exactly as in ``nn.Sequential``. The plan is
    kept between calls and rebuilt when children, hooks, dropout modes, weights (replaced or
    updated in place) or thresholds change.

    Example:
        >>> import torch, actreg.sparse
        >>> net = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
        >>> fast = actreg.sparse.convert(net, threshold=0.5)
        >>> type(fast).__name__, list(fast.state_dict()) == list(net.state_dict())
        ('SparseSequential', True)
    """

    def _needs_grad(self, x: Tensor) -> bool:
        if self.training or x.requires_grad:
            return True
        return any(p.requires_grad for p in self.parameters())

    def forward(self, input: Tensor) -> Tensor:
        g = _module_globals
        if (
            not _k._EXT
            or not isinstance(input, Tensor)
            or input.is_cuda
            or (torch.is_grad_enabled() and self._needs_grad(input))
            or g._global_forward_hooks
            or g._global_forward_pre_hooks
        ):
            return super().forward(input)
        mods = tuple(self._modules.values())
        plan: _Plan | None = self.__dict__.get("_actreg_plan")
        if plan is None or not plan.valid(mods):
            _watch_registrations()
            plan = _Plan(mods)
            self.__dict__["_actreg_plan"] = plan
        x = input
        for step, slow in plan.calls:
            y = step(x)
            x = slow(x) if y is None and slow is not None else y
        return x

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("_actreg_plan", None)  # rebuilt on first use; holds no state of its own
        return state


@contextlib.contextmanager
def pure_pytorch() -> Iterator[None]:
    """Within this block, converted models run the pure-PyTorch kernels even when the C++
    ones are loaded (to time or test them side by side).

    Example:
        >>> with pure_pytorch():
        ...     pass
    """
    saved = _k._EXT
    _k._EXT = False
    try:
        yield
    finally:
        _k._EXT = saved


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
            runs in one C++ call once :func:`load_extension` has loaded the kernels.

    Returns:
        The converted model (``model`` itself when ``inplace``). Parameters are shared with
        the replaced layers, so ``state_dict`` keys and values do not change. Hooks on the
        replaced layers are not carried over.

    Raises:
        ActregError: for unknown names (with close matches), names of modules that are not
            ``nn.Linear``, or a bad threshold.

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
    if not chosen:
        warnings.warn(
            f"no nn.Linear after a ReLU-like module found in {type(model).__name__}; "
            "pass names= to choose layers",
            stacklevel=2,
        )
    target = model if inplace else copy.deepcopy(model)
    modules = dict(target.named_modules())
    for name in chosen:
        old = modules[name]
        assert isinstance(old, nn.Linear)
        t: Threshold
        if isinstance(threshold, str):
            w = old.weight
            t = calibrate(old.in_features, old.out_features, dtype=w.dtype, device=w.device)
        else:
            t = threshold
        new = SparseInputLinear.from_linear(old, threshold=t)
        parent_name, _, child = name.rpartition(".")
        parent = modules[parent_name] if parent_name else target
        setattr(parent, child, new)
        if fuse and type(parent) is nn.Sequential:
            parent.__class__ = SparseSequential  # same children and state: only forward differs
    return target


@dataclass
class SparseReport:
    """What :func:`measure` found. Times are seconds per batch (medians over repeats).

    Attributes:
        zero_fractions: fraction of zeros in the input of each SparseInputLinear.
        limit: dense Linear FLOPs over the FLOPs left when zero inputs are skipped.
        identical: whether the argmax over the last dimension agrees on every example.
    """

    dense_s: float
    sparse_s: float
    dense_spread: tuple[float, float]
    sparse_spread: tuple[float, float]
    limit: float
    identical: bool
    max_abs_diff: float
    zero_fractions: dict[str, float] = field(default_factory=dict)

    @property
    def speedup(self) -> float:
        """Dense time over converted time."""
        return self.dense_s / self.sparse_s

    @property
    def of_limit(self) -> float:
        """Measured speedup as a fraction of the FLOP-based limit."""
        return self.speedup / self.limit


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


def flop_limit(converted: nn.Module, batches: Iterable[Tensor]) -> tuple[float, dict[str, float]]:
    """FLOP-based speedup limit of ``converted`` over ``batches``, and each sparse layer's
    input zero fraction. Counts ``nn.Linear`` work only: a SparseInputLinear costs
    ``nnz * out`` per call, any other Linear ``rows * in * out``.

    Example:
        >>> import torch, actreg.sparse
        >>> net = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Linear(4, 4))
        >>> fast = actreg.sparse.convert(net, threshold=0.0)
        >>> limit, zeros = flop_limit(fast, [torch.tensor([[1.0, -1.0, -1.0, -1.0]])])
        >>> limit, zeros
        (4.0, {'1': 0.75})
    """
    dense, left = [0.0], [0.0]
    counts: dict[str, list[int]] = {}
    handles = []

    def hook(name: str, mod: nn.Linear) -> Any:
        def pre(_: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0]
            rows = x.numel() // mod.in_features
            dense[0] += rows * mod.in_features * mod.out_features
            if isinstance(mod, SparseInputLinear):
                nnz = int(torch.count_nonzero(x))
                left[0] += nnz * mod.out_features
                c = counts.setdefault(name, [0, 0])
                c[0] += x.numel() - nnz
                c[1] += x.numel()
            else:
                left[0] += rows * mod.in_features * mod.out_features

        return pre

    for name, mod in converted.named_modules():
        if isinstance(mod, nn.Linear):
            handles.append(mod.register_forward_pre_hook(hook(name, mod)))
    try:
        with torch.inference_mode():
            for xb in batches:
                converted(xb)
    finally:
        for h in handles:
            h.remove()
    zeros = {n: z / max(t, 1) for n, (z, t) in counts.items()}
    return dense[0] / max(left[0], 1.0), zeros


def measure(
    model: nn.Module,
    converted: nn.Module,
    inputs: Tensor,
    *,
    batch_size: int = 1,
    repeats: int = 7,
    clock: str = "auto",
    converted_inputs: Tensor | None = None,
) -> SparseReport:
    """Latency of ``model`` against ``converted`` on ``inputs`` split into batches, with the
    prediction check and the FLOP-based limit. Both run in eval mode under
    ``torch.inference_mode()``, interleaved so background load hits both alike.
    ``converted_inputs`` (same examples, in the same order) feeds ``converted`` when it takes
    another form of the input, e.g. raw pixels after :func:`fold_input_scaling`.
    ``clock="auto"`` is CPU time with one CPU thread, else wall time
    (see :func:`actreg.sparse._kernels.time_interleaved`).

    Example:
        >>> rep = measure(net, actreg.sparse.convert(net), x)  # doctest: +SKIP
        >>> rep.speedup, rep.limit, rep.identical  # doctest: +SKIP
        (6.1, 7.3, True)
    """
    if not isinstance(inputs, Tensor) or inputs.dim() == 0 or len(inputs) == 0:
        raise ActregError("measure needs a non-empty tensor of inputs (examples along dim 0)")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ActregError(f"batch_size must be a positive int, got {batch_size!r}")
    batches = list(inputs.split(batch_size))
    if converted_inputs is None:
        fast_batches = batches
    elif not isinstance(converted_inputs, Tensor) or len(converted_inputs) != len(inputs):
        raise ActregError(
            "converted_inputs must be a tensor with the same examples as inputs "
            f"({len(inputs)} along dim 0)"
        )
    else:
        fast_batches = list(converted_inputs.split(batch_size))
    if clock == "auto":
        clock = "cpu" if torch.get_num_threads() == 1 and inputs.device.type == "cpu" else "wall"
    modes = [(m, m.training) for m in (model, converted)]
    model.eval()
    converted.eval()
    try:
        limit, zeros = flop_limit(converted, fast_batches)
        with torch.inference_mode():
            ref = [model(xb) for xb in batches]
            got = [converted(xb) for xb in fast_batches]
            same = all(
                torch.equal(r.argmax(-1), g.argmax(-1)) for r, g in zip(ref, got, strict=True)
            )
            diff = max(float((r - g).abs().max()) for r, g in zip(ref, got, strict=True))
            t = time_interleaved(
                {
                    "dense": lambda: [model(xb) for xb in batches],
                    "sparse": lambda: [converted(xb) for xb in fast_batches],
                },
                repeats=repeats,
                min_time=0.05,
                device=inputs.device,
                clock=clock,
            )
    finally:
        for m, mode in modes:
            m.train(mode)
    n = len(batches)
    per = {k: sorted(s / n for s in v) for k, v in t.items()}
    return SparseReport(
        dense_s=statistics.median(per["dense"]),
        sparse_s=statistics.median(per["sparse"]),
        dense_spread=(per["dense"][0], per["dense"][-1]),
        sparse_spread=(per["sparse"][0], per["sparse"][-1]),
        limit=limit,
        identical=same,
        max_abs_diff=diff,
        zero_fractions=zeros,
    )
