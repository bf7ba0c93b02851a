"""Transformer FFNs that skip their zero activations: GPT-2 ``Conv1D`` MLPs and gated MLPs.

:func:`~actreg.sparse.ffns` finds the feed-forward blocks of Hugging Face ``transformers``
models (and any module written the same way: see :mod:`actreg.sparse._recognize`);
:func:`actreg.sparse.convert` swaps each for one of these (two-``nn.Linear`` MLPs for
:class:`~actreg.sparse.SparseLinearMLP`), with the same children under the same names (so
the same ``state_dict``):

* :class:`SparseConv1DMLP` for GPT-2's ``c_fc -> act -> c_proj -> dropout``: with ReLU, an
  exact int8 screen proves most of ``c_fc``'s zero outputs zero and only the rest are
  computed (:mod:`actreg.sparse._screen`); ``c_proj`` reads only the rows of its ``(in, out)``
  weight (the layout the sparse-input kernel reads) whose input activation is non-zero.
* :class:`SparseGatedMLP` for ``down_proj(act_fn(gate_proj(x)) * up_proj(x))`` (Llama,
  Mistral, Qwen2, ...): the gate is screened as ``c_fc`` is (ReLU) or dense; then only the
  ``up_proj`` rows and ``down_proj`` columns of units whose gate activation is non-zero.
  ``down_proj``'s columns are read from a transposed copy, refreshed when the weight changes.

Exact with activations that give exact zeros (ReLU); with any other (GELU, SiLU) an
explicit ``cutoff`` makes every activation with ``|a| <= cutoff`` zero, which changes the
outputs (training-free magnitude sparsity, as in CATS and TEAL) and is never the default.

Design choices:

* Recognition by code, not by class name (:mod:`actreg.sparse._recognize`): a module is a
  GPT-2 MLP (a gated MLP) when its class's ``forward`` compiles to the same bytecode as
  ``GPT2MLP.forward`` (``LlamaMLP.forward``) and its children have the expected kinds. This
  finds the many copies ``transformers`` generates (``ImageGPTMLP``, ``MistralMLP``,
  ``Qwen2MLP``, ...) and never picks a look-alike whose forward computes something else.
* A wrapper module rather than changing the class of the original (as
  :class:`~actreg.sparse.SparseSequential` does): it pickles, and nothing in
  ``transformers`` checks ``isinstance(mlp, GPT2MLP)`` at run time.
* Nothing is cached that a weight change could make stale, except the gated MLP's
  transposed ``down_proj`` weight, keyed on the parameter object, its storage and its
  in-place version (as :class:`~actreg.sparse.SparseInputLinear` does). An optimizer step,
  ``load_state_dict`` or a replaced parameter or child is seen on the next call.
* The fast path runs only where it is exact or asked for: CPU float32/float64, no grad
  needed, dropout inactive, no hooks on the children, the activation of the kind it was
  converted with; anything else runs the original code through the children.
* The screened call is planned: after cheap identity and version checks the next call
  goes straight to C++ (:mod:`actreg.sparse._screen`, "The plan"); setting any attribute
  of the block drops the plan.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules import module as _module_globals

from actreg._errors import ActregError
from actreg.sparse._backend import Backend, Kernels, backend, takes
from actreg.sparse._kernels import gated_sparse, nonzero_fraction, sparse_linear
from actreg.sparse._recognize import _gated_mlp_forward, _gpt2_mlp_forward
from actreg.sparse._screen import run_plan, screened_gated, screened_mlp
from actreg.sparse.linear import Threshold, _check_threshold, _version, threshold_at

__all__ = ["SparseConv1DMLP", "SparseGatedMLP"]


_FLOATS = (torch.float32, torch.float64)


class _SparseFFN(nn.Module):
    """What the FFN wrappers share: the children of the original, the dispatch threshold,
    the cutoff, the kernels, the screen switch, and when the fast path may run."""

    _ACT = ""  # the attribute holding the activation
    _LAYERS: tuple[str, ...] = ()

    def __init__(
        self,
        source: nn.Module,
        *,
        threshold: Threshold = 0.5,
        cutoff: float = 0.0,
        kernels: Kernels | Backend = "auto",
        screen: bool = True,
    ) -> None:
        super().__init__()
        for name, child in source.named_children():
            self.add_module(name, child)  # same names, same order: the same state_dict
        self.train(source.training)
        self.threshold = threshold
        if not isinstance(cutoff, (int, float)) or isinstance(cutoff, bool) or not cutoff >= 0:
            raise ActregError(f"cutoff must be a number >= 0, got {cutoff!r}")
        self.cutoff = float(cutoff)
        self.backend = backend(kernels)
        self._act_type = type(self._modules[self._ACT])
        self._kinds = tuple((n, type(self._modules[n])) for n in self._LAYERS)
        self.screen = bool(screen)

    @property
    def _screens(self) -> bool:
        """Whether the first layer may be screened: asked for, ReLU, no cutoff (the exact
        bound proves ReLU zeros only; :mod:`actreg.sparse._screen`)."""
        return self.screen and self._act_type is nn.ReLU and not self.cutoff

    @property
    def threshold(self) -> dict[int, float]:
        """``{batch_size: zero fraction}`` of the activations from which the sparse path runs
        (``math.inf``: never); may be set to a float or a mapping."""
        return self._threshold

    @threshold.setter
    def threshold(self, value: Threshold) -> None:
        self._threshold = _check_threshold(value)
        self._by_rows: dict[int, float] = {}

    def threshold_for(self, rows: int) -> float:
        """The zero fraction from which ``rows`` rows (batch times sequence) run sparse."""
        t = self._by_rows.get(rows)
        if t is None:
            t = self._by_rows[rows] = threshold_at(self.threshold, rows)
        return t

    def _fast(self, x: object) -> list[Tensor | None] | None:
        """``[weight, bias]`` of each layer (current objects) where the sparse path may run
        for ``x`` (see the module docstring), else None. Reads the modules' dictionaries
        directly: it runs on every call, and at batch 1 a microsecond is a few percent."""
        if not isinstance(x, Tensor) or not x.is_cpu or x.dtype not in _FLOATS:
            return None
        g = _module_globals
        if g._global_forward_hooks or g._global_forward_pre_hooks:
            return None
        mods = self._modules
        act = mods.get(self._ACT)
        if act is None or type(act) is not self._act_type:
            return None
        if act._forward_hooks or act._forward_pre_hooks:
            return None
        dtype = x.dtype
        out: list[Tensor | None] = []  # (not list[...](): building the alias costs 1 us)
        for name, kind in self._kinds:
            m = mods.get(name)
            if m is None or type(m) is not kind or m._forward_hooks or m._forward_pre_hooks:
                return None
            ps = m._parameters
            w, b = ps.get("weight"), ps.get("bias")
            if w is None or w.dtype is not dtype or not w.is_cpu:
                return None
            if b is not None and (b.dtype is not dtype or not b.is_cpu):
                return None
            out += (w, b)
        if torch.is_grad_enabled() and (
            self.training or x.requires_grad or any(p is not None and p.requires_grad for p in out)
        ):
            return None
        return out

    def __setattr__(self, name: str, value: Any) -> None:
        self.__dict__.pop("_plan", None)  # any setting may change what the plan assumed
        super().__setattr__(name, value)

    def _activate(self, h: Tensor) -> Tensor:
        """The activation, in place for ``nn.ReLU``, then the cutoff if one is set."""
        h = h.relu_() if self._act_type is nn.ReLU else self._modules[self._ACT](h)  # type: ignore[misc]
        if self.cutoff > 0:
            h = h.masked_fill_(h.abs() <= self.cutoff, 0.0)
        return h

    def _ext(self) -> Any:
        return self.backend.load()

    def extra_repr(self) -> str:
        t = self.threshold
        shown = t[1] if list(t) == [1] else t
        return f"threshold={shown}" + (f", cutoff={self.cutoff}" if self.cutoff else "")

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_by_rows"] = {}
        if "_wt" in state:
            state["_wt"] = None
        state.pop("_packed", None)  # the screen's cache (rebuilt on the first call)
        state.pop("_plan", None)
        return state


class SparseConv1DMLP(_SparseFFN):
    """GPT-2's MLP (``c_fc`` ``Conv1D`` -> ``act`` -> ``c_proj`` ``Conv1D`` -> ``dropout``)
    whose ``c_proj`` reads only the weight rows of non-zero activations.

    At inference (see the module docstring for the conditions), with ``nn.ReLU``, float32,
    the C++ kernels and at most ``SCREEN_ROWS`` (8) rows, one C++ call screens ``c_fc`` (a
    unit whose rigorous int8 bound is <= 0 is zero, proven; the others are computed exactly;
    see :mod:`actreg.sparse._screen`), then ``c_proj``. Otherwise ``c_fc`` and the activation
    run densely. ``c_proj`` runs the sparse-input kernel when the activations' zero fraction
    reaches the threshold for the number of rows (batch times sequence), else the same
    ``addmm`` as ``Conv1D``. Outputs equal the original's to float rounding; with
    ``cutoff > 0`` activations with ``|a| <= cutoff`` are zeroed first (approximate, never
    screened). Children and ``state_dict`` are the original's.

    Args:
        source: the original MLP (see :func:`ffn_kind`); its children are shared, not copied.
        threshold: zero fraction from which the sparse path runs (float or
            ``{rows: fraction}``).
        cutoff: magnitude below which an activation counts as zero (0: exact zeros only).
        kernels: ``"auto"``, ``"torch"``, ``"cpp"`` or a backend (see
            :func:`actreg.sparse.backend`).
        screen: screen ``c_fc`` where it applies (the default: measured 1.7-2.7x faster
            than a dense ``c_fc`` at batch 1 and 90-99 % zeros); False: ``c_fc`` dense.

    Example (``transformers`` builds the model from a config; nothing is downloaded)::

        cfg = GPT2Config(n_embd=32, n_layer=1, n_head=2, activation_function="relu")
        mlp = GPT2LMHeadModel(cfg).eval().transformer.h[0].mlp
        fast = SparseConv1DMLP(mlp, threshold=0.5)  # or actreg.sparse.convert(model)
        with torch.no_grad():
            x = torch.randn(1, 3, 32)
            assert torch.allclose(fast(x), mlp(x), atol=1e-6)
    """

    _ACT = "act"
    _LAYERS = ("c_fc", "c_proj")
    c_fc: Any  # transformers' Conv1D
    c_proj: Any
    act: nn.Module
    dropout: nn.Dropout

    def forward(self, hidden_states: Tensor) -> Tensor:
        out = run_plan(self, hidden_states)
        if out is not None:
            return out
        ps = self._fast(hidden_states)
        drop = self._modules.get("dropout")
        if ps is None or not isinstance(drop, nn.Dropout) or (drop.training and drop.p > 0):
            return _gpt2_mlp_forward(self, hidden_states)
        w_fc, b_fc, w, b = ps
        assert w_fc is not None and w is not None
        if self._screens and b_fc is not None:
            out = screened_mlp(self, self._ext(), hidden_states, w_fc, b_fc, w, b)
            if out is not None:
                return out
        x = hidden_states
        x2 = x.reshape(-1, x.shape[-1]) if x.dim() != 2 else x
        if x2.shape[0] == 0 or x2.shape[1] != w_fc.shape[0] or b_fc is None:
            return _gpt2_mlp_forward(self, hidden_states)  # PyTorch's result or error
        rows = x2.shape[0]
        limit = self.threshold_for(rows)
        ext = self._ext()
        h = self._activate(torch.addmm(b_fc, x2, w_fc))
        if takes(ext, h, w, b):  # one C++ call: count, then sparse rows or the same addmm
            out = ext.linear_auto(h, w.t(), w, b, limit, False)
        elif limit <= 1.0 and 1.0 - nonzero_fraction(h) >= limit:
            out = sparse_linear(h, w, b)
        else:
            out = torch.addmm(b, h, w) if b is not None else h @ w
        return out.view(*x.shape[:-1], w.shape[1])


class SparseGatedMLP(_SparseFFN):
    """A gated MLP (``down_proj(act_fn(gate_proj(x)) * up_proj(x))``, Llama and its kin)
    that computes ``up_proj`` and ``down_proj`` only for units whose gate is non-zero.

    At inference, with ``nn.ReLU``, float32, the C++ kernels and at most ``SCREEN_ROWS`` rows,
    the gate is screened as :class:`SparseConv1DMLP`'s ``c_fc`` (``screen=False``: never);
    otherwise it runs densely. When the gate's zero fraction reaches the threshold, only the
    units with a non-zero gate get their ``up_proj`` row and their ``down_proj`` column (from
    a transposed copy, ``(inter, d)``, kept until the weight changes: the weight's memory
    once more): each row its own units in the C++ kernel, the union over the rows in pure
    PyTorch. Otherwise the original formula. Outputs equal the original's to float rounding
    (``cutoff`` as in :class:`SparseConv1DMLP`).

    Example::

        cfg = LlamaConfig(hidden_size=16, intermediate_size=64, hidden_act="relu")
        mlp = LlamaMLP(cfg).eval()
        fast = SparseGatedMLP(mlp, threshold=0.3)  # or actreg.sparse.convert(model)
        with torch.no_grad():
            x = torch.randn(2, 5, 16)
            assert torch.allclose(fast(x), mlp(x), atol=1e-6)
    """

    _ACT = "act_fn"
    _LAYERS = ("gate_proj", "up_proj", "down_proj")
    gate_proj: nn.Linear
    up_proj: nn.Linear
    down_proj: nn.Linear
    act_fn: nn.Module

    def __init__(
        self,
        source: nn.Module,
        *,
        threshold: Threshold = 0.5,
        cutoff: float = 0.0,
        kernels: Kernels | Backend = "auto",
        screen: bool = True,
    ) -> None:
        super().__init__(source, threshold=threshold, cutoff=cutoff, kernels=kernels, screen=screen)
        self._wt: tuple[tuple[Any, ...], Tensor, Tensor, Tensor] | None = None

    def _columns(self, w: Tensor) -> Tensor:
        """``w.T`` (``down_proj``'s weight) as a contiguous ``(inter, d)`` tensor, cached
        until the weight changes (another parameter object, storage, dtype or in-place
        version)."""
        key = (w.data_ptr(), _version(w), w.dtype, w.device)
        cached = self._wt
        if cached is None or cached[2] is not w or cached[0] != key:
            with torch.no_grad():
                # (w.detach(): the keyed storage stays alive, its address its own)
                cached = (key, w.detach().t().contiguous(), w, w.detach())
            self._wt = cached
        return cached[1]

    def forward(self, x: Tensor) -> Tensor:
        out = run_plan(self, x)
        if out is not None:
            return out
        ps = self._fast(x)
        if ps is None:
            return _gated_mlp_forward(self, x)
        if self._screens:
            out = screened_gated(self, self._ext(), x, ps)
            if out is not None:
                return out
        wg, bg, wu, bu, wd, bd = ps
        assert wg is not None and wu is not None and wd is not None
        x2 = x.reshape(-1, x.shape[-1]) if x.dim() != 2 else x
        if x2.shape[0] == 0 or x2.shape[1] != wg.shape[1]:
            return _gated_mlp_forward(self, x)
        g = self._activate(F.linear(x2, wg, bg))
        rows = g.shape[0]
        limit = self.threshold_for(rows)
        ext = self._ext()
        if limit > 1.0 or 1.0 - nonzero_fraction(g, ext) < limit:
            out = F.linear(g * F.linear(x2, wu, bu), wd, bd)
        else:
            wdt = self._columns(wd)
            if not x2.is_contiguous():
                x2 = x2.contiguous()
            if takes(ext, g, wdt, bd) and takes(ext, x2, wu, bu):  # each row its own units
                out = ext.gated_rows(x2, g, wu, bu, wdt, bd)
            else:
                out = gated_sparse(x2, g, wu, bu, wdt, bd)
        return out.view(*x.shape[:-1], out.shape[-1])
