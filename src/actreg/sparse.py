"""Sparse-input inference: turn the zeros that activation regularization buys into speed.

:func:`convert` swaps the ``nn.Linear`` layers that read ReLU-like outputs for
:class:`SparseInputLinear`, which has the same parameters (and ``state_dict``) and computes
the same outputs, but at inference reads only the weight columns whose input is non-zero.
It falls back to the dense ``F.linear`` when the input has fewer zeros than a threshold
measured on this machine (:func:`calibrate`). :func:`measure` compares a model with its
converted copy. Kernels and timing live in :mod:`actreg._sparse_kernels`.

Example:
    >>> import torch, actreg.sparse
    >>> net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    >>> fast = actreg.sparse.convert(net, threshold=0.5)
    >>> fast
    Sequential(
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

import copy
import math
import statistics
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from actreg._errors import ActregError
from actreg._resolve import check_model, resolve
from actreg._sparse_kernels import (
    calibrate,
    load_extension,
    nonzero_fraction,
    sparse_linear,
    time_interleaved,
)
from actreg.layers import ActivityRegularization, TopK

__all__ = [
    "SparseInputLinear",
    "SparseReport",
    "calibrate",
    "convert",
    "flop_limit",
    "load_extension",
    "measure",
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
    its batch size goes through :func:`actreg._sparse_kernels.sparse_linear` (the C++ kernel
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
        """``weight.T`` as a contiguous ``(in, out)`` tensor, cached until the weight changes."""
        w = self.weight
        key = (w.data_ptr(), w._version, w.dtype, w.device)
        if self._wt is None or key != self._wt_key:
            with torch.no_grad():
                self._wt = w.detach().t().contiguous()
            self._wt_key = key
        return self._wt

    def forward(self, x: Tensor) -> Tensor:
        if self._needs_grad(x) or x.dim() == 0 or not self.uses_sparse(x):
            return F.linear(x, self.weight, self.bias)
        out = sparse_linear(x.reshape(-1, self.in_features), self.transposed_weight(), self.bias)
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        t = self.threshold
        shown = t[1] if list(t) == [1] else t
        return f"{super().extra_repr()}, threshold={shown}"


def _producer(children: list[nn.Module], i: int) -> nn.Module | None:
    """The module whose output feeds ``children[i]``, looking through zero keepers."""
    for prev in reversed(children[:i]):
        if not isinstance(prev, ZERO_KEEPERS):
            return prev
    return None


def _eligible(model: nn.Module) -> list[str]:
    """Names of Linear layers that directly follow a ReLU-like module in an nn.Sequential."""
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
    chosen = _eligible(model) if names is None else _named_linears(model, names)
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
        setattr(modules[parent_name] if parent_name else target, child, new)
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
) -> SparseReport:
    """Latency of ``model`` against ``converted`` on ``inputs`` split into batches, with the
    prediction check and the FLOP-based limit. Both run in eval mode under
    ``torch.inference_mode()``, interleaved so background load hits both alike.
    ``clock="auto"`` is CPU time with one CPU thread, else wall time
    (see :func:`actreg._sparse_kernels.time_interleaved`).

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
    if clock == "auto":
        clock = "cpu" if torch.get_num_threads() == 1 and inputs.device.type == "cpu" else "wall"
    modes = [(m, m.training) for m in (model, converted)]
    model.eval()
    converted.eval()
    try:
        limit, zeros = flop_limit(converted, batches)
        with torch.inference_mode():
            ref = [model(xb) for xb in batches]
            got = [converted(xb) for xb in batches]
            same = all(
                torch.equal(r.argmax(-1), g.argmax(-1)) for r, g in zip(ref, got, strict=True)
            )
            diff = max(float((r - g).abs().max()) for r, g in zip(ref, got, strict=True))
            t = time_interleaved(
                {
                    "dense": lambda: [model(xb) for xb in batches],
                    "sparse": lambda: [converted(xb) for xb in batches],
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
