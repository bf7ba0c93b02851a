"""Two-``nn.Linear`` transformer MLPs that skip their zero activations: :class:`SparseLinearMLP`.

GPT-NeoX, Phi, GPT-J, CodeGen, Falcon, T5 and their copies (the ``"linear"`` kind of
:func:`actreg.sparse._recognize.ffn_kind`) compute ``out(act(in(x)))``, maybe with a dropout
before or after ``out`` and under other attribute names. The wrapper keeps the original's
children under their names (the same ``state_dict``), runs ``in`` and the activation densely
and then ``out`` reading only the columns of its weight whose activation is non-zero, from a
transposed copy (``(inter, d)``, kept until the weight changes) like
:class:`~actreg.sparse.SparseGatedMLP`'s ``down_proj``.

Design choice: one wrapper for the four code shapes, told the attribute names by the
recognition, rather than one class per family: in eval mode the dropout is the identity
wherever it stands and T5's cast is a no-op (the fast path runs only where every weight has
the input's dtype), so the fast path is the same computation for all four; the fallback runs
the original class's own ``forward`` on the wrapper (same children, same names), so training,
hooks, other dtypes and devices compute exactly what the original computes.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from actreg._errors import ActregError
from actreg.sparse._backend import Backend, Kernels, takes
from actreg.sparse._kernels import nonzero_fraction, sparse_linear
from actreg.sparse._recognize import ffn_parts
from actreg.sparse._screen import screened_linear
from actreg.sparse.linear import Threshold
from actreg.sparse.transformer import SparseGatedMLP, _SparseFFN

__all__ = ["SparseLinearMLP"]


class SparseLinearMLP(_SparseFFN):
    """A two-``nn.Linear`` MLP (``out(act(in(x)))``: GPT-NeoX, Phi, GPT-J, Falcon, T5, ...)
    whose second layer reads only the weight columns of non-zero activations.

    At inference (CPU float32/float64, no grad needed, dropout inactive, no hooks on the
    children) with ReLU, the C++ kernels and at most ``SCREEN_ROWS`` (8) rows, one C++ call
    screens the first layer (an exact int8 bound proves most zero units zero, the rest are
    computed in float32: :mod:`actreg.sparse._screen`), then reads the second layer's
    columns of the non-zero units. Otherwise the first layer and the activation run densely;
    when the activations' zero fraction reaches the threshold for the number of rows, the
    second layer runs the sparse-input kernel, else ``F.linear``. Anything else runs the
    original class's ``forward``. Outputs equal the original's to float rounding; with
    ``cutoff > 0`` activations with ``|a| <= cutoff`` are zeroed first (approximate).
    Children and ``state_dict`` are the original's.

    Args:
        source: the original MLP (the ``"linear"`` kind of :func:`actreg.sparse.ffns`); its
            children are shared, not copied.
        threshold: zero fraction from which the sparse path runs (float or
            ``{rows: fraction}``).
        cutoff: magnitude below which an activation counts as zero (0: exact zeros only).
        kernels: ``"auto"``, ``"torch"``, ``"cpp"`` or a backend (see
            :func:`actreg.sparse.backend`).
        screen: screen the first layer where it applies (``False``: always dense).

    Raises:
        ActregError: ``source`` is not a two-``nn.Linear`` MLP that the recognition knows.

    Example:
        >>> import torch
        >>> class MLP(torch.nn.Module):  # GPT-NeoX's, token for token
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.dense_h_to_4h = torch.nn.Linear(8, 32)
        ...         self.act = torch.nn.ReLU()
        ...         self.dense_4h_to_h = torch.nn.Linear(32, 8)
        ...     def forward(self, hidden_states):
        ...         hidden_states = self.dense_h_to_4h(hidden_states)
        ...         hidden_states = self.act(hidden_states)
        ...         hidden_states = self.dense_4h_to_h(hidden_states)
        ...         return hidden_states
        >>> mlp = MLP().eval()
        >>> fast = SparseLinearMLP(mlp, threshold=0.0, kernels="torch")
        >>> x = torch.randn(2, 3, 8)
        >>> with torch.no_grad():
        ...     torch.allclose(fast(x), mlp(x), atol=1e-6)
        True
    """

    def __init__(
        self,
        source: nn.Module,
        *,
        threshold: Threshold = 0.5,
        cutoff: float = 0.0,
        kernels: Kernels | Backend = "auto",
        screen: bool = True,
    ) -> None:
        parts = ffn_parts(source)
        if parts is None or parts.kind != "linear":
            raise ActregError(
                f"{type(source).__name__} is not a two-nn.Linear MLP that actreg recognises "
                "(see actreg.sparse.ffns); convert its second nn.Linear by name instead: "
                "actreg.sparse.convert(model, names=[...])"
            )
        self._ACT = parts.roles["act"]  # before the base reads them
        self._LAYERS = (parts.roles["in"], parts.roles["out"])
        self._drop = parts.roles.get("drop")
        self._source = type(source)
        super().__init__(source, threshold=threshold, cutoff=cutoff, kernels=kernels, screen=screen)
        self._wt: tuple[tuple[Any, ...], Tensor, Tensor, Tensor] | None = None

    def _columns(self, w: Tensor) -> Tensor:
        """``w.T`` as a contiguous ``(inter, d)`` tensor, cached as
        :class:`~actreg.sparse.SparseGatedMLP` caches ``down_proj``'s (its code: it reads and
        writes ``_wt`` only)."""
        return SparseGatedMLP._columns(self, w)  # type: ignore[arg-type]

    def _original(self, hidden_states: Tensor) -> Tensor:
        out: Tensor = self._source.forward(self, hidden_states)
        return out

    def forward(self, hidden_states: Tensor) -> Tensor:
        ps = self._fast(hidden_states)
        if ps is None:
            return self._original(hidden_states)
        if self._drop is not None:
            drop = self._modules.get(self._drop)
            if not isinstance(drop, nn.Dropout) or (drop.training and drop.p > 0):
                return self._original(hidden_states)
        w_in, b_in, w, b = ps
        assert w_in is not None and w is not None
        x = hidden_states
        x2 = x.reshape(-1, x.shape[-1]) if x.dim() != 2 else x
        if x2.shape[0] == 0 or x2.shape[1] != w_in.shape[1]:
            return self._original(hidden_states)  # PyTorch's result or error
        if self._screens:
            out = screened_linear(self, self._ext(), x, w_in, b_in, self._columns(w), b)
            if out is not None:
                return out.view(*x.shape[:-1], w.shape[0])
        h = self._activate(F.linear(x2, w_in, b_in))
        limit = self.threshold_for(h.shape[0])
        ext = self._ext()
        if limit > 1.0:
            out = F.linear(h, w, b)
        else:
            wt = self._columns(w)
            if takes(ext, h, wt, b):  # one C++ call: count, then sparse rows or addmm
                out = ext.linear_auto(h, w, wt, b, limit, False)
            elif 1.0 - nonzero_fraction(h) >= limit:
                out = sparse_linear(h, wt, b)
            else:
                out = F.linear(h, w, b)
        return out.view(*x.shape[:-1], w.shape[0])

    def extra_repr(self) -> str:
        return f"{self._source.__name__}, {super().extra_repr()}"
