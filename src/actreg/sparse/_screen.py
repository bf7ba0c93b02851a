"""An exact int8 screen for c_fc of a ReLU GPT-2 MLP (what :class:`SparseConv1DMLP` runs), and
for the ReLU gate of a gated MLP (:class:`SparseGatedMLP`, the same way: ``gate_proj`` for
``c_fc``, then ``up_proj`` and ``down_proj`` for the non-zero gates only).

At batch 1 the converted block's ``c_proj`` reads only the rows of the non-zero activations,
but ``c_fc`` (whose input, the layer norm's output, has no zeros) costs its full ``d x k``
product: half the block. The screen proves most of ``c_fc``'s zero outputs zero without
computing them, then computes only the rest exactly:

1. Once per weight (cached on the module, keyed on the parameter object, its storage and its
   in-place version, like the gated MLP's transposed weight: a weight changed after conversion
   is seen on the next call), in float64: per unit ``j`` the scale ``s_j = max|w_j| / 127``,
   the int8 weights ``q_j = round(w_j / s_j)``, and ``s_j |q_j|``, ``|w_j - s_j q_j|``,
   ``|w_j|``; and a transposed float32 copy ``(k, d)`` so that a unit's weights are
   contiguous. Memory: c_fc's weight 1.25 times more (a gate's: 0.25 times more; an
   ``nn.Linear`` weight already has a unit's weights contiguous).
2. Per row, in C++ (``csrc/sparse.cpp``, ``screened_mlp``): ``x`` to int16 with a per-row
   scale, the int8 x int16 products with AVX2 (``vpmaddwd``; a scalar loop elsewhere), an
   upper bound ``U_j`` on the float32 pre-activation that the dense layer would compute
   (quantization errors of ``w`` and ``x`` by Cauchy-Schwarz, float32 rounding of the dense
   product in any summation order, and a margin for the bound's own double arithmetic: the
   derivation is in the C++ comment). ``U_j <= 0`` proves the unit's ReLU output 0 in the
   dense computation; the other units get their exact float32 dot product, then the ReLU,
   then ``c_proj``'s sparse row kernel (or a dense row where too few are zero).

Outputs therefore equal the dense path's to float rounding, and every unit the screen drops
is zero in the dense computation as well (tested over many random inputs).

Design choices:

* int8 weights, int16 inputs, ``vpmaddwd`` rather than int8 x int8 (``vpmaddubsw``): this
  CPU family (AVX2, no VNNI) has no int8 dot-product instruction; with int16 inputs the
  bound's input error is negligible (the weights' dominates) and ``vpmaddwd`` cannot
  saturate, while ``vpmaddubsw`` would need 7-bit inputs. Both read one byte of weight per
  multiply-add, a quarter of float32, which is what the screen's cost is made of.
* Int32 partial sums over 512 inputs at most, then added in float64: no overflow for any
  width. Rows with NaN or infinity are not screened (every unit computed).
* Only ``nn.ReLU`` with ``cutoff=0`` and float32: there a zero is exactly ``pre <= 0``.
* Rows per call: each row is screened on its own (its own int16 scale and bound). At batch
  > 1 the dense ``addmm`` reads the weight once for all rows while the screen reads the int8
  weight once per row; the screen runs up to ``SCREEN_ROWS`` rows (see
  docs/PERFORMANCE_DECODE.md for the measurement that set it, on GPT-2's MLP; the gated MLP
  uses the same limit, not measured apart).

The plan (issue 17: at batch 1 the block's C++ call takes ~25 us and the Python before it
took ~7 us of eligibility checks and cache lookups). After a screened call that ran,
:func:`plan` keeps on the block the C++ function and its arguments (the pack, the current
weights and biases) and what they were made from. :func:`run_plan` runs it on the next
call after cheap comparisons only: no global forward hooks; each child the same object, of
the same type, without forward hooks; each weight and bias the same parameter object; each
weight a cache was made from (the pack, the gated MLP's transposed ``down_proj``) with the
same ``data_ptr`` and in-place version; dropout inactive; with grad enabled, the block in
eval mode and nothing requiring grad; a threshold already known for the number of rows (at
most ``SCREEN_ROWS``). The C++ call checks the input itself (float32, CPU, contiguous, its
width) and the live weights and biases (float32, CPU, contiguous, shapes), and answers None
where they do not fit. Whatever fails runs the block's full path, which checks everything
and plans again. Setting any attribute of the block (``threshold``, ``cutoff``, ``screen``,
``backend``, ``train()``, a child through ``setattr``) drops the plan (the block's
``__setattr__``); it is not copied or pickled. Python per call: ~1 us (plus ~2 us of
``nn.Module.__call__``). Moving the checks into a C++ object, as ``SparseSequential``
does, would save the rest but could not see Python-level hooks and attributes.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.modules import module as _module_globals

from actreg.sparse.linear import _version

__all__ = [
    "SCREEN_ROWS", "Packed", "pack", "packed_for", "plan", "run_plan", "screened_gated",
    "screened_mlp",
]  # fmt: skip

#: At most this many rows (batch times sequence) per call are screened; more run the
#: dense c_fc (measured: see the module docstring).
SCREEN_ROWS = 8
_QMAX = 127  # int8 weights in [-127, 127]
_MAX_D = 1 << 22  # widths the bound's double arithmetic covers (see csrc/sparse.cpp)


class Packed(NamedTuple):
    """What the screen needs of c_fc's weight ``(d, k)``."""

    qpack: Tensor  # int8 (ceil(k / 32), ceil(d / 2), 32, 2): 32 units x 2 inputs per 64 bytes
    unit: Tensor  # float64 (4, ceil(k / 32) * 32): s_j, s_j |q_j|, |w_j - s_j q_j|, |w_j|
    wt: Tensor  # float32 (k, d): the weight transposed, contiguous
    zero_bias: Tensor  # float32 (k,) zeros: the bias of a layer without one


def pack(w: Tensor) -> Packed | None:
    """The int8 weights and per-unit statistics of a ``Conv1D`` weight ``w`` (``(d, k)``,
    float32), or None where the screen does not apply (another dtype, a non-finite weight,
    a width beyond what the bound covers).

    Example:
        >>> import torch
        >>> p = pack(torch.randn(5, 9))
        >>> tuple(p.qpack.shape), tuple(p.unit.shape), tuple(p.wt.shape)
        ((1, 3, 32, 2), (4, 32), (9, 5))
    """
    if w.dtype is not torch.float32 or w.dim() != 2 or w.shape[0] >= _MAX_D:
        return None
    with torch.no_grad():
        w = w.detach()
        if not bool(torch.isfinite(w).all()):
            return None
        d, k = w.shape
        kp, dp = -(-k // 32) * 32, d + d % 2
        wd = w.t().double()  # (k, d)
        s = wd.abs().amax(1) / _QMAX
        safe = torch.where(s > 0, s, torch.ones_like(s))
        q = torch.round(wd / safe[:, None]).clamp_(-_QMAX, _QMAX)
        q[s == 0] = 0.0
        r = wd - s[:, None] * q
        unit = torch.zeros(4, kp, dtype=torch.float64)
        unit[0, :k] = s
        unit[1, :k] = s * q.norm(dim=1)
        unit[2, :k] = r.norm(dim=1)
        unit[3, :k] = wd.norm(dim=1)
        qp = torch.zeros(kp, dp, dtype=torch.int8)
        qp[:k, :d] = q.to(torch.int8)
        qpack = qp.view(kp // 32, 32, dp // 2, 2).permute(0, 2, 1, 3).contiguous()
        return Packed(qpack, unit, w.t().contiguous(), torch.zeros(k))


def packed_for(owner: nn.Module, w: Tensor, linear: bool = False) -> Packed | None:
    """:func:`pack` of ``w`` (``linear``: an ``nn.Linear`` weight ``(k, d)``, packed as its
    transpose; its ``wt`` is then ``w`` itself, not a copy), cached in ``owner._packed``
    until the weight changes (another parameter object, storage or in-place version)."""
    key = (w.data_ptr(), _version(w), w.dtype)
    cached = owner.__dict__.get("_packed")
    if cached is None or cached[1] is not w or cached[0] != key:
        # w.detach() keeps the keyed storage alive: its address cannot be reused unseen
        cached = (key, w, pack(w.t() if linear else w), w.detach())
        owner.__dict__["_packed"] = cached
    return cached[2]


def _ready(owner: Any, ext: Any, x: Tensor, w: Tensor, linear: bool) -> tuple[Packed, float] | None:
    """The pack of the screened weight ``w`` and the row count's threshold, or None where
    the screen does not run for ``x``: no C++ kernels, not float32, no rows or more than
    ``SCREEN_ROWS``, a threshold the sparse path never reaches, a weight :func:`pack`
    refuses. ``linear``: ``w`` is an ``nn.Linear`` weight ``(k, d)``, else ``(d, k)``."""
    if ext is None or x.dtype is not torch.float32 or w.dim() != 2:
        return None
    d = w.shape[-1] if linear else w.shape[0]
    rows = x.numel() // d if d else 0
    if not 0 < rows <= SCREEN_ROWS:
        return None
    limit = owner.threshold_for(rows)
    if limit > 1.0:
        return None
    p = packed_for(owner, w, linear=linear)
    return None if p is None else (p, limit)


def screened_mlp(
    owner: Any, ext: Any, x: Tensor, w_fc: Tensor, b_fc: Tensor, w: Tensor, b: Tensor | None
) -> Tensor | None:
    """The block's output ``c_proj(relu(c_fc(x)))`` for ``x`` ``(..., d)`` with c_fc screened
    (see the module docstring), or None where the screen does not run: no C++ kernels, not
    float32 or not contiguous, more than ``SCREEN_ROWS`` rows, a sparse path the threshold
    never takes, a non-finite or too wide weight. The caller runs its own path then.
    ``owner`` is the :class:`SparseConv1DMLP` (its threshold, and the cache); a call that
    ran is planned on it (:func:`plan`)."""
    ready = _ready(owner, ext, x, w_fc, linear=False)
    if ready is None:
        return None
    p, limit = ready
    args = (p.qpack, p.unit, p.wt, b_fc, w, b)
    out: Tensor | None = ext.screened_mlp(x, *args, limit, SCREEN_ROWS)
    if out is not None:
        plan(owner, ext.screened_mlp, args, (w_fc,))
    return out


def screened_linear(
    owner: Any,
    ext: Any,
    x: Tensor,
    w_in: Tensor,
    b_in: Tensor | None,
    wt_out: Tensor,
    b_out: Tensor | None,
) -> Tensor | None:
    """A two-``nn.Linear`` MLP's output ``out(relu(in(x)))`` for ``x`` ``(..., d)`` with the
    first layer screened (as ``c_fc`` in :func:`screened_mlp`: the same kernel, its
    ``(k, d)`` weight packed as the transpose), or None where the screen does not run.
    ``wt_out``: the second layer's weight transposed, ``(k, d_out)`` contiguous; ``owner``
    is the :class:`~actreg.sparse.SparseLinearMLP` (threshold, cache). Not planned: its
    dropout and activation live under names that vary by family, so every call runs the
    block's full checks first."""
    ready = _ready(owner, ext, x, w_in, linear=True)
    if ready is None:
        return None
    p, limit = ready
    bias = p.zero_bias if b_in is None else b_in
    out: Tensor | None = ext.screened_mlp(
        x, p.qpack, p.unit, p.wt, bias, wt_out, b_out, limit, SCREEN_ROWS
    )
    return out


def screened_gated(
    owner: Any,
    ext: Any,
    x: Tensor,
    ps: list[Tensor | None],
) -> Tensor | None:
    """A gated MLP's output ``down_proj(relu(gate_proj(x)) * up_proj(x))`` with the gate
    screened (as ``c_fc`` in :func:`screened_mlp`), or None where the screen does not run.
    ``ps``: the weights and biases of gate, up and down; ``owner`` is the
    :class:`SparseGatedMLP` (threshold, caches, ``down_proj``'s transposed weight)."""
    wg, bg, wu, bu, wd, bd = ps
    if wg is None or wu is None or wd is None:
        return None
    ready = _ready(owner, ext, x, wg, linear=True)
    if ready is None:
        return None
    p, limit = ready
    bias = p.zero_bias if bg is None else bg
    args = (p.qpack, p.unit, p.wt, bias, wu, bu, owner._columns(wd), bd)
    out: Tensor | None = ext.screened_gated(x, *args, limit, SCREEN_ROWS)
    if out is not None:
        plan(owner, ext.screened_gated, args, (wg, wd))
    return out


def plan(owner: Any, fn: Any, args: tuple[Any, ...], cached_from: tuple[Tensor, ...]) -> None:
    """Keep on ``owner`` (a :class:`SparseConv1DMLP` or :class:`SparseGatedMLP`) the screened
    call just made, ``fn(x, *args, threshold, SCREEN_ROWS)``; ``cached_from``: the weights
    the caches in ``args`` were made from (see the module docstring)."""
    mods: dict[str, Any] = owner._modules  # (the full path found every child present)
    names = (owner._ACT, *owner._LAYERS, *(["dropout"] if "dropout" in mods else []))
    children = tuple((n, m, type(m), isinstance(m, nn.Dropout)) for n in names for m in [mods[n]])
    params = tuple(
        (mods[n], k, mods[n]._parameters.get(k)) for n in owner._LAYERS for k in ("weight", "bias")
    )
    try:
        # each alias (w.detach()) keeps its storage alive, so its address stays its own
        versions = tuple((w, w.data_ptr(), w._version, w.detach()) for w in cached_from)
    except RuntimeError:  # inference tensors have no version: no plan
        return
    d = args[2].shape[1]  # the screen's transposed weight (k, d)
    owner.__dict__["_plan"] = (children, params, versions, owner._by_rows, d, fn, args)


def run_plan(owner: Any, x: object) -> Tensor | None:
    """The output of the call planned on ``owner`` where the plan holds for ``x``, else None
    (the caller runs its full path)."""
    planned: Any = owner.__dict__.get("_plan")
    if planned is None or not isinstance(x, Tensor):
        return None
    children, params, versions, by_rows, d, fn, args = planned
    g = _module_globals
    if g._global_forward_hooks or g._global_forward_pre_hooks:
        return None
    mods: Any = owner._modules
    for name, m, kind, drops in children:
        if mods.get(name) is not m or type(m) is not kind or m._forward_hooks:
            return None
        if m._forward_pre_hooks or (drops and m.training and m.p > 0):
            return None
    for m, name, p in params:
        if m._parameters.get(name) is not p:
            return None
    try:
        for w, ptr, version, _alias in versions:
            if w.data_ptr() != ptr or w._version != version:
                return None
    except RuntimeError:  # (a parameter whose data became an inference tensor)
        return None
    if torch.is_grad_enabled() and (
        owner.training
        or x.requires_grad
        or any(p is not None and p.requires_grad for _, _, p in params)
    ):
        return None
    rows = x.numel() // d
    limit = by_rows.get(rows) if 0 < rows <= SCREEN_ROWS else None
    if limit is None or limit > 1.0:
        return None
    out: Tensor | None = fn(x, *args, limit, SCREEN_ROWS)
    return out
