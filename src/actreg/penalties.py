"""Penalty objects: a coefficient, a reduction and a formula from :mod:`actreg.functional`.

A penalty is a callable ``tensor -> 0-dim tensor``. Penalties compose::

    >>> import actreg, torch
    >>> p = actreg.L1(1e-3) + 0.5 * actreg.L2(1e-4)
    >>> p
    L1(0.001) + 0.5 * L2(0.0001)
    >>> p(torch.ones(2, 3)).shape
    torch.Size([])

Half-precision inputs are computed in float32 so sums neither overflow nor lose
precision under autocast.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from actreg import functional as F
from actreg._errors import ActregError

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
    "make_penalty",
]


def check_coef(value: Any, name: str = "coefficient") -> float:
    """Return ``value`` as a float if it is a finite, non-negative real number."""
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ActregError(
            f"{name} must be a real number, got {value!r} ({type(value).__name__}); "
            f"pass e.g. {name}=1e-3"
        )
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ActregError(f"{name} must be finite and >= 0, got {value!r}")
    return value


def _fmt(value: float) -> str:
    return f"{value:g}"


def _acc(x: Tensor) -> Tensor:
    """Check the input of a penalty; half precision is upcast to float32 for accumulation."""
    return F.as_float(x, "a penalty", "penalize a layer whose output is float")


class Penalty:
    """Base class: subclasses implement :meth:`forward` and :meth:`_args`."""

    def __call__(self, x: Tensor) -> Tensor:
        return self.forward(_acc(x))

    def forward(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _args(self) -> list[str]:
        return []

    def state_dict(self) -> dict[str, Any]:
        """State that changes during training (adaptive penalties); empty for fixed ones."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        if state:
            raise ActregError(f"{self!r} keeps no state, got {sorted(state)}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(self._args())})"

    def __add__(self, other: object) -> Penalty:
        if not isinstance(other, Penalty):
            return NotImplemented
        left = self.terms if isinstance(self, Sum) else [self]
        right = other.terms if isinstance(other, Sum) else [other]
        return Sum([*left, *right])

    def __mul__(self, factor: object) -> Penalty:
        if isinstance(factor, Penalty):
            return NotImplemented
        return Scaled(check_coef(factor, "scale factor"), self)

    __rmul__ = __mul__

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and repr(self) == repr(other)

    def __hash__(self) -> int:
        return hash(repr(self))


class Sum(Penalty):
    """The sum of several penalties (``a + b``)."""

    def __init__(self, terms: list[Penalty]) -> None:
        self.terms = list(terms)

    def forward(self, x: Tensor) -> Tensor:
        total = self.terms[0].forward(x)
        for term in self.terms[1:]:
            total = total + term.forward(x)
        return total

    def state_dict(self) -> dict[str, Any]:
        return {str(i): t.state_dict() for i, t in enumerate(self.terms) if t.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for i, term in enumerate(self.terms):
            term.load_state_dict(state.get(str(i), {}))

    def __repr__(self) -> str:
        return " + ".join(repr(t) for t in self.terms)


class Scaled(Penalty):
    """A penalty multiplied by a constant (``0.5 * L1(1e-3)``)."""

    def __init__(self, factor: float, inner: Penalty) -> None:
        self.factor = check_coef(factor, "scale factor")
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        return self.factor * self.inner.forward(x)

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.inner.load_state_dict(state)

    def __repr__(self) -> str:
        inner = f"({self.inner!r})" if isinstance(self.inner, Sum) else repr(self.inner)
        return f"{_fmt(self.factor)} * {inner}"


class _Coef(Penalty):
    """A penalty with one validated coefficient ``coef`` and a reduction."""

    default_reduction: str = "batch"
    coef_name: str = "coef"

    def __init__(self, coef: float, reduction: str | None = None) -> None:
        self.coef = coef
        self.reduction = reduction if reduction is not None else self.default_reduction
        F.check_reduction(self.reduction)

    @property
    def coef(self) -> float:
        """The coefficient; setting it validates it (a controller may change it)."""
        return self._coef

    @coef.setter
    def coef(self, value: float) -> None:
        self._coef = check_coef(value, self.coef_name)

    def _args(self) -> list[str]:
        args = [_fmt(self.coef)]
        if self.reduction != self.default_reduction:
            args.append(f"reduction={self.reduction!r}")
        return args


class L1(_Coef):
    """``l1 * sum(|x|) / batch``: Keras' ``L1`` activity regularizer.

    Example:
        >>> import torch, actreg
        >>> actreg.L1(0.01)(torch.tensor([[1.0, -2.0], [0.0, 3.0]]))
        tensor(0.0300)
    """

    coef_name = "l1"

    def __init__(self, l1: float = 0.01, reduction: str = "batch") -> None:
        super().__init__(l1, reduction)

    def forward(self, x: Tensor) -> Tensor:
        return F.l1(x, self.coef, self.reduction)  # type: ignore[arg-type]


class L2(_Coef):
    """``l2 * sum(x**2) / batch``: Keras' ``L2`` (no 1/2 factor).

    Example:
        >>> import torch, actreg
        >>> actreg.L2(0.01)(torch.ones(7, 5) * 2)  # 0.2 for every batch size
        tensor(0.2000)
    """

    coef_name = "l2"

    def __init__(self, l2: float = 0.01, reduction: str = "batch") -> None:
        super().__init__(l2, reduction)

    def forward(self, x: Tensor) -> Tensor:
        return F.l2(x, self.coef, self.reduction)  # type: ignore[arg-type]


class L1L2(Penalty):
    """Elastic net ``(l1 * |x| + l2 * x**2)`` summed over elements / batch: Keras' ``L1L2``.

    Example:
        >>> import torch, actreg
        >>> actreg.L1L2(l1=0.01, l2=0.01)(torch.ones(3, 4))
        tensor(0.0800)
    """

    def __init__(self, l1: float = 0.0, l2: float = 0.0, reduction: str = "batch") -> None:
        self.l1 = check_coef(l1, "l1")
        self.l2 = check_coef(l2, "l2")
        F.check_reduction(reduction)
        self.reduction = reduction

    def forward(self, x: Tensor) -> Tensor:
        return F.l1l2(x, self.l1, self.l2, self.reduction)  # type: ignore[arg-type]

    def _args(self) -> list[str]:
        args = [f"l1={_fmt(self.l1)}", f"l2={_fmt(self.l2)}"]
        if self.reduction != "batch":
            args.append(f"reduction={self.reduction!r}")
        return args


class AR(_Coef):
    """Activation regularization ``alpha * mean(x**2)`` (Merity et al. 2017; default alpha 2).

    Example:
        >>> import torch, actreg
        >>> actreg.AR(2.0)(torch.ones(2, 3, 4))
        tensor(2.)
    """

    default_reduction = "mean"
    coef_name = "alpha"

    def __init__(self, alpha: float = 2.0, reduction: str = "mean") -> None:
        super().__init__(alpha, reduction)

    def forward(self, x: Tensor) -> Tensor:
        return F.ar(x, self.coef, self.reduction)  # type: ignore[arg-type]


class TAR(_Coef):
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

    def __init__(self, beta: float = 1.0, time_dim: int = 1, reduction: str = "mean") -> None:
        super().__init__(beta, reduction)
        if not isinstance(time_dim, int) or isinstance(time_dim, bool):
            raise ActregError(f"time_dim must be an int, got {time_dim!r}")
        self.time_dim = time_dim

    def forward(self, x: Tensor) -> Tensor:
        return F.tar(x, self.coef, self.time_dim, self.reduction)  # type: ignore[arg-type]

    def _args(self) -> list[str]:
        args = super()._args()
        if self.time_dim != 1:
            args.append(f"time_dim={self.time_dim}")
        return args


def _check_dim_arg(dim: Any) -> int:
    if not isinstance(dim, int) or isinstance(dim, bool):
        raise ActregError(f"dim must be an int (the unit axis), got {dim!r}")
    return dim


class KLSparsity(_Coef):
    """``beta * sum_j KL(target || mean activation of unit j)`` on [0, 1] activations.

    Args:
        beta: the coefficient.
        target: the desired mean activation ``rho`` in (0, 1).
        dim: the unit axis (-1 for linear layers, 1 for conv maps).
        validate: check that values lie in [0, 1] (one host sync per call).
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
        self.dim = _check_dim_arg(dim)
        self.validate = validate

    def forward(self, x: Tensor) -> Tensor:
        return F.kl_sparsity(x, self.coef, self.target, self.dim, self.validate)

    def _args(self) -> list[str]:
        args = [_fmt(self.coef), f"target={_fmt(self.target)}"]
        if self.dim != -1:
            args.append(f"dim={self.dim}")
        return args


class _UnitCoef(_Coef):
    """A coefficient penalty over vectors along a unit axis ``dim``."""

    def __init__(self, coef: float = 1e-3, dim: int = -1, reduction: str = "batch") -> None:
        super().__init__(coef, reduction)
        self.dim = _check_dim_arg(dim)

    def _args(self) -> list[str]:
        args = super()._args()
        if self.dim != -1:
            args.append(f"dim={self.dim}")
        return args


class Hoyer(_UnitCoef):
    """``coef * ||v||_1 / ||v||_2`` per vector ``v`` along ``dim``, summed / batch."""

    def forward(self, x: Tensor) -> Tensor:
        return F.hoyer(x, self.coef, self.dim, self.reduction)  # type: ignore[arg-type]


class HoyerSquare(_UnitCoef):
    """``coef * ||v||_1**2 / ||v||_2**2`` per vector along ``dim`` (DeepHoyer), summed / batch."""

    def forward(self, x: Tensor) -> Tensor:
        return F.hoyer_square(x, self.coef, self.dim, self.reduction)  # type: ignore[arg-type]


class Log(_Coef):
    """``coef * sum(log(1 + x**2)) / batch``: the Cauchy-prior sparsity penalty."""

    def forward(self, x: Tensor) -> Tensor:
        return F.log(x, self.coef, self.reduction)  # type: ignore[arg-type]


class DeCov(_Coef):
    """``coef * 0.5 * (||C||_F**2 - ||diag C||**2)``, C the unit covariance (Cogswell 2016)."""

    def __init__(self, coef: float = 1e-3, dim: int = -1) -> None:
        super().__init__(coef, "sum")
        self.dim = _check_dim_arg(dim)

    def forward(self, x: Tensor) -> Tensor:
        return F.decov(x, self.coef, self.dim)

    def _args(self) -> list[str]:
        return [_fmt(self.coef)] + ([f"dim={self.dim}"] if self.dim != -1 else [])


class Binary(_Coef):
    """``coef * sum(x * (1 - x)) / batch``: pushes [0, 1] values (sigmoids) to 0 or 1."""

    def __init__(self, coef: float = 1e-3, reduction: str = "batch", validate: bool = True) -> None:
        super().__init__(coef, reduction)
        self.validate = validate

    def forward(self, x: Tensor) -> Tensor:
        return F.binary(x, self.coef, self.reduction, self.validate)  # type: ignore[arg-type]


PENALTIES: dict[str, type[Penalty]] = {
    "l1": L1,
    "l2": L2,
    "l1l2": L1L2,
    "ar": AR,
    "tar": TAR,
    "kl": KLSparsity,
    "hoyer": Hoyer,
    "hoyer_square": HoyerSquare,
    "log": Log,
    "decov": DeCov,
    "binary": Binary,
}


def make_penalty(name: str, *args: Any, **kwargs: Any) -> Penalty:
    """Build a penalty from its registry name (``"l1"``, ``"tar"``, ...), for configs and the CLI.

    Example:
        >>> make_penalty("l1", 1e-3)
        L1(0.001)
    """
    key = name.lower()
    if key not in PENALTIES:
        import difflib

        close = difflib.get_close_matches(key, PENALTIES, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ActregError(f"unknown penalty {name!r}{hint}; known: {', '.join(PENALTIES)}")
    return PENALTIES[key](*args, **kwargs)
