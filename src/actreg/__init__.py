"""actreg: activation regularization for PyTorch."""

from actreg import metrics
from actreg._errors import ActregError
from actreg._io import load_checkpoint
from actreg.attach import Regularizer, attach
from actreg.codes import BatchTopK, JumpReLU, tie_init
from actreg.control import Scheduled, TargetSparsity
from actreg.dead import AuxK, FiringFloor
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
from actreg.revival import revive

__version__ = "0.1.0"

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
