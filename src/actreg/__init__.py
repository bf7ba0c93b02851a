"""actreg: activation regularization for PyTorch.

The public names load on first use (PEP 562 ``__getattr__``): ``import actreg`` imports
neither PyTorch nor any module of the package until a name is used, so the command line
answers ``--help`` at once. ``actreg.L1``, ``from actreg import L1`` and ``dir(actreg)``
work as usual; type checkers see the imports below ``TYPE_CHECKING``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Each public name and the module that defines it.
_SOURCES: dict[str, str] = {
    "AR": "actreg.penalties",
    "L1": "actreg.penalties",
    "L1L2": "actreg.penalties",
    "L2": "actreg.penalties",
    "TAR": "actreg.penalties",
    "ActivityRegularization": "actreg.layers",
    "ActregError": "actreg._errors",
    "AuxK": "actreg.dead",
    "BatchTopK": "actreg.codes",
    "Binary": "actreg.penalties",
    "DeCov": "actreg.penalties",
    "FiringFloor": "actreg.dead",
    "Reviver": "actreg.dead",
    "Hoyer": "actreg.penalties",
    "HoyerSquare": "actreg.penalties",
    "JumpReLU": "actreg.codes",
    "KLSparsity": "actreg.penalties",
    "Log": "actreg.penalties",
    "Monitor": "actreg.monitor",
    "Penalty": "actreg.penalties",
    "Regularizer": "actreg.regularizer",
    "Scheduled": "actreg.schedule",
    "TargetSparsity": "actreg.control",
    "TopK": "actreg.layers",
    "attach": "actreg.regularizer",
    "load_checkpoint": "actreg._io",
    "make_penalty": "actreg.penalties",
    "metrics": "actreg.metrics",
    "revive": "actreg.revival",
    "serialize": "actreg.penalties",
    "tie_init": "actreg.codes",
}

__all__ = [
    "AR",
    "L1",
    "L1L2",
    "L2",
    "TAR",
    "ActivityRegularization",
    "ActregError",
    "AuxK",
    "BatchTopK",
    "Binary",
    "DeCov",
    "FiringFloor",
    "Hoyer",
    "HoyerSquare",
    "JumpReLU",
    "KLSparsity",
    "Log",
    "Monitor",
    "Penalty",
    "Regularizer",
    "Reviver",
    "Scheduled",
    "TargetSparsity",
    "TopK",
    "attach",
    "load_checkpoint",
    "make_penalty",
    "metrics",
    "revive",
    "serialize",
    "tie_init",
]

if TYPE_CHECKING:
    from actreg import metrics
    from actreg._errors import ActregError
    from actreg._io import load_checkpoint
    from actreg.codes import BatchTopK, JumpReLU, tie_init
    from actreg.control import TargetSparsity
    from actreg.dead import AuxK, FiringFloor, Reviver
    from actreg.layers import ActivityRegularization, TopK
    from actreg.monitor import Monitor
    from actreg.penalties import (
        AR,
        L1,
        L1L2,
        L2,
        TAR,
        Binary,
        DeCov,
        Hoyer,
        HoyerSquare,
        KLSparsity,
        Log,
        Penalty,
        make_penalty,
        serialize,
    )
    from actreg.regularizer import Regularizer, attach
    from actreg.revival import revive
    from actreg.schedule import Scheduled


def __getattr__(name: str) -> Any:
    source = _SOURCES.get(name)
    if source is None:
        raise AttributeError(f"module 'actreg' has no attribute {name!r}")
    module = importlib.import_module(source)
    value = module if source == f"actreg.{name}" else getattr(module, name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
