"""Which kernels a converted model runs: the C++ extension or pure PyTorch.

A converted layer or :class:`~actreg.sparse.SparseSequential` holds a
:class:`actreg._cpp.Backend` and asks it for the compiled module (``csrc/sparse.cpp``), which
it builds on first use (once per machine, cached; see :mod:`actreg._cpp`). ``kernels`` names
the choice where a user makes one:

* ``"auto"`` (default): the process's shared backend; ``ACTREG_EXTENSION`` decides (unset:
  build where a compiler is present, else one warning and PyTorch).
* ``"torch"``: the pure-PyTorch kernels (to compare, or where no build is wanted).
* ``"cpp"``: the C++ kernels or an :class:`~actreg.ActregError` (whatever the variable says).
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import torch
from torch import Tensor

from actreg._cpp import Backend
from actreg._errors import ActregError

__all__ = ["Backend", "Kernels", "backend", "takes"]

Kernels = Literal["auto", "torch", "cpp"]
_MODES: dict[str, str | None] = {"auto": None, "torch": "off", "cpp": "required"}
_FLOATS = (torch.float32, torch.float64)


@functools.cache
def _shared(kernels: str) -> Backend:
    return Backend("actreg_sparse", "sparse.cpp", "the C++ sparse kernels", _MODES[kernels])


def backend(kernels: Kernels | Backend = "auto") -> Backend:
    """The backend for ``kernels`` (one shared object per choice), or ``kernels`` itself.

    Example:
        >>> import actreg.sparse
        >>> torch_only = actreg.sparse.backend("torch")
        >>> torch_only.load() is None, torch_only is actreg.sparse.backend("torch")
        (True, True)
    """
    if isinstance(kernels, Backend):
        return kernels
    if not isinstance(kernels, str) or kernels not in _MODES:
        raise ActregError(f'kernels must be "auto", "torch", "cpp" or a Backend, got {kernels!r}')
    return _shared(kernels)


def takes(ext: Any, x: Tensor, wt: Tensor, bias: Tensor | None = None) -> bool:
    """Whether the loaded module ``ext`` (None: none) takes these tensors: CPU, float32/64,
    one dtype, contiguous."""
    return (
        ext is not None
        and x.device.type == "cpu"
        and x.dtype in _FLOATS
        and x.dtype == wt.dtype
        and x.is_contiguous()
        and wt.is_contiguous()
        and (bias is None or (bias.dtype == x.dtype and bias.is_contiguous()))
    )
