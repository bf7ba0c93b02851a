"""The fused runtime: :class:`SparseSequential` runs Linear/ReLU runs in one C++ call.

At batch 1 a sparse layer's arithmetic takes a few microseconds, as long as the Python cost
of calling it as a module; a :class:`SparseSequential` keeps a *plan* (its children, in
runs of Linear (+ ReLU) layers held by one C++ ``Chain`` object each) and calls the C++
object straight from ``forward``.

The plan notices every change on its own, without process-wide hooks: the children's tuple
and their hooks and dropout modes are compared each call; each C++ chain checks, in C++, that
its layers still hold the same parameter objects (identity in their ``_parameters``) with
the same storage and in-place version (``data_ptr``, ``_version``), and is rebuilt otherwise;
a layer's threshold setter tells the chains that hold it (a weak set) to forget their
per-batch-size limits. Chosen over counting registrations with torch's global module and
parameter registration hooks (the previous design): those fire for every module of the
process and had to be installed as a side effect; the checks here cost a few pointer
compares in C++ per call.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules import module as _module_globals

from actreg.sparse._backend import Backend, Kernels, backend, takes
from actreg.sparse.linear import SparseInputLinear, watch_threshold

__all__ = ["SparseSequential"]

_LINEARS = (nn.Linear, SparseInputLinear)


class _Chain:
    """A run of Linear (+ ReLU) layers and its C++ object (``Chain`` of the loaded module
    ``ext``), which holds the weights, transposed weights and biases so that a call passes
    one tensor. The object is rebuilt when it reports a weight or bias replaced or changed
    (parameter identity, storage or in-place version), and the thresholds are set per row
    count on first use (forgotten when a layer's threshold is set). ``calls[index]`` is the
    plan's entry for this chain, replaced when the object is rebuilt."""

    __slots__ = ("__weakref__", "calls", "cpp", "dtype", "ext", "index", "layers", "relus",
                 "width")  # fmt: skip

    def __init__(self, layers: list[nn.Linear], relus: list[bool], ext: Any) -> None:
        self.layers, self.relus, self.ext = layers, relus, ext
        self.calls: list[tuple[Any, Any]] = []
        self.index = -1
        self.refresh()
        for lin in layers:
            if isinstance(lin, SparseInputLinear):
                watch_threshold(lin, self)

    def refresh(self) -> None:
        wts = [
            lin.transposed_weight() if isinstance(lin, SparseInputLinear) else lin.weight
            for lin in self.layers
        ]
        ws = [lin.weight for lin in self.layers]  # not detached: C++ sees `.data` swaps
        bs = [lin.bias for lin in self.layers]
        owners = [lin._parameters for lin in self.layers]  # C++ sees replaced parameters
        self.dtype = ws[0].dtype
        self.width = self.layers[0].in_features
        self.cpp = self.ext.Chain(ws, wts, bs, self.relus, owners)
        if self.index >= 0:  # the plan calls the new object from now on
            self.calls[self.index] = (self.cpp.run, self.run_slow)

    def forget_limits(self) -> None:
        self.cpp.clear_limits()

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
            if not _chainable(self.layers, self.ext):  # e.g. converted to half precision
                return self.one_by_one(x)
            self.refresh()  # the model was converted to another dtype
        if x2.dtype != self.dtype or x2.shape[1] != self.width or not x2.shape[0] or not dim:
            return self.one_by_one(x)  # PyTorch's own errors, or its empty result
        if not x2.is_contiguous():
            x2 = x2.contiguous()
        out = self.cpp.run(x2)
        if out is None:  # a weight changed, or the first batch of this size
            rows = x2.shape[0]
            if not self.cpp.fresh():
                if not _chainable(self.layers, self.ext):  # e.g. a float16 weight set
                    return self.one_by_one(x)
                self.refresh()
            self.cpp.set_limits(
                rows,
                [
                    lin.threshold_for(rows) if isinstance(lin, SparseInputLinear) else math.inf
                    for lin in self.layers
                ],
            )
            out = self.cpp.run(x2)
        return out if dim == 2 else out.reshape(*x.shape[:-1], out.shape[1])


def _chainable(layers: list[nn.Linear], ext: Any) -> bool:
    """Whether the C++ chain takes these layers: widths that chain, one float dtype, contiguous
    weights and biases on the CPU."""
    w0 = layers[0].weight
    for i, lin in enumerate(layers):
        w, b = lin.weight, lin.bias
        if i and layers[i - 1].out_features != lin.in_features:
            return False
        if w.device.type != "cpu" or w.dtype != w0.dtype or w.dtype not in _FLOATS:
            return False
        if not takes(ext, w, w, b):
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

    __slots__ = ("calls", "dropouts", "hooked", "mods", "steps", "watched")

    def __init__(self, mods: tuple[nn.Module, ...], ext: Any) -> None:
        self.mods = mods
        # fused modules: a hook added to one of them later makes the plan invalid
        self.watched = [m for m in mods if not _hooked(m)]
        self.hooked = [m for m in mods if _hooked(m)]
        self.dropouts = [(m, m.training) for m in mods if isinstance(m, nn.Dropout)]
        self.steps: list[nn.Module | _Chain] = []
        layers: list[nn.Linear] = []
        relus: list[bool] = []

        def flush() -> None:
            if layers:
                if _chainable(layers, ext):
                    self.steps.append(_Chain(list(layers), list(relus), ext))
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
        self.calls: list[tuple[Any, Any]] = []
        for s in self.steps:
            if isinstance(s, _Chain):
                s.calls, s.index = self.calls, len(self.calls)
                self.calls.append((s.cpp.run, s.run_slow))
            else:
                self.calls.append((s, None))

    def valid(self, mods: tuple[nn.Module, ...]) -> bool:
        """Whether the plan still fits: same children, same hooks, same dropout modes (the
        chains check their own weights and thresholds)."""
        if mods != self.mods:
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
    kernels (the backend :func:`convert` was given, else ``"auto"``: built where a compiler
    is present), a CPU input and no grad needed, each run of
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

    @property
    def backend(self) -> Backend:
        """The kernels' backend (set by :func:`convert`; default ``"auto"``)."""
        return self.__dict__.get("_actreg_backend") or backend("auto")

    @backend.setter
    def backend(self, value: Kernels | Backend) -> None:
        self.__dict__["_actreg_backend"] = backend(value)
        self.__dict__.pop("_actreg_plan", None)

    def forward(self, input: Tensor) -> Tensor:
        g = _module_globals  # read only: global hooks must see every module
        if (
            not isinstance(input, Tensor)
            or input.is_cuda
            or (torch.is_grad_enabled() and self._needs_grad(input))
            or g._global_forward_hooks
            or g._global_forward_pre_hooks
        ):
            return super().forward(input)
        mods = tuple(self._modules.values())
        plan: _Plan | None = self.__dict__.get("_actreg_plan")
        if plan is None or not plan.valid(mods):
            ext = self.backend.load()
            if ext is None:
                return super().forward(input)
            plan = _Plan(mods, ext)
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
