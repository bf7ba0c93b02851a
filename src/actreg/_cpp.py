"""Building actreg's optional C++ kernels (one way for all of them)."""

from __future__ import annotations

import logging
from typing import Any


def build_inline(name: str, source: str, what: str, logger: str, verbose: bool = False) -> Any:
    """Compile ``source`` (which defines its own ``PYBIND11_MODULE``) as extension ``name``
    with ``torch.utils.cpp_extension.load_inline`` for this CPU (``-O3 -march=native``;
    torch caches the build under ``TORCH_EXTENSIONS_DIR``) and return the module; when the
    build fails (no compiler or ninja, no headers) log to ``logger`` that ``what`` is
    unavailable and return ``False``, so that callers keep their pure-PyTorch path."""
    try:
        from torch.utils.cpp_extension import load_inline

        return load_inline(
            name, cpp_sources=source, extra_cflags=["-O3", "-march=native"], verbose=verbose
        )
    except Exception as err:  # any build failure: keep the fallback
        logging.getLogger(logger).warning("%s unavailable: %s", what, err)
        return False
