"""The sparse-input layer: :class:`SparseInputLinear`, an ``nn.Linear`` that skips zero inputs."""

from __future__ import annotations

import math
import weakref
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from actreg._errors import ActregError
from actreg.sparse._backend import Backend, Kernels, backend, takes
from actreg.sparse._kernels import nonzero_fraction, sparse_linear

__all__ = ["SparseInputLinear", "Threshold", "threshold_at"]

Threshold = float | Mapping[int, float]


def _version(t: Tensor) -> int:
    """The in-place version counter (inference tensors have none: -1)."""
    return -1 if t.is_inference() else t._version


def _check_threshold(threshold: object) -> dict[int, float]:
    """A threshold as ``{batch_size: zero fraction}``; a float applies to every batch size."""
    if isinstance(threshold, (int, float)) and not isinstance(threshold, bool):
        if not (0.0 <= threshold <= 1.0 or threshold == math.inf):
            raise ActregError(
                f"threshold must be a zero fraction in [0, 1] (the share of zero inputs from "
                f'which the sparse kernel runs; inf for never, "auto" to measure it), got '
                f"{threshold!r}"
            )
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


def threshold_at(threshold: Mapping[int, float], batch: int) -> float:
    """The entry of ``{batch_size: zero fraction}`` for ``batch`` rows: the nearest batch size
    on a log scale (the larger one on a tie)."""
    near = min(threshold, key=lambda b: (abs(math.log(b) - math.log(max(batch, 1))), -b))
    return threshold[near]


class SparseInputLinear(nn.Linear):
    """An ``nn.Linear`` that skips the zero entries of its input at inference.

    With grad disabled (``torch.no_grad()``/``torch.inference_mode()``), or in eval mode with
    nothing requiring grad, an input whose fraction of zeros is at least the threshold for
    its batch size goes through the sparse kernel (the C++ one where it builds, else
    ``F.embedding_bag``: see ``kernels``); otherwise, and always when training with grad
    enabled, this is exactly ``nn.Linear``. Parameters and
    ``state_dict`` keys are those of ``nn.Linear``. A transposed copy of the weight
    (``in x out``, refreshed when the weight changes) costs the weight's memory once more.

    Args:
        threshold: zero fraction from which the sparse path is used: a float for every batch
            size, or ``{batch_size: fraction}`` (the nearest batch size on a log scale
            applies; ``math.inf`` means never).
        kernels: ``"auto"`` (C++ where a compiler is present, built on first use; see
            :func:`actreg.sparse.backend`), ``"torch"`` or ``"cpp"``, or a backend object; kept
            in the attribute ``backend``.

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
        kernels: Kernels | Backend = "auto",
    ) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.backend = backend(kernels)
        self.threshold = threshold
        self._wt: Tensor | None = None
        self._wt_key: tuple[Any, ...] | None = None
        self._wt_src: Tensor | None = None  # holds the keyed storage (see transposed_weight)

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, *, threshold: Threshold, kernels: Kernels | Backend = "auto"
    ) -> SparseInputLinear:
        """A ``SparseInputLinear`` sharing ``linear``'s parameters (no copy)."""
        new = cls(
            linear.in_features,
            linear.out_features,
            linear.bias is not None,
            device="meta",
            threshold=threshold,
            kernels=kernels,
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
        for chain in list(self.__dict__.get("_chains", ())):
            chain.forget_limits()  # fused runs holding this layer ask it again

    def threshold_for(self, batch: int) -> float:
        """The zero fraction from which a batch of ``batch`` rows uses the sparse path."""
        t = self._by_batch.get(batch)
        if t is None:
            t = self._by_batch[batch] = threshold_at(self.threshold, batch)
        return t

    def uses_sparse(self, x: Tensor) -> bool:
        """Whether ``forward(x)`` would take the sparse path (ignoring grad mode). The zero
        fraction is counted exactly up to 4096 entries and on a strided sample beyond."""
        rows = x.numel() // max(self.in_features, 1)
        if rows == 0 or x.dtype != self.weight.dtype or x.device != self.weight.device:
            return False
        limit = self.threshold_for(rows)
        return limit <= 1.0 and 1.0 - nonzero_fraction(x, self._ext(x)) >= limit

    def _ext(self, x: Tensor) -> Any:
        """The loaded C++ module for a CPU ``x`` (None on other devices: nothing is built)."""
        return self.backend.load() if x.device.type == "cpu" else None

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
            # The key's address is only meaningful while that storage lives: an alias keeps
            # it alive, so `weight.data = other` can never land on the same address unseen.
            self._wt_src = w.detach()
        return self._wt

    def _cpp(self) -> Any:
        """The C++ object (a ``Chain`` of this one layer) that decides and runs a batch in
        one call, or None without the C++ kernels or where they do not take the weights (not
        CPU float32/64); rebuilt when the weight or bias is replaced, or the threshold is
        set."""
        state = self.__dict__.get("_cpp_state")
        ps = self._parameters
        if state is None or ps["weight"] is not state[1] or ps["bias"] is not state[2]:
            w, b = self.weight, self.bias
            ext, cpp = self.backend.load(), None
            if takes(ext, w, w, b):  # the parameters themselves: C++ sees `.data` swaps
                cpp = ext.Chain([w], [self.transposed_weight()], [b], [False], [ps])
            state = self.__dict__["_cpp_state"] = (cpp, w, b)
        return state[0]

    def forward(self, x: Tensor) -> Tensor:
        if self._needs_grad(x) or x.dim() == 0 or x.shape[-1] != self.in_features:
            return F.linear(x, self.weight, self.bias)  # with PyTorch's errors
        x2 = x if x.dim() == 2 else x.reshape(-1, self.in_features)
        rows = x2.shape[0]
        cpp = self._cpp() if rows and not x2.is_cuda else None
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
            out = sparse_linear(x2, self.transposed_weight(), self.bias, self._ext(x2))
        else:
            return F.linear(x, self.weight, self.bias)
        return out if x.dim() == 2 else out.reshape(*x.shape[:-1], self.out_features)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()  # caches are rebuilt on first use
        state.update(_wt=None, _wt_key=None, _wt_src=None, _cpp_state=None)
        state.pop("_chains", None)
        return state

    def extra_repr(self) -> str:
        t = self.threshold
        shown = t[1] if list(t) == [1] else t
        return f"{super().extra_repr()}, threshold={shown}"


def watch_threshold(layer: SparseInputLinear, chain: Any) -> None:
    """Have ``chain.forget_limits()`` called whenever ``layer``'s threshold is set (weakly:
    the layer does not keep the chain alive)."""
    chains = layer.__dict__.get("_chains")
    if chains is None:
        chains = layer.__dict__["_chains"] = weakref.WeakSet()
    chains.add(chain)
