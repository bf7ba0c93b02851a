"""The penalty protocol: the :class:`Penalty` base, composition, configs and the registry.

Every penalty (the formulas of :mod:`actreg.penalties`, their sums and scalings, and the
controllers of :mod:`actreg.control`) offers the same five things:

* ``p(x)``: a 0-dim tensor; half precision is accumulated in float32.
* ``p.coef``: a float >= 0 that can be read and set, and the penalty is *linear* in it:
  setting ``coef`` to ``k`` times its value multiplies ``p(x)`` by ``k``. That is what
  lets :class:`~actreg.TargetSparsity` and :class:`~actreg.Scheduled` wrap any penalty:
  they multiply its value and know the coefficient in effect.
* ``p.get_config()`` / ``type(p).from_config(config)``: Keras' pair. The config is the
  constructor's keyword arguments under their familiar names (``{"l1": 0.01, ...}``); a
  composite nests its parts as :func:`serialize` dicts. Running state is not config.
* ``p.state_dict()`` / ``p.load_state_dict(state)``: the running state (empty for fixed
  penalties), so that a resumed run continues exactly.
* a registry name: ``class L1(Penalty, name="l1")`` puts it in :data:`PENALTIES`, so
  ``make_penalty("l1", 1e-3)`` and ``make_penalty(serialize(p))`` build it.

What ``coef`` means for a composite, and why:

* ``a + b`` (:class:`Sum`): the sum of its terms' coefficients; setting it scales every
  term by the same factor, so the mix of the terms stays. Chosen over a separate overall
  multiplier (default 1) because then ``L1(a) + L2(b)`` and ``L1L2(l1=a, l2=b)``, the same
  penalty, have the same ``coef``, ``a + b``, in the units of the coefficients: a
  controller wrapping either starts from that real strength and its bounds mean the same
  thing. A multiplier would read 1.0 for every sum, the silent 1.0 this protocol removes.
* ``s * p`` (:class:`Scaled`): ``s * p.coef`` (``0.5 * L1(1e-3)`` is ``L1(5e-4)``);
  setting it changes ``s`` and leaves ``p`` alone.

Example:
    >>> import actreg
    >>> p = actreg.L1(1e-3) + 0.5 * actreg.L2(1e-4)
    >>> p.coef
    0.00105
    >>> actreg.make_penalty(actreg.serialize(p)) == p
    True
"""

from __future__ import annotations

import difflib
import inspect
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from torch import Tensor

from actreg import functional as F
from actreg._errors import ActregError
from actreg.functional import Reduction

__all__ = [
    "PENALTIES",
    "CoefPenalty",
    "Penalty",
    "Scaled",
    "Sum",
    "build",
    "check_coef",
    "check_penalty",
    "fmt",
    "make_penalty",
    "rescale",
    "serialize",
]

#: Registry name -> penalty class, filled by ``class X(Penalty, name="x")``.
PENALTIES: dict[str, type[Penalty]] = {}


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


def rescale(old: float, value: Any, who: object) -> float:
    """The factor that takes a total coefficient ``old`` to ``value`` (checked)."""
    value = check_coef(value, "coef")
    if old > 0:
        return value / old
    if value == 0:
        return 1.0
    raise ActregError(
        f"{who!r} has coefficient 0, so there is no mix of its parts to scale to "
        f"{value:g}; set the coefficients of its parts instead"
    )


def fmt(value: float) -> str:
    """A coefficient as :func:`repr` shows it."""
    return f"{value:g}"


def _acc(x: Tensor) -> Tensor:
    """Check the input of a penalty; half precision is upcast to float32 for accumulation."""
    return F.as_float(x, "a penalty", "penalize a layer whose output is float")


class Penalty:
    """Base class of every penalty: a callable ``tensor -> 0-dim tensor``.

    A subclass implements :meth:`forward` (on a checked, float32-or-wider tensor) and sets
    ``self.coef``; one whose constructor takes more than ``coef`` also returns them all
    from :meth:`get_config`. ``name="mine"`` in the class statement registers it for
    :func:`make_penalty` and configs: ``class Mine(Penalty, name="mine")``.
    """

    #: The registry name (:data:`PENALTIES`), set by ``name=`` in the class statement.
    name: ClassVar[str] = ""
    #: True for penalties built from other penalties (their config nests them).
    composite: ClassVar[bool] = False
    _coef: float

    def __init_subclass__(cls, name: str = "", **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if name:
            if name in PENALTIES:
                raise ActregError(
                    f"penalty name {name!r} is taken by {PENALTIES[name].__qualname__}; "
                    f"register {cls.__qualname__} under another name"
                )
            cls.name = name
            PENALTIES[name] = cls

    def __call__(self, x: Tensor) -> Tensor:
        return self.forward(_acc(x))

    def forward(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def coef(self) -> float:
        """The overall coefficient: the penalty is linear in it (see the module docstring).

        By default a plain attribute, checked when set (``self.coef = coef`` in a
        subclass's ``__init__``); composites derive it from their parts.
        """
        try:
            return self._coef
        except AttributeError:
            raise ActregError(
                f"{type(self).__name__} has no coefficient: set self.coef in its __init__"
            ) from None

    @coef.setter
    def coef(self, value: float) -> None:
        self._coef = check_coef(value, "coef")

    def get_config(self) -> dict[str, Any]:
        """The constructor's keyword arguments; :meth:`from_config` builds an equal penalty.

        By default ``{"coef": self.coef}``, right for a subclass whose constructor takes
        only ``coef``; a subclass with more arguments returns them all.
        """
        return {"coef": self.coef}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Penalty:
        """Build a penalty from :meth:`get_config` output."""
        return build(cls, (), config)

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
        """Equal type and equal config (running state is not compared)."""
        if not isinstance(other, Penalty):
            return NotImplemented
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self) -> int:
        return hash(repr(self))


def build(cls: type[Penalty], args: Sequence[Any], kwargs: Mapping[str, Any]) -> Penalty:
    """``cls(*args, **kwargs)``; wrong arguments raise :class:`ActregError` with the signature."""
    try:
        return cls(*args, **kwargs)
    except TypeError as err:
        raise ActregError(
            f"{err}; {cls.__name__} takes {cls.__name__}{inspect.signature(cls)}"
        ) from err


def check_penalty(penalty: object, who: str) -> Penalty:
    if not isinstance(penalty, Penalty):
        raise ActregError(f"{who} wraps an actreg penalty (e.g. actreg.L1(1e-3)), got {penalty!r}")
    return penalty


class Sum(Penalty, name="sum"):
    """The sum of several penalties (``a + b``); ``coef`` is the sum of theirs.

    Example:
        >>> import actreg
        >>> p = actreg.L1(1e-3) + actreg.L2(3e-3)
        >>> p.coef = 8e-3  # scales both terms by 2
        >>> p
        L1(0.002) + L2(0.006)
    """

    composite = True

    def __init__(self, terms: Sequence[Penalty]) -> None:
        if not isinstance(terms, Sequence):
            raise ActregError(f"a sum of penalties takes a list of penalties, got {terms!r}")
        self.terms = [check_penalty(t, "a sum of penalties") for t in terms]
        if not self.terms:
            raise ActregError("a sum of penalties needs at least one term")

    def forward(self, x: Tensor) -> Tensor:
        total = self.terms[0].forward(x)
        for term in self.terms[1:]:
            total = total + term.forward(x)
        return total

    @property
    def coef(self) -> float:
        """The sum of the terms' coefficients; setting it scales every term alike."""
        return math.fsum(t.coef for t in self.terms)

    @coef.setter
    def coef(self, value: float) -> None:
        factor = rescale(self.coef, value, self)
        for term in self.terms:
            term.coef = term.coef * factor

    def get_config(self) -> dict[str, Any]:
        return {"terms": [serialize(t) for t in self.terms]}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Penalty:
        return cls([make_penalty(t) for t in config["terms"]])

    def state_dict(self) -> dict[str, Any]:
        return {str(i): t.state_dict() for i, t in enumerate(self.terms) if t.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for i, term in enumerate(self.terms):
            term.load_state_dict(state.get(str(i), {}))

    def __repr__(self) -> str:
        return " + ".join(repr(t) for t in self.terms)


class Scaled(Penalty, name="scaled"):
    """A penalty times a constant (``0.5 * L1(1e-3)``); ``coef`` is ``factor * penalty.coef``.

    Example:
        >>> import actreg
        >>> (0.5 * actreg.L1(1e-3)).coef
        0.0005
    """

    composite = True

    def __init__(self, factor: float, penalty: Penalty) -> None:
        self.factor = check_coef(factor, "scale factor")
        self.penalty = check_penalty(penalty, "a scaled penalty")

    def forward(self, x: Tensor) -> Tensor:
        return self.factor * self.penalty.forward(x)

    @property
    def coef(self) -> float:
        """``factor * penalty.coef``; setting it changes ``factor`` only."""
        return self.factor * self.penalty.coef

    @coef.setter
    def coef(self, value: float) -> None:
        self.factor = self.factor * rescale(self.coef, value, self)

    def get_config(self) -> dict[str, Any]:
        return {"factor": self.factor, "penalty": serialize(self.penalty)}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Penalty:
        return cls(config["factor"], make_penalty(config["penalty"]))

    def state_dict(self) -> dict[str, Any]:
        return self.penalty.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.penalty.load_state_dict(state)

    def __repr__(self) -> str:
        inner = f"({self.penalty!r})" if isinstance(self.penalty, Sum) else repr(self.penalty)
        return f"{fmt(self.factor)} * {inner}"


class CoefPenalty(Penalty):
    """Base of the formula penalties with one coefficient (its familiar name ``coef_name``)
    and a reduction."""

    default_reduction: ClassVar[Reduction] = "batch"
    #: The constructor keyword and config key of the coefficient (``"l1"``, ``"alpha"``).
    coef_name: ClassVar[str] = "coef"

    def __init__(self, coef: float, reduction: Reduction) -> None:
        self.coef = coef
        self.reduction: Reduction = F.check_reduction(reduction)

    @property
    def coef(self) -> float:
        """The coefficient; setting it validates it (a controller may change it)."""
        return self._coef

    @coef.setter
    def coef(self, value: float) -> None:
        self._coef = check_coef(value, self.coef_name)

    def get_config(self) -> dict[str, Any]:
        return {self.coef_name: self.coef, "reduction": self.reduction}

    def _args(self) -> list[str]:
        args = [fmt(self.coef)]
        if self.reduction != self.default_reduction:
            args.append(f"reduction={self.reduction!r}")
        return args


def serialize(penalty: Penalty) -> dict[str, Any]:
    """``{"name": registry name, "config": get_config()}``: what :func:`make_penalty` reads.

    JSON-able unless a config holds a callable (a :class:`~actreg.Scheduled` schedule).

    Example:
        >>> import actreg
        >>> serialize(actreg.L1(1e-3))
        {'name': 'l1', 'config': {'l1': 0.001, 'reduction': 'batch'}}
    """
    cls = type(check_penalty(penalty, "serialize"))
    if PENALTIES.get(cls.name) is not cls:
        raise ActregError(
            f"{cls.__qualname__} has no registry name of its own; register it with "
            f"`class {cls.__name__}(..., name='my_name')`"
        )
    return {"name": cls.name, "config": penalty.get_config()}


def _lookup(name: str) -> type[Penalty]:
    key = name.lower()
    if key not in PENALTIES:
        close = difflib.get_close_matches(key, PENALTIES, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ActregError(f"unknown penalty {name!r}{hint}; known: {', '.join(PENALTIES)}")
    return PENALTIES[key]


def make_penalty(identifier: str | Mapping[str, Any], *args: Any, **kwargs: Any) -> Penalty:
    """Build a penalty from its registry name (``"l1"``, ``"tar"``, ...) or a :func:`serialize`
    dict, for configs and the CLI.

    Example:
        >>> make_penalty("l1", 1e-3)
        L1(0.001)
        >>> make_penalty({"name": "tar", "config": {"beta": 2.0, "time_dim": 0}})
        TAR(2, time_dim=0)
    """
    if isinstance(identifier, Mapping):
        if args or kwargs or set(identifier) != {"name", "config"}:
            raise ActregError(
                "make_penalty(dict) takes one {'name': ..., 'config': {...}} dict (the output "
                f"of actreg.serialize) and nothing else, got {dict(identifier)!r}"
            )
        return _lookup(identifier["name"]).from_config(identifier["config"])
    if not isinstance(identifier, str):
        raise ActregError(
            f"make_penalty takes a registry name or a serialize() dict, got {identifier!r}"
        )
    return build(_lookup(identifier), args, kwargs)
