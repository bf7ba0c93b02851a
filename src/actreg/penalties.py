"""Penalty objects: a coefficient, a reduction and a formula from :mod:`actreg.functional`.

A penalty is a callable ``tensor -> 0-dim tensor``. Penalties compose::

    >>> import actreg, torch
    >>> p = actreg.L1(1e-3) + 0.5 * actreg.L2(1e-4)
    >>> p
    L1(0.001) + 0.5 * L2(0.0001)
    >>> p(torch.ones(2, 3)).shape
    torch.Size([])

Every penalty follows one protocol (:mod:`actreg._penalty`): ``coef``, ``get_config`` /
``from_config``, ``state_dict``, a registry name for :func:`make_penalty`. The familiar
names of the coefficients stay as constructor keywords and config keys (``L1(l1=...)``,
``AR(alpha=...)``, ``TAR(beta=...)``, ``Hoyer(coef=...)``); ``p.coef`` reads and sets it
under one name. Half-precision inputs are computed in float32 so sums neither overflow nor
lose precision under autocast.

``L1L2(l1, l2)``: ``coef`` is ``l1 + l2`` and setting it scales both, keeping the ratio
``l1 : l2`` (elastic net's "strength and mix", as ``alpha`` and ``l1_ratio`` in
scikit-learn), while ``l1`` and ``l2`` stay the attributes and config of Keras' formula.
Chosen over an extra overall multiplier (default 1) because ``L1L2(l1=a, l2=b)`` then has
the ``coef`` of the same penalty written ``L1(a) + L2(b)`` (a sum's ``coef`` is the sum of
its terms'): a controller wrapping either starts from ``a + b``, the real strength, not
from 1.0, and two names for one penalty read the same.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from actreg import functional as F
from actreg._errors import ActregError
from actreg._penalty import (
    PENALTIES,
    CoefPenalty,
    Penalty,
    Scaled,
    Sum,
    check_coef,
    fmt,
    make_penalty,
    rescale,
    serialize,
)
from actreg.functional import Reduction

__all__ = [
    "AR",
    "L1",
    "L1L2",
    "L2",
    "PENALTIES",
    "TAR",
    "Binary",
    "DeCov",
    "Hoyer",
    "HoyerSquare",
    "KLSparsity",
    "Log",
    "Penalty",
    "Scaled",
    "Sum",
    "check_coef",
    "make_penalty",
    "serialize",
]


def _check_int(value: Any, name: str, meaning: str) -> int:
    """Return ``value`` if it is an int (not a bool), else raise naming ``meaning``."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ActregError(f"{name} must be an int ({meaning}), got {value!r}")
    return value


def _check_flag(value: Any, name: str) -> bool:
    """Return ``value`` if it is True or False, else raise."""
    if not isinstance(value, bool):
        raise ActregError(f"{name} must be True or False, got {value!r}")
    return value


class L1(CoefPenalty, name="l1"):
    """``l1 * sum(|x|) / batch``: Keras' ``L1`` activity regularizer.

    Example:
        >>> import torch, actreg
        >>> actreg.L1(0.01)(torch.tensor([[1.0, -2.0], [0.0, 3.0]]))
        tensor(0.0300)
    """

    coef_name = "l1"

    def __init__(self, l1: float = 0.01, reduction: Reduction = "batch") -> None:
        super().__init__(l1, reduction)

    def forward(self, x: Tensor) -> Tensor:
        return F.l1(x, self.coef, self.reduction)


class L2(CoefPenalty, name="l2"):
    """``l2 * sum(x**2) / batch``: Keras' ``L2`` (no 1/2 factor).

    Example:
        >>> import torch, actreg
        >>> actreg.L2(0.01)(torch.ones(7, 5) * 2)  # 0.2 for every batch size
        tensor(0.2000)
    """

    coef_name = "l2"

    def __init__(self, l2: float = 0.01, reduction: Reduction = "batch") -> None:
        super().__init__(l2, reduction)

    def forward(self, x: Tensor) -> Tensor:
        return F.l2(x, self.coef, self.reduction)


class L1L2(Penalty, name="l1l2"):
    """Elastic net ``(l1 * |x| + l2 * x**2)`` summed over elements / batch: Keras' ``L1L2``.

    ``coef`` is ``l1 + l2``; setting it scales both and keeps their ratio (see the module
    docstring).

    Example:
        >>> import torch, actreg
        >>> p = actreg.L1L2(l1=0.01, l2=0.03)
        >>> p(torch.ones(3, 4))
        tensor(0.1600)
        >>> p.coef = 0.02
        >>> p
        L1L2(l1=0.005, l2=0.015)
    """

    def __init__(self, l1: float = 0.0, l2: float = 0.0, reduction: Reduction = "batch") -> None:
        self.l1 = l1
        self.l2 = l2
        self.reduction: Reduction = F.check_reduction(reduction)

    @property
    def l1(self) -> float:
        """The coefficient of ``|x|`` (checked when set)."""
        return self._l1

    @l1.setter
    def l1(self, value: float) -> None:
        self._l1 = check_coef(value, "l1")

    @property
    def l2(self) -> float:
        """The coefficient of ``x**2`` (checked when set)."""
        return self._l2

    @l2.setter
    def l2(self, value: float) -> None:
        self._l2 = check_coef(value, "l2")

    @property
    def coef(self) -> float:
        """``l1 + l2``; setting it scales both alike."""
        return self.l1 + self.l2

    @coef.setter
    def coef(self, value: float) -> None:
        factor = rescale(self.coef, value, self)
        self.l1, self.l2 = self.l1 * factor, self.l2 * factor

    def forward(self, x: Tensor) -> Tensor:
        return F.l1l2(x, self.l1, self.l2, self.reduction)

    def get_config(self) -> dict[str, Any]:
        return {"l1": self.l1, "l2": self.l2, "reduction": self.reduction}

    def _args(self) -> list[str]:
        args = [f"l1={fmt(self.l1)}", f"l2={fmt(self.l2)}"]
        if self.reduction != "batch":
            args.append(f"reduction={self.reduction!r}")
        return args


class AR(CoefPenalty, name="ar"):
    """Activation regularization ``alpha * mean(x**2)`` (Merity et al. 2017; default alpha 2).

    Example:
        >>> import torch, actreg
        >>> actreg.AR(2.0)(torch.ones(2, 3, 4))
        tensor(2.)
    """

    default_reduction = "mean"
    coef_name = "alpha"

    def __init__(self, alpha: float = 2.0, reduction: Reduction = "mean") -> None:
        super().__init__(alpha, reduction)

    def forward(self, x: Tensor) -> Tensor:
        return F.ar(x, self.coef, self.reduction)


class TAR(CoefPenalty, name="tar"):
    """Temporal AR ``beta * mean((x[t+1] - x[t])**2)`` along ``time_dim`` (default beta 1).

    ``time_dim`` is 1 for batch-first tensors (N, T, H), 0 for time-first (T, N, H).

    Example:
        >>> import torch, actreg
        >>> x = torch.arange(3.0).reshape(1, 3, 1)  # steps 0, 1, 2
        >>> actreg.TAR(1.0)(x)
        tensor(1.)
    """

    default_reduction = "mean"
    coef_name = "beta"

    def __init__(self, beta: float = 1.0, time_dim: int = 1, reduction: Reduction = "mean") -> None:
        super().__init__(beta, reduction)
        self.time_dim = _check_int(time_dim, "time_dim", "the time axis")

    def forward(self, x: Tensor) -> Tensor:
        return F.tar(x, self.coef, self.time_dim, self.reduction)

    def get_config(self) -> dict[str, Any]:
        return {"beta": self.coef, "time_dim": self.time_dim, "reduction": self.reduction}

    def _args(self) -> list[str]:
        args = super()._args()
        if self.time_dim != 1:
            args.append(f"time_dim={self.time_dim}")
        return args


class KLSparsity(CoefPenalty, name="kl"):
    """``beta * sum_j KL(target || mean activation of unit j)`` on [0, 1] activations.

    Args:
        beta: the coefficient.
        target: the desired mean activation ``rho`` in (0, 1).
        dim: the unit axis (-1 for linear layers, 1 for conv maps).
        validate: check that values lie in [0, 1] (one host sync per call).

    Example:
        >>> import torch, actreg
        >>> actreg.KLSparsity(1.0, target=0.5)(torch.full((4, 2), 0.5))
        tensor(0.)
    """

    coef_name = "beta"

    def __init__(
        self, beta: float = 3.0, target: float = 0.05, dim: int = -1, validate: bool = True
    ) -> None:
        super().__init__(beta, "sum")
        target = check_coef(target, "target")
        if not 0 < target < 1:
            raise ActregError(f"target must be strictly between 0 and 1, got {target!r}")
        self.target = target
        self.dim = _check_int(dim, "dim", "the unit axis")
        self.validate = _check_flag(validate, "validate")

    def forward(self, x: Tensor) -> Tensor:
        return F.kl_sparsity(x, self.coef, self.target, self.dim, self.validate)

    def get_config(self) -> dict[str, Any]:
        config = {"beta": self.coef, "target": self.target, "dim": self.dim}
        return {**config, "validate": self.validate}

    def _args(self) -> list[str]:
        args = [fmt(self.coef), f"target={fmt(self.target)}"]
        if self.dim != -1:
            args.append(f"dim={self.dim}")
        if not self.validate:
            args.append("validate=False")
        return args


class _UnitCoef(CoefPenalty):
    """A coefficient penalty over vectors along a unit axis ``dim``."""

    def __init__(self, coef: float = 1e-3, dim: int = -1, reduction: Reduction = "batch") -> None:
        super().__init__(coef, reduction)
        self.dim = _check_int(dim, "dim", "the unit axis")

    def get_config(self) -> dict[str, Any]:
        return {"coef": self.coef, "dim": self.dim, "reduction": self.reduction}

    def _args(self) -> list[str]:
        args = super()._args()
        if self.dim != -1:
            args.append(f"dim={self.dim}")
        return args


class Hoyer(_UnitCoef, name="hoyer"):
    """``coef * ||v||_1 / ||v||_2`` per vector ``v`` along ``dim``, summed / batch.

    Example:
        >>> import torch, actreg
        >>> actreg.Hoyer(1.0)(torch.tensor([[3.0, 4.0], [0.0, 2.0]]))  # (7/5 + 1) / 2
        tensor(1.2000)
    """

    def forward(self, x: Tensor) -> Tensor:
        return F.hoyer(x, self.coef, self.dim, self.reduction)


class HoyerSquare(_UnitCoef, name="hoyer_square"):
    """``coef * ||v||_1**2 / ||v||_2**2`` per vector along ``dim`` (DeepHoyer), summed / batch.

    Example:
        >>> import torch, actreg
        >>> actreg.HoyerSquare(1.0)(torch.ones(2, 4))  # 16 / 4 per row
        tensor(4.)
    """

    def forward(self, x: Tensor) -> Tensor:
        return F.hoyer_square(x, self.coef, self.dim, self.reduction)


class Log(CoefPenalty, name="log"):
    """``coef * sum(log(1 + x**2)) / batch``: the Cauchy-prior sparsity penalty.

    Example:
        >>> import torch, actreg
        >>> actreg.Log(1.0)(torch.zeros(2, 3))
        tensor(0.)
    """

    def __init__(self, coef: float = 1e-3, reduction: Reduction = "batch") -> None:
        super().__init__(coef, reduction)

    def forward(self, x: Tensor) -> Tensor:
        return F.log(x, self.coef, self.reduction)


class DeCov(CoefPenalty, name="decov"):
    """``coef * 0.5 * (||C||_F**2 - ||diag C||**2)``, C the unit covariance (Cogswell 2016).

    Example:
        >>> import torch, actreg
        >>> actreg.DeCov(1.0)(torch.tensor([[1.0, 1.0], [-1.0, -1.0]]))  # cov 1 off-diagonal
        tensor(1.)
    """

    def __init__(self, coef: float = 1e-3, dim: int = -1) -> None:
        super().__init__(coef, "sum")
        self.dim = _check_int(dim, "dim", "the unit axis")

    def forward(self, x: Tensor) -> Tensor:
        return F.decov(x, self.coef, self.dim)

    def get_config(self) -> dict[str, Any]:
        return {"coef": self.coef, "dim": self.dim}

    def _args(self) -> list[str]:
        return [fmt(self.coef)] + ([f"dim={self.dim}"] if self.dim != -1 else [])


class Binary(CoefPenalty, name="binary"):
    """``coef * sum(x * (1 - x)) / batch``: pushes [0, 1] values (sigmoids) to 0 or 1.

    Example:
        >>> import torch, actreg
        >>> actreg.Binary(1.0)(torch.tensor([[0.0, 0.5, 1.0]]))
        tensor(0.2500)
    """

    def __init__(
        self, coef: float = 1e-3, reduction: Reduction = "batch", validate: bool = True
    ) -> None:
        super().__init__(coef, reduction)
        self.validate = _check_flag(validate, "validate")

    def forward(self, x: Tensor) -> Tensor:
        return F.binary(x, self.coef, self.reduction, self.validate)

    def get_config(self) -> dict[str, Any]:
        return {"coef": self.coef, "reduction": self.reduction, "validate": self.validate}

    def _args(self) -> list[str]:
        return super()._args() + ([] if self.validate else ["validate=False"])
