"""Sparse-input inference: turn the zeros that activation regularization buys into speed.

:func:`convert` swaps the ``nn.Linear`` layers that read ReLU-like outputs for
:class:`SparseInputLinear`, which has the same parameters (and ``state_dict``) and computes
the same outputs, but at inference reads only the weight columns whose input is non-zero.
It falls back to the dense ``F.linear`` when the input has fewer zeros than a threshold
measured on this machine (:func:`calibrate`). :func:`measure` compares a model with its
converted copy.

Transformer FFNs are converted too: GPT-2's ``Conv1D`` MLP (:class:`SparseConv1DMLP`: the
second layer reads only the weight rows of non-zero activations), gated MLPs such as
Llama's (:class:`SparseGatedMLP`: the gate, then only the active units' ``up`` rows and
``down`` columns), two-``nn.Linear`` MLPs such as GPT-NeoX's, Phi's, GPT-J's, Falcon's and
T5's (:class:`SparseLinearMLP`), and BERT-style layers (their ``output.dense`` becomes a
:class:`SparseInputLinear`); :func:`ffns` lists them and :func:`ffn_kind` names a module's
kind, both recognising code, not class names. Exact with ReLU; other activations are
refused unless ``convert(..., cutoff=...)`` asks for magnitude sparsity.

The fast path is the default: the converted layers run C++ kernels (``actreg/csrc/sparse.cpp``)
built on first use where a compiler is present (once per machine, cached; one log line),
else pure PyTorch after one warning; ``ACTREG_EXTENSION=0``/``1`` forces either, and
``convert(..., kernels="torch")`` chooses PyTorch for one model (see :func:`backend`).

Modules: :mod:`~actreg.sparse.convert` (what to convert, :func:`convert`,
:func:`fold_input_scaling`), :mod:`~actreg.sparse.linear` (:class:`SparseInputLinear`),
:mod:`~actreg.sparse.runtime` (:class:`SparseSequential`, fused runs),
:mod:`~actreg.sparse.calibrate` (thresholds, timing), :mod:`~actreg.sparse.measure`
(:func:`measure`, :func:`flop_limit`), :mod:`~actreg.sparse.transformer` (GPT-2 and gated
FFN blocks), :mod:`~actreg.sparse.linear_mlp` (two-Linear FFN blocks),
:mod:`~actreg.sparse.threshold` (training-free magnitude thresholds:
:func:`magnitude_thresholds`, :func:`apply_thresholds`); private: ``_kernels``
(pure-PyTorch kernels), ``_backend`` (the choice of kernels) and ``_recognize`` (which
modules are FFNs: :func:`ffns`, :func:`ffn_kind`).

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

from actreg.sparse._backend import Backend, backend
from actreg.sparse._recognize import ffn_kind, ffns
from actreg.sparse.calibrate import calibrate
from actreg.sparse.convert import convert, eligible, fold_input_scaling
from actreg.sparse.linear import SparseInputLinear
from actreg.sparse.linear_mlp import SparseLinearMLP
from actreg.sparse.measure import SparseReport, flop_limit, measure
from actreg.sparse.runtime import SparseSequential
from actreg.sparse.threshold import MagnitudeThresholds, apply_thresholds, magnitude_thresholds
from actreg.sparse.transformer import SparseConv1DMLP, SparseGatedMLP

__all__ = [
    "Backend",
    "MagnitudeThresholds",
    "SparseConv1DMLP",
    "SparseGatedMLP",
    "SparseInputLinear",
    "SparseLinearMLP",
    "SparseReport",
    "SparseSequential",
    "apply_thresholds",
    "backend",
    "calibrate",
    "convert",
    "eligible",
    "ffn_kind",
    "ffns",
    "flop_limit",
    "fold_input_scaling",
    "magnitude_thresholds",
    "measure",
]
